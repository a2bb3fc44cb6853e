"""Pricing a memory-bound signature the profile never saw from the same op at another shape.

A pruned transformer changes signatures the dense model's profile was measured with, and not only
their widths: an attention head group pruned to one head leaves its ``Transpose`` / ``Split`` / the
activation ``MatMul`` laid out on the head dimension instead, so the pruned file's blocks carry
signatures (``in=591`` at 64 channels where the dense model had ``in=37824`` at 3) that no whole-model
run of the dense model showed. Measuring them needs the pruned model's own runs; with measuring off
(``latency --no-measure``, the fidelity benchmark) they would leave the model unpriced.

A memory-bound op (:data:`~.signature.MEMORY_BOUND_OPS`) costs about its element count, so such a
signature is priced from a measured table of the same op, epilogue, grouping and dtype at the width
that moves as many elements, scaled linearly past that table's widths. :func:`memory_bound_alias`
picks the table whose measured widths reach that equivalent width most closely; the prediction says
how many blocks were priced this way.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from .signature import MEMORY_BOUND_OPS, BlockSignature


@dataclass(frozen=True)
class ShapeAlias:
    """``sig`` at ``c`` channels priced as ``key`` at ``c_equiv`` (clamped to its table) times ``factor``."""

    key: str
    c_equiv: int
    factor: float


def _elements_per_channel(sig: BlockSignature) -> int:
    return max(1, math.prod(sig.in_hw) if sig.in_hw else 1) * max(1, sig.batch)


def _kin(sig: BlockSignature) -> tuple:
    return sig.op, sig.kernel, sig.stride, sig.pads, sig.dilation, sig.groups, sig.dtype, sig.epilogue


def memory_bound_alias(tables, sig: BlockSignature, c: int) -> ShapeAlias | None:
    """The measured table of ``tables`` (key -> table) that prices memory-bound ``sig`` at ``c``
    channels, or None (not memory-bound, or no kin measured)."""
    if sig.op not in MEMORY_BOUND_OPS or c <= 0:
        return None
    want = c * _elements_per_channel(sig)
    best: tuple[float, ShapeAlias] | None = None
    for key, table in tables.items():
        if key == sig.key() or not (table.fit or table.points):
            continue
        other = BlockSignature.from_key(key)
        if _kin(other) != _kin(sig):
            continue
        per = _elements_per_channel(other)
        exact = want / per
        top = max(1, min(table.c_in_max, table.c_out_max))
        at = int(min(max(round(exact), 1), top))
        miss = abs(math.log(exact / at))  # how far past the table's widths the scaling reaches
        alias = ShapeAlias(key, at, want / (at * per))
        if best is None or miss < best[0]:
            best = (miss, alias)
    return best[1] if best is not None else None
