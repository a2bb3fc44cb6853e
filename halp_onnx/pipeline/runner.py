"""The pipeline runner: stages with declared inputs and outputs, run in the one order written in
:mod:`halp_onnx.pipeline.stages`.

A :class:`Stage` names the results it ``needs`` (and ``optional`` ones it reads when present) and the
one result it ``makes``. :meth:`Pipeline.run` works out which stages a configuration needs (a stage
whose ``when`` is false, whose output is ``given``, or whose output nothing downstream reads, is
skipped), runs them in order, times each one, and names the stage in every error: a
:class:`~halp_onnx.errors.HalpError` without a stage gets the stage's name, and an unexpected
exception becomes a :class:`StageFailure` that says which stage broke. ``until`` stops after a stage,
so a user can inspect any intermediate result (each is a frozen, serialisable object).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Callable, Iterator, Mapping, Sequence

from ..errors import HalpError


class StageFailure(Exception):
    """An unexpected error inside a stage (a bug, not a bad input): names the stage, keeps the cause."""

    def __init__(self, stage: str, error: BaseException):
        self.stage = stage
        self.error = error
        first = str(error).splitlines()[0] if str(error) else ""
        super().__init__(f"stage {stage}: {type(error).__name__}: {first}")


def _always(config: Any) -> bool:
    return True


@dataclass(frozen=True)
class Stage:
    name: str
    makes: str
    run: Callable[[Any, Mapping[str, Any]], Any]  # (config, results so far) -> result
    needs: tuple[str, ...] = ()
    optional: tuple[str, ...] = ()
    when: Callable[[Any], bool] = _always
    doc: str = ""


@dataclass(frozen=True)
class PipelineRun:
    """The results of one run, by name (``run["analysis"]``), with each stage's wall time."""

    config: Any
    results: Mapping[str, Any]
    seconds: Mapping[str, float]
    stages: tuple[str, ...]  # the stages that ran, in order

    def __getitem__(self, name: str) -> Any:
        return self.results[name]

    def __contains__(self, name: object) -> bool:
        return name in self.results

    def get(self, name: str, default: Any = None) -> Any:
        return self.results.get(name, default)

    def to_dict(self) -> dict:
        out: dict[str, Any] = {"stages": list(self.stages),
                               "seconds": {k: round(v, 3) for k, v in self.seconds.items()}}
        for name, value in self.results.items():
            to_dict = getattr(value, "to_dict", None)
            out[name] = to_dict() if callable(to_dict) else None
        return out


@dataclass(frozen=True)
class Pipeline:
    stages: tuple[Stage, ...]
    _by_name: Mapping[str, Stage] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        made: set[str] = set()
        names: dict[str, Stage] = {}
        for st in self.stages:
            if st.name in names:
                raise ValueError(f"pipeline: stage {st.name!r} twice")
            missing = [n for n in st.needs if n not in made]
            if missing:
                raise ValueError(f"pipeline: stage {st.name!r} needs {missing}, which no earlier stage makes")
            made.add(st.makes)
            names[st.name] = st
        object.__setattr__(self, "_by_name", MappingProxyType(names))

    def __iter__(self) -> Iterator[Stage]:
        return iter(self.stages)

    def stage(self, name: str) -> Stage:
        try:
            return self._by_name[name]
        except KeyError:
            raise HalpError(f"no stage {name!r}; stages: {', '.join(self._by_name)}", stage="pipeline") from None

    def plan(self, config: Any, *, until: str | None = None, given: Mapping[str, Any] | None = None) -> list[Stage]:
        """The stages a run would execute, in order."""
        given = given or {}
        last = self.stage(until) if until is not None else self.stages[-1]
        upto = self.stages[: self.stages.index(last) + 1]
        active = [st for st in upto if st.makes not in given and st.when(config)]
        wanted = {last.makes} if until is not None else {st.makes for st in active if st is last or not any(
            st.makes in (o.needs + o.optional) for o in upto)}
        chosen: list[Stage] = []
        for st in reversed(active):
            if st.makes in wanted:
                chosen.append(st)
                wanted.update(st.needs)
                wanted.update(st.optional)
        chosen.reverse()
        return chosen

    def run(self, config: Any, *, until: str | None = None, given: Mapping[str, Any] | None = None,
            on_stage: Callable[[str, float], None] | None = None) -> PipelineRun:
        """Run the stages ``config`` needs, up to ``until`` (default: all), with ``given`` results
        standing in for the stages that would make them."""
        results: dict[str, Any] = dict(given or {})
        seconds: dict[str, float] = {}
        ran: list[str] = []
        for st in self.plan(config, until=until, given=given):
            absent = [n for n in st.needs if n not in results]
            if absent:
                raise HalpError(f"stage {st.name} needs {', '.join(absent)}, which this configuration does not make",
                                stage="pipeline")
            view = MappingProxyType(results)
            t0 = time.perf_counter()
            try:
                out = st.run(config, view)
            except HalpError as err:
                if err.stage is None:
                    raise HalpError(err.message, stage=st.name) from err
                raise
            except (KeyboardInterrupt, MemoryError, StageFailure):
                raise
            except Exception as err:
                raise StageFailure(st.name, err) from err
            seconds[st.name] = time.perf_counter() - t0
            results[st.makes] = out
            ran.append(st.name)
            if on_stage is not None:
                on_stage(st.name, seconds[st.name])
        return PipelineRun(config, MappingProxyType(results), MappingProxyType(seconds), tuple(ran))

    def describe(self) -> list[dict]:
        return [{"stage": st.name, "makes": st.makes, "needs": list(st.needs), "optional": list(st.optional),
                 "doc": st.doc} for st in self.stages]


def stage_names(stages: Sequence[Stage]) -> tuple[str, ...]:
    return tuple(st.name for st in stages)
