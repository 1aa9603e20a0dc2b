"""ONNX -> Relax -> (tuned) executable -> model.so plus model.json (I/O names) and the tuning database."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import onnx

from accelopt.errors import ConversionError, RecipeError, first_line
from accelopt.targets.base import Artifact
from accelopt.targets.tvm import tune
from accelopt.targets.tvm.frontend import graph_inputs, import_onnx

LIBRARY = "model.so"
IO_FILE = "model.json"


def io_spec(model: onnx.ModelProto) -> dict[str, list[dict[str, Any]]]:
    """Names, shapes and dtypes in the order the VM takes and returns them."""
    def spec(v: onnx.ValueInfoProto) -> dict[str, Any]:
        t = v.type.tensor_type
        shape = [d.dim_value if d.dim_value > 0 else (d.dim_param or None) for d in t.shape.dim]
        return {"name": v.name, "shape": shape, "dtype": str(onnx.helper.tensor_dtype_to_np_dtype(t.elem_type))}
    return {"inputs": [spec(v) for v in graph_inputs(model)], "outputs": [spec(v) for v in model.graph.output]}


def lower(model: onnx.ModelProto, out_dir: Path, target: dict[str, Any], threads: int, tuning: Any,
          log: Callable[[str], None]) -> Artifact:
    """Write the artifact; `tuning` None builds untuned (slow on CPU: no fusion, no schedules, notes §3 #3)."""
    import tvm
    from tvm import relax

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    meta: dict[str, Any] = {"target": target, "threads": threads, "tuned": False}
    start = time.perf_counter()
    mod = import_onnx(model)
    db_dir = None
    if tuning is not None:
        db_dir = out_dir
        meta.update(_tune(model, target, threads, tuning, out_dir, log))
    tvm_target = tvm.target.Target(target)
    if db_dir is not None:
        from tvm.s_tir import meta_schedule as ms

        database = ms.database.JSONDatabase(work_dir=str(db_dir))
        with tvm_target, database, tvm.transform.PassContext(opt_level=3):
            mod = relax.get_pipeline("zero")(mod)  # fuses, then applies the database to every fused kernel
        exe = tvm.compile(mod, target=tvm_target)
    else:
        log("tvm: untuned build: CPU kernels get no schedule and run far slower than onnxruntime; "
            "set target.options.tuning.trials to tune")
        exe = tvm.compile(mod, target=tvm_target)
    library = out_dir / LIBRARY
    try:
        exe.export_library(str(library))
    except Exception as e:  # tvm.contrib.cc raises RuntimeError with the compiler's output
        raise ConversionError(f"tvm export_library failed (needs a C++ compiler: g++/clang++ or $CXX): "
                              f"{first_line(e)}") from e
    meta["seconds"] = round(time.perf_counter() - start, 2)
    (out_dir / IO_FILE).write_text(json.dumps({**io_spec(model), **meta}, indent=2))
    files = [library, out_dir / IO_FILE, *(tune.database_files(out_dir) if db_dir is not None else [])]
    return Artifact(path=library, files=files, kind="tvm", meta=meta)


def _tune(model: onnx.ModelProto, target: dict[str, Any], threads: int, tuning: Any, out_dir: Path,
          log: Callable[[str], None]) -> dict[str, Any]:
    """Seed out_dir with `tuning.database`, tune `tuning.trials` (0: reuse only), check the records apply,
    and copy the database back to `tuning.database`."""
    shared = Path(tuning.database) if tuning.database else None
    if shared is not None and tune.has_database(shared) and shared.resolve() != out_dir.resolve():
        for path in tune.database_files(shared):
            shutil.copy2(path, out_dir / path.name)
    if tuning.trials == 0 and not tune.has_database(out_dir):
        raise RecipeError(f"tvm: tuning.trials is 0 but there is no tuning database in "
                          f"{shared or 'tuning.database (unset)'}: give one from an earlier run, or trials > 0")
    if tuning.trials > 0:
        log(f"tvm tuning: {tuning.trials} trials on {target}, {threads} thread(s)"
            + (f", at most {tuning.time_s:g} s" if tuning.time_s else ""))
        tune.tune(model, target, out_dir, trials=tuning.trials, per_task=tuning.per_task, time_s=tuning.time_s,
                  threads=threads, log=log)
    covered, total = coverage(model, target, out_dir)
    if covered == 0 and tuning.trials > 0:
        raise ConversionError(f"tvm: tuning measured no candidate within its budget ({tuning.trials} trials, "
                              f"time_s {tuning.time_s}): raise tuning.time_s, or build untuned with tuning: null")
    if covered == 0:
        raise ConversionError(f"tvm: the tuning database in {shared or out_dir} has no records for this model on "
                              f"{target} (records are keyed by the structural hash of each fused kernel: another "
                              "model, other shapes or another target match nothing); tune with trials > 0")
    if covered < total:
        log(f"tvm: the database covers {covered} of {total} kernels; the rest run untuned")
    if shared is not None and shared.resolve() != out_dir.resolve():
        shared.mkdir(parents=True, exist_ok=True)
        for path in tune.database_files(out_dir):
            shutil.copy2(path, shared / path.name)
    trials, _, best = tune.progress(out_dir)
    return {"tuned": True, "trials_in_database": trials, "kernels_tuned": covered, "kernels": total,
            "tuned_kernels_sum_ms": best}


def coverage(model: onnx.ModelProto, target: dict[str, Any], db_dir: Path) -> tuple[int, int]:
    """Fused kernels of `model` with a tuning record in the database, and the total."""
    import tvm
    from tvm import relax
    from tvm.s_tir import meta_schedule as ms

    tvm_target = tvm.target.Target(target)
    with tvm_target:
        fused = relax.get_pipeline("zero")(import_onnx(model))
    database = ms.database.JSONDatabase(work_dir=str(db_dir))
    tasks = ms.relax_integration.extract_tasks(fused, tvm_target)
    covered = sum(database.query_tuning_record(t.dispatched[0], tvm_target, t.task_name) is not None for t in tasks)
    return covered, len(tasks)
