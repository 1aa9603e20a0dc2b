"""Side-by-side latency: speed claims are ratios measured in one process, interleaved.

Timing one model and then another lets machine noise (other tenants, frequency changes) land on
one side only. Interleaving rounds and keeping each runner's best round median cancels most of it.
"""

from __future__ import annotations

import numpy as np

from accelopt.targets.base import LatencyStats, Runner


def batch_feeds(feeds: dict[str, np.ndarray], batch: int) -> dict[str, np.ndarray]:
    """The first `batch` samples, tiled when there are fewer: latency needs exactly that batch."""
    out = {}
    for name, arr in feeds.items():
        reps = -(-batch // max(len(arr), 1))
        tiled = np.concatenate([arr] * reps, axis=0) if reps > 1 else arr
        out[name] = np.ascontiguousarray(tiled[:batch])
    return out


def side_by_side(runners: dict[str, Runner], feeds: dict[str, np.ndarray], *, rounds: int = 3,
                 warmup: int = 5, runs: int = 30) -> dict[str, LatencyStats]:
    """Bench every runner `rounds` times, round-robin; keep each one's round with the lowest median."""
    best: dict[str, LatencyStats] = {}
    for _ in range(rounds):
        for name, runner in runners.items():
            stats = runner.bench(feeds, warmup=warmup, runs=runs)
            if name not in best or stats.median_ms < best[name].median_ms:
                best[name] = stats
    return best


def speedup(reference: LatencyStats | None, candidate: LatencyStats | None) -> float | None:
    if reference is None or candidate is None or candidate.median_ms <= 0:
        return None
    return reference.median_ms / candidate.median_ms
