"""fusion-edge: export, quantize, verify and run FUSION multimodal LLMs at the edge.

Subpackages (each a top-level folder of the repository, mapped in pyproject.toml):
export, runtime, quantize, calibration, apps, bench.
"""
import logging

__version__ = "0.1.0"

# a library prints nothing of its own: progress and notices are log records (fusion_edge/logs.py)
logging.getLogger(__name__).addHandler(logging.NullHandler())
