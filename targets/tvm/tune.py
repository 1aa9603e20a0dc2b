"""MetaSchedule tuning in a child process group: a time limit, Ctrl-C and errors end it and every worker it
started (notes §3 #8), a segfault stays in the child, and the JSON database survives an interrupted run.

Run as `python -m accelopt.targets.tvm.tune JOB.json` by `tune()`; nothing else calls the main block.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import onnx

from accelopt.errors import ConversionError

WORKLOADS = "database_workload.json"
RECORDS = "database_tuning_record.json"
_POLL_S = 2.0
_FAILED_RUN_S = 1e9  # MetaSchedule records a failed build or run as 1e10 s
_POOL_BATCHES = 16
_BUILD_TIMEOUT_S = 60


def database_files(folder: Path) -> list[Path]:
    return [Path(folder) / WORKLOADS, Path(folder) / RECORDS]


def has_database(folder: Path) -> bool:
    return all(p.is_file() for p in database_files(folder))


def progress_of(folder: Path) -> tuple[int, int, float | None]:
    """Trials recorded, kernels with a working schedule, and the sum of each kernel's best time (ms)."""
    best: dict[int, float] = {}
    trials = 0
    for line in _lines(Path(folder) / RECORDS):
        workload, record = json.loads(line)
        trials += 1
        secs = [float(s) for s in record[1] or []]
        if secs and max(secs) < _FAILED_RUN_S:
            best[workload] = min(best.get(workload, float("inf")), sum(secs) / len(secs))
    return trials, len(best), sum(best.values()) * 1000 if best else None


def _lines(path: Path) -> list[str]:
    """Complete JSON lines: a run killed mid-write leaves a truncated last one."""
    if not path.is_file():
        return []
    good = []
    for line in path.read_text().splitlines():
        try:
            json.loads(line)
        except json.JSONDecodeError:
            continue
        good.append(line)
    return good


def load_database(folder: Path):
    """The JSON database in `folder`, with any line an interrupted run left half-written dropped."""
    from tvm.s_tir import meta_schedule as ms

    repair(folder)
    return ms.database.JSONDatabase(path_workload=str(Path(folder) / WORKLOADS),
                                    path_tuning_record=str(Path(folder) / RECORDS))


def repair(folder: Path) -> None:
    """Drop truncated lines so JSONDatabase can load what an interrupted run committed."""
    for path in database_files(folder):
        if path.is_file():
            path.write_text("".join(line + "\n" for line in _lines(path)))


def tune(model: onnx.ModelProto, target: dict[str, Any], db_dir: Path, *, trials: int, per_task: int | None,
         time_s: float | None, threads: int, log: Callable[[str], None],
         variants: list[dict[str, str]] | None = None, tracker: tuple[str, str] | None = None,
         progress: Callable[[int, int, str], None] | None = None, integer: bool = False) -> None:
    """Tune `model` into the JSON database in `db_dir` (records already there seed the search)."""
    with tempfile.TemporaryDirectory(prefix="accelopt-tvm-tune-") as tmp:
        job = Path(tmp) / "job.json"
        onnx.save(model, str(Path(tmp) / "model.onnx"))
        job.write_text(json.dumps({"model": str(Path(tmp) / "model.onnx"), "target": target, "db_dir": str(db_dir),
                                   "work_dir": tmp, "trials": trials, "per_task": per_task,
                                   "variants": variants or [], "tracker": list(tracker) if tracker else None,
                                   "integer": integer}))
        env = {**os.environ, "TVM_NUM_THREADS": str(threads)}  # measure with the deployment thread count
        with open(Path(tmp) / "child.log", "w") as out:
            child = subprocess.Popen([sys.executable, "-m", "accelopt.targets.tvm.tune", str(job)], env=env,
                                     stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
            try:
                _watch(child, db_dir, trials, time_s, log, progress or (lambda done, total, text: log(text)))
            finally:
                _end_group(child)
        repair(db_dir)
        if getattr(child, "timed_out", False):  # say where the tuner was, since its log goes with the temp dir
            log(f"tvm tuning: the tuner's last log line: {_child_error(Path(tmp) / 'child.log', 0)}")
        elif child.returncode not in (0, None):
            raise ConversionError(f"tvm tuning failed: {_child_error(Path(tmp) / 'child.log', child.returncode)}")


def _watch(child: subprocess.Popen, db_dir: Path, trials: int, time_s: float | None, log: Callable[[str], None],
           progress: Callable[[int, int, str], None]) -> None:
    """Report progress while the child tunes (trials recorded, sum of the best time of each measured kernel);
    stop it at the time limit."""
    start, shown, done = time.monotonic(), -1, 0
    seeded = progress_of(db_dir)[0]  # records of an earlier run that seeds this one
    while child.poll() is None:
        time.sleep(_POLL_S)
        elapsed = time.monotonic() - start
        recorded, kernels, best = progress_of(db_dir)
        done = recorded - seeded
        if done != shown:
            shown = done
            best_text = f", best {best:.3f} ms over {kernels} kernel(s)" if best is not None else ""
            progress(done, trials, f"tvm tuning: {done}/{trials} trials, {elapsed:.0f} s{best_text}")
        if time_s is not None and elapsed > time_s and child.poll() is None:
            log(f"tvm tuning: time limit {time_s:g} s reached after {done} trials; keeping the records so far")
            child.timed_out = True  # type: ignore[attr-defined]
            return
    log(f"tvm tuning: {progress_of(db_dir)[0] - seeded} trials measured in {time.monotonic() - start:.0f} s")


def _end_group(child: subprocess.Popen) -> None:
    """Terminate the child and every worker it started (they share its process group)."""
    if child.poll() is not None:
        _kill_group(child.pid, signal.SIGKILL)  # orphaned popen workers outlive a finished child
        return
    _kill_group(child.pid, signal.SIGTERM)
    try:
        child.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass
    _kill_group(child.pid, signal.SIGKILL)
    child.wait()


def _kill_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _child_error(log_path: Path, code: int) -> str:
    if code == -signal.SIGSEGV:
        return "the tuner crashed (segfault); check apache-tvm-ffi==0.1.14.post1"
    lines = [line for line in log_path.read_text(errors="replace").splitlines() if line.strip()]
    return (lines[-1][:300] if lines else f"exit code {code}")


def task_groups(model: onnx.ModelProto, target, variants: list[dict[str, str]], integer: bool = False) -> list[list]:
    """Tuning tasks: every kernel of the first variant (direct convs), then for each Winograd variant the convs it
    changes. Each group is tuned by its own scheduler: one scheduler over direct and Winograd tasks together
    failed in TVM 0.27 ("The block no longer exists in the IRModule"), one per group does not."""
    from tvm.s_tir import meta_schedule as ms

    from accelopt.targets.tvm.frontend import fused, prepare
    from accelopt.targets.tvm.winograd import kernel_of

    groups = []
    for i, choices in enumerate(variants or [{}]):
        tasks = ms.relax_integration.extract_tasks(fused(prepare(model, choices, integer), target), target)
        groups.append([t for t in tasks if i == 0 or (kernel_of(t.task_name) or ("direct",))[0] != "direct"])
    return [g for g in groups if g]


def _pooled_builder(workers: int, initializer: Callable[[], None]):
    """A MetaSchedule builder whose worker pool lives across iterations. LocalBuilder starts a fresh pool for
    every batch (for a memory leak in long-lived workers), and each worker spends 6-11 s importing TVM: on a
    model with ~50 kernels that start-up, not building, was the tuning budget. The pool is renewed every
    _POOL_BATCHES batches instead."""
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.builder import BuilderResult, PyBuilder
    from tvm.s_tir.meta_schedule.builder.local_builder import _serialize_params, _worker_func
    from tvm.support.popen_pool import PopenPoolExecutor, StatusKind

    @derived_object
    class PooledBuilder(PyBuilder):
        def __init__(self):
            super().__init__()
            self.pool, self.batches = None, 0

        def build(self, build_inputs):
            if self.pool is None or self.batches >= _POOL_BATCHES:
                if self.pool is not None:
                    self.pool.shutdown()
                self.pool = PopenPoolExecutor(max_workers=workers, timeout=_BUILD_TIMEOUT_S,
                                              initializer=initializer)
                self.batches = 0
            self.batches += 1
            jobs = [(None, None, b.mod, b.target, _serialize_params(b.params)) for b in build_inputs]
            return [BuilderResult(r.value, None) if r.status == StatusKind.COMPLETE
                    else BuilderResult(None, f"build {r.status.name.lower()}: {r.value}")
                    for r in self.pool.map_with_error_catching(lambda job: _worker_func(*job), jobs)]

    return PooledBuilder()


def _run_job(job: dict[str, Any]) -> None:
    """The child: extract the tasks, spread the budget, tune them into the JSON database."""
    from accelopt.targets.tvm.env import cpu_worker_setup, fast_inspect, import_tvm

    setup = cpu_worker_setup if job["target"]["kind"] == "llvm" else fast_inspect  # GPUs need their intrinsics
    setup()
    tvm = import_tvm()
    from tvm.s_tir import meta_schedule as ms
    from tvm.s_tir.meta_schedule.relax_integration import extracted_tasks_to_tune_contexts

    target = tvm.target.Target(job["target"])
    if job["integer"]:
        from accelopt.targets.tvm.integer import fix_vnni_intrinsic

        fix_vnni_intrinsic()  # the tensorize postprocessor copies the intrinsic into each candidate
    groups = task_groups(onnx.load(job["model"]), target, job["variants"], job["integer"])
    # Every kernel needs some trials (an untuned one has no schedule at all): the first round gives each half
    # its even share of the budget, and the gradient scheduler spends the rest where the weighted latency can
    # still drop, up to 4 shares per kernel (the heavy convs; a reshape needs no second round).
    share = max(1, job["trials"] // sum(len(g) for g in groups))  # at least one trial for every kernel
    per_task = job["per_task"] or 4 * share
    per_iter = max(1, min(32, share // 2 if job["per_task"] is None and share >= 8 else share))
    database = load_database(Path(job["db_dir"]))
    builder = _pooled_builder(os.cpu_count() or 1, setup)
    evaluator = ms.runner.EvaluatorConfig(number=3, repeat=1, min_repeat_ms=50, enable_cpu_cache_flush=False)
    if job["tracker"]:  # measured on the devices registered under the key (notes §11); builds stay here
        from accelopt.targets.tvm.remote import check_tracker, rpc_runner

        address, key = job["tracker"]
        runner = rpc_runner(address, key, check_tracker(address, key), evaluator, initializer=setup)
    else:
        runner = ms.runner.LocalRunner(initializer=setup, evaluator_config=evaluator)
    for tasks in groups:
        # The evolutionary search's defaults (population 512, 4 generations) spent ~20 s per iteration on 2 cores
        # choosing 32 candidates; 128 and 2 take ~3 s, and small budgets measure few candidates anyway.
        strategy = ms.search_strategy.EvolutionarySearch(population_size=128, genetic_num_iters=2,
                                                         init_min_unmeasured=64)
        contexts, weights = extracted_tasks_to_tune_contexts(tasks, job["work_dir"], strategy=strategy, seed=0)
        ms.tune_tasks(tasks=contexts, task_weights=weights, work_dir=job["work_dir"],
                      max_trials_global=share * len(tasks), max_trials_per_task=per_task,
                      num_trials_per_iter=per_iter, builder=builder, runner=runner,
                      database=database, cost_model="xgb")


if __name__ == "__main__":
    _run_job(json.loads(Path(sys.argv[1]).read_text()))
