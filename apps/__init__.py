"""fusion_edge.apps"""
