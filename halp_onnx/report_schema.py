"""The one JSON report every command emits (``--json``, ``--report``): schema ``halp-onnx/report/v1``.

:func:`report` builds it; :data:`DESCRIPTION` describes it (a JSON-Schema-like dict: ``type``,
``required``, ``properties``, ``additionalProperties``, ``items``, ``enum``, ``const`` and a
``description`` per key); :func:`validate` checks an object against it; ``python -m
halp_onnx.report_schema --markdown`` writes ``docs/report-schema.md`` from it, so the document stays
true. Every top-level key is always present (``null`` where a command has nothing to say); the same
key means the same thing in every command; what only one command has lives under ``details``.
ARR change that removes or retypes a key bumps the version (``v2``); adding an optional key does not.
"""
from __future__ import annotations

import hashlib
import math
import os
import sys
from typing import Any, Iterable, Mapping

SCHEMA_ID = "halp-onnx/report/v1"
COMMANDS = ("example", "inspect", "prune", "compile", "latency", "profile", "targets", "finetune")

STR: dict[str, Any] = {"type": "string"}
INT: dict[str, Any] = {"type": "integer"}
NUM: dict[str, Any] = {"type": "number"}
BOOL: dict[str, Any] = {"type": "boolean"}
OBJ: dict[str, Any] = {"type": "object"}
ARR: dict[str, Any] = {"type": "array"}


def _t(base: Mapping[str, Any], description: str, *, null: bool = False, **extra: Any) -> dict[str, Any]:
    d = dict(base)
    if null:
        d["type"] = [d["type"], "null"]
    d.update(extra)
    d["description"] = description
    return d


def _obj(description: str, props: Mapping[str, dict], *, required: Iterable[str] = (), null: bool = False,
         extra: Any = True) -> dict[str, Any]:
    return _t(OBJ, description, null=null, properties=dict(props), required=list(required),
              additionalProperties=extra)


BEFORE_AFTER = {"before": _t(INT, "in the input model"),
                "after": _t(INT, "in the written model (null when the command writes none)", null=True)}
LATENCY = {
    "predicted_ms": _t(NUM, "predicted latency of the model the command is about (the written one, else the input)",
                       null=True),
    "measured_ms": _t(NUM, "its measured latency on the target (null when not measured here)", null=True),
    "label": _t(STR, "'measured' (tables timed on the target) or 'estimated' (analytic roofline)", null=True),
    "dense_predicted_ms": _t(NUM, "predicted latency of the input (dense) model", null=True),
    "dense_measured_ms": _t(NUM, "measured latency of the input model", null=True),
    "min_predicted_ms": _t(NUM, "smallest latency the pruning options allow", null=True),
    "measured_speedup": _t(NUM, "dense_measured_ms / measured_ms", null=True),
    "measured_over_target": _t(NUM, "measured_ms over the budget applied to the measured dense latency", null=True),
    "error_pct": _t(NUM, "prediction error against the measurement, percent", null=True),
    "measured_runs": _t(INT, "timed runs behind measured_ms", null=True),
    "measured_status": _t(STR, "why there is no measurement", null=True),
    "overhead_ms": _t(NUM, "per-run overhead included in the prediction", null=True),
    "profile": _t(STR, "the profile file the prediction read", null=True),
}
BUDGET = {
    "request": _t(STR, "the budget as given (--latency: 0.5, 50%, 3.2ms)"),
    "budget_ms": _t(NUM, "the budget in ms the prediction must meet"),
    "kind": _t(STR, "'share' (of the dense latency) or 'ms' (a time)", null=True),
    "amount": _t(NUM, "the share, or the time in ms", null=True),
    "dense_ms": _t(NUM, "predicted dense latency the share applies to", null=True),
    "share": _t(NUM, "budget_ms / dense_ms", null=True),
    "dense_measured_ms": _t(NUM, "measured dense latency (closed loop)", null=True),
    "target_measured_ms": _t(NUM, "the budget applied to the measured dense latency", null=True),
}
GROUP = {
    "group": _t(INT, "channel group id (as 'halp-onnx inspect' numbers them)"),
    "size": _t(INT, "channels in the input model"),
    "kept": _t(INT, "channels kept in the written model (null when nothing is written)", null=True),
    "prunable": _t(BOOL, "whether halp-onnx may remove channels of this group"),
    "producers": _t(ARR, "nodes whose output channels the group is", items=STR),
}
VERIFICATION = {
    "passed": _t(BOOL, "the written model equals the masked original within tolerance"),
    "max_rel_error": _t(NUM, "largest relative error over outputs and trials"),
    "tolerance": _t(NUM, "the relative error allowed"),
    "trials": _t(INT, "random inputs compared"),
    "input_sensitive": _t(BOOL, "false: the outputs ignore the inputs, so the check is weak", null=True),
}
OUTPUT_ROLES = {
    "model": _t(STR, "-o: the ONNX model"),
    "model_data": _t(STR, "the model's external-data file (models over 2 GiB)"),
    "report": _t(STR, "--report (a path, or '-' for stdout)"),
    "html": _t(STR, "--html"),
    "engine": _t(STR, "--engine: the TensorRT engine"),
    "checkpoint": _t(STR, "--checkpoint: training state"),
    "profile": _t(STR, "the latency profile this run extended"),
}
PROPERTIES: dict[str, dict[str, Any]] = {
    "schema": _t(STR, f"always '{SCHEMA_ID}'", const=SCHEMA_ID),
    "command": _t(STR, "the subcommand that wrote the report", enum=list(COMMANDS)),
    "version": _t(STR, "halp-onnx's version"),
    "input": _obj("the input model file (null for commands without one)",
                  {"path": _t(STR, "as given"), "sha256": _t(STR, "hex digest of the file's bytes"),
                   "bytes": _t(INT, "file size")}, required=("path", "sha256", "bytes"), null=True),
    "outputs": _obj("what this run wrote, by role (only those it wrote)", OUTPUT_ROLES, extra=STR),
    "model": _obj("facts of the input model", {"source": _t(STR, "where it came from"),
                                               "opset": _t(INT, "default-domain opset", null=True),
                                               "input_shapes": _t(OBJ, "static input shapes used")},
                  required=("source",), null=True),
    "target": _t(STR, "latency target (see 'halp-onnx targets')", null=True),
    "params": _obj("parameters", BEFORE_AFTER, required=("before", "after"), null=True),
    "macs": _obj("multiply-accumulates of one inference", BEFORE_AFTER, required=("before", "after"), null=True),
    "latency": _obj("latency on the target, ms", LATENCY, required=("predicted_ms", "measured_ms", "label"),
                    null=True),
    "budget": _obj("the latency budget, resolved against the dense latency", BUDGET,
                   required=("request", "budget_ms"), null=True),
    "groups": _t(ARR, "channel groups, one object each (commands add their own keys)", null=True,
                 items=_obj("a channel group", GROUP, required=tuple(GROUP))),
    "verification": _obj("onnxruntime check of the written model", VERIFICATION,
                         required=("passed", "max_rel_error", "tolerance", "trials"), null=True),
    "seconds": _t(OBJ, "wall time per stage, and 'total'", additionalProperties=NUM),
    "warnings": _t(ARR, "warnings, one line each", items=STR),
    "details": _t(OBJ, "what only this command reports (see Details)"),
}
DESCRIPTION: dict[str, Any] = {"$id": SCHEMA_ID, "type": "object", "required": list(PROPERTIES),
                               "additionalProperties": False, "properties": PROPERTIES,
                               "description": "a halp-onnx report"}

DETAILS: dict[str, dict[str, Any]] = {
    "example": _obj("", {"name": _t(STR, "the example's name")}, required=("name",)),
    "inspect": _obj("", {"prunable_params": _t(INT, "parameters in prunable groups"),
                         "prunable_groups": _t(INT, "groups halp-onnx may prune")},
                    required=("prunable_params", "prunable_groups")),
    "prune": _obj("", {"ratio": _t(NUM, "share of each group's channels removed"),
                       "criterion": _t(STR, "l2 or random"), "seed": _t(INT, "random seed"),
                       "repair": _t(OBJ, "with --calib: the least-squares refit (reconstructed), the block-wise descent "
                                 "(reconstructed.descent) and the statistics repair: what each did, on how many "
                                 "inputs, and whether it was kept", null=True)},
                  required=("ratio", "criterion", "seed")),
    "compile": _obj("", {
        "mode": _t(STR, "'one-shot' (knapsack) or 'iterative' (pruning while fine-tuning)", enum=["one-shot", "iterative"]),
        "importance": _t(OBJ, "importance method, loss, samples, score statistics", null=True),
        "solver": _t(OBJ, "knapsack solver statistics", null=True),
        "rounds": _t(ARR, "knapsack rounds", null=True),
        "blocks": _t(ARR, "per block: node, op, c_in/c_out/ms [dense, pruned]", null=True),
        "profile": _t(OBJ, "the latency profile used: name, estimated, fingerprint, tables", null=True),
        "repair": _t(OBJ, "with --calib: the least-squares refit (reconstructed), the block-wise descent "
                                 "(reconstructed.descent) and the statistics repair: what each did, on how many "
                                 "inputs, and whether it was kept", null=True),
        "history": _t(ARR, "iterative: one entry per pruning step", null=True),
        "calibration": _t(ARR, "iterative: the closed loop's paired timings (step, predicted and measured share, "
                               "miss, scale)", null=True),
        "finetune": _t(OBJ, "iterative: fine-tuning history, seconds, steps", null=True)},
        required=("mode",)),
    "latency": _obj("", {"blocks": _t(ARR, "per block: node, op, widths, predicted ms")}, required=("blocks",)),
    "profile": _obj("", {"signatures": _t(INT, "block signatures of the model"),
                         "new_points": _t(INT, "points measured now"), "reused_points": _t(INT, "points from the cache"),
                         "profile": _t(STR, "the profile file", null=True),
                         "tables": _t(ARR, "per signature: signature, step, points")},
                    required=("signatures", "new_points", "reused_points", "profile", "tables")),
    "targets": _obj("", {"targets": _t(ARR, "per target: target, backend, precision, available, status, latency, "
                                           "profiles, profile_matches_this_device"),
                         "user_profile_dir": _t(STR, "where measured profiles are saved")},
                    required=("targets", "user_profile_dir")),
    "finetune": _obj("", {"teacher": _t(STR, "teacher model", null=True), "data": _t(STR, "training data"),
                          "images": _t(INT, "training images"), "labeled": _t(BOOL, "the data has labels"),
                          "mode": _t(STR, "'KD + CE', 'label-free KD' or 'CE'"),
                          "config": _t(OBJ, "the fine-tuning configuration"), "history": _t(ARR, "one entry per epoch"),
                          "initial_eval_top1": _t(NUM, "held-out top-1 before", null=True),
                          "eval_top1": _t(NUM, "held-out top-1 after", null=True),
                          "steps": _t(INT, "optimizer steps"), "samples": _t(INT, "images seen"),
                          "block_stage": _t(OBJ, "the block stage before the end-to-end steps: ran, kept, note, "
                                                 "held-out output error before / after", null=True)},
                     required=("teacher", "data", "images", "labeled", "config", "history", "steps", "samples")),
}


# ---------------------------------------------------------------------------------------- building
def file_info(path: str | os.PathLike | None) -> dict[str, Any] | None:
    """``{"path", "sha256", "bytes"}`` of an input file (None when there is none or it is gone)."""
    if path is None or not os.path.isfile(path):
        return None
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return {"path": str(path), "sha256": h.hexdigest(), "bytes": os.path.getsize(path)}


def before_after(pair: Any) -> dict[str, Any] | None:
    if pair is None:
        return None
    if isinstance(pair, (int, float)):
        return {"before": int(pair), "after": None}
    before, after = pair
    return {"before": int(before), "after": None if after is None else int(after)}


def clean(obj: Any) -> Any:
    """JSON-ready: tuples to lists, numpy scalars to numbers, NaN/inf to null, keys to strings."""
    if isinstance(obj, Mapping):
        return {str(k): clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean(v) for v in obj]
    if isinstance(obj, bool) or obj is None or isinstance(obj, str):
        return obj
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    item = getattr(obj, "item", None)  # numpy scalar
    if callable(item):
        return clean(item())
    tolist = getattr(obj, "tolist", None)
    if callable(tolist):
        return clean(tolist())
    return str(obj)


def report(command: str, *, input: Any = None, outputs: Mapping[str, str] | None = None, model: Any = None,
           target: str | None = None, params: Any = None, macs: Any = None, latency: Mapping | None = None,
           budget: Mapping | None = None, groups: Any = None, verification: Mapping | None = None,
           seconds: Mapping[str, float] | None = None, warnings: Iterable[str] = (),
           details: Mapping | None = None) -> dict[str, Any]:
    """The report, every top-level key present, in :data:`DESCRIPTION`'s order."""
    from . import __version__

    lat = None
    if latency is not None:
        lat = {k: latency.get(k) for k in ("predicted_ms", "measured_ms", "label")}
        lat.update({k: v for k, v in latency.items() if k not in lat})
    data = {"schema": SCHEMA_ID, "command": command, "version": __version__,
            "input": input if isinstance(input, Mapping) or input is None else file_info(input),
            "outputs": dict(outputs or {}), "model": model, "target": target, "params": before_after(params),
            "macs": before_after(macs), "latency": lat, "budget": budget, "groups": groups,
            "verification": verification,
            "seconds": {k: round(float(v), 3) for k, v in (seconds or {}).items()},
            "warnings": [" ".join(str(w).split()) for w in warnings], "details": dict(details or {})}
    return clean(data)


# ---------------------------------------------------------------------------------------- checking
_TYPES: dict[str, Any] = {"object": dict, "array": list, "string": str, "boolean": bool, "null": type(None)}


def _is(value: Any, t: str) -> bool:
    if t == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if t == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return isinstance(value, _TYPES[t])


def validate(value: Any, schema: Mapping[str, Any] | None = None, where: str = "$") -> list[str]:
    """Where ``value`` breaks ``schema`` (default: the report, its ``details`` per command); [] if nowhere."""
    top = schema is None
    schema = DESCRIPTION if schema is None else schema
    errors: list[str] = []
    types = schema.get("type")
    if types is not None:
        allowed = [types] if isinstance(types, str) else list(types)
        if not any(_is(value, t) for t in allowed):
            return [f"{where}: expected {' or '.join(allowed)}, got {type(value).__name__}"]
    if "const" in schema and value != schema["const"]:
        errors.append(f"{where}: expected {schema['const']!r}, got {value!r}")
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{where}: {value!r} is not one of {schema['enum']}")
    if isinstance(value, dict):
        props = schema.get("properties", {})
        errors += [f"{where}: missing key {k!r}" for k in schema.get("required", ()) if k not in value]
        extra = schema.get("additionalProperties", True)
        for k, v in value.items():
            if k in props:
                errors += validate(v, props[k], f"{where}.{k}")
            elif extra is False:
                errors.append(f"{where}: unexpected key {k!r}")
            elif isinstance(extra, Mapping):
                errors += validate(v, extra, f"{where}.{k}")
    if isinstance(value, list) and "items" in schema:
        for i, v in enumerate(value):
            errors += validate(v, schema["items"], f"{where}[{i}]")
    if top and isinstance(value, dict) and value.get("command") in DETAILS and isinstance(value.get("details"), dict):
        errors += validate(value["details"], DETAILS[value["command"]], "$.details")
    return errors


# ---------------------------------------------------------------------------------------- document
def _type_text(schema: Mapping[str, Any]) -> str:
    t = schema.get("type", "any")
    text = " or ".join(t) if isinstance(t, list) else t
    if "items" in schema and isinstance(schema["items"], Mapping):
        inner = schema["items"].get("type", "any")
        text = text.replace("array", f"array of {inner}")
    return text


def _rows(props: Mapping[str, Any], required: Iterable[str], prefix: str = "") -> list[str]:
    req = set(required)
    rows = []
    for key, sub in props.items():
        desc = sub.get("description", "")
        if "enum" in sub:
            desc += " (one of: " + ", ".join(f"`{e}`" for e in sub["enum"]) + ")"
        rows.append(f"| `{prefix}{key}` | {_type_text(sub)} | {'yes' if key in req else 'no'} | {desc} |")
        nested = sub.get("properties") or (sub.get("items") or {}).get("properties")
        if nested:
            inner_req = sub.get("required") or (sub.get("items") or {}).get("required") or ()
            rows += _rows(nested, inner_req, prefix=f"{prefix}{key}{'[]' if 'items' in sub else ''}.")
    return rows


def markdown() -> str:
    head = ["| key | type | always | meaning |", "|---|---|---|---|"]
    out = [f"# Report schema `{SCHEMA_ID}`", "",
           "Generated by `python -m halp_onnx.report_schema --markdown > docs/report-schema.md`; do not edit.", "",
           "Every command that reports (`--json` prints the report on stdout, the human text goes to stderr; "
           "`--report PATH` writes it, `--report -` prints it) emits one JSON object with these keys, all "
           "always present (`null` where the command has nothing to say). The same key means the same thing "
           "in every command. Keys inside objects marked `always: no` may be absent. Removing or retyping a "
           "key bumps the version; adding an optional key does not.", "",
           "## Exit status and outputs", "",
           "`0`: every requested output is complete. `2`: a bad input, option or environment (read-only or full "
           "folder, two outputs on one path, an output that is an input or not a regular file, a missing optional "
           "dependency): one line on stderr starting `halp-onnx: error:` (the last line; with `--quiet` the only "
           "one) and nothing written. `3`: an internal error. `130` / `143`: interrupted (SIGINT / SIGTERM), "
           "nothing written. Outputs are staged as `.<name>.halp-tmp-<pid>-<hex>` in their folder and renamed "
           "into place at the end, reports first and the ONNX model last; a killed run's leftovers are removed "
           "by the next run writing to that folder (see `halp_onnx/cli_io.py`).", "",
           "## Top level", "", *head, *_rows(PROPERTIES, DESCRIPTION["required"]), "",
           "## Details, per command", ""]
    for command in COMMANDS:
        d = DETAILS[command]
        out += [f"### `{command}`", "", *head, *_rows(d["properties"], d["required"], "details."), ""]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    import json

    args = sys.argv[1:] if argv is None else argv
    if args == ["--markdown"]:
        print(markdown())
    elif args == ["--json"]:
        print(json.dumps({"report": DESCRIPTION, "details": DETAILS}, indent=1))
    else:
        print("usage: python -m halp_onnx.report_schema --markdown | --json", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
