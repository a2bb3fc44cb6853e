"""Torch lowerings of ONNX ops, one module per op family, registered only in the op table.

Each family module (``elementwise``, ``linear``, ``conv``, ``pool``, ``norm``, ``reduce``, ``shape``,
``index``, ``misc``) defines plain builder functions ``builder(node, attrs, version) -> run`` (see
:mod:`._common`) and a dict ``LOWERINGS`` of them. The op table
(:mod:`halp_onnx.ops.table`) names a node's lowering in its ``torch`` facet, ``"family:key"``:
:func:`lowering_for` resolves it through :func:`~halp_onnx.ops.table.entry_for` and imports the
family module on first use.
"""
from __future__ import annotations

import importlib
from functools import lru_cache
from typing import TYPE_CHECKING

from halp_onnx.ops.table import ENTRIES, OpEntry, entry_for, schema_version

if TYPE_CHECKING:
    from ._common import Builder

FAMILIES: tuple[str, ...] = ("elementwise", "linear", "conv", "pool", "norm", "reduce", "shape", "index", "misc")


def norm_domain(domain: str) -> str:
    return "" if domain in ("", "ai.onnx") else domain


@lru_cache(maxsize=None)
def resolve(ref: str) -> Builder:
    """The builder named by a ``torch`` facet ``"family:key"`` (imports the family module)."""
    family, sep, key = ref.partition(":")
    if not sep or family not in FAMILIES:
        raise KeyError(f"bad torch lowering reference {ref!r}")
    module = importlib.import_module(f"{__name__}.{family}")
    try:
        return module.LOWERINGS[key]
    except KeyError:
        raise KeyError(f"torch lowering {ref!r}: no {key!r} in {module.__name__}.LOWERINGS") from None


def _torch_entries(domain: str, op_type: str) -> list[OpEntry]:
    return sorted((e for e in ENTRIES if norm_domain(e.domain) == domain and e.op_type == op_type and e.torch),
                  key=lambda e: e.since)


def entry_with_lowering(domain: str, op_type: str, version: int | None) -> OpEntry | None:
    """The op-table entry whose torch facet lowers ``domain::op_type`` at the model's opset ``version``
    for that domain (None: the newest). Resolved with :func:`~halp_onnx.ops.table.entry_for`; a version
    no entry covers (an opset below the op's first lowering) gets, leniently, the newest entry whose
    ``since`` is not above the schema version, else the oldest one."""
    domain = norm_domain(domain)
    entry = entry_for(domain, op_type, version)
    if entry is not None:
        return entry if entry.torch else None
    entries = _torch_entries(domain, op_type)
    if not entries:
        return None
    assert version is not None  # entry_for(..., None) finds the newest entry of a listed op
    sv = schema_version(domain, op_type, int(version))
    best = None
    for e in entries:
        if e.since <= sv:
            best = e
    return best if best is not None else entries[0]


def lowering_for(domain: str, op_type: str, version: int | None) -> Builder | None:
    """The torch builder for ``domain::op_type`` at opset ``version`` (None: unsupported op)."""
    entry = entry_with_lowering(domain, op_type, version)
    return resolve(entry.torch) if entry is not None and entry.torch else None


def supported_ops() -> list[tuple[str, str]]:
    """All ``(domain, op_type)`` keys with a torch lowering in the op table."""
    return sorted({(norm_domain(e.domain), e.op_type) for e in ENTRIES if e.torch})


__all__ = ["FAMILIES", "lowering_for", "resolve", "supported_ops", "entry_with_lowering", "norm_domain"]
