"""fusion_edge.calibration"""
