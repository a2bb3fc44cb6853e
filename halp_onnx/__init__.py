"""halp-onnx: latency-constrained structural pruning (HALP) for ONNX models."""
from .api import PruneResult, inspect, prune
from .errors import HalpError

__version__ = "0.1.0"
__all__ = ["HalpError", "PruneResult", "inspect", "prune", "__version__"]
