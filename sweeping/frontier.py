"""The accuracy-latency trade-off: which variants are Pareto-optimal, and which one a constraint picks.

A variant is Pareto-optimal when no other is at least as fast and at least as accurate while strictly
better in one of the two: those are the only operating points worth shipping, the rest is dominated.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from accelopt.errors import BadInputError

Point = tuple[float, float]  # (latency to minimize, quality to maximize)


def pareto_flags(points: list[Point | None]) -> list[bool]:
    """True for each point no other point dominates; None (unmeasured) is never on the frontier.
    Identical points do not dominate each other: both are flagged."""
    flags = []
    for i, p in enumerate(points):
        flags.append(p is not None and not any(
            q is not None and j != i and q[0] <= p[0] and q[1] >= p[1] and (q[0] < p[0] or q[1] > p[1])
            for j, q in enumerate(points)))
    return flags


Metrics = dict[str, Any]
# constraint -> (its value in a variant's metrics, which side the threshold bounds)
CONSTRAINTS: dict[str, tuple[Callable[[Metrics], float | None], str]] = {
    "max_accuracy_drop": (lambda m: m.get("accuracy_drop"), "max"),
    "min_accuracy": (lambda m: m.get("accuracy"), "min"),
    "min_cosine": (lambda m: m.get("cosine"), "min"),
    "max_latency_ms": (lambda m: m.get("latency_ms"), "max"),
    "min_speedup": (lambda m: m.get("speedup"), "min"),
    "max_size_mb": (lambda m: m["size_bytes"] / 1e6 if m.get("size_bytes") is not None else None, "max"),
}


@dataclass(frozen=True)
class Constraint:
    name: str
    threshold: float

    def value(self, metrics: Metrics) -> float | None:
        return CONSTRAINTS[self.name][0](metrics)

    def violation(self, metrics: Metrics) -> float:
        """How far the variant misses, relative to the threshold (absolute when it is 0); 0 = met,
        inf = not measured (a constraint that cannot be checked is not met)."""
        value = self.value(metrics)
        if value is None:
            return float("inf")
        excess = value - self.threshold if CONSTRAINTS[self.name][1] == "max" else self.threshold - value
        return max(excess, 0.0) / (abs(self.threshold) or 1.0)

    def __str__(self) -> str:
        return f"{self.name}={self.threshold:g}"


def parse_constraints(text: str) -> list[Constraint]:
    """`max_accuracy_drop=0.01,min_cosine=0.99` -> constraints; unknown names list the valid ones."""
    out = []
    for item in (p.strip() for p in text.split(",")):
        name, sep, value = item.partition("=")
        name = name.strip()
        if name not in CONSTRAINTS:
            raise BadInputError(f"--pick {item!r}: unknown constraint {name!r}; valid: {', '.join(CONSTRAINTS)}")
        try:
            out.append(Constraint(name, float(value)))
        except ValueError:
            raise BadInputError(f"--pick {item!r}: expected {name}=NUMBER") from None
    return out


@dataclass
class Pick:
    label: str | None  # the fastest variant meeting every constraint, or None
    closest: str | None = None  # when none does: the one with the smallest total violation
    missed: list[str] | None = None  # the closest one's missed constraints, in words


def pick(candidates: dict[str, Metrics], constraints: list[Constraint]) -> Pick:
    """The fastest candidate meeting all constraints; otherwise the closest miss, named with its shortfall."""
    meeting = [label for label, m in candidates.items() if all(c.violation(m) == 0 for c in constraints)]
    timed = [label for label in meeting if candidates[label].get("latency_ms") is not None]
    if meeting:
        return Pick(min(timed, key=lambda label: candidates[label]["latency_ms"]) if timed else meeting[0])
    if not candidates:
        return Pick(None)
    closest = min(candidates, key=lambda label: sum(c.violation(candidates[label]) for c in constraints))
    m = candidates[closest]
    missed = [f"{c.name.split('_', 1)[1]} {_num(c.value(m))} vs {c}" for c in constraints if c.violation(m) > 0]
    return Pick(None, closest, missed)


def _num(v: float | None) -> str:
    return "not measured" if v is None else f"{v:.4g}"
