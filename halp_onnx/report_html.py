"""A self-contained HTML report of a compile (plots embedded as PNG; needs matplotlib)."""
from __future__ import annotations

import base64
import html
import io

from .errors import HalpError
from .ops.table import ANCHOR_OPS


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return "<img src='data:image/png;base64," + base64.b64encode(buf.getvalue()).decode() + "'/>"


def html_report(result) -> str:
    """HTML with the summary, the per-group table, width per layer, latency per layer before/after and
    the latency staircase of the most expensive layers."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise HalpError("--html needs matplotlib (pip install matplotlib)", stage="report") from None
    r = result
    est = r.label != "measured"
    figs = []
    convs = [b for b in r.blocks if b["op"] in ANCHOR_OPS]
    x = range(len(convs))
    fig, ax = plt.subplots(figsize=(11, 3.5))
    ax.bar(x, [b["c_out"][0] for b in convs], color="#c8d3e6", label="dense")
    ax.bar(x, [b["c_out"][1] for b in convs], color="#3b6fb6", label="pruned")
    ax.set_title("output channels per layer")
    ax.set_xlabel("layer (graph order)")
    ax.legend()
    figs.append(_png(fig))
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(11, 3.5))
    ax.plot([b["ms"][0] for b in r.blocks], label="dense", color="#888")
    ax.plot([b["ms"][1] for b in r.blocks], label="pruned", color="#c0392b")
    ax.set_title("latency per block (ms, " + ("estimated" if est else "from measured tables") + ")")
    ax.set_xlabel("block (graph order)")
    ax.legend()
    figs.append(_png(fig))
    plt.close(fig)
    stairs = r.staircases if hasattr(r, "staircases") else []
    if stairs:
        fig, axes = plt.subplots(1, len(stairs), figsize=(4 * len(stairs), 3.2))
        for ax, s in zip(list(axes) if len(stairs) > 1 else [axes], stairs):
            ax.plot(s["c_out"], s["ms"], color="#3b6fb6", lw=1)
            ax.scatter(s["measured_c_out"], s["measured_ms"], color="#c0392b", s=10, label="measured", zorder=3)
            ax.axvline(s["kept"], color="#27ae60", ls="--", lw=1, label="kept")
            ax.set_title(s["node"][:28], fontsize=9)
            ax.set_xlabel("c_out")
            ax.set_ylabel("ms")
        axes_list = list(axes) if len(stairs) > 1 else [axes]
        axes_list[0].legend(fontsize=8)
        figs.append(_png(fig))
        plt.close(fig)
    (p0, p1), (m0, m1) = r.rewrite.params, r.rewrite.macs
    rows = "".join(
        f"<tr><td>{g.group}</td><td>{html.escape(', '.join(g.producers[:3]))}</td><td>{g.size}</td><td>{g.kept}</td>"
        f"<td>{g.step}</td><td>{g.latency_dense_ms:.4f}</td><td>{g.latency_ms:.4f}</td>"
        f"<td>{html.escape(g.frozen)}</td></tr>" for g in r.groups)
    meas = (f"<tr><td>measured latency (ms)</td><td>{r.dense_measured_ms:.4f}</td><td>{r.measured_ms:.4f}</td>"
            f"<td>{r.measured_ms / r.dense_measured_ms:.3f}</td></tr>") if r.measured_ms else ""
    banner = ("<p style='background:#fde2c8;padding:6px'><b>Estimated</b>: latencies come from the analytic "
              "GPU model, not from measurements on the target.</p>") if est else ""
    warn = "".join(f"<li>{html.escape(w)}</li>" for w in r.warnings)
    return f"""<!doctype html><html><head><meta charset='utf-8'><title>halp-onnx compile report</title>
<style>body{{font-family:sans-serif;margin:24px}} table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:3px 8px;font-size:13px}}</style></head><body>
<h1>halp-onnx compile</h1>{banner}
<p><b>{html.escape(r.source)}</b> on <b>{html.escape(r.target)}</b>, budget {html.escape(r.latency_request)};
importance: {html.escape(r.importance.method)} ({html.escape(r.importance.note)}); solver {html.escape(str(r.solver.get('solver')))},
{r.solver.get('rounds')} rounds.</p>
<table><tr><th></th><th>dense</th><th>pruned</th><th>ratio</th></tr>
<tr><td>params</td><td>{p0:,}</td><td>{p1:,}</td><td>{p1 / max(p0, 1):.3f}</td></tr>
<tr><td>MACs</td><td>{m0:,}</td><td>{m1:,}</td><td>{m1 / max(m0, 1):.3f}</td></tr>
<tr><td>{'estimated' if est else 'predicted'} latency (ms)</td><td>{r.dense_predicted_ms:.4f}</td><td>{r.predicted_ms:.4f}</td>
<td>{r.predicted_ms / r.dense_predicted_ms:.3f}</td></tr>{meas}</table>
<ul>{warn}</ul>
{''.join(f'<p>{f}</p>' for f in figs)}
<h2>Channel groups</h2><table><tr><th>group</th><th>producers</th><th>size</th><th>kept</th><th>step</th>
<th>ms dense</th><th>ms after</th><th>held dense</th></tr>{rows}</table>
<p>Verification: max relative error {r.verification.max_rel_error:.2e} against the masked original.</p>
</body></html>"""
