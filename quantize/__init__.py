"""fusion_edge.quantize"""
