"""fusion-edge: export, quantize, verify and run FUSION multimodal LLMs at the edge.

Subpackages (each a top-level folder of the repository, mapped in pyproject.toml):
export, runtime, quantize, calibration, apps, bench.
"""
__version__ = "0.1.0"
