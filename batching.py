"""What batch size a server should run: the knee of the throughput curve and the largest batch within a latency
budget, read from `accelopt bench` measurements (one thread count at a time).

A dynamic batcher (Triton's `max_batch_size`, TorchServe's `batch_size`) needs one number: batching more than the
knee buys little throughput and only adds latency, and batching past the budget breaks the service's promise.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from accelopt.errors import BadInputError
from accelopt.targets.base import LatencyStats

# The knee: the smallest batch reaching this share of the best throughput measured.
KNEE_SHARE = 0.9
PERCENTILES = ("median", "p90", "p99")


@dataclass
class BatchingAdvice:
    threads: int
    knee_batch: int  # smallest batch within KNEE_SHARE of the best throughput
    best_batch: int  # batch with the best throughput
    best_throughput: float
    budget_ms: float | None
    percentile: str
    within_budget: int | None  # largest batch whose `percentile` latency fits the budget; None: none fits

    def to_dict(self) -> dict:
        return self.__dict__.copy()


def parse_budget(text: str) -> float:
    """'10ms', '10 ms', '0.5s' or a bare number of milliseconds -> milliseconds."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(ms|s)?\s*", text)
    if not match or float(match.group(1)) <= 0:
        raise BadInputError(f"--latency-budget {text!r}: expected a positive time such as 10ms or 0.5s")
    value = float(match.group(1))
    return value * 1000.0 if match.group(2) == "s" else value


def latency_at(stats: LatencyStats, percentile: str) -> float:
    return {"median": stats.median_ms, "p90": stats.p90_ms, "p99": stats.p99_ms}[percentile]


def advise(results: list[LatencyStats], budget_ms: float | None, percentile: str = "p90") -> list[BatchingAdvice]:
    """One advice per thread count, over the batch sizes measured at that count."""
    by_threads: dict[int, list[LatencyStats]] = {}
    for r in results:
        by_threads.setdefault(r.threads, []).append(r)
    advice = []
    for threads, rows in by_threads.items():
        rows = sorted(rows, key=lambda r: r.batch)
        best = max(rows, key=lambda r: r.throughput)
        knee = next(r for r in rows if r.throughput >= KNEE_SHARE * best.throughput)
        fits = [r.batch for r in rows if budget_ms is not None and latency_at(r, percentile) <= budget_ms]
        advice.append(BatchingAdvice(threads, knee.batch, best.batch, best.throughput, budget_ms, percentile,
                                     max(fits) if fits else None))
    return advice
