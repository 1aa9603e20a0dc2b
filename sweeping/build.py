"""Building a sweep's variants: one function per variant, and the executor that runs many.

`build_variant(spec) -> VariantResult` is the whole interface between the sweep and where its work
runs: a self-contained spec (paths, recipe reference, overrides) in, a plain picklable record out.
`build_all` needs nothing from its executor but `submit` and futures, so a cluster executor (e.g.
dask.distributed's `Client.get_executor()`, given a filesystem shared for the output and cache
folders) can replace `_local_pool` later without touching the rest of the sweep.

Nothing is timed here: builds may run in parallel, so latency is measured afterwards, side by side.
"""

from __future__ import annotations

import multiprocessing
import time
from concurrent.futures import Executor, Future, ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from typing import Any, Callable

from accelopt import pipeline
from accelopt.errors import Interrupted, first_line
from accelopt.sweeping.variants import VariantSpec


@dataclass
class VariantResult:
    label: str
    ok: bool
    seconds: float
    error: str | None = None
    report: dict[str, Any] | None = None  # the variant's report.json, when it built


def build_variant(spec: VariantSpec, on_event: pipeline.Events | None = None) -> VariantResult:
    """Run one variant through the pipeline into its own folder. Any failure becomes the record's
    one-line error, so one broken variant never stops a sweep; only Ctrl-C propagates."""
    start = time.perf_counter()
    if on_event:
        on_event("variant", {"label": spec.label})
    opts = pipeline.RunOptions(out_dir=spec.out_dir, data=spec.data, cache_dir=spec.cache_dir, on_event=on_event)
    try:
        report = pipeline.run(spec.model, spec.resolve(), opts)
    except (Interrupted, KeyboardInterrupt):
        raise
    except Exception as e:
        return VariantResult(spec.label, False, _seconds(start), error=first_line(e, 300))
    return VariantResult(spec.label, True, _seconds(start), report=report)


def build_all(specs: list[VariantSpec], jobs: int, on_result: Callable[[VariantResult], None],
              on_event: pipeline.Events | None = None) -> None:
    """Build every spec, calling `on_result` as each one finishes (in completion order).

    `jobs` 1 builds in this process, with per-step events. With more, the first variant builds alone
    first, so the steps every variant shares (simplify, fuse, a calibration) are computed once and
    served from the step cache to the parallel rest instead of being computed by each at once."""
    if jobs <= 1 or len(specs) <= 1:
        for spec in specs:
            on_result(build_variant(spec, on_event))
        return
    first, rest = specs[0], specs[1:]
    on_result(build_variant(first, on_event))
    with _local_pool(min(jobs, len(rest))) as pool:
        futures = {pool.submit(build_variant, spec): spec for spec in rest}
        try:
            for future in as_completed(futures):
                on_result(_result(future, futures[future]))
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise


def _local_pool(workers: int) -> Executor:
    """Worker processes started fresh ('spawn'): forking a process that holds ONNX Runtime thread pools
    can deadlock, and fresh workers keep Python's own Ctrl-C behaviour."""
    return ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"))


def _result(future: Future, spec: VariantSpec) -> VariantResult:
    """A worker that died (killed for memory, crashed in a native library) fails only its variant."""
    try:
        return future.result()
    except KeyboardInterrupt:
        raise Interrupted("interrupted") from None
    except Exception as e:
        return VariantResult(spec.label, False, 0.0, error=f"worker failed: {first_line(e, 300, with_type=True)}")


def _seconds(start: float) -> float:
    return round(time.perf_counter() - start, 2)
