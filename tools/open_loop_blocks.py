"""Where the open-loop compile's prediction goes wrong, block by block (ort-cpu).

    python tools/open_loop_blocks.py MODEL.onnx [LATENCY]

Compiles MODEL to LATENCY (default 0.5) of dense on ort-cpu with the closed loop off, times the result
paired against the dense model, then runs the dense model and the chosen widths in context (onnxruntime's
per-node profiler, as the profiler does) and prints, per block, the table's prediction next to the
in-context time, the largest differences first, and the totals per op kind.
"""
import collections
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from halp_onnx.budget import LatencyBudget
from halp_onnx.pipeline import PIPELINE, PipelineConfig
from halp_onnx.profiles.latency import predict
from halp_onnx.profiles.backends import get_backend
from halp_onnx.profiles import incontext as ic
from halp_onnx.profiles.timing import paired_timing
path=sys.argv[1]
share=sys.argv[2] if len(sys.argv) > 2 else "0.5"
cfg=PipelineConfig(source=path, mode="budget", target="ort-cpu", latency=LatencyBudget.parse(share), measure_result=False, threads=1)
run=PIPELINE.run(cfg, until="rewrite")
L, an, tl, sel = run["loaded"], run["analysis"], run["latency"], run["selection"]
lm=tl.model; blocks=tl.blocks
be=get_backend(tl.target, threads=1)
widths={g.id:g.size for g in an.prunable}; widths.update(sel.widths or {})
pt=paired_timing(be, L.model, run["rewritten"].model, rounds=7, budget_s=4.2)
kept=run["rewritten"].kept
pd=predict(blocks, lm); pp=predict(blocks, lm, an, kept)
print("pred ratio", round(pp.total_ms/pd.total_ms,3), "measured", round(pt.ratio,3), "removed", sum(1 for w in widths.values() if w==0))
obs, rec = ic.observe(L, an, blocks, be, [{g.id:g.size for g in an.prunable}, widths], runs=30, per_node_ms=lm.profile.incontext_node_ms)
print([{k:round(v,4) if isinstance(v,float) else v for k,v in r.items() if k!='widths'} for r in rec])
by=collections.defaultdict(dict)
for o in obs: by[o.node][o.key]= by[o.node].get(o.key,[])+[o]
rows=[]
for bd, bp in zip(pd.blocks, pp.blocks):
    os_=[o for lst in by.get(bp.node,{}).values() for o in lst]
    m_d = [o.ms for o in os_ if (o.c_in,o.c_out)==(bd.c_in,bd.c_out)]
    m_p = [o.ms for o in os_ if (o.c_in,o.c_out)==(bp.c_in,bp.c_out)]
    rows.append((bp.node, bp.op, (bd.c_in,bd.c_out), (bp.c_in,bp.c_out), bd.ms, m_d[0] if m_d else None, bp.ms, m_p[-1] if m_p else None))
sp=sum(r[6] for r in rows); smp=sum(r[7] or 0 for r in rows); sd=sum(r[4] for r in rows); smd=sum(r[5] or 0 for r in rows)
print(f"dense pred {sd:.4f} meas {smd:.4f}; pruned pred {sp:.4f} meas {smp:.4f}")
diff=sorted(rows, key=lambda r: -abs((r[7] or 0)-r[6]))
for r in diff[:15]: print(r[0][-50:], r[1], r[2], r[3], f"pred {r[6]:.4f} meas {r[7] if r[7] is None else round(r[7],4)}")
kind=collections.Counter(); kindm=collections.Counter()
for r in rows:
    k=r[1]+("-removed" if r[3][0]==0 else "")
    kind[k]+=r[6]; kindm[k]+= (r[7] or 0)
for k in kind: print(k, round(kind[k],4), round(kindm[k],4))
