"""The target and runner contracts shared by every backend (ORT, TVM, LiteRT, Core ML, TensorRT)."""

from __future__ import annotations

import statistics
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np
import onnx
from pydantic import BaseModel, ConfigDict


@dataclass
class TensorSpec:
    name: str
    shape: list[int | str | None]  # str/None = dynamic dimension
    dtype: np.dtype


@dataclass
class LatencyStats:
    """Latency of one batch size at one thread count; times in milliseconds per batch."""

    batch: int
    threads: int
    warmup: int
    runs: int
    median_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    min_ms: float
    throughput: float  # samples per second at the median
    peak_memory_mb: float | None = None  # extra resident memory while running; None where unmeasurable

    @classmethod
    def from_times(cls, times_ms: list[float], *, batch: int, threads: int, warmup: int,
                   peak_memory_mb: float | None = None) -> LatencyStats:
        median = statistics.median(times_ms)
        return cls(
            batch=batch, threads=threads, warmup=warmup, runs=len(times_ms),
            median_ms=median,
            p90_ms=float(np.percentile(times_ms, 90)),
            p99_ms=float(np.percentile(times_ms, 99)),
            mean_ms=statistics.fmean(times_ms),
            min_ms=min(times_ms),
            throughput=batch / (median / 1000) if median > 0 else float("inf"),
            peak_memory_mb=peak_memory_mb,
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class KernelTiming:
    """One kernel a runtime ran, timed by the runtime's own profiler over every profiled run."""

    name: str  # the runtime's node name
    op_type: str  # what the runtime ran: FusedConv, QLinearConv, QuickGelu...
    times_ms: list[float]  # one per profiled run (0 where it did not run)
    sources: list[int]  # indices of the input model's nodes it computes; empty for nodes the runtime inserted
    bytes_moved: int | None = None  # inputs + weights + outputs, from the shapes the runtime reports
    precision: str | None = None  # element type of its first input, as the runtime names it ("float", "uint8")


@dataclass
class KernelProfile:
    """What a target's profiler measured: kernels, and the end-to-end latency they are shares of."""

    kernels: list[KernelTiming]
    latency: LatencyStats  # measured without the profiler (its bookkeeping slows every kernel), in turn with
    profiled_ms: list[float]  # the profiled runs: the end-to-end time of each
    runtime: str  # e.g. "onnxruntime 1.22.0 CPU, graph optimization all"
    notes: list[str] = field(default_factory=list)


class Runner(Protocol):
    """Runs one artifact: the same interface for every runtime, so compare and bench work on all."""

    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    threads: int

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def bench(self, feeds: dict[str, np.ndarray], warmup: int = 5, runs: int = 50) -> LatencyStats: ...


# Ops another recipe step removes, by the step: the hint a target's check gives with an unsupported op.
STEP_HINTS = {
    "com.microsoft": "ORT-only contrib op: set the fuse step's `ort: off` and `transformer: off` (or drop fuse)",
    "Constant": "run simplify first", "If": "run simplify first: it folds constant control flow",
}


def step_hint(node: onnx.NodeProto, hints: dict[str, str] = STEP_HINTS) -> str:
    """' (what to do)' for an op a step would remove, else ''."""
    hint = hints.get(node.domain) or hints.get(node.op_type)
    return f" ({hint})" if hint else ""


@dataclass
class Finding:
    severity: str  # "error" | "warning" | "info"
    message: str
    node: str | None = None


@dataclass
class Artifact:
    path: Path  # the main file a runner loads
    files: list[Path] = field(default_factory=list)  # everything that ships, main file included
    kind: str = "onnx"
    meta: dict[str, Any] = field(default_factory=dict)


class TargetConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Target(ABC):
    name: ClassVar[str]
    summary: ClassVar[str]
    Config: ClassVar[type[TargetConfig]] = TargetConfig

    def __init__(self, config: TargetConfig | None = None):
        self.config = config if config is not None else self.Config()
        # Set by the pipeline: progress and log lines of a long lowering (tuning) reach the CLI through it.
        self.events: Callable[[str, dict[str, Any]], None] | None = None
        # Set by the pipeline before `lower` when the recipe has calibration data (accelopt.data.Dataset):
        # targets that quantize while lowering (TFLite full-integer) calibrate on it.
        self.calibration: Any = None

    def emit(self, kind: str, **info: Any) -> None:
        if self.events is not None:
            self.events(kind, info)

    @abstractmethod
    def check(self, model: onnx.ModelProto) -> list[Finding]:
        """Everything that would stop `lower` (reported all at once), plus warnings."""

    @abstractmethod
    def lower(self, model: onnx.ModelProto, out_dir: Path) -> Artifact:
        """Write the deployable artifact under `out_dir`."""

    @abstractmethod
    def runner(self, artifact: Artifact, threads: int | None = None) -> Runner | None:
        """A runner for the artifact, or None when the runtime does not exist on this machine."""

    def needs(self) -> set[str]:
        """Data this configuration cannot lower without ("calibration"): checked before any work starts."""
        return set()

    def output_precision(self) -> str:
        """The precision lowering itself produces (fp32 unless the target quantizes or narrows): the artifact
        is checked with the tolerances of the least precise of it and the steps."""
        return "fp32"

    def capabilities(self) -> dict[str, Any]:
        """Facts passes may use (int8 kernels, preferred layout, alignment multiple)."""
        return {}

    def profile(self, model: onnx.ModelProto, feeds: dict[str, np.ndarray], *, threads: int | None = None,
                warmup: int = 5, runs: int = 20) -> KernelProfile | None:
        """Per-kernel times from the runtime's own profiler, mapped to `model`'s nodes (`accelopt profile`);
        None when the target has no profiler."""
        return None


def wall_clock_bench(runner: Runner, feeds: dict[str, np.ndarray], warmup: int = 5, runs: int = 50) -> LatencyStats:
    """Wall time per `runner.run` call (inputs in, outputs out), measured the way OrtRunner.bench does, so
    runtimes without a profiler of their own are timed on equal terms."""
    if runs < 1:
        raise ValueError(f"runs must be >= 1, got {runs}")
    for _ in range(warmup):
        runner.run(feeds)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        runner.run(feeds)
        times.append((time.perf_counter() - start) * 1000)
    first = feeds[runner.inputs[0].name] if runner.inputs else None
    batch = int(first.shape[0]) if first is not None and first.ndim else 1
    return LatencyStats.from_times(times, batch=batch, threads=runner.threads, warmup=warmup)


def run_all(runner: Runner, feeds: dict[str, np.ndarray], batch_size: int | None = None) -> dict[str, np.ndarray]:
    """Run every sample in batches and concatenate the outputs along axis 0.

    `batch_size` None uses the model's static batch (first input, dim 0), else one run for all. A short
    last batch is padded to a static batch by repeating its last sample, and the padding is dropped.
    """
    n = len(next(iter(feeds.values())))
    if n == 0:
        raise ValueError("run_all needs at least one sample")
    first_dim = runner.inputs[0].shape[0] if runner.inputs[0].shape else None
    static = first_dim if isinstance(first_dim, int) else None
    size = batch_size or static or n
    parts: dict[str, list[np.ndarray]] = {}
    for start in range(0, n, size):
        batch = {k: v[start:start + size] for k, v in feeds.items()}
        real = len(next(iter(batch.values())))
        padded = static is not None and real < static
        if padded:
            batch = {k: np.concatenate([v, np.repeat(v[-1:], static - real, axis=0)]) for k, v in batch.items()}
        for name, out in runner.run(batch).items():
            parts.setdefault(name, []).append(out[:real] if padded else out)
    return {k: v[0] if len(v) == 1 else np.concatenate(v, axis=0) for k, v in parts.items()}
