"""Torch lowerings of pooling (MaxPool, AveragePool, LpPool, global pools) and of Resize / Upsample
(separable, exact ONNX coordinate semantics)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ._common import Builder, UnsupportedOp, _axis, _n_outputs, ints
from .conv import _resolve_pads, _torch_pad_arg


_MAX_POOL = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}
_AVG_POOL = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}


def _max_pool(node, attrs, version):
    if _n_outputs(node) > 1 and node.output[1]:
        raise UnsupportedOp("the Indices output")
    if attrs.get("storage_order", 0):
        raise UnsupportedOp("storage_order=1")
    kernel = list(attrs["kernel_shape"])
    nd = len(kernel)
    strides = list(attrs.get("strides", [1] * nd))
    dilations = list(attrs.get("dilations", [1] * nd))
    ceil_mode = bool(attrs.get("ceil_mode", 0))
    fn = _MAX_POOL.get(nd)
    if fn is None:
        raise UnsupportedOp(f"{nd}-d pooling")

    def run(ctx, x):
        pads = _resolve_pads(attrs, x, kernel, strides, dilations)
        padding = pads[:nd]
        if pads[:nd] != pads[nd:] or any(2 * p > k for p, k in zip(padding, kernel)):
            x = F.pad(x, _torch_pad_arg(pads), value=-math.inf if x.is_floating_point() else torch.iinfo(x.dtype).min)
            padding = [0] * nd
        return fn(x, kernel, strides, padding, dilations, ceil_mode)

    return run


def _avg_pool(node, attrs, version):
    kernel = list(attrs["kernel_shape"])
    nd = len(kernel)
    strides = list(attrs.get("strides", [1] * nd))
    dilations = list(attrs.get("dilations", [1] * nd))
    if any(d != 1 for d in dilations):
        raise UnsupportedOp("dilations != 1")
    ceil_mode = bool(attrs.get("ceil_mode", 0))
    count_include_pad = bool(attrs.get("count_include_pad", 0))
    fn = _AVG_POOL.get(nd)
    if fn is None:
        raise UnsupportedOp(f"{nd}-d pooling")

    def run(ctx, x):
        pads = _resolve_pads(attrs, x, kernel, strides, dilations)
        padding = pads[:nd]
        if pads[:nd] == pads[nd:] and all(2 * p <= k for p, k in zip(padding, kernel)):
            return fn(x, kernel, strides, padding, ceil_mode, count_include_pad)
        xp = F.pad(x, _torch_pad_arg(pads))
        out = fn(xp, kernel, strides, 0, ceil_mode, True)
        if count_include_pad:
            return out
        ones = F.pad(torch.ones((1, 1) + tuple(x.shape[2:]), dtype=x.dtype, device=x.device), _torch_pad_arg(pads))
        return out / fn(ones, kernel, strides, 0, ceil_mode, True)

    return run


def _lp_pool(node, attrs, version):
    kernel = list(attrs["kernel_shape"])
    nd = len(kernel)
    p = float(attrs.get("p", 2))
    strides = list(attrs.get("strides", [1] * nd))
    ceil_mode = bool(attrs.get("ceil_mode", 0))

    def run(ctx, x):
        pads = _resolve_pads(attrs, x, kernel, strides, [1] * nd)
        x = F.pad(x, _torch_pad_arg(pads))
        s = _AVG_POOL[nd](x.abs().pow(p), kernel, strides, 0, ceil_mode, True) * math.prod(kernel)
        return s.pow(1.0 / p)

    return run


def _global_avg_pool(node, attrs, version):
    return lambda ctx, x: x.mean(dim=tuple(range(2, x.dim())), keepdim=True)


def _global_max_pool(node, attrs, version):
    return lambda ctx, x: x.amax(dim=tuple(range(2, x.dim())), keepdim=True)


# --------------------------------------------------------------------------------------------
# Resize / Upsample (separable, exact ONNX coordinate semantics)


def _source_coords(out_size: int, in_size: int, scale: float, mode: str, device, roi=None):
    x = torch.arange(out_size, dtype=torch.float64, device=device)
    if mode == "half_pixel":
        return (x + 0.5) / scale - 0.5
    if mode == "pytorch_half_pixel":
        return (x + 0.5) / scale - 0.5 if out_size > 1 else torch.zeros_like(x)
    if mode == "align_corners":
        return x * ((in_size - 1) / (out_size - 1)) if out_size > 1 else torch.zeros_like(x)
    if mode == "asymmetric":
        return x / scale
    if mode == "tf_half_pixel_for_nn":
        return (x + 0.5) / scale
    if mode == "half_pixel_symmetric":
        adj = out_size / (scale * in_size)
        center = in_size / 2
        offset = center * (1 - adj)
        return offset + (x + 0.5) / scale - 0.5
    if mode == "tf_crop_and_resize":
        start, end = roi
        if out_size > 1:
            return start * (in_size - 1) + x * (end - start) * (in_size - 1) / (out_size - 1)
        return torch.full_like(x, 0.5 * (start + end) * (in_size - 1))
    raise RuntimeError(f"coordinate_transformation_mode={mode!r}")


def _nearest_index(coords, mode: str, in_size: int, scale: float):
    if mode == "simple":  # Resize-10 / Upsample: truncate when upsampling, ceil when downsampling
        mode = "ceil" if scale < 1 else "floor"
    if mode == "round_prefer_floor":
        idx = torch.where(coords == torch.floor(coords) + 0.5, torch.floor(coords), torch.round(coords))
    elif mode == "round_prefer_ceil":
        idx = torch.where(coords == torch.floor(coords) + 0.5, torch.ceil(coords), torch.round(coords))
    elif mode == "floor":
        idx = torch.floor(coords)
    else:
        idx = torch.ceil(coords)
    return idx.long().clamp(0, in_size - 1)


def _resize_axis(x, axis, out_size, scale, attrs, roi):
    in_size = x.shape[axis]
    mode = attrs["mode"]
    ctm = attrs["coordinate_transformation_mode"]
    coords = _source_coords(out_size, in_size, scale, ctm, x.device, roi)
    shape = [1] * x.dim()
    shape[axis] = out_size
    extrapolation = attrs.get("extrapolation_value", 0.0)
    outside = (coords < 0) | (coords > in_size - 1) if ctm == "tf_crop_and_resize" else None
    if mode == "nearest":
        y = torch.index_select(x, axis, _nearest_index(coords, attrs.get("nearest_mode", "round_prefer_floor"), in_size, scale))
    elif mode == "linear":
        coords = coords.clamp(0, in_size - 1)
        lo = torch.floor(coords).long().clamp(0, in_size - 1)
        hi = (lo + 1).clamp(max=in_size - 1)
        w = (coords - lo.double()).to(x.dtype).reshape(shape)
        y = torch.index_select(x, axis, lo) * (1 - w) + torch.index_select(x, axis, hi) * w
    else:  # cubic
        a = attrs.get("cubic_coeff_a", -0.75)
        exclude = bool(attrs.get("exclude_outside", 0))
        base = torch.floor(coords)
        t = coords - base
        taps, weights = [], []
        for off in (-1, 0, 1, 2):
            d = (t - off).abs()
            wgt = torch.where(d <= 1, ((a + 2) * d - (a + 3)) * d * d + 1,
                              torch.where(d < 2, ((a * d - 5 * a) * d + 8 * a) * d - 4 * a, torch.zeros_like(d)))
            pos = base.long() + off
            if exclude:
                wgt = torch.where((pos < 0) | (pos >= in_size), torch.zeros_like(wgt), wgt)
            taps.append(pos.clamp(0, in_size - 1))
            weights.append(wgt)
        if exclude:
            total = sum(weights)
            weights = [w_ / total for w_ in weights]
        y = sum(torch.index_select(x, axis, p) * w_.to(x.dtype).reshape(shape) for p, w_ in zip(taps, weights))
    if outside is not None:
        y = torch.where(outside.reshape(shape), torch.full_like(y, extrapolation), y)
    return y


def _resize_run(x, scales, sizes, attrs, roi):
    rank = x.dim()
    axes = list(attrs.get("axes") or range(rank))
    axes = [_axis(a, rank) for a in axes]
    if sizes is not None and len(sizes) == len(axes) and attrs.get("keep_aspect_ratio_policy", "stretch") != "stretch":
        policy = attrs["keep_aspect_ratio_policy"]
        ratios = [s / x.shape[a] for s, a in zip(sizes, axes)]
        r = min(ratios) if policy == "not_larger" else max(ratios)
        scales = [r] * len(axes)
        sizes = [int(math.floor(r * x.shape[a] + 0.5)) for a in axes]
    elif sizes is not None and len(sizes) == len(axes):
        scales = [s / x.shape[a] for s, a in zip(sizes, axes)]
    elif scales is not None and len(scales) == len(axes):
        sizes = [int(math.floor(x.shape[a] * s)) for a, s in zip(axes, scales)]
    else:
        raise RuntimeError("Resize needs scales or sizes")
    for i, a in enumerate(axes):
        if sizes[i] == x.shape[a] and scales[i] == 1.0 and attrs["coordinate_transformation_mode"] != "tf_crop_and_resize":
            continue
        r = None
        if roi is not None and len(roi) == 2 * len(axes):
            r = (roi[i], roi[i + len(axes)])
        elif roi is not None and len(roi) == 2 * rank:
            r = (roi[a], roi[a + rank])
        x = _resize_axis(x, a, sizes[i], scales[i], attrs, r)
    return x


def _resize_attrs(attrs, version):
    out = dict(attrs)
    out.setdefault("mode", "nearest")
    out.setdefault("coordinate_transformation_mode", "asymmetric" if version < 11 else "half_pixel")
    if version < 11:
        out["nearest_mode"] = "simple"
    if out["mode"] not in ("nearest", "linear", "cubic", "bilinear"):
        raise UnsupportedOp(f"mode={out['mode']!r}")
    if out["mode"] == "bilinear":
        out["mode"] = "linear"
    if out.get("antialias", 0):
        raise UnsupportedOp("antialias=1")
    return out


def _resize_v10(node, attrs, version):
    a = _resize_attrs(attrs, version)
    return lambda ctx, x, scales: _resize_run(x, [float(v) for v in scales.tolist()], None, a, None)


def _resize(node, attrs, version):
    a = _resize_attrs(attrs, version)

    def run(ctx, x, roi=None, scales=None, sizes=None):
        sc = [float(v) for v in scales.tolist()] if scales is not None and scales.numel() else None
        sz = ints(sizes) if sizes is not None and sizes.numel() else None
        r = [float(v) for v in roi.tolist()] if roi is not None and roi.numel() else None
        return _resize_run(x, sc, sz, a, r)

    return run


def _upsample(node, attrs, version):
    a = _resize_attrs(attrs, 10)
    attr_scales = attrs.get("scales")

    def run(ctx, x, scales=None):
        sc = [float(v) for v in scales.tolist()] if scales is not None else list(attr_scales)
        return _resize_run(x, sc, None, a, None)

    return run


LOWERINGS: dict[str, Builder] = {
    "MaxPool": _max_pool,
    "AveragePool": _avg_pool,
    "LpPool": _lp_pool,
    "GlobalAveragePool": _global_avg_pool,
    "GlobalMaxPool": _global_max_pool,
    "Resize@10": _resize_v10,
    "Resize@11": _resize,
    "Upsample": _upsample,
}
