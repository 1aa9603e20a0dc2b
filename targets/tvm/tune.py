"""MetaSchedule tuning in a child process group: a time limit, Ctrl-C and errors end it and every worker it
started (notes §3 #8), a segfault stays in the child, and the JSON database survives an interrupted run.

Run as `python -m accelopt.targets.tvm.tune JOB.json` by `tune()`; nothing else calls the main block.
"""

from __future__ import annotations

import json
import math
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


def database_files(folder: Path) -> list[Path]:
    return [Path(folder) / WORKLOADS, Path(folder) / RECORDS]


def has_database(folder: Path) -> bool:
    return all(p.is_file() for p in database_files(folder))


def progress(folder: Path) -> tuple[int, int, float | None]:
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


def repair(folder: Path) -> None:
    """Drop truncated lines so JSONDatabase can load what an interrupted run committed."""
    for path in database_files(folder):
        if path.is_file():
            path.write_text("".join(line + "\n" for line in _lines(path)))


def tune(model: onnx.ModelProto, target: dict[str, Any], db_dir: Path, *, trials: int, per_task: int | None,
         time_s: float | None, threads: int, log: Callable[[str], None]) -> None:
    """Tune `model` into the JSON database in `db_dir` (records already there seed the search)."""
    with tempfile.TemporaryDirectory(prefix="accelopt-tvm-tune-") as tmp:
        job = Path(tmp) / "job.json"
        onnx.save(model, str(Path(tmp) / "model.onnx"))
        job.write_text(json.dumps({"model": str(Path(tmp) / "model.onnx"), "target": target, "db_dir": str(db_dir),
                                   "work_dir": tmp, "trials": trials, "per_task": per_task}))
        env = {**os.environ, "TVM_NUM_THREADS": str(threads)}  # measure with the deployment thread count
        with open(Path(tmp) / "child.log", "w") as out:
            child = subprocess.Popen([sys.executable, "-m", "accelopt.targets.tvm.tune", str(job)], env=env,
                                     stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
            try:
                _watch(child, db_dir, trials, time_s, log)
            finally:
                _end_group(child)
        repair(db_dir)
        if getattr(child, "timed_out", False):  # say where the tuner was, since its log goes with the temp dir
            log(f"tvm tuning: the tuner's last log line: {_child_error(Path(tmp) / 'child.log', 0)}")
        elif child.returncode not in (0, None):
            raise ConversionError(f"tvm tuning failed: {_child_error(Path(tmp) / 'child.log', child.returncode)}")


def _watch(child: subprocess.Popen, db_dir: Path, trials: int, time_s: float | None,
           log: Callable[[str], None]) -> None:
    """Log progress while the child tunes; stop it at the time limit."""
    start, shown = time.monotonic(), -1
    while child.poll() is None:
        time.sleep(_POLL_S)
        elapsed = time.monotonic() - start
        done, kernels, best = progress(db_dir)
        if done != shown:
            shown = done
            best_text = f", best kernels sum {best:.3f} ms ({kernels} kernels)" if best is not None else ""
            log(f"tvm tuning: {done}/{trials} trials, {elapsed:.0f} s{best_text}")
        if time_s is not None and elapsed > time_s and child.poll() is None:
            log(f"tvm tuning: time limit {time_s:g} s reached after {done} trials; keeping the records so far")
            child.timed_out = True  # type: ignore[attr-defined]
            return


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


def _run_job(job: dict[str, Any]) -> None:
    """The child: import, legalize + fuse (tasks exist only after that, notes §3 #4), tune_relax."""
    from accelopt.targets.tvm.env import fast_inspect, import_tvm
    from accelopt.targets.tvm.frontend import import_onnx

    tvm = import_tvm()
    from tvm import relax
    from tvm.s_tir import meta_schedule as ms

    target = tvm.target.Target(job["target"])
    mod = import_onnx(onnx.load(job["model"]))
    with target:
        fused = relax.get_pipeline("zero")(mod)
    tasks = len(ms.relax_integration.extract_tasks(fused, target))
    # Trials per kernel: the budget spread over every kernel unless the recipe says otherwise (an untuned
    # kernel has no schedule at all). Candidates per iteration: each iteration starts fresh build and run
    # worker pools (seconds each), so batches of one spent the budget on start-up (0 trials in 420 s on
    # PP-OCR); up to 32 at a time, fewer only when a kernel's share is smaller.
    per_task = job["per_task"] or max(1, math.ceil(job["trials"] / max(tasks, 1)))
    per_iter = max(1, min(32, per_task))
    db_dir = Path(job["db_dir"])
    database = ms.database.JSONDatabase(path_workload=str(db_dir / WORKLOADS), path_tuning_record=str(db_dir / RECORDS))
    ms.relax_integration.tune_relax(
        mod=fused, params={}, target=target, work_dir=job["work_dir"], database=database,
        max_trials_global=job["trials"], max_trials_per_task=per_task, num_trials_per_iter=per_iter,
        builder=ms.builder.LocalBuilder(max_workers=os.cpu_count(), initializer=fast_inspect),
        runner=ms.runner.LocalRunner(initializer=fast_inspect, evaluator_config=ms.runner.EvaluatorConfig(
            number=3, repeat=1, min_repeat_ms=50, enable_cpu_cache_flush=False)),
        cost_model="xgb", strategy="evolutionary", seed=0)


if __name__ == "__main__":
    _run_job(json.loads(Path(sys.argv[1]).read_text()))
