#!/usr/bin/env bash
# Byte-identity check of the redesign (issue: one house): prune and compile outputs on the README's example
# (as main built it before the redesign: batch 1, kept in WORK) and two torchvision models, hashed.
#
#   bash tools/byte_identity_check.sh WORK OUT     # run with the halp-onnx on PATH; compare OUT's hashes
#
# WORK holds example.onnx, resnet18.onnx, mobilenet_v2.onnx (exported once, below, if absent).
set -euo pipefail
work="$1"; out="$2"; mkdir -p "$work" "$out"
if [ ! -f "$work/resnet18.onnx" ]; then
  python - "$work" <<'PY'
import sys, torch, torchvision
torch.manual_seed(0)
for name in ["resnet18", "mobilenet_v2"]:
    m = getattr(torchvision.models, name)(weights=None).eval()
    torch.onnx.export(m, torch.randn(1, 3, 224, 224), f"{sys.argv[1]}/{name}.onnx", dynamo=False, opset_version=17)
PY
fi
[ -f "$work/example.onnx" ] || halp-onnx example resnet --out "$work/example.onnx"
for m in example resnet18 mobilenet_v2; do
  halp-onnx prune "$work/$m.onnx" --ratio 0.3 -o "$out/$m.prune.onnx" > "$out/$m.prune.log" 2>&1
done
# batch 1 on a V100 is launch-bound: 0.95 is feasible for the tiny example, 0.7 for the torchvision models
halp-onnx compile "$work/example.onnx" --target trt-v100 --latency 0.95 --no-measure -o "$out/example.compile.onnx" \
  > "$out/example.compile.log" 2>&1
for m in resnet18 mobilenet_v2; do
  halp-onnx compile "$work/$m.onnx" --target trt-v100 --latency 0.7 --no-measure -o "$out/$m.compile.onnx" \
    > "$out/$m.compile.log" 2>&1
done
cd "$out" && sha256sum ./*.onnx
