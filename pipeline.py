"""The convert pipeline: load, run each recipe step, validate it against the input model, lower to
the target, measure, gate, and write the outputs atomically.

Every step is checked the same way (onnx.checker, loads in ONNX Runtime, outputs compared with the
input model on the evaluation data, optional latency), so a step can never silently break a model.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnx

from accelopt import __version__
from accelopt.analysis import op_delta, op_histogram, summarize
from accelopt.cache import StepCache, cache_key
from accelopt.converters.onnx_io import (check_model, load_model, model_bytes, path_bytes, sha256_file, sha256_path,
                                        staged_dir)
from accelopt.data import Dataset, RandomSource, load_npz, load_source
from accelopt.errors import AccelError, BadInputError, ConversionError, first_line
from accelopt.isolation import library_logs
from accelopt.latency import batch_feeds, side_by_side, speedup
from accelopt.metrics import OutputMetrics, accuracy, compare_outputs, worst
from accelopt.optimizers import PassContext, get_pass
from accelopt.recipes.schema import Recipe
from accelopt.report import REPORT_FILES, REPORT_SCHEMA, evaluate_gates, write_reports
from accelopt.targets import get_target
from accelopt.targets.base import LatencyStats, run_all
from accelopt.targets.onnxruntime import OrtRunner

# Lower precision wins when steps are chained: tolerances follow the least precise step so far.
PRECISION_ORDER = ["fp32", "fp16", "int8", "int4"]
# Below this input/output latency ratio the output counts as slower (5% leaves room for timer noise).
SLOWER = 0.95

Events = Callable[[str, dict[str, Any]], None]


@dataclass
class RunOptions:
    out_dir: Path
    data: Path | None = None  # --data FILE.npz: stands in for the recipe's data
    use_cache: bool = True
    cache_dir: Path | None = None
    junit: bool = False
    on_event: Events | None = None


@dataclass
class Reference:
    """The input model run once on the probe data; every step is compared with this."""

    runner: OrtRunner
    outputs: dict[str, np.ndarray]
    accuracy: float | None
    latency: LatencyStats | None


@dataclass
class StepOutcome:
    model: onnx.ModelProto
    record: dict[str, Any] = field(default_factory=dict)


def tool_versions() -> dict[str, str]:
    versions = {"accelopt": __version__, "python": platform.python_version()}
    for dist in ("onnx", "onnxruntime", "onnxsim", "onnx-ir", "numpy", "pydantic"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = "missing"
    return versions


def _emit(opts: RunOptions, kind: str, **info: Any) -> None:
    if opts.on_event:
        opts.on_event(kind, info)


def load_data(recipe: Recipe, opts: RunOptions, runner: OrtRunner,
               warn: Callable[[str], None]) -> tuple[Dataset, Dataset | None]:
    """Evaluation and calibration data: `--data` wins over the recipe; random only as a last resort."""
    shapes = recipe.input.shapes
    if opts.data is not None:
        ds = load_npz(opts.data, runner.inputs)
        return ds, ds
    cal = load_source(recipe.data.calibration, runner.inputs, recipe.base_dir, shapes, warn) \
        if recipe.data.calibration else None
    if recipe.data.evaluation:
        ev = load_source(recipe.data.evaluation, runner.inputs, recipe.base_dir, shapes, warn)
    elif cal is not None:
        warn("no evaluation data declared: steps are checked on the calibration data")
        ev = cal
    else:
        ev = load_source(RandomSource(type="random", samples=min(recipe.validation.samples, 8)),
                         runner.inputs, recipe.base_dir, shapes, warn)
    return ev, cal


def _task_accuracy(recipe: Recipe, outputs: dict[str, np.ndarray], labels: np.ndarray | None) -> float | None:
    if labels is None or recipe.task.kind != "classification":
        return None
    name = recipe.task.output or next(iter(outputs))
    return accuracy(outputs[name], labels[: len(outputs[name])], axis=recipe.task.axis)


def _validate(model: onnx.ModelProto, what: str, recipe: Recipe, ref: Reference, probe: Dataset,
              precision: str) -> tuple[OrtRunner, dict[str, Any]]:
    """The check after every step: checker, ORT load, metrics against the reference on the probe data."""
    try:
        check_model(model, what)
    except BadInputError as e:
        raise ConversionError(str(e)) from e
    runner = OrtRunner(model, threads=recipe.validation.threads)
    return runner, _numerics(runner, recipe, ref, probe, precision)


def _numerics(runner, recipe: Recipe, ref: Reference, probe: Dataset, precision: str) -> dict[str, Any]:
    outputs = run_all(runner, probe.feeds)
    metrics: list[OutputMetrics] = compare_outputs(ref.outputs, outputs, task=recipe.task, precision=precision,
                                                   feeds=probe.feeds)
    acc = _task_accuracy(recipe, outputs, probe.labels)
    return {
        "precision": precision,
        "metrics": [m.to_dict() for m in metrics],
        "worst": worst(metrics),
        "within_tolerance": all(m.passed for m in metrics),
        "accuracy": acc,
        "accuracy_drop": (ref.accuracy - acc) if acc is not None and ref.accuracy is not None else None,
    }


def latency_batch(runners: list[Any], wanted: int, warn: Callable[[str], None]) -> int | None:
    """One batch size for every model timed side by side. A model with a static batch (pinned by
    input.shapes or fix-shapes) decides it; models that disagree cannot be compared (None)."""
    static = {r.inputs[0].shape[0] for r in runners
              if r.inputs and r.inputs[0].shape and isinstance(r.inputs[0].shape[0], int) and r.inputs[0].shape[0] > 0}
    if len(static) > 1:
        warn(f"latency not measured: the models have different static batch sizes {sorted(static)}")
        return None
    batch = static.pop() if static else wanted
    if batch != wanted:
        warn(f"latency measured at batch {batch}, the models' static batch size (validation.batch is {wanted})")
    return batch


def _measure_latency(runners: list[tuple[dict[str, Any], Any]], ref: Reference, probe: Dataset,
                     recipe: Recipe, warn: Callable[[str], None]) -> int | None:
    """Time the input, every step and the artifact side by side, and write the figures into their
    records; returns the batch size used (None when nothing was timed)."""
    v = recipe.validation
    if not v.latency:
        return None
    named = {"input": ref.runner, **{str(i): r for i, (_, r) in enumerate(runners)}}
    batch = latency_batch(list(named.values()), v.batch, warn)
    if batch is None:
        return None
    stats = side_by_side(named, batch_feeds(probe.feeds, batch), warmup=v.warmup, runs=v.runs)
    ref.latency = stats["input"]
    for i, (record, _) in enumerate(runners):
        record["latency"] = stats[str(i)].to_dict()
        record["speedup"] = speedup(stats["input"], stats[str(i)])
    return batch


def _graph_facts(model: onnx.ModelProto) -> dict[str, Any]:
    ops = op_histogram(model)
    return {"nodes": sum(ops.values()), "bytes": model_bytes(model), "ops": ops}


def _run_step(index: int, name: str, config: dict[str, Any], model: onnx.ModelProto, original: onnx.ModelProto,
              recipe: Recipe, calibration: Dataset | None, evaluation: Dataset, target: Any,
              cache: StepCache | None, tmp: Path, opts: RunOptions, versions: dict[str, str]) -> StepOutcome:
    pass_cls = get_pass(name)
    context = {"calibration": lambda: calibration.fingerprint() if calibration is not None else None,
               "evaluation": evaluation.fingerprint, "task": lambda: recipe.task.model_dump(mode="json"),
               "threads": lambda: recipe.validation.threads, "original": lambda: _model_digest(original)}
    key = cache_key({
        "model": _model_digest(model), "pass": name, "pass_version": pass_cls.version, "config": config,
        "shapes": recipe.input.shapes, "target": recipe.target.model_dump(mode="json"), "tools": versions,
        **{what: context[what]() for what in sorted(pass_cls.uses)},
    })
    if cache is not None and (hit := cache.get(key)) is not None:
        out, record = hit
        return StepOutcome(out, {**record, "cached": True})
    ctx = PassContext(tmp_dir=tmp / f"step{index}-{name}", calibration=calibration, evaluation=evaluation,
                      original=original, task=recipe.task, input_shapes=dict(recipe.input.shapes), target=target,
                      threads=recipe.validation.threads,
                      cache_dir=cache.root / "passes" if cache is not None else None,
                      on_log=lambda msg: _emit(opts, "log", step=name, message=msg))
    ctx.tmp_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    try:
        with library_logs(ctx.log):
            out = pass_cls().apply(model, pass_cls.Config.model_validate(config), ctx)
    except AccelError:
        raise
    except Exception as e:
        raise ConversionError(f"step {name!r} failed: {first_line(e, with_type=True)}") from e
    record = {"seconds": round(time.perf_counter() - start, 3), "decisions": ctx.decisions, "notes": ctx.notes}
    if cache is not None:
        cache.put(key, out, record)
    return StepOutcome(out, {**record, "cached": False})


def _model_digest(model: onnx.ModelProto) -> str:
    return hashlib.sha256(model.SerializeToString(deterministic=True)).hexdigest()


def run(model_path: Path, recipe: Recipe, opts: RunOptions) -> dict[str, Any]:
    """Run the whole pipeline; returns the report (also written to `opts.out_dir`)."""
    warnings: list[str] = []

    def warn(msg: str) -> None:
        warnings.append(msg)
        _emit(opts, "warning", message=msg)

    _check_writable(opts.out_dir)
    versions = tool_versions()
    _emit(opts, "stage", name="load")
    model = load_model(model_path)
    input_sha = sha256_file(model_path)
    target = get_target(recipe.target.name, recipe.target.options)
    try:
        ref_runner = OrtRunner(model, threads=recipe.validation.threads)
    except ConversionError as e:
        raise BadInputError(f"{model_path}: onnxruntime cannot load the input model ({e})") from e
    evaluation, calibration = load_data(recipe, opts, ref_runner, warn)
    if "calibration" in target.needs() and calibration is None:
        raise BadInputError(f"target {target.name} with these options quantizes while lowering and needs "
                            "calibration data: add data.calibration to the recipe or pass --data FILE.npz")
    target.calibration = calibration
    probe = evaluation.take(min(recipe.validation.samples, len(evaluation)))
    summary = summarize(model, str(model_path), recipe.input.shapes or _sample_shapes(probe))
    _emit(opts, "stage", name="reference")
    ref_out = run_all(ref_runner, probe.feeds)
    ref = Reference(ref_runner, ref_out, _task_accuracy(recipe, ref_out, probe.labels), None)

    cache = StepCache(opts.cache_dir) if opts.use_cache else None
    steps: list[dict[str, Any]] = []
    timed: list[tuple[dict[str, Any], Any]] = []  # (record, runner) of each step and of the artifact
    precision = "fp32"
    current = model
    with tempfile.TemporaryDirectory(prefix="accelopt-") as tmpdir:
        tmp = Path(tmpdir)
        for i, step in enumerate(recipe.steps):
            _emit(opts, "step_start", index=i, total=len(recipe.steps), name=step.name)
            before = _graph_facts(current)
            outcome = _run_step(i, step.name, step.config, current, model, recipe, calibration, probe, target,
                                cache, tmp, opts, versions)
            pass_cls = get_pass(step.name)
            step_precision = pass_cls().output_precision(pass_cls.Config.model_validate(step.config))
            precision = max(precision, step_precision, key=PRECISION_ORDER.index)
            runner, checks = _validate(outcome.model, f"step {step.name!r} output", recipe, ref, probe, precision)
            after = _graph_facts(outcome.model)
            record = {"name": step.name, "config": step.config, "version": get_pass(step.name).version,
                      **outcome.record, "nodes_before": before["nodes"], "nodes_after": after["nodes"],
                      "bytes_before": before["bytes"], "bytes_after": after["bytes"],
                      "ops_delta": op_delta(before["ops"], after["ops"]), **checks}
            if not checks["within_tolerance"]:
                warn(f"step {step.name!r}: outputs differ from the input model beyond {precision} tolerances "
                     f"(worst cosine {checks['worst'].get('cosine')})")
            steps.append(record)
            timed.append((record, runner))
            _emit(opts, "step_done", step=record)
            current = outcome.model

        _emit(opts, "stage", name=f"target {target.name}")
        precision = max(precision, target.output_precision(), key=PRECISION_ORDER.index)
        findings = target.check(current)
        errors = [f for f in findings if f.severity == "error"]
        if errors:
            listed = "; ".join(f"{f.node + ': ' if f.node else ''}{f.message}" for f in errors[:5])
            raise ConversionError(f"target {target.name} cannot take the model ({len(errors)} problem(s)): {listed}")

        with staged_dir(opts.out_dir, replaces=_previous_outputs(opts.out_dir)) as stage:
            target.events = lambda kind, info: _emit(opts, kind, **info)
            try:
                artifact = target.lower(current, stage)
            except AccelError:
                raise
            except Exception as e:  # a compiler's own errors (TVM's TypeErrors, TVMError...) as one line
                raise ConversionError(f"target {target.name} failed to lower the model: "
                                      f"{first_line(e, 300, with_type=True)}") from e
            final = _final_check(target, artifact, recipe, ref, probe, precision, warn, timed)
            report = {
                "schema": REPORT_SCHEMA,
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "command": " ".join(["accelopt", *sys.argv[1:]]) if sys.argv else "accelopt",
                "recipe": {"name": recipe.name, "description": recipe.description,
                           "resolved": recipe.to_yaml_dict()},
                "input": {"path": str(model_path), "sha256": input_sha, "format": "onnx",
                          **_summary_fields(summary)},
                "data": {"evaluation": _data_facts(evaluation, probe),
                         "calibration": _data_facts(calibration, None) if calibration is not None else None},
                "task": recipe.task.model_dump(mode="json"),
                "reference": {"accuracy": ref.accuracy,
                              "latency": ref.latency.to_dict() if ref.latency else None},
                "steps": steps,
                "target": {"name": target.name, "options": target.config.model_dump(mode="json"),
                           "findings": [f.__dict__ for f in findings], "capabilities": target.capabilities(),
                           "lowering": artifact.meta},
                "final": final,
                "artifacts": [{"path": p.name, "sha256": sha256_path(p), "bytes": path_bytes(p)}
                              for p in artifact.files],
                "warnings": warnings,
                "tool_versions": versions,
            }
            report["gates"] = evaluate_gates(recipe.gates, report)
            report["passed"] = all(g["passed"] for g in report["gates"])
            write_reports(report, stage, junit=opts.junit)
    return report


def _final_check(target, artifact, recipe: Recipe, ref: Reference, probe: Dataset, precision: str,
                 warn: Callable[[str], None], timed: list[tuple[dict[str, Any], Any]]) -> dict[str, Any]:
    """Numerics of the artifact itself on the target's runtime, then every latency side by side."""
    runner = target.runner(artifact, threads=recipe.validation.threads)
    final: dict[str, Any] = {"runner": None, "size_bytes": sum(path_bytes(p) for p in artifact.files)}
    if runner is None:
        warn(f"no {target.name} runtime on this machine: the artifact was not run; numbers are from the last step")
    else:
        final.update(runner=type(runner).__name__, **_numerics(runner, recipe, ref, probe, precision))
        final["numerics_by"] = getattr(runner, "description", "") or type(runner).__name__
        if getattr(runner, "timed", True):
            timed = [*timed, (final, runner)]
        else:  # a stand-in for the runtime (Core ML's MIL evaluator on Linux): its speed is not the target's
            warn(f"{target.name} artifact not timed: numerics checked by {final['numerics_by']}")
    batch = _measure_latency(timed, ref, probe, recipe, warn)
    if runner is not None and batch is not None and (final.get("speedup") or 1.0) < SLOWER:
        _confirm_slowdown(final, runner, ref, batch_feeds(probe.feeds, batch), recipe)
        if final["speedup"] < SLOWER:
            warn(f"the output is SLOWER than the input model on {target.name}: {final['speedup']:.2f}x "
                 f"({final['latency']['median_ms']:.3f} ms vs {ref.latency.median_ms:.3f} ms, confirmed by a "
                 "second side-by-side measurement)")
    return final


def _confirm_slowdown(final: dict[str, Any], runner, ref: Reference, feeds: dict[str, np.ndarray],
                      recipe: Recipe) -> None:
    """Shared machines are noisy: re-time input and output with twice the runs and keep each one's best,
    so a slowdown is reported only when it is real, and never hidden when it is."""
    v = recipe.validation
    again = side_by_side({"input": ref.runner, "output": runner}, feeds, warmup=v.warmup, runs=2 * v.runs)
    if again["input"].median_ms < ref.latency.median_ms:
        ref.latency = again["input"]
    if again["output"].median_ms < final["latency"]["median_ms"]:
        final["latency"] = again["output"].to_dict()
    final["speedup"] = ref.latency.median_ms / final["latency"]["median_ms"]


def _check_writable(out_dir: Path) -> None:
    """Fail before any work, not after minutes of it, when the output folder cannot be written."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise BadInputError(f"output {out_dir} exists and is not a folder")
    parent = next((p for p in [out_dir, *out_dir.parents] if p.exists()), Path("."))
    if not os.access(parent, os.W_OK):
        raise BadInputError(f"cannot write to {parent} (for output {out_dir})")


def _previous_outputs(out_dir: Path) -> list[str]:
    """Files an earlier accelopt run wrote to `out_dir`, read from its report.json."""
    try:
        old = json.loads((Path(out_dir) / "report.json").read_text())
        names = [a["path"] for a in old.get("artifacts", [])]
    except (OSError, ValueError, TypeError, KeyError):
        return []
    return [n for n in names if Path(n).name == n] + list(REPORT_FILES)


def _sample_shapes(data: Dataset) -> dict[str, list[int]]:
    """One sample's real shapes: the MAC estimate needs concrete dims where the model has dynamic ones."""
    return {name: [1, *arr.shape[1:]] for name, arr in data.feeds.items()}


def _summary_fields(summary) -> dict[str, Any]:
    d = summary.to_dict()
    fields = {k: d[k] for k in ("size_bytes", "opsets", "inputs", "outputs", "node_count", "op_histogram",
                                "params", "macs", "macs_note")}
    return {**fields, "flops": 2 * d["macs"] if d["macs"] is not None else None}


def _data_facts(ds: Dataset, probe: Dataset | None) -> dict[str, Any]:
    return {"source": ds.source, "samples": len(ds), "compared": len(probe) if probe is not None else None,
            "labels": ds.labels is not None, "random": ds.random, "fingerprint": ds.fingerprint()}
