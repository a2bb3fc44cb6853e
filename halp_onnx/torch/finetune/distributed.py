"""Data parallelism under torchrun: :func:`init_distributed`, this process's :class:`DistInfo`, and
the all-reduce the training loop and evaluation use."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from halp_onnx.errors import HalpError

from .config import STAGE


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str | None = None) -> DistInfo:
    """Under torchrun (``WORLD_SIZE > 1``) initialise the default process group if it is not yet
    (nccl for CUDA, gloo otherwise) and return this process's rank; else ``DistInfo()``."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        return DistInfo()
    if not dist.is_available():
        raise HalpError("WORLD_SIZE > 1 but this PyTorch build has no torch.distributed", stage=STAGE)
    local = int(os.environ.get("LOCAL_RANK", 0))
    use_cuda = torch.cuda.is_available() and (device is None or str(device).startswith("cuda"))
    if use_cuda:
        torch.cuda.set_device(local)
    try:
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    except Exception as exc:
        raise HalpError(f"cannot initialise the process group: {type(exc).__name__}: {exc}", stage=STAGE) from exc
    return DistInfo(dist.get_rank(), dist.get_world_size(), local)


def _all_reduce_sum(values: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.enabled:
        import torch.distributed as dist

        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values
