"""Where a latency prediction goes wrong, block by block (ort-cpu, 1 thread).

    python tools/open_loop_blocks.py MODEL.onnx [--latency 0.5 | --random 0.6] [--profile PROFILE.json]

Makes a pruned model (``compile --latency L`` with the closed loop off, the default; or ``prune --criterion
random --ratio R`` seed 0, as tools/bench_fidelity.py's variants), times it paired against the dense model,
then runs both in context (onnxruntime's per-node profiler, two passes, as the profiler does) and prints,
per block, the tables' prediction next to the in-context time and the layout the block ran in (the
largest differences first), then the totals per op kind. ``--profile``: price with that stored profile
(e.g. one that bench_fidelity.py's ``--work`` left) instead of measuring into the user profile.
"""
from __future__ import annotations

import argparse
import collections
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    how = ap.add_mutually_exclusive_group()
    how.add_argument("--latency", type=float, default=0.5, help="compile to this share of dense (default)")
    how.add_argument("--random", type=float, help="a random variant at this ratio instead of a compile")
    ap.add_argument("--profile", help="a stored ort-cpu profile to price with (nothing measured)")
    ap.add_argument("--top", type=int, default=20)
    args = ap.parse_args()
    from halp_onnx import compile, prune
    from halp_onnx.api import inspect
    from halp_onnx.profiles import incontext as ic
    from halp_onnx.profiles.backends import get_backend
    from halp_onnx.profiles.blocks import model_blocks
    from halp_onnx.profiles.latency import latency_model, predict
    from halp_onnx.profiles.timing import paired_timing

    loaded, an = inspect(args.model)
    lm = latency_model(loaded, an, "ort-cpu", measure=args.profile is None, profile_path=args.profile).model
    blocks = model_blocks(loaded, an, precision=lm.target.precision, fusion=lm.target.fusion)
    if args.random is not None:
        res = prune(args.model, args.random, criterion="random", seed=0)
        label = f"random {args.random}"
    else:
        res = compile(args.model, target="ort-cpu", latency=args.latency, measure_result=False,
                      profile_path=args.profile)
        label = f"compile {args.latency}"
    kept = res.rewrite.kept
    widths = {g.id: g.size for g in an.prunable}
    for g in an.prunable:  # the pruned model's width per group, from its kept-channel mask
        m = an.channel_group == g.id
        widths[g.id] = len(np.unique(an.channel_index[m][kept[m]]))
    be = get_backend(lm.target, threads=1)
    pd, pp = predict(blocks, lm), predict(blocks, lm, an, kept)
    pt = paired_timing(be, loaded.model, res.model, rounds=9, budget_s=6.0)
    print(f"{label}: predicted ratio {pp.total_ms / pd.total_ms:.3f}, measured paired {pt.ratio:.3f} "
          f"(p10-p90 {pt.ratio_p10:.3f}-{pt.ratio_p90:.3f})")
    dense = {g.id: g.size for g in an.prunable}
    obs, rec = ic.observe(loaded, an, blocks, be, [dense, widths], runs=30, per_node_ms=lm.profile.incontext_node_ms,
                          passes=2)
    for r, name in zip(rec, ("dense", label)):
        print(f"  in context, {name}: profiled wall {r.get('wall_ms', 0):.3f} ms, kernels {r.get('kernel_ms', 0):.3f} ms")
    at = collections.defaultdict(list)
    for o in obs:
        at[(o.node, o.setting)].append(o)
    rows = []
    for bd, bp in zip(pd.blocks, pp.blocks):
        od, op = at.get((bd.node, 0), []), at.get((bp.node, 1), [])
        rows.append((bp.node, bp.op, (bd.c_in, bd.c_out), (bp.c_in, bp.c_out), bd.ms, sum(o.ms for o in od), bp.ms,
                     sum(o.ms for o in op), op[0].layout if op else "-"))
    sd, md, sp, mp = (sum(r[i] for r in rows) for i in (4, 5, 6, 7))
    print(f"blocks: dense predicted {sd:.3f} ms, in context {md:.3f}; pruned predicted {sp:.3f}, in context {mp:.3f}; "
          f"ratio predicted {sp / sd:.3f}, in context {mp / max(md, 1e-9):.3f}")
    for r in sorted(rows, key=lambda r: -abs(r[7] - r[6]))[:args.top]:
        print(f"  {r[0][-48:]:48s} {r[1]:11s} {str(r[2]):11s} -> {str(r[3]):11s} {r[8]:6s} dense {r[4]:.3f} / {r[5]:.3f}"
              f"  pruned {r[6]:.3f} / {r[7]:.3f}  (predicted / in context, ms)")
    kind: dict[str, list[float]] = collections.defaultdict(lambda: [0.0] * 4)
    for r in rows:
        for i in range(4):
            kind[r[1] + ("-removed" if r[3][1] == 0 else "")][i] += r[4 + i]
    for k, v in sorted(kind.items(), key=lambda kv: -kv[1][3]):
        print(f"  {k:20s} dense {v[0]:.3f} / {v[1]:.3f}  pruned {v[2]:.3f} / {v[3]:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
