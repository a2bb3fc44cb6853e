"""Torch bridge: a differentiable torch executor of ONNX graphs (optional extra ``halp-onnx[torch]``).

Used for Taylor importance (gradients w.r.t. per-channel gates set with
:meth:`OnnxModule.set_tensor_hook`) and for fine-tuning pruned ONNX models, with the trained
weights written back into the same ONNX graph by :meth:`OnnxModule.write_back`.
"""
from __future__ import annotations

from halp_onnx.errors import HalpError

try:
    import torch  # noqa: F401
except ImportError as _exc:  # pragma: no cover - exercised only without torch
    raise HalpError(
        f"the torch bridge needs PyTorch ({_exc}); install it with: pip install halp-onnx[torch]",
        stage="torch-bridge",
    ) from _exc

from .executor import OnnxModule, write_back  # noqa: E402
from .finetune import FinetuneConfig, FinetuneResult, Trainer, finetune  # noqa: E402
from .halp import IterativePruner, compile_iterative  # noqa: E402
from .lower import lowering_for, supported_ops  # noqa: E402

__all__ = ["OnnxModule", "write_back", "lowering_for", "supported_ops", "FinetuneConfig", "FinetuneResult",
           "Trainer", "finetune", "IterativePruner", "compile_iterative"]
