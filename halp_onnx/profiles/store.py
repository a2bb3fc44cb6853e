"""Profile files: ``<name>.json`` per target (plain JSON, schema-versioned, never pickle).

A :class:`Profile` holds one :class:`~halp_onnx.profiles.table.LatencyTable` per block signature,
the device fingerprint it was measured on, the per-run overhead and whether its figures are
measured or *estimated* (analytic). Shipped profiles live in the repo's ``hw_profiles/``, installed
as the package data of ``halp_onnx.hw_profiles`` (:data:`SHIPPED_DIR`);
profiles a user measures go to the user cache directory (``$HALP_ONNX_PROFILE_DIR`` overrides it).
Writes are atomic (temp file + rename) under a file lock, so two profilers of one target never
corrupt the file; the profiler saves after every signature, so an interrupted run resumes.

Schema versions (``"schema"`` in the file):

* ``halp-onnx/profile@1``: every table point a one-block (*isolated*) timing.
* ``halp-onnx/profile@2`` (written now; @1 files are still read, their points taken as isolated):
  a table may be *fitted* from in-context measurements (``fit``: the layout classes and their
  coefficients, ``sources``: ``"incontext"`` or ``"isolated"`` per point), the profile records the
  runtime's NCHWc ``layout`` rule it was measured under, and a profile brought from another device or
  runtime records its recalibration in ``transfer`` (source fingerprint, per-class scales, fitted
  error; its tables carry ``transferred``). ``contexts`` (optional): per model, the in-context tables
  fitted from that model's own runs (:class:`ModelContext`), keyed by :func:`context_id`; ``tables``
  then hold every model's points, the fallback where a model's own are not to be had.
"""
from __future__ import annotations

import json
import os
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from ..errors import HalpError
from .table import LatencyTable

STAGE = "profiles"
SCHEMA = "halp-onnx/profile@2"
READ_SCHEMAS = ("halp-onnx/profile@1", SCHEMA)


def _shipped_dir() -> Path:
    """Where the shipped profiles are: the ``halp_onnx.hw_profiles`` package data (a wheel maps the
    top-level ``hw_profiles/`` there; an editable install maps it back to the checkout), else the
    checkout's ``hw_profiles/`` beside the package."""
    try:
        from importlib.resources import files

        path = Path(str(files("halp_onnx.hw_profiles")))  # a real folder unless installed zipped
        if path.is_dir():
            return path
    except (ImportError, TypeError, ValueError):  # not installed (plain checkout on sys.path)
        pass
    return Path(__file__).resolve().parents[2] / "hw_profiles"


SHIPPED_DIR = _shipped_dir()
# fingerprint fields that must match for a profile to be used without re-measuring
MATCH_KEYS = ("cpu", "machine", "gpu_name", "driver", "onnxruntime", "tensorrt", "torch", "threads", "precision",
              "batch")


def user_dir() -> Path:
    env = os.environ.get("HALP_ONNX_PROFILE_DIR")
    if env:
        return Path(env)
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("halp-onnx")) / "profiles"


def profile_name(target: str, *, threads: int = 1, batch: int = 1) -> str:
    name = target
    if batch != 1:
        name += f"-b{batch}"
    if threads != 1:
        name += f"-t{threads}"
    return name


@dataclass
class ModelContext:
    """The in-context tables of one model: times taken inside that model's own runs. A layer's time
    depends on the model around it (cache state, layout reorders, what runs before it), so another
    model's in-context points do not price it; ``signatures``: every block signature of the model and
    of what its pruned models may hold (a removed branch's epilogue), those without a table here timed
    alone (the profile's general tables)."""

    model: str
    signatures: tuple[str, ...]
    tables: dict[str, LatencyTable] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "signatures": list(self.signatures),
                "tables": {k: t.to_dict() for k, t in sorted(self.tables.items())}}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelContext":
        return cls(str(d["model"]), tuple(str(k) for k in d["signatures"]),
                   {k: LatencyTable.from_dict(v) for k, v in d["tables"].items()})


def context_id(signatures) -> str:
    """The id of a model's context: a hash of its set of block signatures (widths do not enter, so a
    pruned model of the same layers shares its dense model's context)."""
    import hashlib

    return hashlib.sha1("\n".join(sorted(set(signatures))).encode()).hexdigest()[:12]


@dataclass
class Profile:
    """Latency tables of one target on one device."""

    name: str
    target: str
    precision: str
    batch: int
    threads: int
    estimated: bool
    fingerprint: dict[str, Any]
    overhead_ms: float = 0.0  # per run
    node_overhead_ms: float = 0.0  # per block, when block times are kernel times
    block_time: str = "run"  # "run": a block's table value is a whole one-block run; "kernel": its kernels only
    tables: dict[str, LatencyTable] = field(default_factory=dict)
    created: str = ""
    updated: str = ""
    layout: dict[str, int] = field(default_factory=dict)  # the runtime's NCHWc rule (profiles.fit.LayoutRule)
    incontext_node_ms: float = 0.0  # per onnxruntime node, added to its profiled kernel time in context
    transfer: dict[str, Any] = field(default_factory=dict)  # set when brought from another device / runtime
    contexts: dict[str, ModelContext] = field(default_factory=dict)  # context id -> that model's tables

    def find_context(self, signatures) -> str | None:
        """The context that prices a model of these block signatures: its own, else the smallest one
        measured whose model holds every one of them (a pruned model that lost some layers)."""
        want = set(signatures)
        cid = context_id(want)
        if cid in self.contexts:
            return cid
        supersets = [(len(c.signatures), k) for k, c in self.contexts.items() if want <= set(c.signatures)]
        return min(supersets)[1] if supersets else None

    def with_context(self, cid: str | None) -> "Profile":
        """This profile with context ``cid``'s tables in front of the general ones (a view: the tables
        are shared, not copied)."""
        if cid is None or cid not in self.contexts:
            return self
        return replace(self, tables={**self.tables, **self.contexts[cid].tables})

    @property
    def source(self) -> str:
        """``"transferred"`` (recalibrated from another device or runtime) or ``"measured"`` (here)."""
        return "transferred" if self.transfer else "measured"

    def match_key(self) -> dict[str, Any]:
        return {k: self.fingerprint.get(k) for k in MATCH_KEYS}

    def to_dict(self) -> dict[str, Any]:
        return {"schema": SCHEMA, "name": self.name, "target": self.target, "precision": self.precision,
                "batch": self.batch, "threads": self.threads, "estimated": self.estimated,
                "fingerprint": self.fingerprint, "overhead_ms": self.overhead_ms,
                "node_overhead_ms": self.node_overhead_ms, "block_time": self.block_time, "created": self.created,
                "updated": self.updated, "layout": dict(self.layout), "incontext_node_ms": self.incontext_node_ms,
                "transfer": dict(self.transfer),
                "tables": {k: t.to_dict() for k, t in sorted(self.tables.items())},
                "contexts": {k: c.to_dict() for k, c in sorted(self.contexts.items())}}

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "<profile>") -> Profile:
        if not isinstance(data, dict) or data.get("schema") not in READ_SCHEMAS:
            got = data.get("schema") if isinstance(data, dict) else type(data).__name__
            raise HalpError(f"{source}: not a halp-onnx profile of schema {SCHEMA} (found {got!r})", stage=STAGE)
        try:
            tables = {k: LatencyTable.from_dict(v) for k, v in data["tables"].items()}
            return cls(name=data["name"], target=data["target"], precision=data["precision"], batch=int(data["batch"]),
                       threads=int(data["threads"]), estimated=bool(data["estimated"]),
                       fingerprint=dict(data["fingerprint"]), overhead_ms=float(data["overhead_ms"]),
                       node_overhead_ms=float(data.get("node_overhead_ms", 0.0)),
                       block_time=str(data.get("block_time", "run")), tables=tables,
                       created=data.get("created", ""), updated=data.get("updated", ""),
                       layout={str(k): int(v) for k, v in dict(data.get("layout") or {}).items()},
                       incontext_node_ms=float(data.get("incontext_node_ms", 0.0)),
                       transfer=dict(data.get("transfer") or {}),
                       contexts={str(k): ModelContext.from_dict(v) for k, v in dict(data.get("contexts") or {}).items()})
        except (KeyError, TypeError, ValueError, HalpError) as exc:
            raise HalpError(f"{source}: malformed profile ({exc})", stage=STAGE) from None

    @property
    def measured_points(self) -> int:
        return sum(len(t.points) for t in self.tables.values())


def read_profile(path: str | os.PathLike) -> Profile:
    p = Path(path)
    try:
        data = json.loads(p.read_text())
    except json.JSONDecodeError as exc:
        raise HalpError(f"{p}: not valid JSON ({exc.msg} at line {exc.lineno})", stage=STAGE) from None
    except OSError as exc:
        raise HalpError(f"{p}: cannot read ({exc.strerror})", stage=STAGE) from None
    prof = Profile.from_dict(data, str(p))
    from .fit import refit_stale  # tables an earlier version fitted: fitted again from their points

    for tables in (prof.tables, *(c.tables for c in prof.contexts.values())):
        refit_stale(tables)
    return prof


def _reason(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__


def check_folder(folder: str | os.PathLike, option: str | None = None) -> None:
    """Refuse, before any measuring, a profile folder that cannot hold a profile: one line naming it
    (and ``option``, e.g. ``--profile PATH``): a file in the way, not writable, or not creatable.
    A missing folder is created when saving."""
    folder = Path(folder)
    where = f"{option}: " if option else ""
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise HalpError(f"{where}profile folder {folder}: {probe} is a file, not a folder", stage=STAGE)
    if not os.access(probe, os.W_OK | os.X_OK):
        what = "is not writable" if probe == folder else f"cannot be created ({probe} is not writable)"
        raise HalpError(f"{where}profile folder {folder} {what}; give --profile or HALP_ONNX_PROFILE_DIR a writable "
                        "place",
                        stage=STAGE)


@contextmanager
def lock(path: Path) -> Iterator[Any]:
    """Hold ``<path>.lock`` (creating the folder); a folder that cannot hold it is a one-line HalpError."""
    from filelock import FileLock

    path = Path(path)
    check_folder(path.parent)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise HalpError(f"profile folder {path.parent}: cannot create it ({_reason(exc)})", stage=STAGE) from None
    held = FileLock(str(path) + ".lock", timeout=600)
    try:
        held.acquire()
    except OSError as exc:  # filelock's Timeout is a TimeoutError
        raise HalpError(f"profile folder {path.parent}: cannot lock {path.name} ({_reason(exc)})",
                        stage=STAGE) from None
    try:
        yield held
    finally:
        held.release()


def write_profile(profile: Profile, path: str | os.PathLike) -> Path:
    """Atomically write ``profile`` (call under :func:`lock` when other processes may write it): a
    hidden ``.<name>.halp-tmp-<pid>-<hex>`` in the same folder (the pattern the CLI removes after a
    killed run), then a rename. A folder that cannot take it is a one-line HalpError naming it."""
    import secrets

    p = Path(path)
    check_folder(p.parent)
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    profile.created = profile.created or now
    profile.updated = now
    tmp = p.with_name(f".{p.name}.halp-tmp-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        with open(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666), "w") as fh:
            json.dump(profile.to_dict(), fh, indent=1, sort_keys=False)
            fh.write("\n")
        os.replace(tmp, p)
    except OSError as exc:
        raise HalpError(f"profile folder {p.parent}: cannot write {p.name} ({_reason(exc)})", stage=STAGE) from None
    finally:
        tmp.unlink(missing_ok=True)
    return p


def merge_tables(into: Profile, other: Profile) -> None:
    """Points another process saved meanwhile join ours (same signature: union of points); contexts
    we lack join too (a context is one model's whole measurement: ours stands where both have it)."""
    for cid, ctx in other.contexts.items():
        into.contexts.setdefault(cid, ctx)
    for key, table in other.tables.items():
        mine = into.tables.get(key)
        if mine is None:
            into.tables[key] = table
        elif mine.fit and mine.complete:  # a fitted table is whole: points of another kind are not merged in
            continue
        else:
            for k, v in table.points.items():
                if k not in mine.points:
                    mine.points[k] = v
                    if k in table.sources:
                        mine.sources[k] = table.sources[k]
            if table.complete and not mine.complete and (table.c_in_max, table.c_out_max) == (mine.c_in_max,
                                                                                               mine.c_out_max):
                into.tables[key] = table


def find_profile(name: str, fingerprint: dict[str, Any], *, shipped_dir: Path | None = None,
                 warn: bool = True) -> tuple[Profile | None, Path]:
    """The usable profile called ``name``: the user's, else a shipped one measured on a matching
    device; returns ``(profile or None, path a new measurement should be saved to)``. A profile of
    another device or runtime is never used silently: it is skipped with a warning."""
    user_path = user_dir() / f"{name}.json"
    want = {k: fingerprint.get(k) for k in MATCH_KEYS}
    for path in (user_path, (shipped_dir or SHIPPED_DIR) / f"{name}.json"):
        if not path.is_file():
            continue
        prof = read_profile(path)
        have = prof.match_key()
        diff = {k: (have.get(k), want.get(k)) for k in MATCH_KEYS if have.get(k) != want.get(k)}
        if not diff:
            return prof, user_path
        if warn:
            what = "; ".join(f"{k}: {a!r} there, {b!r} here" for k, (a, b) in diff.items())
            warnings.warn(f"{path}: profile measured on another device or runtime ({what}); not used, "
                          "re-measuring", stacklevel=2)
    return None, user_path


def find_other_device(name: str, fingerprint: dict[str, Any], *, shipped_dir: Path | None = None
                      ) -> tuple[Profile | None, Path | None]:
    """A profile called ``name`` of the same target, precision, batch and threads measured on another CPU
    or runtime (the user's first, then the shipped one): what :mod:`.transfer` recalibrates here."""
    same = ("precision", "batch", "threads", "gpu_name", "tensorrt", "torch", "driver")
    for path in (user_dir() / f"{name}.json", (shipped_dir or SHIPPED_DIR) / f"{name}.json"):
        if not path.is_file():
            continue
        try:
            prof = read_profile(path)
        except HalpError:
            continue
        have = prof.match_key()
        if prof.estimated or not prof.tables or any(have.get(k) != fingerprint.get(k) for k in same):
            continue
        return prof, path
    return None, None
