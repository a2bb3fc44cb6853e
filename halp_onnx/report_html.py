"""A self-contained HTML report of a compile: one file, inline CSS and hand-written inline SVG charts.

No JavaScript, no network, no plotting library: the page opens anywhere, offline. Every piece of text
that comes from the user or the model (paths, node names, warnings, the command line) is HTML-escaped.
:func:`tradeoff_curve` (called by :func:`halp_onnx.compiler.compile_result`) re-solves the knapsack over a
range of budgets for the trade-off chart.
"""
from __future__ import annotations

import html
import math
import platform
import shlex
import sys
from typing import Any, Sequence

import numpy as np

from .errors import sanitize
from .ops.table import ANCHOR_OPS

TRADEOFF_POINTS = 15
DENSE, KEPT, BUDGET, GRID, INK, MUTED = "#b8c7e0", "#2f62b0", "#d9822b", "#e6e8ec", "#1f2430", "#6b7280"


# ---------------------------------------------------------------------------------------- trade-off
def tradeoff_curve(cfg, plan, orders: dict, values: dict, points: int = TRADEOFF_POINTS) -> tuple[dict, ...]:
    """The knapsack re-solved (``pipeline.stages.solve_budget``) at ``points`` budgets from the smallest
    achievable latency to dense, plus the run's own budget: per budget the kept importance (the knapsack
    objective, also as a share of the dense model's), the predicted latency and the kept channels.

    A solution that fits a smaller budget fits every larger one, so where a re-solve finds less than the
    previous budget's answer that answer stands: the kept importance never falls as the budget grows."""
    from .passes.latency_cost import total_latency
    from .pipeline.stages import solve_budget

    if not plan.cost.choices or not orders or not values:
        return ()
    cm = plan.cost.with_orders(orders)  # as solve_budget prices the widths
    lo, hi = float(plan.min_ms), float(plan.dense_ms)
    budgets = sorted({*(np.linspace(lo, hi, points).tolist() if hi > lo else [hi]), float(plan.budget.ms)})
    index = {g: {w: j for j, w in enumerate(ch.widths)} for g, ch in cm.choices.items()}
    dense_value = float(sum(values[g][index[g][ch.widths[-1]]] for g, ch in cm.choices.items())) or 1.0
    out: list[dict] = []
    best: tuple[float, float, dict] | None = None
    for b in budgets:
        widths = solve_budget(cfg, plan, orders, values, b).widths or dict(plan.dense)
        value = float(sum(values[g][index[g][w]] for g, w in widths.items() if g in index))
        pred = float(total_latency(cm, widths, plan.block_ms, plan.overhead_ms))
        if best is not None and best[0] >= value and best[1] <= b * (1 + 1e-9):
            value, pred, widths = best
        best = (value, pred, widths)
        out.append({"budget_ms": b, "predicted_ms": pred, "importance": value,
                    "importance_share": value / dense_value, "kept_channels": int(sum(widths.values())),
                    "requested": math.isclose(b, plan.budget.ms, rel_tol=1e-12)})
    return tuple(out)


# ---------------------------------------------------------------------------------------- helpers
def _e(x: object) -> str:
    return html.escape(str(x), quote=True)


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{x:.4g} ms"


def _ticks(lo: float, hi: float, n: int = 5, integer: bool = False) -> list[float]:
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return [lo]
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in ((1, 2, 5, 10) if integer else (1, 2, 2.5, 5, 10)) if m * mag >= raw)
    step = max(step, 1.0) if integer else step
    first = math.ceil(lo / step - 1e-9) * step
    return [first + i * step for i in range(int((hi - first) / step + 1e-9) + 1)]


def _si(n: float) -> str:
    """1,814,073,344 -> '1.81 G' (the exact number goes in a tooltip)."""
    for div, unit in ((1e9, " G"), (1e6, " M"), (1e3, " k")):
        if abs(n) >= div:
            return f"{n / div:.3g}{unit}"
    return f"{n:g}"


def _num(v: float) -> str:
    return f"{v:.3g}" if abs(v) < 1000 else f"{v:,.0f}"


def _chart(series: Sequence[dict], *, x_label: str, y_label: str, width: int = 620, height: int = 300,
           hlines: Sequence[tuple[float, str, str]] = (), vlines: Sequence[tuple[float, str, str]] = (),
           y_zero: bool = True, y_fmt=_num, x_fmt=_num, x_int: bool = False) -> str:
    """An SVG line chart. ``series``: dicts with ``label``, ``color``, ``points`` [(x, y)], optional
    ``dash`` and ``dots``; ``hlines``/``vlines``: (value, label, color) reference lines."""
    left, right, top, bottom = 62, 16, 14, 44
    xs = [x for s in series for x, _ in s["points"]] + [v for v, _, _ in vlines]
    ys = [y for s in series for _, y in s["points"]] + [v for v, _, _ in hlines]
    if not xs or not ys:
        return "<p class='muted'>no data</p>"
    x0, x1 = min(xs), max(xs)
    y0, y1 = (min(0.0, min(ys)) if y_zero else min(ys)), max(ys)
    if x1 <= x0:
        x0, x1 = x0 - 0.5, x1 + 0.5
    if y1 <= y0:
        y0, y1 = y0 - 0.5, y1 + 0.5
    y1 += (y1 - y0) * 0.06
    pw, ph = width - left - right, height - top - bottom

    def px(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * pw

    def py(y: float) -> float:
        return top + (1 - (y - y0) / (y1 - y0)) * ph

    parts = [f"<svg class='chart' viewBox='0 0 {width} {height}' width='{width}' height='{height}' role='img'>"]
    for t in _ticks(y0, y1):
        parts.append(f"<line x1='{left}' x2='{left + pw}' y1='{py(t):.1f}' y2='{py(t):.1f}' stroke='{GRID}'/>"
                     f"<text x='{left - 6}' y='{py(t) + 4:.1f}' text-anchor='end' class='tick'>{_e(y_fmt(t))}</text>")
    for t in _ticks(x0, x1, 6, integer=x_int):
        parts.append(f"<line x1='{px(t):.1f}' x2='{px(t):.1f}' y1='{top + ph}' y2='{top + ph + 4}' stroke='{MUTED}'/>"
                     f"<text x='{px(t):.1f}' y='{top + ph + 17}' text-anchor='middle' class='tick'>{_e(x_fmt(t))}</text>")
    parts.append(f"<rect x='{left}' y='{top}' width='{pw}' height='{ph}' fill='none' stroke='#c5cad3'/>")
    for v, label, color in hlines:
        parts.append(f"<line x1='{left}' x2='{left + pw}' y1='{py(v):.1f}' y2='{py(v):.1f}' stroke='{color}' "
                     f"stroke-width='1.6' stroke-dasharray='6 4'/><text x='{left + 6}' y='{py(v) - 5:.1f}' "
                     f"class='ref' fill='{color}'>{_e(label)}</text>")
    for v, label, color in vlines:
        flip = px(v) > left + pw * 0.75  # a label near the right edge goes left of its line
        parts.append(f"<line x1='{px(v):.1f}' x2='{px(v):.1f}' y1='{top}' y2='{top + ph}' stroke='{color}' "
                     f"stroke-width='1.4' stroke-dasharray='4 3'/><text x='{px(v) + (-4 if flip else 4):.1f}' "
                     f"y='{top + 12}' text-anchor='{'end' if flip else 'start'}' class='ref' fill='{color}'>"
                     f"{_e(label)}</text>")
    for s in series:
        pts = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in s["points"])
        dash = " stroke-dasharray='5 4'" if s.get("dash") else ""
        if s.get("line", True):
            parts.append(f"<polyline points='{pts}' fill='none' stroke='{s['color']}' stroke-width='2'{dash}/>")
        if s.get("dots"):
            for x, y in s["points"]:
                parts.append(f"<circle cx='{px(x):.1f}' cy='{py(y):.1f}' r='{s.get('r', 3)}' fill='{s['color']}'>"
                             f"<title>{_e(s['label'])}: {_e(x_fmt(x))}, {_e(y_fmt(y))}</title></circle>")
    parts.append(f"<text x='{left + pw / 2}' y='{height - 6}' text-anchor='middle' class='axis'>{_e(x_label)}</text>"
                 f"<text transform='translate(14 {top + ph / 2}) rotate(-90)' text-anchor='middle' class='axis'>"
                 f"{_e(y_label)}</text></svg>")
    legend = "".join(f"<span><i class='{'' if s.get('line', True) else 'dot'}' style='background:{s['color']}'></i>"
                     f"{_e(s['label'])}</span>" for s in series)
    legend += "".join(f"<span><i class='dash' style='border-color:{c}'></i>{_e(lab)}</span>"
                      for _, lab, c in [*hlines, *vlines])
    return f"<figure>{''.join(parts)}<figcaption class='legend'>{legend}</figcaption></figure>"


def _versions() -> list[tuple[str, str]]:
    from importlib import metadata, util

    def dist(*names: str) -> str | None:
        for n in names:
            try:
                return metadata.version(n)
            except metadata.PackageNotFoundError:
                continue
        return None

    rows = [("halp-onnx", dist("halp-onnx") or "-"), ("onnx", dist("onnx") or "-"),
            ("onnxruntime", dist("onnxruntime", "onnxruntime-gpu") or "-"), ("numpy", dist("numpy") or "-"),
            ("python", f"{platform.python_version()} ({platform.python_implementation()}, {platform.machine()})")]
    if util.find_spec("torch") is not None:
        rows.append(("torch", dist("torch") or "importable"))
    if util.find_spec("tensorrt") is not None:
        rows.append(("tensorrt", dist("tensorrt", "tensorrt-cu12", "tensorrt-cu11", "tensorrt_libs") or "importable"))
    return rows


def command_line(argv: Sequence[str] | None = None) -> str:
    """The command that made the report, one line: the program as ``halp-onnx``, control characters
    escaped, shell-quoted, at most 2000 characters."""
    args = list(sys.argv if argv is None else argv)
    if not args:
        return ""
    prog = args[0].replace("\\", "/").rsplit("/", 1)[-1]
    args[0] = "halp-onnx" if prog in ("halp-onnx", "__main__.py", "halp_onnx") else prog
    return sanitize(shlex.join(sanitize(a) for a in args), 2000)


CSS = """
*{box-sizing:border-box} body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1f2430;
margin:0;background:#f5f6f8} main{max-width:1320px;margin:0 auto;padding:24px 28px 48px}
h1{font-size:22px;margin:0 0 4px} h2{font-size:17px;margin:0 0 10px} .muted{color:#6b7280}
section{background:#fff;border:1px solid #e1e4ea;border-radius:8px;padding:16px 18px;margin:14px 0}
.cards{display:grid;grid-template-columns:repeat(auto-fit,minmax(170px,1fr));gap:10px;margin-top:12px}
.card{background:#fff;border:1px solid #e1e4ea;border-radius:8px;padding:10px 12px}
.card b{display:block;font-size:17px;margin:2px 0;white-space:nowrap} .card small{color:#6b7280}
.pill{display:inline-block;padding:1px 8px;border-radius:10px;font-size:12px;font-weight:600;margin-left:6px}
.ok{background:#dcf3e3;color:#1c6b36} .bad{background:#fde1df;color:#9b1c1c} .est{background:#fdebd2;color:#8a4b08}
.warn li{margin:3px 0} .warn{background:#fff8ec;border-color:#f2d49b}
table{border-collapse:collapse;width:100%} th,td{padding:3px 8px;text-align:left;border-bottom:1px solid #eef0f3;
font-size:13px;white-space:nowrap} th{font-weight:600;color:#4b5260;background:#fafbfc;position:sticky;top:0}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
td.name span{display:inline-block;max-width:340px;overflow:hidden;text-overflow:ellipsis;vertical-align:bottom}
tr.pruned td.w{color:#2f62b0;font-weight:600}
.bar{position:relative;width:230px;height:14px;background:#f3f4f6;border-radius:2px}
.bar span{position:absolute;left:0;top:0;height:14px;border-radius:2px} .bar .d{background:#b8c7e0}
.bar .k{background:#2f62b0;height:8px;top:3px}
.grid2{display:grid;grid-template-columns:minmax(0,1fr) minmax(0,1fr);gap:14px;align-items:start}
.grid2>section{margin:0} .row{margin:14px 0} figure{margin:0}
.chart{max-width:100%;height:auto} .tick{font-size:11px;fill:#6b7280} .axis{font-size:12px;fill:#4b5260}
.ref{font-size:11px;font-weight:600} .legend{font-size:12px;color:#4b5260;margin-top:2px}
.legend span{margin-right:14px;white-space:nowrap} .legend i{display:inline-block;width:14px;height:4px;
vertical-align:middle;margin-right:5px} .legend i.dash{height:0;border-top:2px dashed} .legend i.dot{width:9px;height:9px;border-radius:50%}
.kv td:first-child{color:#6b7280;width:190px} .kv td{white-space:normal;word-break:break-word} code,pre{font:12px/1.4 ui-monospace,Menlo,Consolas,monospace}
pre{background:#f3f4f6;padding:8px 10px;border-radius:6px;white-space:pre-wrap;word-break:break-all;margin:0}
.scroll{max-height:640px;overflow:auto}
"""


# ---------------------------------------------------------------------------------------- sections
def _summary(r) -> str:
    (p0, p1), (m0, m1) = r.rewrite.params, r.rewrite.macs
    est = r.label != "measured"
    fits = r.predicted_ms <= r.budget_ms * (1 + 1e-6)
    status = (f"<span class='pill {'ok' if fits else 'bad'}'>{'within budget' if fits else 'over budget'}</span>"
              + ("<span class='pill est'>estimated latencies</span>" if est else ""))
    v = r.verification
    cards = [("predicted latency", f"{r.dense_predicted_ms:.4g} &rarr; {r.predicted_ms:.4g} ms",
              f"{r.predicted_ms / max(r.dense_predicted_ms, 1e-12):.3f} x dense "
              f"({'from measured tables' if r.label == 'measured' else _e(r.label)})"),
             ("budget", f"{r.budget_ms:.4g} ms", f"{_e(r.latency_request)}; smallest achievable "
              f"{r.min_predicted_ms:.4g} ms")]
    if r.measured_ms:
        cards.append(("measured latency", f"{r.dense_measured_ms:.4g} &rarr; {r.measured_ms:.4g} ms",
                      f"speed-up {r.measured_speedup:.2f} x"))
    cards += [("parameters", f"<span title='{p0:,} &rarr; {p1:,}'>{_si(p0)} &rarr; {_si(p1)}</span>",
               f"{p1 / max(p0, 1):.3f} x ({p1:,})"),
              ("MACs", f"<span title='{m0:,} &rarr; {m1:,}'>{_si(m0)} &rarr; {_si(m1)}</span>",
               f"{m1 / max(m0, 1):.3f} x")]
    if v is not None:
        cards.append(("verification", "passed" if v.passed else "FAILED",
                      f"max rel. error {v.max_rel_error:.1e} (tol {v.tolerance:g})"))
    body = "".join(f"<div class='card'><small>{t}</small><b>{val}</b><small>{sub}</small></div>"
                   for t, val, sub in cards)
    imp = r.importance
    return (f"<header><h1>halp-onnx compile report {status}</h1><div class='muted'><b>{_e(r.source)}</b> on "
            f"<b>{_e(r.target)}</b> &middot; importance {_e(imp.method)} ({_e(imp.note)}) &middot; solver "
            f"{_e(r.solver.get('solver'))}, {_e(r.solver.get('rounds'))} rounds</div>"
            f"<div class='cards' id='summary'>{body}</div></header>")


def _warnings(r) -> str:
    if not r.warnings:
        return "<section id='warnings'><h2>Warnings</h2><p class='muted'>none</p></section>"
    items = "".join(f"<li>{_e(w)}</li>" for w in r.warnings)
    return f"<section id='warnings' class='warn'><h2>Warnings ({len(r.warnings)})</h2><ul>{items}</ul></section>"


def _layers(r) -> str:
    anchors = [b for b in r.blocks if b["op"] in ANCHOR_OPS]
    top = max([b["ms"][0] for b in anchors] + [b["ms"][1] for b in anchors] + [1e-12])
    rows = []
    for i, b in enumerate(anchors):
        (ci0, ci1), (co0, co1), (d, k) = b["c_in"], b["c_out"], b["ms"]
        pruned = ci1 != ci0 or co1 != co0
        bar = (f"<div class='bar' title='dense {d:.4g} ms, kept {k:.4g} ms'><span class='d' style='width:"
               f"{100 * d / top:.1f}%'></span><span class='k' style='width:{100 * k / top:.1f}%'></span></div>")
        rows.append(f"<tr class='{'pruned' if pruned else ''}'><td class='n'>{i}</td><td class='name'><span "
                    f"title='{_e(b['node'])}'>{_e(b['node'])}</span></td><td>{_e(b['op'])}</td>"
                    f"<td class='n w'>{ci0} &rarr; {ci1}</td><td class='n w'>{co0} &rarr; {co1}</td>"
                    f"<td>{bar}</td><td class='n'>{d:.4f}</td><td class='n'>{k:.4f}</td>"
                    f"<td class='n'>{k / d if d > 0 else 1:.2f}</td></tr>")
    other = [b for b in r.blocks if b["op"] not in ANCHOR_OPS]
    if other:
        d, k = sum(b["ms"][0] for b in other), sum(b["ms"][1] for b in other)
        rows.append(f"<tr><td></td><td class='muted'>{len(other)} other blocks (pool, memory, ...)</td><td></td>"
                    f"<td></td><td></td><td></td><td class='n'>{d:.4f}</td><td class='n'>{k:.4f}</td>"
                    f"<td class='n'>{k / d if d > 0 else 1:.2f}</td></tr>")
    legend = (f"<div class='legend'><span><i style='background:{DENSE};height:10px'></i>dense</span>"
              f"<span><i style='background:{KEPT};height:6px'></i>kept</span></div>")
    return (f"<section id='layers'><h2>Layers: widths and predicted latency</h2>{legend}<div class='scroll'><table>"
            "<tr><th class='n'>#</th><th>node</th><th>op</th><th class='n'>c_in dense &rarr; kept</th>"
            "<th class='n'>c_out dense &rarr; kept</th><th>latency (dense / kept)</th><th class='n'>dense ms</th>"
            f"<th class='n'>kept ms</th><th class='n'>ratio</th></tr>{''.join(rows)}</table></div></section>")


def _cumulative(r) -> str:
    dense = [b["ms"][0] for b in r.blocks]
    kept = [b["ms"][1] for b in r.blocks]
    base_d = max(r.dense_predicted_ms - sum(dense), 0.0)
    base_k = max(r.predicted_ms - sum(kept), 0.0)
    cd, ck = np.concatenate([[base_d], base_d + np.cumsum(dense)]), np.concatenate([[base_k], base_k + np.cumsum(kept)])
    series = [{"label": "dense", "color": DENSE, "points": list(enumerate(cd.tolist()))},
              {"label": "kept", "color": KEPT, "points": list(enumerate(ck.tolist()))}]
    chart = _chart(series, x_label="block (graph order; 0 = run overhead)", y_label="cumulative latency (ms)",
                   width=1240, height=320, hlines=[(r.budget_ms, f"budget {r.budget_ms:.4g} ms", BUDGET)],
                   x_fmt=lambda v: f"{v:.0f}", x_int=True)
    return (f"<section id='cumulative'><h2>Cumulative predicted latency</h2><p class='muted'>The model's predicted "
            f"latency summed block by block ({_e(r.label)}); the kept model must end under the budget line.</p>"
            f"{chart}</section>")


def _tradeoff(r) -> str:
    pts = list(getattr(r, "tradeoff", None) or ())
    if not pts:
        return ("<section id='tradeoff'><h2>Trade-off curve</h2><p class='muted'>not available for this run "
                "(no knapsack selection)</p></section>")
    xs = [p["budget_ms"] for p in pts]
    run = [p for p in pts if p.get("requested")]
    imp = _chart([{"label": "kept importance (% of dense)", "color": KEPT, "dots": True,
                   "points": [(p["budget_ms"], 100 * p["importance_share"]) for p in pts]},
                  {"label": "at this run's budget", "color": BUDGET, "dots": True, "line": False, "r": 5,
                   "points": [(p["budget_ms"], 100 * p["importance_share"]) for p in run]}],
                 x_label="latency budget (ms)", y_label="kept importance (%)",
                 vlines=[(r.budget_ms, "budget of this run", BUDGET)])
    lat = _chart([{"label": "predicted latency", "color": KEPT, "dots": True,
                   "points": [(p["budget_ms"], p["predicted_ms"]) for p in pts]},
                  {"label": "budget (y = x)", "color": MUTED, "dash": True, "points": [(xs[0], xs[0]), (xs[-1], xs[-1])]},
                  {"label": "at this run's budget", "color": BUDGET, "dots": True, "line": False, "r": 5,
                   "points": [(p["budget_ms"], p["predicted_ms"]) for p in run]}],
                 x_label="latency budget (ms)", y_label="predicted latency (ms)",
                 vlines=[(r.budget_ms, "budget of this run", BUDGET)], y_zero=False)
    bold = " style='font-weight:600'"
    rows = "".join(f"<tr{bold if p.get('requested') else ''}><td class='n'>{p['budget_ms']:.4f}"
                   f"</td><td class='n'>{p['budget_ms'] / max(r.dense_predicted_ms, 1e-12):.3f}</td><td class='n'>"
                   f"{p['predicted_ms']:.4f}</td><td class='n'>{100 * p['importance_share']:.2f}%</td><td class='n'>"
                   f"{p['importance']:.4g}</td><td class='n'>{p['kept_channels']}</td><td>"
                   f"{'this run' if p.get('requested') else ''}</td></tr>" for p in pts)
    return (f"<section id='tradeoff'><h2>Trade-off curve</h2><p class='muted'>The knapsack re-solved at {len(pts)} "
            f"budgets from the smallest achievable ({r.min_predicted_ms:.4g} ms) to dense "
            f"({r.dense_predicted_ms:.4g} ms): the importance kept (the knapsack's objective) and the predicted "
            f"latency of each answer.</p><div class='grid2'>{imp}{lat}</div><details><summary>points</summary><table>"
            "<tr><th class='n'>budget ms</th><th class='n'>x dense</th><th class='n'>predicted ms</th>"
            "<th class='n'>importance kept</th><th class='n'>objective</th><th class='n'>channels kept</th><th></th></tr>"
            f"{rows}</table></details></section>")


def _groups(r) -> str:
    rows = "".join(
        f"<tr><td class='n'>{g.group}</td><td class='name'><span title='{_e(', '.join(g.producers))}'>"
        f"{_e(', '.join(g.producers[:3]))}{' ...' if len(g.producers) > 3 else ''}</span></td><td class='n'>{g.size}</td>"
        f"<td class='n'>{g.kept}</td><td class='n'>{g.step}</td><td>{_e(g.allowed)}</td>"
        f"<td class='n'>{g.latency_dense_ms:.4f}</td><td class='n'>{g.latency_ms:.4f}</td><td>{_e(g.frozen)}</td></tr>"
        for g in r.groups)
    return ("<section id='groups'><h2>Channel groups</h2><div class='scroll'><table><tr><th class='n'>group</th>"
            "<th>producers</th><th class='n'>size</th><th class='n'>kept</th><th class='n'>step</th><th>allowed</th>"
            "<th class='n'>ms dense</th><th class='n'>ms kept</th><th>held dense because</th></tr>"
            f"{rows}</table></div></section>")


def _staircases(r) -> str:
    stairs = list(getattr(r, "staircases", None) or ())
    if not stairs:
        return ""
    charts = []
    for s in stairs:
        series: list[dict[str, Any]] = [{"label": "latency model", "color": KEPT,
                                          "points": list(zip(s["c_out"], s["ms"]))}]
        if s.get("measured_c_out"):
            series.append({"label": "measured points", "color": "#c0392b", "line": False, "dots": True,
                           "points": list(zip(s["measured_c_out"], s["measured_ms"]))})
        charts.append(f"<div><div class='muted'><code>{_e(s['node'])}</code> (c_in {s['c_in']})</div>"
                      + _chart(series, x_label="c_out", y_label="ms", width=400, height=240,
                               vlines=[(s["kept"], f"kept {s['kept']}", "#27ae60")], x_fmt=lambda v: f"{v:.0f}",
                               x_int=True)
                      + "</div>")
    return ("<section id='staircases'><h2>Latency staircases of the most expensive layers</h2>"
            f"<div style='display:grid;grid-template-columns:repeat(3,1fr);gap:10px'>{''.join(charts)}</div></section>")


def _profile(r) -> str:
    p: dict[str, Any] = dict(r.profile or {})
    prov = p.get("provenance") or ("estimated" if r.label != "measured" else "measured")
    explain = {"measured": "tables measured on this device and runtime",
               "transferred": "tables measured on another device or runtime (" + ", ".join(
                   p.get("differs_here") or []) + " differ here)",
               "estimated": "analytic roofline estimates, not measurements"}.get(prov, "")
    if prov != "estimated" and p.get("new_points"):
        explain += f"; {p['new_points']} point(s) measured here by this run"
    cls = {"measured": "ok", "transferred": "est", "estimated": "est"}.get(prov, "est")
    keys = [("target", p.get("target")), ("analytic GPU model", p.get("analytic_gpu")),
            ("profile path", p.get("path") or "none (nothing measured or read)"), ("profile name", p.get("name")),
            ("precision", p.get("precision")), ("batch", p.get("batch")), ("threads", p.get("threads")),
            ("block signatures", p.get("signatures")),
            ("points measured now / reused", f"{p.get('new_points', 0)} / {p.get('reused_points', 0)}"),
            ("run overhead", _ms(p.get("overhead_ms")) if p.get("overhead_ms") is not None else None),
            ("block time", p.get("block_time")), ("created", p.get("created")), ("updated", p.get("updated"))]
    fp = p.get("fingerprint") or {}
    keys += [(f"fingerprint: {k}", v) for k, v in sorted(fp.items())]
    rows = "".join(f"<tr><td>{_e(k)}</td><td><code>{_e(v)}</code></td></tr>" for k, v in keys if v not in (None, ""))
    return (f"<section id='profile'><h2>Latency profile <span class='pill {cls}'>{_e(prov)}</span></h2>"
            f"<p class='muted'>{_e(explain)}</p><table class='kv'>{rows}</table></section>")


def _reproduce(r, argv: Sequence[str] | None) -> str:
    versions = "".join(f"<tr><td>{_e(k)}</td><td><code>{_e(v)}</code></td></tr>" for k, v in _versions())
    secs = " &middot; ".join(f"{_e(k)} {v:.2f} s" for k, v in r.seconds.items())
    return (f"<section id='reproduce'><h2>Reproduce</h2><p class='muted'>command line</p>"
            f"<pre id='command'>{_e(command_line(argv))}</pre><p class='muted' style='margin-top:10px'>versions</p>"
            f"<table class='kv'>{versions}</table><p class='muted' style='margin-top:10px'>stage times: {secs}</p>"
            "</section>")


def html_report(result, argv: Sequence[str] | None = None) -> str:
    """The report of a :class:`~halp_onnx.compiler.CompileResult` as one self-contained HTML page:
    summary, warnings, layers (widths and latency bars), cumulative latency against the budget, the
    trade-off curve, channel groups, staircases, the profile's provenance, the command and versions.
    ``argv``: the command line to show (default ``sys.argv``)."""
    r = result
    body = (_summary(r) + _warnings(r) + _tradeoff(r) + _cumulative(r) + _layers(r)
            + f"<div class='grid2 row'>{_profile(r)}{_reproduce(r, argv)}</div>" + _groups(r) + _staircases(r))
    return (f"<!doctype html><html lang='en'><head><meta charset='utf-8'><meta name='viewport' "
            f"content='width=device-width, initial-scale=1'><title>halp-onnx: {_e(r.source)} on {_e(r.target)}"
            f"</title><style>{CSS}</style></head><body><main>{body}<p class='muted'>generated by halp-onnx; "
            "self-contained (no scripts, no network)</p></main></body></html>")
