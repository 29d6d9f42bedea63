"""fusion_edge.bench"""
