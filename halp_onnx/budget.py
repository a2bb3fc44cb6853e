"""``LatencyBudget``: the one value type for ``--latency``.

A budget is either a share of the dense model's latency on the target (``0.5``, ``0.5x``, ``50%``)
or an absolute time (``3.2ms``, ``3200us``). It is parsed once (:meth:`LatencyBudget.parse`) and
resolved once against the dense latency on the target (:meth:`LatencyBudget.resolve`); the knapsack,
the closed loop, the report and every error message read the same :class:`ResolvedBudget`.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, replace

from .errors import HalpError

STAGE = "budget"
_NUMBER = r"([0-9]*\.?[0-9]+(?:e-?[0-9]+)?)"
_UNITS_MS = {"ms": 1.0, "us": 1e-3, "µs": 1e-3, "s": 1e3}


@dataclass(frozen=True)
class LatencyBudget:
    """A parsed ``--latency``: ``share`` of the dense latency, or ``ms`` absolute (exactly one is set)."""

    text: str
    share: float | None = None
    ms: float | None = None

    @classmethod
    def parse(cls, value: "str | float | LatencyBudget", option: str = "--latency") -> "LatencyBudget":
        if isinstance(value, LatencyBudget):
            return value
        raw = str(value).strip()
        text = raw.lower()
        m = re.fullmatch(_NUMBER + r"\s*(ms|us|µs|s|x|%)?", text)
        if not m:
            raise HalpError(f"{option} {value!r}: expected a share of the dense latency (0.5, 50%) or a time "
                            "(3.2ms, 3200us)", stage=STAGE)
        number, unit = float(m.group(1)), m.group(2)
        if unit in _UNITS_MS:
            if number <= 0:
                raise HalpError(f"{option} {value!r}: must be positive", stage=STAGE)
            return cls(raw, ms=number * _UNITS_MS[unit])
        share = number / 100 if unit == "%" else number
        if not 0 < share <= 1:
            raise HalpError(f"{option} {value!r}: a share must be in (0, 1] (or give a time such as 3.2ms)",
                            stage=STAGE)
        return cls(raw, share=share)

    @property
    def kind(self) -> str:
        return "share" if self.share is not None else "ms"

    @property
    def amount(self) -> float:
        value = self.share if self.share is not None else self.ms
        assert value is not None
        return value

    def as_tuple(self) -> tuple[str, float]:
        """``("share", 0.5)`` or ``("ms", 3.2)``."""
        return self.kind, self.amount

    def resolve(self, dense_ms: float) -> "ResolvedBudget":
        """This budget against the dense model's latency (predicted on the target's tables)."""
        ms = self.share * dense_ms if self.share is not None else float(self.amount)
        return ResolvedBudget(self, dense_ms, ms)


@dataclass(frozen=True)
class ResolvedBudget:
    """A budget resolved against the dense latency: ``ms`` is what the knapsack spends (in the tables'
    units); ``target_measured_ms`` is the same budget against the measured dense latency, once the
    closed loop has measured it."""

    budget: LatencyBudget
    dense_ms: float
    ms: float
    dense_measured_ms: float | None = None

    @property
    def share(self) -> float:
        return self.ms / self.dense_ms if self.dense_ms > 0 else float("nan")

    @property
    def request(self) -> str:
        """How the report and the messages spell the budget."""
        if self.budget.share is not None:
            return f"{self.budget.share:g} x dense ({self.ms:.4g} ms)"
        return f"{self.budget.amount:g} ms"

    @property
    def target_measured_ms(self) -> float | None:
        if self.dense_measured_ms is None:
            return None
        return self.budget.share * self.dense_measured_ms if self.budget.share is not None else self.budget.amount

    def with_measured(self, dense_measured_ms: float) -> "ResolvedBudget":
        return replace(self, dense_measured_ms=dense_measured_ms)

    def infeasible(self, min_ms: float, target: str, min_keep: float) -> HalpError:
        return HalpError(f"latency budget {self.ms:.4g} ms ({self.ms / self.dense_ms:.3f} x dense {self.dense_ms:.4g} "
                         f"ms) is below the smallest achievable {min_ms:.4g} ms ({min_ms / self.dense_ms:.3f} x) on "
                         f"{target} with min-keep {min_keep:g}", stage="compile")

    def to_dict(self) -> dict:
        return {"request": self.budget.text, "kind": self.budget.kind, "amount": self.budget.amount,
                "dense_ms": self.dense_ms, "budget_ms": self.ms, "share": self.share,
                "dense_measured_ms": self.dense_measured_ms, "target_measured_ms": self.target_measured_ms}
