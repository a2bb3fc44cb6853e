"""Torch lowerings of convolutions (Conv, ConvTranspose) and the ONNX pads helpers shared with
pooling and Pad."""
from __future__ import annotations

import torch.nn.functional as F

from ._common import Builder, UnsupportedOp


def _same_pads(in_sizes, kernel, strides, dilations, mode: str) -> list[int]:
    """ONNX ``auto_pad`` SAME_UPPER/SAME_LOWER pads in ONNX order (begins then ends)."""
    begins, ends = [], []
    for n, k, s, d in zip(in_sizes, kernel, strides, dilations):
        out = -(-n // s)
        total = max(0, (out - 1) * s + (k - 1) * d + 1 - n)
        small = total // 2
        if mode == "SAME_UPPER":
            begins.append(small)
            ends.append(total - small)
        else:
            begins.append(total - small)
            ends.append(small)
    return begins + ends


def _torch_pad_arg(pads: list[int]) -> list[int]:
    """ONNX pads (x1_begin, x2_begin, ..., x1_end, x2_end) of the trailing dims -> F.pad order."""
    n = len(pads) // 2
    out: list[int] = []
    for i in reversed(range(n)):
        out += [pads[i], pads[i + n]]
    return out


def _resolve_pads(attrs, x, kernel, strides, dilations) -> list[int]:
    nd = len(kernel)
    auto_pad = attrs.get("auto_pad", "NOTSET")
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        return _same_pads(list(x.shape[2:]), kernel, strides, dilations, auto_pad)
    if auto_pad == "VALID":
        return [0] * (2 * nd)
    return list(attrs.get("pads", [0] * (2 * nd)))


_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CONV_T = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


def _conv(node, attrs, version):
    group = attrs.get("group", 1)
    auto_pad = attrs.get("auto_pad", "NOTSET")
    if auto_pad not in ("NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID"):
        raise UnsupportedOp(f"auto_pad={auto_pad!r}")

    def run(ctx, x, w, b=None):
        nd = w.dim() - 2
        if nd not in _CONV:
            raise RuntimeError(f"Conv with {nd} spatial dims")
        kernel = list(attrs.get("kernel_shape", w.shape[2:]))
        strides = list(attrs.get("strides", [1] * nd))
        dilations = list(attrs.get("dilations", [1] * nd))
        pads = _resolve_pads(attrs, x, kernel, strides, dilations)
        if pads[:nd] == pads[nd:]:
            padding = pads[:nd]
        else:
            x = F.pad(x, _torch_pad_arg(pads))
            padding = [0] * nd
        return _CONV[nd](x, w, b, strides, padding, dilations, group)

    return run


def _conv_transpose(node, attrs, version):
    group = attrs.get("group", 1)
    auto_pad = attrs.get("auto_pad", "NOTSET")
    if auto_pad not in ("NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID"):
        raise UnsupportedOp(f"auto_pad={auto_pad!r}")

    def run(ctx, x, w, b=None):
        nd = w.dim() - 2
        kernel = list(attrs.get("kernel_shape", w.shape[2:]))
        strides = list(attrs.get("strides", [1] * nd))
        dilations = list(attrs.get("dilations", [1] * nd))
        out_pad = list(attrs.get("output_padding", [0] * nd))
        in_sizes = list(x.shape[2:])
        full = [s * (n - 1) + op + (k - 1) * d + 1
                for n, k, s, d, op in zip(in_sizes, kernel, strides, dilations, out_pad)]
        output_shape = attrs.get("output_shape")
        if output_shape is not None:
            output_shape = list(output_shape)[-nd:]
        elif auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            output_shape = [n * s for n, s in zip(in_sizes, strides)]
        if output_shape is not None:
            begins, ends = [], []
            for f, o in zip(full, output_shape):
                total = f - o
                if auto_pad == "SAME_UPPER":
                    begins.append(total // 2)
                    ends.append(total - total // 2)
                else:
                    begins.append(total - total // 2)
                    ends.append(total // 2)
            pads = begins + ends
        elif auto_pad == "VALID":
            pads = [0] * (2 * nd)
        else:
            pads = list(attrs.get("pads", [0] * (2 * nd)))
        if pads[:nd] == pads[nd:] and all(op < max(s, d) for op, s, d in zip(out_pad, strides, dilations)) \
                and all(p >= 0 for p in pads):
            return _CONV_T[nd](x, w, b, strides, pads[:nd], out_pad, group, dilations)
        y = _CONV_T[nd](x, w, None, strides, 0, 0, group, dilations)
        # append output_padding, then crop (or zero-extend) pads begin/end
        crop = [-p for p in pads[:nd]] + [op - p for op, p in zip(out_pad, pads[nd:])]
        y = F.pad(y, _torch_pad_arg(crop))
        if b is not None:
            y = y + b.reshape([1, -1] + [1] * nd)
        return y

    return run


LOWERINGS: dict[str, Builder] = {
    "Conv": _conv,
    "ConvTranspose": _conv_transpose,
}
