"""fusion_edge.export"""
