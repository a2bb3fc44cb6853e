"""Analytic latency model for GPU targets that are not present: every figure is *estimated*.

HALP needs, for each prunable layer on the target, latency as a function of
``(c_in, c_out)``.  Where the target GPU cannot be measured here (``trt-v100``,
``trt-a100``, ``trt-t4``, ``trt-orin``, ``trt-h100``) this module predicts it with a
roofline that knows how tensor-core kernels quantise work:

* **Implicit GEMM.**  A convolution is a GEMM with ``M = batch * out_h * out_w``,
  ``N = c_out`` and ``K = c_in / groups * kh * kw`` (ConvTranspose: ``M = batch * in_h *
  in_w``, ``N = c_out * kh * kw``, ``K = c_in / groups``; Gemm/MatMul: ``M`` rows).
* **Channel padding.**  Tensor-core formats (TensorRT's HWC8 / CHW16 / CHW32) pad channel
  counts up to the GPU's multiple for the precision (:meth:`GpuSpec.tc_multiple`), so
  padded counts drive both the maths and the bytes moved.
* **Tile quantisation.**  Each candidate CTA tile ``TM x TN`` (with ``TK`` = 64 bytes of
  K) pads ``M``, ``N`` and ``K`` up to whole tiles; small tiles run at lower efficiency
  (less operand reuse).  Split-K (1, 2, 4, 8 slices) is a candidate too; its fp32
  partial sums add memory traffic.
* **Wave quantisation.**  Tiles run in waves of ``sm_count`` (one CTA per SM); a partial
  last wave costs a whole wave.
* **Roofline.**  ``compute = padded flops / (peak * tile efficiency)`` with the padded
  flops counting whole waves, ``memory = bytes / (bandwidth * 0.8)``; a candidate costs
  ``max(compute, memory)``, the kernel the cheapest candidate (as a tactic search would
  pick), plus a fixed per-kernel launch overhead.
* **Memory-bound ops** (``Elementwise``, ``Pool``, ``Other`` and depthwise convolutions,
  which do not use tensor cores) cost ``bytes / bandwidth`` (with a CUDA-core compute
  floor) plus the launch overhead.

Every term is a non-decreasing function of ``ceil(c / multiple)``, so the estimate is a
staircase in ``c_in`` and ``c_out`` with steps of :func:`step_size` channels and never
decreases when channels are added.  It is meant to rank pruning choices, not to replace a
measurement: results are labelled ``"estimated"`` (:data:`LABEL`).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from halp_onnx.errors import HalpError
from halp_onnx.profiles.signature import DTYPE_BYTES, GEMM_OPS, BlockSignature

__all__ = [
    "GPU_SPECS",
    "LABEL",
    "Estimate",
    "GpuSpec",
    "estimate",
    "estimate_ms",
    "get_gpu_spec",
    "step_size",
]

STAGE = "analytic"
LABEL = "estimated"

# ----------------------------------------------------------------------------------------
# GPU specifications
# ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GpuSpec:
    """Datasheet figures of one GPU (dense, i.e. without 2:4 sparsity) plus model knobs.

    ``peak_tflops_fp16`` and ``peak_tops_int8`` are tensor-core rates.  ``peak_tflops_tf32``
    is the dense TF32 tensor-core rate, used for ``fp32`` because TensorRT enables TF32 by
    default; 0 means the GPU has none and fp32 runs on CUDA cores at ``peak_tflops_fp32``.
    ``tc_multiple_*`` is the channel multiple a tensor-core (or vectorised) kernel pads to.
    ``launch_overhead_us`` is a model assumption (kernel launch plus prologue/epilogue
    inside an engine), not a datasheet figure.  ``match`` holds substrings of the CUDA
    device name that identify this GPU.
    """

    name: str
    sm_count: int
    clock_ghz: float
    peak_tflops_fp32: float
    peak_tflops_fp16: float
    peak_tops_int8: float
    mem_bw_gbs: float
    l2_mb: float
    peak_tflops_tf32: float = 0.0
    tc_multiple_fp32: int = 4
    tc_multiple_fp16: int = 8
    tc_multiple_int8: int = 16
    launch_overhead_us: float = 3.0
    match: tuple[str, ...] = ()
    source: str = ""

    def peak_tflops(self, dtype: str) -> float:
        """Peak dense rate (TFLOP/s, or TOP/s for int8) GEMM-like kernels reach in ``dtype``."""
        if dtype == "fp16":
            return self.peak_tflops_fp16
        if dtype == "int8":
            return self.peak_tops_int8
        if dtype == "fp32":
            return self.peak_tflops_tf32 or self.peak_tflops_fp32
        raise HalpError(f"{self.name}: unknown dtype {dtype!r}", stage=STAGE)

    def tc_multiple(self, dtype: str) -> int:
        """Channel multiple the kernels pad to in ``dtype``."""
        try:
            return int({"fp32": self.tc_multiple_fp32, "fp16": self.tc_multiple_fp16,
                        "int8": self.tc_multiple_int8}[dtype])
        except KeyError:
            raise HalpError(f"{self.name}: unknown dtype {dtype!r}", stage=STAGE) from None

    def matches(self, device_name: str) -> bool:
        """Whether a CUDA device name (``torch.cuda.get_device_name``) is this GPU."""
        low = device_name.lower()
        return any(m.lower() in low for m in self.match)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["match"] = list(self.match)
        return d


# Sources (public datasheets / whitepapers; dense rates, i.e. sparsity figures halved):
#  V100 SXM2 16GB: NVIDIA Tesla V100 datasheet and Volta (GV100) whitepaper: 80 SMs,
#    1530 MHz boost, 15.7 TFLOPS FP32, 125 TFLOPS tensor (FP16), 900 GB/s HBM2, 6 MB L2.
#    Volta has no INT8 tensor cores: INT8 is DP4A at 4x the FP32 rate (62.8 TOPS, derived),
#    packed 4 channels at a time.  No TF32.
#  A100 SXM4 40GB: NVIDIA A100 datasheet (nvidia-a100-datasheet-us-nvidia-1758950-r4) and
#    Ampere (GA100) whitepaper: 108 SMs, 1410 MHz boost, 19.5 TFLOPS FP32, 156 TF32,
#    312 FP16, 624 INT8 TOPS, 1555 GB/s HBM2, 40 MB L2.
#  T4: NVIDIA T4 datasheet / Turing whitepaper: 40 SMs, 1590 MHz boost, 8.1 TFLOPS FP32,
#    65 FP16, 130 INT8 TOPS, 320 GB/s GDDR6, 4 MB L2.  No TF32.
#  Jetson AGX Orin 64GB: Jetson AGX Orin Series Technical Brief v1.2 and module data sheet:
#    16 SMs (2048 CUDA cores, 64 tensor cores), 1.3 GHz GPU max, 5.3 TFLOPS FP32,
#    170 sparse INT8 TOPS (GPU) -> 85 dense; FP16 dense = half the INT8 rate = 42.5
#    (derived; Ampere tensor cores run FP16 at half the INT8 rate), 204.8 GB/s LPDDR5
#    (256-bit, 6400 MT/s), 4 MB L2.  TF32 rate not published: fp32 uses CUDA cores.
#  H100 SXM5 80GB: NVIDIA H100 datasheet and Hopper whitepaper: 132 SMs, 1830 MHz (the
#    clock the tensor rates are quoted at), 67 (66.9) TFLOPS FP32, 494.7 TF32,
#    989.4 FP16, 1978.9 INT8 TOPS (dense), 3350 GB/s HBM3, 50 MB L2.
GPU_SPECS: dict[str, GpuSpec] = {
    "v100": GpuSpec(
        name="NVIDIA V100 SXM2 16GB", sm_count=80, clock_ghz=1.53,
        peak_tflops_fp32=15.7, peak_tflops_fp16=125.0, peak_tops_int8=62.8,
        mem_bw_gbs=900.0, l2_mb=6.0, peak_tflops_tf32=0.0,
        tc_multiple_int8=4, launch_overhead_us=3.0, match=("V100",),
        source="NVIDIA Tesla V100 datasheet; Volta whitepaper (INT8 = DP4A, 4x FP32, derived)",
    ),
    "a100": GpuSpec(
        name="NVIDIA A100 SXM4 40GB", sm_count=108, clock_ghz=1.41,
        peak_tflops_fp32=19.5, peak_tflops_fp16=312.0, peak_tops_int8=624.0,
        mem_bw_gbs=1555.0, l2_mb=40.0, peak_tflops_tf32=156.0,
        launch_overhead_us=2.5, match=("A100",),
        source="NVIDIA A100 datasheet; Ampere GA100 whitepaper",
    ),
    "t4": GpuSpec(
        name="NVIDIA T4", sm_count=40, clock_ghz=1.59,
        peak_tflops_fp32=8.1, peak_tflops_fp16=65.0, peak_tops_int8=130.0,
        mem_bw_gbs=320.0, l2_mb=4.0, peak_tflops_tf32=0.0,
        launch_overhead_us=3.0, match=("T4",),
        source="NVIDIA T4 datasheet; Turing whitepaper",
    ),
    "orin": GpuSpec(
        name="NVIDIA Jetson AGX Orin 64GB", sm_count=16, clock_ghz=1.3,
        peak_tflops_fp32=5.3, peak_tflops_fp16=42.5, peak_tops_int8=85.0,
        mem_bw_gbs=204.8, l2_mb=4.0, peak_tflops_tf32=0.0,
        launch_overhead_us=5.0, match=("Orin",),
        source="Jetson AGX Orin Series Technical Brief v1.2 and data sheet "
               "(dense = sparse / 2; FP16 = INT8 / 2, derived)",
    ),
    "h100": GpuSpec(
        name="NVIDIA H100 SXM5 80GB", sm_count=132, clock_ghz=1.83,
        peak_tflops_fp32=66.9, peak_tflops_fp16=989.4, peak_tops_int8=1978.9,
        mem_bw_gbs=3350.0, l2_mb=50.0, peak_tflops_tf32=494.7,
        launch_overhead_us=2.0, match=("H100",),
        source="NVIDIA H100 datasheet; Hopper whitepaper (dense = sparse / 2)",
    ),
}


def get_gpu_spec(name: str | GpuSpec) -> GpuSpec:
    """A :class:`GpuSpec` by key (``"a100"``) or the spec itself."""
    if isinstance(name, GpuSpec):
        return name
    key = str(name).strip().lower()
    if key in GPU_SPECS:
        return GPU_SPECS[key]
    raise HalpError(f"unknown GPU {name!r}; known: {', '.join(GPU_SPECS)}", stage=STAGE)


# ----------------------------------------------------------------------------------------
# Model constants (assumptions, shared by all GPUs)
# ----------------------------------------------------------------------------------------

# CTA tiles (TM, TN) a tactic search chooses from, with the fraction of peak each sustains.
TILES: tuple[tuple[int, int, float], ...] = (
    (256, 128, 0.80),
    (128, 256, 0.80),
    (128, 128, 0.75),
    (128, 64, 0.65),
    (64, 128, 0.65),
    (64, 64, 0.50),
    (64, 32, 0.40),
    (32, 64, 0.40),
)
SPLIT_K: tuple[int, ...] = (1, 2, 4, 8)
TILE_K_BYTES = 64  # K extent of one main-loop step: 32 fp16 / 64 int8 / 16 fp32 elements
PROLOGUE_K_STEPS = 2  # pipeline fill + epilogue of a tile, in K steps
MEM_EFFICIENCY = 0.8  # fraction of peak DRAM bandwidth a streaming kernel sustains
CUDA_CORE_EFFICIENCY = 0.5  # depthwise / elementwise compute floor on CUDA cores


def _ceil_to(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


@dataclass(frozen=True)
class Estimate:
    """One analytic estimate with its parts (times in ms)."""

    ms: float
    compute_ms: float
    memory_ms: float
    launch_ms: float
    bound: str  # "compute" | "memory"
    c_in_padded: int
    c_out_padded: int
    tile: tuple[int, int, int] | None  # (TM, TN, TK) for GEMM-like ops
    split_k: int
    waves: int
    gpu: str
    label: str = LABEL

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["tile"] = list(self.tile) if self.tile else None
        return d


def _gemm_shape(sig: BlockSignature, cin_p: int, cout_p: int, mult: int) -> tuple[int, int, int]:
    """(M, N, K) of the implicit GEMM with padded channel counts."""
    kprod = math.prod(sig.kernel) if sig.kernel else 1
    cpg = sig.channels_per_group
    k_in = cin_p if cpg is None else _ceil_to(cpg, mult)
    if sig.op == "Conv":
        return sig.batch * math.prod(sig.out_hw()), cout_p, k_in * kprod
    if sig.op == "ConvTranspose":
        return sig.batch * math.prod(sig.in_hw), cout_p * kprod, k_in
    return sig.batch * math.prod(sig.in_hw), cout_p, k_in  # Gemm / MatMul


def estimate(sig: BlockSignature, c_in: int, c_out: int, spec: GpuSpec | str) -> Estimate:
    """The analytic latency of one layer, with its breakdown.  See the module docstring."""
    spec = get_gpu_spec(spec)
    if c_in <= 0 or c_out <= 0:
        raise HalpError(f"{sig.key()}: channels must be positive, got c_in={c_in} c_out={c_out}", stage=STAGE)
    dtype = sig.dtype
    b = DTYPE_BYTES[dtype]
    mult = spec.tc_multiple(dtype)
    cin_p, cout_p = _ceil_to(int(c_in), mult), _ceil_to(int(c_out), mult)
    bw = spec.mem_bw_gbs * 1e9 * MEM_EFFICIENCY  # bytes/s
    launch_s = spec.launch_overhead_us * 1e-6
    base_bytes = sig.bytes_moved(cin_p, cout_p, b)

    if sig.op not in GEMM_OPS or sig.is_depthwise:
        memory_s = base_bytes / bw
        compute_s = sig.flops(cin_p, cout_p) / (spec.peak_tflops_fp32 * 1e12 * CUDA_CORE_EFFICIENCY)
        total = max(memory_s, compute_s) + launch_s
        return Estimate(
            ms=total * 1e3, compute_ms=compute_s * 1e3, memory_ms=memory_s * 1e3,
            launch_ms=launch_s * 1e3, bound="memory" if memory_s >= compute_s else "compute",
            c_in_padded=cin_p, c_out_padded=cout_p, tile=None, split_k=1, waves=1, gpu=spec.name,
        )

    m, n, k = _gemm_shape(sig, cin_p, cout_p, mult)
    tk = max(1, TILE_K_BYTES // b)
    k_pad = _ceil_to(k, tk)
    per_sm = spec.peak_tflops(dtype) * 1e12 / spec.sm_count  # FLOP/s of one SM
    best: tuple[float, float, float, tuple[int, int, int], int, int] | None = None
    # Every candidate is considered for every shape: each candidate's cost is monotone in
    # the channel counts, so their minimum is too.
    for tm, tn, eff in TILES:
        tiles_mn = _cdiv(m, tm) * _cdiv(n, tn)
        for split in SPLIT_K:
            k_slice = _ceil_to(_cdiv(k_pad, split), tk)
            waves = _cdiv(tiles_mn * split, spec.sm_count)
            tile_flops = 2.0 * tm * tn * (k_slice + PROLOGUE_K_STEPS * tk)
            compute_s = waves * tile_flops / (per_sm * eff)
            partial_bytes = 2.0 * split * m * n * 4 if split > 1 else 0.0  # fp32 partials, write + read
            memory_s = (base_bytes + partial_bytes) / bw
            cost = max(compute_s, memory_s)
            if best is None or cost < best[0]:
                best = (cost, compute_s, memory_s, (tm, tn, tk), split, waves)
    assert best is not None
    cost, compute_s, memory_s, tile, split, waves = best
    total = cost + launch_s
    return Estimate(
        ms=total * 1e3, compute_ms=compute_s * 1e3, memory_ms=memory_s * 1e3, launch_ms=launch_s * 1e3,
        bound="compute" if compute_s >= memory_s else "memory", c_in_padded=cin_p, c_out_padded=cout_p,
        tile=tile, split_k=split, waves=waves, gpu=spec.name,
    )


def estimate_ms(sig: BlockSignature, c_in: int, c_out: int, spec: GpuSpec | str) -> float:
    """Estimated latency (ms) of one layer with ``c_in`` inputs and ``c_out`` outputs on ``spec``."""
    return estimate(sig, c_in, c_out, spec).ms


def step_size(sig: BlockSignature, spec: GpuSpec | str) -> int:
    """Channel step of the staircase: the estimate is flat within ``(k*step, (k+1)*step]``.

    Used as HALP's neuron-group size for this layer on this target.
    """
    return get_gpu_spec(spec).tc_multiple(sig.dtype)
