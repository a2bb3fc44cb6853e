"""Export a zoo of transformers (random weights, built from configs: no download) and report what
halp-onnx prunes in each.

    python tools/zoo_transformers.py [--out DIR] [--models vit_tiny,bert] [--exporter torchscript|dynamo]
                                     [--no-compile] [--force]

Per model: parameters, the share of parameters in prunable groups, attention head groups (groups x
heads), the groups still frozen and why, ``prune 0.3`` (verified, max relative error, parameters
kept), and ``compile --target trt-v100 --latency 0.5 --no-measure`` (feasible, predicted latency over
dense, verified). Needs torch, torchvision, timm and transformers (not halp-onnx dependencies).
Weights are random, every parameter jittered so that equal constants (LayerNorm's ones, zero biases)
stay distinct and the equivalence checks have teeth; token-id inputs are also checked on random
tokens (the verifier feeds zeros to integer inputs).
"""
from __future__ import annotations

import argparse
import re
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.zoo import export_torch_module, redraw_degenerate_weights  # noqa: E402


def _timm(name: str, **kw) -> Callable[[], tuple[Any, Any]]:
    def build():
        import timm
        import torch

        model = timm.create_model(name, pretrained=False, **kw)
        return model, torch.randn(1, *model.default_cfg["input_size"])
    return build


def _bert() -> tuple[Any, Any]:
    """bert-tiny's shape (2 layers, width 128, 2 heads, MLP 512) with its vocabulary, sequence 128,
    the pooled output through a 2-way classifier."""
    import torch
    import transformers

    cfg = transformers.BertConfig(vocab_size=30522, hidden_size=128, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=512, max_position_embeddings=512)

    class Classifier(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.bert = transformers.BertModel(cfg)
            self.head = torch.nn.Linear(cfg.hidden_size, 2)

        def forward(self, ids):
            return self.head(self.bert(input_ids=ids).pooler_output)

    return Classifier(), torch.randint(0, cfg.vocab_size, (1, 128))


def _hf_vit() -> tuple[Any, Any]:
    """Hugging Face ViT (ViT-Ti's shape: width 192, 12 layers, 3 heads) from its config."""
    import torch
    import transformers

    cfg = transformers.ViTConfig(hidden_size=192, num_hidden_layers=12, num_attention_heads=3,
                                 intermediate_size=768, num_labels=1000)

    class Classifier(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.vit = transformers.ViTForImageClassification(cfg)

        def forward(self, pixels):
            return self.vit(pixel_values=pixels).logits

    return Classifier(), torch.randn(1, 3, 224, 224)


def _vit_b_16() -> tuple[Any, Any]:
    import torch
    import torchvision

    return torchvision.models.vit_b_16(weights=None), torch.randn(1, 3, 224, 224)


# name -> (builder, token vocabulary for integer inputs or 0)
ZOO: dict[str, tuple[Callable[[], tuple[Any, Any]], int]] = {
    "vit_tiny": (_timm("vit_tiny_patch16_224"), 0),
    "deit_tiny": (_timm("deit_tiny_patch16_224"), 0),
    "swin_tiny": (_timm("swin_tiny_patch4_window7_224"), 0),
    "convnext_atto": (_timm("convnext_atto"), 0),
    "convnextv2_atto": (_timm("convnextv2_atto"), 0),
    "mobilevit_xxs": (_timm("mobilevit_xxs"), 0),
    "bit_r50x1": (_timm("resnetv2_50x1_bit"), 0),
    "bert_tiny": (_bert, 30522),
    "hf_vit_tiny": (_hf_vit, 0),
    "vit_b_16": (_vit_b_16, 0),
}
DEFAULT = tuple(ZOO)


def _jitter(module, seed: int = 0) -> None:
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.05)


def export(name: str, out_dir: Path, exporter: str, force: bool = False) -> Path:
    import torch

    path = out_dir / f"{name}_{exporter}.onnx"
    if path.exists() and not force:
        return path
    torch.manual_seed(0)
    model, example = ZOO[name][0]()
    model.eval()
    redraw_degenerate_weights(model)
    _jitter(model)
    export_torch_module(model, example, path, exporter)
    return path


def _token_check(result, vocab: int, trials: int = 3) -> float:
    """Max relative error of the pruned model against the masked reference on random token ids."""
    from halp_onnx.passes.verify import masked_reference, session

    reference = session(masked_reference(result.loaded, result.analysis, result.rewrite.kept))
    pruned = session(result.model)
    worst = 0.0
    for seed in range(trials):
        feed = {}
        for vi in reference.get_inputs():
            shape = [d if isinstance(d, int) else 1 for d in vi.shape]
            feed[vi.name] = np.random.default_rng(seed).integers(0, vocab, shape).astype(np.int64)
        want, got = reference.run(None, feed)[0], pruned.run(None, feed)[0]
        worst = max(worst, float(np.abs(want - got).max() / max(np.abs(want).max(), 1e-30)))
    return worst


def _head_groups(loaded, analysis) -> str:
    """Groups carried by the attention MatMuls (two activations): ``count x heads`` (prunable, frozen)."""
    seen: dict[int, bool] = {}
    for node in loaded.model.graph.node:
        if node.op_type == "MatMul" and not any(i in loaded.constants for i in node.input):
            ids = analysis.channels_of(node.output[0])
            for g in set(ids[:, 0].tolist()) if ids is not None else ():
                if g >= 0:
                    seen[g] = analysis.groups[g].prunable
    sizes = Counter((analysis.groups[g].size, ok) for g, ok in seen.items())
    return ", ".join(f"{n}x{h}{'' if ok else ' frozen'}" for (h, ok), n in sorted(sizes.items())) or "-"


def report(name: str, path: Path, compile_too: bool = True) -> dict[str, Any]:
    from halp_onnx import HalpError, prune

    row: dict[str, Any] = {"model": name}
    t0 = time.perf_counter()
    try:
        result = prune(path, 0.3)
    except HalpError as err:
        row["prune"] = f"failed: {err}"
        return row
    analysis, check = result.analysis, result.verification
    row["params"] = analysis.total_params
    row["share"] = analysis.prunable_params / max(analysis.total_params, 1)
    row["heads"] = _head_groups(result.loaded, analysis)
    frozen = Counter(re.sub(r"'[^']*'", "…", g.reasons[0]) for g in analysis.groups if not g.prunable and g.reasons)
    row["frozen"] = "; ".join(f"{n} group(s): {r}" for r, n in frozen.most_common(3))
    error = check.max_rel_error if check is not None else float("nan")
    vocab = ZOO.get(name, (None, 0))[1]
    if vocab:
        error = max(error, _token_check(result, vocab))
    passed = check is not None and check.passed and error <= check.tolerance
    row["prune"] = (f"{'verified' if passed else 'MISMATCH'} {error:.1e}, params "
                    f"{result.rewrite.params[1] / result.rewrite.params[0]:.2f}x")
    row["prune_s"] = time.perf_counter() - t0
    if compile_too:
        t0 = time.perf_counter()
        row["compile"] = _compile(path, allow_removal=True)
        if not row["compile"].startswith("feasible"):
            row["compile"] += "; --no-removal: " + _compile(path, allow_removal=False)
        row["compile_s"] = time.perf_counter() - t0
    return row


def _compile(path: Path, allow_removal: bool) -> str:
    """``compile --target trt-v100 --latency 0.5 --no-measure``, in one line."""
    from halp_onnx import HalpError, compile

    try:
        c = compile(path, target="trt-v100", latency=0.5, measure=False, allow_removal=allow_removal)
    except HalpError as err:
        text = str(err)
        if "smallest achievable" in text:
            return "infeasible, smallest " + text.split("(")[-1].split(")")[0]
        return "refused: " + text.rsplit("refused: ", 1)[-1].split(";")[0][:120]
    if c.verification is None:
        return f"feasible {c.predicted_ms / c.dense_predicted_ms:.2f}x dense, not verified"
    ok = "verified" if c.verification.passed else "MISMATCH"
    return f"feasible {c.predicted_ms / c.dense_predicted_ms:.2f}x dense, {ok} {c.verification.max_rel_error:.1e}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("zoo_transformers"))
    ap.add_argument("--models", default=",".join(DEFAULT), help=f"comma-separated, of: {', '.join(ZOO)}")
    ap.add_argument("--exporter", choices=("torchscript", "dynamo"), default="torchscript")
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--force", action="store_true", help="export again over existing files")
    ap.add_argument("--md", type=Path, help="also append the table, with the command that made it, to this file")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        if name not in ZOO:
            ap.error(f"unknown model {name!r}")
        try:
            path = export(name, args.out, args.exporter, args.force)
        except Exception as err:  # an exporter that cannot handle the model
            rows.append({"model": name, "prune": f"export failed: {type(err).__name__}: {str(err)[:100]}"})
            continue
        row = report(name, path, compile_too=not args.no_compile)
        rows.append(row)
        print(f"{name}: {row}", file=sys.stderr, flush=True)
    cols = ["model", "params", "share", "heads", "prune", "compile", "frozen"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in rows:
        cells = []
        for c in cols:
            v = row.get(c, "")
            cells.append(f"{v / 1e6:.1f}M" if c == "params" and v != "" else
                         f"{100 * v:.1f}%" if c == "share" and v != "" else str(v))
        lines.append("| " + " | ".join(cells) + " |")
    print("\n".join(lines))
    if args.md:
        feasible = sum(1 for r in rows if str(r.get("compile", "")).startswith("feasible") and "verified" in
                       str(r.get("compile", "")))
        verified = sum(1 for r in rows if str(r.get("prune", "")).startswith("verified"))
        cmd = "python tools/zoo_transformers.py " + " ".join(argv if argv is not None else sys.argv[1:])
        with open(args.md, "a") as fh:
            fh.write(f"\n## {args.exporter} exports\n\nMade by `{cmd}`. prune 0.3 verified {verified}/{len(rows)}; "
                     f"compile trt-v100 0.5 feasible and verified {feasible}/{len(rows)}.\n\n" + "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
