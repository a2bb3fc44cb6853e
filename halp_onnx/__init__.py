"""halp-onnx: latency-constrained structural pruning (HALP) for ONNX models."""
from .api import PruneResult, inspect, prune
from .compiler import CompileResult, compile
from .errors import HalpError

__version__ = "0.1.0"
__all__ = ["CompileResult", "HalpError", "PruneResult", "compile", "inspect", "prune", "__version__"]
