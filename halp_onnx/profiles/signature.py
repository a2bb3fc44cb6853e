"""Block signatures: what a latency profile is keyed by, shared by every backend.

A :class:`BlockSignature` describes one prunable layer *without* its channel counts:
operator, kernel geometry, grouping, input spatial size, batch, precision and the ops
fused into its epilogue.  A profile maps a signature (its :meth:`BlockSignature.key`,
used as the JSON key) to latency as a function of ``(c_in, c_out)``.

Conventions
-----------
* ``pads`` follows ONNX: ``(begin_0, begin_1, ..., end_0, end_1, ...)``.  A tuple with
  one value per spatial axis is read as symmetric padding.
* ``groups`` is ``"dense"``, ``"depthwise"`` (one input channel per output channel) or
  ``"grouped:<channels per group>"`` where the number is the count of *input* channels
  each output channel sees (``c_in / groups`` in ONNX terms).  It stays fixed when whole
  groups are pruned, so flops scale with ``c_out`` alone.
* ``in_hw`` is the input spatial shape for Conv / ConvTranspose / Pool; ``(rows,)`` (the
  GEMM ``M`` per batch item) for Gemm / MatMul; the element count per channel for the
  memory-bound ops ``Elementwise`` and ``Other``.  A Pool without a kernel is a global
  pool (one output element per channel).
* ConvTranspose ``output_padding`` is not part of the signature (it changes the output
  by at most ``stride - 1`` rows/columns).
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from halp_onnx.errors import HalpError
from halp_onnx.ops.table import ANCHOR_OPS, MATRIX_ANCHOR_OPS, SPATIAL_ANCHOR_OPS

__all__ = [
    "BlockSignature",
    "DTYPE_BYTES",
    "DTYPES",
    "GEMM_OPS",
    "MEMORY_BOUND_OPS",
    "OPS",
]

STAGE = "profiles"

GEMM_OPS: tuple[str, ...] = ANCHOR_OPS  # the op table's GEMM-like anchors
MEMORY_BOUND_OPS: tuple[str, ...] = ("Elementwise", "Pool", "Other")
OPS: tuple[str, ...] = GEMM_OPS + MEMORY_BOUND_OPS
DTYPE_BYTES: dict[str, int] = {"fp32": 4, "fp16": 2, "int8": 1}
DTYPES: tuple[str, ...] = tuple(DTYPE_BYTES)
_SPATIAL_OPS = SPATIAL_ANCHOR_OPS + ("Pool",)

# key() layout: fields joined by ";" in this order, tuples joined by "x", empty as "-".
_KEY_FIELDS = ("k", "s", "p", "d", "g", "in", "b", "t", "e")


def _error(message: str) -> HalpError:
    return HalpError(message, stage=STAGE)


def _int_tuple(value: Any, name: str) -> tuple[int, ...]:
    if value is None:
        return ()
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = (value,)
    try:
        items = tuple(value)
    except TypeError:
        raise _error(f"block signature: {name} must be a sequence of ints, got {value!r}") from None
    out = []
    for item in items:
        if isinstance(item, bool) or not isinstance(item, (int, float)) or int(item) != item:
            raise _error(f"block signature: {name} must hold ints, got {value!r}")
        out.append(int(item))
    return tuple(out)


def _prod(values: tuple[int, ...]) -> int:
    return math.prod(values) if values else 1


@dataclass(frozen=True)
class BlockSignature:
    """One prunable layer's shape class; channel counts are the profile's variables."""

    op: str  # "Conv", "ConvTranspose", "Gemm", "MatMul", or "Elementwise", "Pool", "Other"
    kernel: tuple[int, ...]  # () for Gemm/MatMul/elementwise
    stride: tuple[int, ...]
    pads: tuple[int, ...]
    dilation: tuple[int, ...]
    groups: str  # "dense" | "depthwise" | "grouped:<channels per group>"
    in_hw: tuple[int, ...]  # spatial dims (Conv), (rows,) for Gemm/MatMul, elements/channel
    batch: int
    dtype: str  # "fp32" | "fp16" | "int8"
    epilogue: tuple[str, ...] = field(default=())  # fused ops, e.g. ("Relu",) or ("Add", "Relu")

    # ------------------------------------------------------------------ validation
    def __post_init__(self) -> None:
        if self.op not in OPS:
            raise _error(f"block signature: op {self.op!r} is not one of {', '.join(OPS)}")
        if self.dtype not in DTYPE_BYTES:
            raise _error(f"block signature: dtype {self.dtype!r} is not one of {', '.join(DTYPES)}")
        kernel = _int_tuple(self.kernel, "kernel")
        nd = len(kernel)
        stride = _int_tuple(self.stride, "stride") or (1,) * nd
        dilation = _int_tuple(self.dilation, "dilation") or (1,) * nd
        pads = _int_tuple(self.pads, "pads") or (0,) * (2 * nd)
        if nd and len(pads) == nd:  # symmetric shorthand
            pads = pads + pads
        in_hw = _int_tuple(self.in_hw, "in_hw")
        if isinstance(self.epilogue, str):
            epilogue: tuple[str, ...] = (self.epilogue,) if self.epilogue else ()
        else:
            epilogue = tuple(str(e) for e in (self.epilogue or ()))
        if nd:
            if len(stride) != nd or len(dilation) != nd or len(pads) != 2 * nd:
                raise _error(
                    f"block signature: kernel {kernel} needs {nd} strides/dilations and "
                    f"{2 * nd} pads, got stride={stride} dilation={dilation} pads={pads}"
                )
            if self.op != "Pool" and len(in_hw) != nd:
                raise _error(f"block signature: kernel {kernel} needs {nd} input dims, got in_hw={in_hw}")
        elif self.op in SPATIAL_ANCHOR_OPS:
            raise _error(f"block signature: {self.op} needs a kernel")
        if any(v <= 0 for v in kernel + stride + dilation + in_hw) or any(p < 0 for p in pads):
            raise _error("block signature: kernel/stride/dilation/in_hw must be positive and pads >= 0")
        if not in_hw:
            raise _error("block signature: in_hw must not be empty")
        if isinstance(self.batch, bool) or int(self.batch) != self.batch or self.batch <= 0:
            raise _error(f"block signature: batch must be a positive int, got {self.batch!r}")
        groups = str(self.groups)
        if groups not in ("dense", "depthwise"):
            prefix, _, num = groups.partition(":")
            if prefix != "grouped" or not num.isdigit() or int(num) <= 0:
                raise _error(
                    f"block signature: groups {groups!r} is not 'dense', 'depthwise' or 'grouped:<n>'"
                )
            groups = f"grouped:{int(num)}"
        for name, value in (
            ("kernel", kernel), ("stride", stride), ("pads", pads), ("dilation", dilation),
            ("in_hw", in_hw), ("epilogue", epilogue), ("groups", groups), ("batch", int(self.batch)),
        ):
            object.__setattr__(self, name, value)
        if any(e == "" or any(c in e for c in ";=+") for e in epilogue):
            raise _error(f"block signature: epilogue op names must not contain ';', '=' or '+': {epilogue}")

    # ------------------------------------------------------------------ geometry
    @property
    def is_depthwise(self) -> bool:
        return self.groups == "depthwise"

    @property
    def channels_per_group(self) -> int | None:
        """Input channels each output channel reads: None for dense (= c_in), 1 for depthwise."""
        if self.groups == "dense":
            return None
        if self.groups == "depthwise":
            return 1
        return int(self.groups.split(":", 1)[1])

    def k_in(self, c_in: int) -> int:
        """Input channels per output channel (``c_in / groups``)."""
        cpg = self.channels_per_group
        return c_in if cpg is None else cpg

    def out_hw(self) -> tuple[int, ...]:
        """Output spatial dims (Conv, ConvTranspose, Pool) or ``in_hw`` for the rest."""
        nd = len(self.kernel)
        if self.op == "Pool" and not nd:
            return (1,) * len(self.in_hw)  # global pooling
        if self.op not in _SPATIAL_OPS or not nd or len(self.in_hw) != nd:
            return self.in_hw
        out = []
        for i in range(nd):
            size, k, s, d = self.in_hw[i], self.kernel[i], self.stride[i], self.dilation[i]
            pad = self.pads[i] + self.pads[nd + i]
            eff_k = d * (k - 1) + 1
            if self.op == "ConvTranspose":
                o = (size - 1) * s - pad + eff_k
            else:
                o = (size + pad - eff_k) // s + 1
            if o <= 0:
                raise _error(f"block signature {self.key()}: output dim {i} would be {o}")
            out.append(o)
        return tuple(out)

    def _checked_channels(self, c_in: int, c_out: int) -> tuple[int, int]:
        if c_in <= 0 or c_out <= 0:
            raise _error(f"block signature {self.key()}: channels must be positive, got c_in={c_in} c_out={c_out}")
        return int(c_in), int(c_out)

    def macs(self, c_in: int, c_out: int) -> float:
        """Multiply-accumulates (memory-bound ops: one op per output element or window tap)."""
        c_in, c_out = self._checked_channels(c_in, c_out)
        kprod = _prod(self.kernel)
        if self.op == "Conv":
            return float(self.batch * _prod(self.out_hw()) * c_out * self.k_in(c_in) * kprod)
        if self.op == "ConvTranspose":
            # every input pixel scatters k_in * c_out * kprod products
            return float(self.batch * _prod(self.in_hw) * c_out * self.k_in(c_in) * kprod)
        if self.op in MATRIX_ANCHOR_OPS:
            return float(self.batch * _prod(self.in_hw) * c_in * c_out)
        if self.op == "Pool":
            window = kprod if self.kernel else _prod(self.in_hw)
            return float(self.batch * _prod(self.out_hw()) * c_out * window)
        return float(self.batch * _prod(self.out_hw()) * c_out)

    def flops(self, c_in: int, c_out: int) -> float:
        """2 x MACs: grouped layers count c_in/groups inputs per output, depthwise one."""
        return 2.0 * self.macs(c_in, c_out)

    def bytes_moved(self, c_in: int, c_out: int, dtype_bytes: float | None = None) -> float:
        """Input + weights + output (+ a residual input when "Add" is fused), in bytes."""
        c_in, c_out = self._checked_channels(c_in, c_out)
        b = float(DTYPE_BYTES[self.dtype] if dtype_bytes is None else dtype_bytes)
        n_in = self.batch * c_in * _prod(self.in_hw)
        n_out = self.batch * c_out * _prod(self.out_hw())
        if self.op in SPATIAL_ANCHOR_OPS:
            n_w = c_out * self.k_in(c_in) * _prod(self.kernel)
        elif self.op in MATRIX_ANCHOR_OPS:
            n_w = c_in * c_out
        else:
            n_w = 0
        n_res = n_out if "Add" in self.epilogue else 0
        return b * float(n_in + n_w + n_out + n_res)

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, Any]:
        return {
            "op": self.op,
            "kernel": list(self.kernel),
            "stride": list(self.stride),
            "pads": list(self.pads),
            "dilation": list(self.dilation),
            "groups": self.groups,
            "in_hw": list(self.in_hw),
            "batch": self.batch,
            "dtype": self.dtype,
            "epilogue": list(self.epilogue),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BlockSignature:
        missing = [k for k in ("op", "groups", "in_hw", "batch", "dtype") if k not in data]
        if missing:
            raise _error(f"block signature: missing field(s) {', '.join(missing)} in {dict(data)!r}")
        unknown = set(data) - {
            "op", "kernel", "stride", "pads", "dilation", "groups", "in_hw", "batch", "dtype", "epilogue",
        }
        if unknown:
            raise _error(f"block signature: unknown field(s) {', '.join(sorted(unknown))}")
        return cls(
            op=str(data["op"]),
            kernel=tuple(data.get("kernel") or ()),
            stride=tuple(data.get("stride") or ()),
            pads=tuple(data.get("pads") or ()),
            dilation=tuple(data.get("dilation") or ()),
            groups=str(data["groups"]),
            in_hw=tuple(data["in_hw"]),
            batch=int(data["batch"]),
            dtype=str(data["dtype"]),
            epilogue=tuple(data.get("epilogue") or ()),
        )

    def key(self) -> str:
        """A stable one-line key, e.g. ``Conv;k=3x3;s=1x1;p=1x1x1x1;d=1x1;g=dense;in=14x14;b=1;t=fp16;e=Relu``."""

        def t(values: tuple[int, ...]) -> str:
            return "x".join(str(v) for v in values) if values else "-"

        parts = [
            self.op,
            f"k={t(self.kernel)}",
            f"s={t(self.stride)}",
            f"p={t(self.pads)}",
            f"d={t(self.dilation)}",
            f"g={self.groups}",
            f"in={t(self.in_hw)}",
            f"b={self.batch}",
            f"t={self.dtype}",
            f"e={'+'.join(self.epilogue) if self.epilogue else '-'}",
        ]
        return ";".join(parts)

    @classmethod
    def from_key(cls, key: str) -> BlockSignature:
        """Inverse of :meth:`key`."""
        op, *rest = str(key).split(";")
        fields: dict[str, str] = {}
        for part in rest:
            name, sep, value = part.partition("=")
            if not sep or name not in _KEY_FIELDS or name in fields:
                raise _error(f"block signature key {key!r}: bad part {part!r}")
            fields[name] = value
        if set(fields) != set(_KEY_FIELDS):
            raise _error(f"block signature key {key!r}: expected fields {', '.join(_KEY_FIELDS)}")

        def t(value: str) -> tuple[int, ...]:
            if value == "-":
                return ()
            try:
                return tuple(int(v) for v in value.split("x"))
            except ValueError:
                raise _error(f"block signature key {key!r}: {value!r} is not an int tuple") from None

        try:
            batch = int(fields["b"])
        except ValueError:
            raise _error(f"block signature key {key!r}: batch {fields['b']!r} is not an int") from None
        return cls(
            op=op,
            kernel=t(fields["k"]),
            stride=t(fields["s"]),
            pads=t(fields["p"]),
            dilation=t(fields["d"]),
            groups=fields["g"],
            in_hw=t(fields["in"]),
            batch=batch,
            dtype=fields["t"],
            epilogue=() if fields["e"] == "-" else tuple(fields["e"].split("+")),
        )

    def __str__(self) -> str:
        return self.key()
