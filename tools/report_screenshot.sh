#!/usr/bin/env bash
# Regenerate docs/report.png: compile a model with --html and screenshot the report in headless chromium.
#
#   tools/report_screenshot.sh            # torchvision resnet18 (random weights) on ort-cpu, latency 0.6
#   tools/report_screenshot.sh example    # the built-in example resnet on trt-v100 (analytic), latency 0.9
#
# Needs: halp-onnx installed (the repo's .venv is used when present), chromium (Debian: apt-get install
# chromium); resnet18 also needs torch + torchvision (bench/zoo.py exports it). The ort-cpu run reads a
# copy of the shipped profile (hw_profiles/ort-cpu.json), so it measures only what that profile lacks
# here, and never writes the shipped file. Environment: OUT (default docs/report.png), KEEP=1 keeps the
# work folder, CHROMIUM (default: chromium or chromium-browser on PATH).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MODE="${1:-resnet18}"
OUT="${OUT:-$ROOT/docs/report.png}"
if [[ -f "$ROOT/.venv/bin/activate" ]]; then . "$ROOT/.venv/bin/activate"; fi
CHROMIUM="${CHROMIUM:-$(command -v chromium || command -v chromium-browser || true)}"
[[ -n "$CHROMIUM" ]] || { echo "report_screenshot: no chromium on PATH (apt-get install chromium)" >&2; exit 2; }

WORK="$(mktemp -d "${TMPDIR:-/tmp}/halp-report.XXXXXX")"
[[ "${KEEP:-0}" == 1 ]] || trap 'rm -rf "$WORK"' EXIT
cd "$WORK"

case "$MODE" in
  example)
    halp-onnx example resnet --out ex.onnx
    halp-onnx compile ex.onnx --target trt-v100 --latency 0.9 --no-measure --html report.html -o out.onnx --quiet
    ;;
  resnet18)
    PYTHONPATH="$ROOT/bench${PYTHONPATH:+:$PYTHONPATH}" python -c \
      "import zoo, sys; zoo.export_torchvision('resnet18', sys.argv[1])" "$WORK"
    cp "$ROOT/hw_profiles/ort-cpu.json" profile.json
    halp-onnx compile resnet18.onnx --target ort-cpu --latency 0.6 --profile profile.json \
      --html report.html -o out.onnx --quiet
    ;;
  *)
    echo "report_screenshot: unknown mode '$MODE' (resnet18 or example)" >&2; exit 2 ;;
esac

mkdir -p "$(dirname "$OUT")"
"$CHROMIUM" --headless --no-sandbox --disable-gpu --hide-scrollbars --window-size=1400,2400 \
  --screenshot="$OUT" "file://$WORK/report.html" 2>/dev/null
echo "wrote $OUT ($(du -k "$OUT" | cut -f1) KB) from $MODE"
[[ "${KEEP:-0}" != 1 ]] || echo "work folder kept: $WORK"
