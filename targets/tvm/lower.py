"""ONNX -> Relax -> (tuned) executable -> model.so plus model.json (I/O names) and the tuning database."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from accelopt.errors import ConversionError, RecipeError, first_line
from accelopt.targets.base import Artifact, TensorSpec
from accelopt.targets.tvm import tune, winograd
from accelopt.targets.tvm.frontend import fused, graph_inputs, import_onnx, prepare

LIBRARY = "model.so"
IO_FILE = "model.json"


def io_spec(model: onnx.ModelProto) -> dict[str, list[dict[str, Any]]]:
    """Names, shapes and dtypes in the order the VM takes and returns them."""
    def spec(v: onnx.ValueInfoProto) -> dict[str, Any]:
        t = v.type.tensor_type
        shape = [d.dim_value if d.dim_value > 0 else (d.dim_param or None) for d in t.shape.dim]
        return {"name": v.name, "shape": shape, "dtype": str(onnx.helper.tensor_dtype_to_np_dtype(t.elem_type))}
    return {"inputs": [spec(v) for v in graph_inputs(model)], "outputs": [spec(v) for v in model.graph.output]}


def read_io(library: Path) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """Inputs and outputs in the VM's order, from the IO_FILE that lower() writes next to the library."""
    io = json.loads((Path(library).parent / IO_FILE).read_text())

    def specs(kind: str) -> list[TensorSpec]:
        return [TensorSpec(s["name"], s["shape"], np.dtype(s["dtype"])) for s in io[kind]]

    return specs("inputs"), specs("outputs")


def device_kind(library: Path) -> str:
    """"llvm" or "cuda": where the library's kernels run, from the IO_FILE next to it."""
    return json.loads((Path(library).parent / IO_FILE).read_text())["target"]["kind"]


def lower(model: onnx.ModelProto, out_dir: Path, target: dict[str, Any], threads: int, tuning: Any,
          log: Callable[[str], None], tracker: tuple[str, str] | None = None,
          progress: Callable[[int, int, str], None] | None = None, int8: str = "auto") -> Artifact:
    """Write the artifact; `tuning` None builds untuned (slow on CPU: no fusion, no schedules, notes §3 #3)."""
    import tvm

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    meta: dict[str, Any] = {"target": target, "threads": threads, "tuned": False}
    start = time.perf_counter()
    tvm_target = tvm.target.Target(target)
    choices: dict[str, str] = {}
    cpu = target["kind"] == "llvm"
    integer = cpu and _int8_plan(model, tvm_target, int8, meta, log)
    if tuning is None:
        log("tvm: untuned build: CPU kernels get no schedule and run far slower than onnxruntime; "
            "set target.options.tuning.trials to tune" if cpu else
            "tvm: untuned build: DLight's default GPU schedules; set target.options.tuning.trials to tune")
        exe = tvm.compile(prepare(model, integer=integer), target=tvm_target)
    else:
        layers, algorithms = _winograd_plan(model, tuning, log) if cpu else ([], ["direct"])
        variants = [{layer.key: a for layer in layers} for a in algorithms] if layers else []
        _tune(model, target, threads, tuning, out_dir, variants, log, tracker, progress, integer)
        database = tune.load_database(out_dir)
        if layers:
            choices = _winograd_choice(model, target, layers, algorithms, variants, database, tuning, log, integer)
            meta["winograd"] = [winograd.row(layer, algorithms) for layer in layers]
        mod = prepare(model, choices, integer)
        meta.update(_coverage(mod, tvm_target, database, tuning, out_dir, log))
        with tvm_target, database, tvm.transform.PassContext(opt_level=3):
            mod = fused(mod, tvm_target)  # applies the database to every fused kernel
        exe = tvm.compile(mod, target=tvm_target)
    library = out_dir / LIBRARY
    try:
        exe.export_library(str(library))
    except Exception as e:  # tvm.contrib.cc raises RuntimeError with the compiler's output
        raise ConversionError(f"tvm export_library failed (needs a C++ compiler: g++/clang++ or $CXX): "
                              f"{first_line(e)}") from e
    meta["seconds"] = round(time.perf_counter() - start, 2)
    (out_dir / IO_FILE).write_text(json.dumps({**io_spec(model), **meta}, indent=2))
    files = [library, out_dir / IO_FILE, *(tune.database_files(out_dir) if tuning is not None else [])]
    return Artifact(path=library, files=files, kind="tvm", meta=meta)


def _int8_plan(model: onnx.ModelProto, tvm_target: Any, mode: str, meta: dict[str, Any],
               log: Callable[[str], None]) -> bool:
    """Whether QDQ convs/matmuls become int8 kernels, said in the log and the report's int8 table. "auto" lowers
    them for AVX-512 VNNI targets only: on AVX2 (no u8 x s8 dot product) the tuned int8 convs measured slower
    than float, and AVX-VNNI-only targets crash LLVM with the 512-bit intrinsic."""
    if not any(n.op_type == "DequantizeLinear" for n in model.graph.node):
        return False
    from accelopt.targets.tvm.integer import fix_vnni_intrinsic, has_avx512_vnni, integer_ops, vnni_applies

    stats = integer_ops(import_onnx(model))[1]
    vnni = has_avx512_vnni(tvm_target)
    integer = mode == "on" or (mode == "auto" and vnni)
    row: dict[str, Any] = {"qdq_ops": stats.total, "int8_ops": sum(stats.lowered.values()) if integer else 0,
                           "kept_float": dict(stats.kept_float), "target_avx512_vnni": vnni}
    if integer:
        fix_vnni_intrinsic()  # replaying a tuning record re-runs the tensorize step
        applied = vnni_applies(fused(prepare(model, integer=True), tvm_target), tvm_target)
        # int8 kernels with a reduction (conv, matmul): the ones VNNI can serve, not the u8 pad/layout kernels
        row.update(int8_kernels=applied["int8_tiled_tasks"], vnni_kernels=applied["vnni_tasks"])
        log(f"tvm int8: {stats.summary()}; VNNI tensorizes {applied['vnni_tasks']} of {row['int8_kernels']} int8 "
            f"conv/matmul kernels on {tvm_target.attrs.get('mcpu', 'this target')}")
    else:
        log(f"tvm int8: {stats.total} QDQ conv/matmul op(s) run as dequantize + float ("
            + ("int8: off" if mode == "off" else "no AVX-512 VNNI on this target: int8 kernels measured slower "
               "than float on AVX2; int8: on forces them") + ")")
    meta["int8"] = [row]
    return integer


def _winograd_plan(model: onnx.ModelProto, tuning: Any, log: Callable[[str], None]):
    """Eligible conv shapes and the algorithms to tune for each (direct first)."""
    if tuning.winograd is None:
        return [], ["direct"]
    layers = winograd.eligible(model, tuning.winograd)
    algorithms = ["direct", *(f"f{t}" for t in winograd.default_tiles(model, tuning.winograd))]
    if layers:
        log(f"tvm winograd: {sum(len(layer.nodes) for layer in layers)} conv(s) in {len(layers)} shape(s) eligible; "
            f"tuning {', '.join(algorithms)} for each with the same budget")
    else:
        log("tvm winograd: no eligible conv (3x3, stride 1, dilation 1, one group, "
            f">= {tuning.winograd.min_channels} channels, >= {tuning.winograd.min_size} px)")
    return layers, algorithms


def _tune(model: onnx.ModelProto, target: dict[str, Any], threads: int, tuning: Any, out_dir: Path,
          variants: list[dict[str, str]], log: Callable[[str], None], tracker: tuple[str, str] | None,
          progress: Callable[[int, int, str], None] | None, integer: bool) -> None:
    """Seed out_dir with `tuning.database`, tune `tuning.trials` (0: reuse only) and copy the database back."""
    shared = Path(tuning.database) if tuning.database else None
    if shared is not None and tune.has_database(shared) and shared.resolve() != out_dir.resolve():
        for path in tune.database_files(shared):
            shutil.copy2(path, out_dir / path.name)
    if tuning.trials == 0 and not tune.has_database(out_dir):
        raise RecipeError(f"tvm: tuning.trials is 0 but there is no tuning database in "
                          f"{shared or 'tuning.database (unset)'}: give one from an earlier run, or trials > 0")
    if tuning.trials > 0:
        where = f" measured on '{tracker[1]}' via the tracker at {tracker[0]}" if tracker else ""
        log(f"tvm tuning: {tuning.trials} trials on {target}, {threads} thread(s){where}"
            + (f", at most {tuning.time_s:g} s" if tuning.time_s else ""))
        tune.tune(model, target, out_dir, trials=tuning.trials, per_task=tuning.per_task, time_s=tuning.time_s,
                  threads=threads, log=log, variants=variants, tracker=tracker, progress=progress,
                  integer=integer)
    if shared is not None and shared.resolve() != out_dir.resolve():
        shared.mkdir(parents=True, exist_ok=True)
        for path in tune.database_files(out_dir):
            shutil.copy2(path, shared / path.name)


def _winograd_choice(model: onnx.ModelProto, target: dict[str, Any], layers: list, algorithms: list[str],
                     variants: list[dict[str, str]], database: Any, tuning: Any,
                     log: Callable[[str], None], integer: bool) -> dict[str, str]:
    """Each conv shape's algorithm: the fastest tuned one whose error is within tolerance. Read from the
    database, so a rebuild with trials 0 makes the same choice without tuning."""
    import tvm

    tvm_target = tvm.target.Target(target)
    winograd.measure(layers, tune.task_groups(model, tvm_target, variants, integer), database, tvm_target)
    for layer in layers:
        for algorithm in algorithms:
            if algorithm in layer.latency_ms:
                layer.error[algorithm] = winograd.layer_error(layer, algorithm, target)
    winograd.choose(layers, algorithms, tuning.winograd.tolerance)
    for layer in layers:
        log(f"tvm winograd: {layer.key} ({', '.join(layer.nodes)}): {layer.choice}; " + ", ".join(
            f"{a} {layer.latency_ms[a]:.3f} ms err {layer.error[a]:.1e}" if a in layer.latency_ms else f"{a} not measured"
            for a in algorithms))
    return {layer.key: layer.choice for layer in layers}


def _coverage(mod: Any, tvm_target: Any, database: Any, tuning: Any, db_dir: Path,
              log: Callable[[str], None]) -> dict[str, Any]:
    """Fused kernels of the final module with a record; none at all is an error, since the build would be
    the untuned one the user did not ask for."""
    from tvm.s_tir import meta_schedule as ms

    tasks = ms.relax_integration.extract_tasks(fused(mod, tvm_target), tvm_target)
    covered = sum(database.query_tuning_record(t.dispatched[0], tvm_target, t.task_name) is not None for t in tasks)
    if covered == 0 and tuning.trials > 0:
        raise ConversionError(f"tvm: tuning measured no candidate within its budget ({tuning.trials} trials, "
                              f"time_s {tuning.time_s}): raise tuning.time_s, or build untuned with tuning: null")
    if covered == 0:
        raise ConversionError(f"tvm: the tuning database in {tuning.database or 'the output folder'} has no records "
                              f"for this model on {tvm_target} (records are keyed by the structural hash of each "
                              "fused kernel: another model, other shapes or another target match nothing); "
                              "tune with trials > 0")
    if covered < len(tasks):
        log(f"tvm: the database covers {covered} of {len(tasks)} kernels; the rest run untuned")
    trials, _, best = tune.progress_of(db_dir)
    return {"tuned": True, "trials_in_database": trials, "kernels_tuned": covered, "kernels": len(tasks),
            "tuned_kernels_sum_ms": best}
