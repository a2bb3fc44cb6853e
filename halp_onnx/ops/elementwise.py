"""Element-wise ops with numpy broadcasting: channels pass through, and coupled inputs merge."""
from __future__ import annotations

from ..labels import Labels
from ._rule import who


def analyze_broadcast(node, ctx) -> None:
    """Outputs carry the inputs' channels; tracked inputs are coupled; per-channel constants follow."""
    outputs = [o for o in node.output if o]
    if not outputs or all(ctx.labels(name) is None for name in node.input):
        return
    out_shape = ctx.shape(outputs[0])
    rank = len(out_shape)
    tracked: list[tuple[int, Labels]] = []
    for idx, name in enumerate(node.input):
        lab = ctx.labels(name)
        if lab is None:
            continue
        shape = ctx.shape(name)
        off = rank - len(shape)
        if any(shape[a] != out_shape[a + off] for a in lab.axes):
            ctx.freeze(lab, f"{who(node)} broadcasts tensor '{name}' across the channels of its other inputs")
            continue
        tracked.append((idx, Labels(tuple(a + off for a in lab.axes), lab.ids)))
    if not tracked:
        return
    base = tracked[0][1]
    for _, lab in tracked[1:]:
        if lab.axes != base.axes:
            for _, other in tracked:
                ctx.freeze(other, f"{who(node)} combines tensors whose channels lie on different axes")
            return
        ctx.unify(base.ids, lab.ids)
    tracked_inputs = {i for i, _ in tracked}
    for idx, name in enumerate(node.input):
        if not name or idx in tracked_inputs:
            continue
        shape = ctx.shape(name)
        off = rank - len(shape)
        dims = [shape[a - off] if a - off >= 0 else 1 for a in base.axes]
        if all(d == 1 for d in dims):
            continue  # broadcasts over the channels: nothing to slice
        if ctx.const(name) is not None and all(a - off >= 0 for a in base.axes) and \
                list(dims) == list(base.ids.shape):
            ctx.follow(name, Labels(tuple(a - off for a in base.axes), base.ids), node)
            continue
        ctx.freeze(base, f"{who(node)} combines the channels with tensor '{name}', "
                         "whose channels cannot shrink with them")
    for out in outputs:
        if ctx.shapes.get(out) is not None and len(ctx.shape(out)) == rank:
            ctx.set(out, base)
