"""The sweep: build every variant, time all artifacts side by side, mark the Pareto frontier, pick.

Builds may run in parallel (sweeping/build.py); timing never does: once every build has finished, the input
model and every artifact are loaded in this one process and timed in interleaved rounds on the same
data and threads, so the ratios in the table are comparable. sweep.json (schema `accelopt.sweep/1`)
is rewritten atomically after every variant: Ctrl-C or a crash leaves every finished result on disk.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from accelopt import pipeline
from accelopt.converters.onnx_io import sha256_file
from accelopt.errors import AccelError, BadInputError, Interrupted
from accelopt.sweeping.frontier import Constraint, Pick, pareto_flags, pick
from accelopt.latency import batch_feeds, side_by_side, speedup
from accelopt.recipes.schema import Gates
from accelopt.report import evaluate_gates
from accelopt.sweeping.build import VariantResult, build_all
from accelopt.sweeping.chart import write_pareto_png
from accelopt.sweeping.variants import VariantSpec
from accelopt.targets import get_target
from accelopt.targets.base import Artifact, LatencyStats, Runner
from accelopt.targets.onnxruntime import OrtRunner

SWEEP_SCHEMA = "accelopt.sweep/1"
# The sweep times every artifact itself, side by side: per-step timing inside each build would repeat it
# (a `--set validation.latency=true` given by the user comes later and wins).
SWEEP_DEFAULTS = ("validation.latency=false",)
ROUNDS = 3  # interleaved timing rounds; each model keeps its best round
BUILT = ("built", "ok", "gates-failed")  # statuses of variants that have an artifact

Events = Callable[[str, dict[str, Any]], None]


@dataclass
class SweepOptions:
    model: Path
    out_dir: Path
    specs: list[VariantSpec]
    jobs: int = 1
    constraints: list[Constraint] = field(default_factory=list)  # --pick; empty = pick nothing
    on_event: Events | None = None


class SweepLog:
    """sweep.json, rewritten whole after every change: a reader never sees a half-written file."""

    def __init__(self, path: Path, doc: dict[str, Any]):
        self.path, self.doc = path, doc

    def write(self) -> None:
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        tmp.write_text(json.dumps(self.doc, indent=2, default=str))
        os.replace(tmp, self.path)


def run_sweep(opts: SweepOptions) -> dict[str, Any]:
    """Run the whole sweep; returns the sweep.json document (also on disk in `opts.out_dir`)."""
    out = Path(opts.out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise BadInputError(f"cannot create output folder {out}: {e.strerror}") from None
    # picked/ and pareto.png always belong to the sweep.json beside them: an earlier sweep's go first
    shutil.rmtree(out / "picked", ignore_errors=True)
    (out / "pareto.png").unlink(missing_ok=True)
    log = SweepLog(out / "sweep.json", _new_doc(opts))
    log.write()
    specs = {s.label: s for s in opts.specs}
    reports: dict[str, dict[str, Any]] = {}

    def on_result(result: VariantResult) -> None:
        _record_build(log.doc, result)
        if result.report is not None:
            reports[result.label] = result.report
        log.write()
        _emit(opts, "variant_done", label=result.label, ok=result.ok, error=result.error)

    try:
        build_all(opts.specs, opts.jobs, on_result, opts.on_event)
        if reports:
            _emit(opts, "timing", models=len(reports) + 1)
            _measure(log.doc, opts, specs, {label: reports[label] for label in specs if label in reports})
            log.write()
    except Interrupted:
        log.doc["interrupted"] = True
        log.write()
        done = sum(v["status"] in BUILT for v in log.doc["variants"])
        raise Interrupted(f"interrupted; {done} finished variant(s) kept in {log.path}") from None
    _frontier(log.doc)
    if write_pareto_png(log.doc, out / "pareto.png"):
        log.doc["chart"] = "pareto.png"
    if opts.constraints:
        log.doc["pick"] = _pick(log.doc, opts.constraints, out)
    log.doc["complete"] = True
    log.write()
    return log.doc


def _emit(opts: SweepOptions, kind: str, **info: Any) -> None:
    if opts.on_event:
        opts.on_event(kind, info)


def _new_doc(opts: SweepOptions) -> dict[str, Any]:
    return {
        "schema": SWEEP_SCHEMA,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["accelopt", *sys.argv[1:]]) if sys.argv else "accelopt",
        "model": {"path": str(opts.model), "sha256": sha256_file(opts.model), "bytes": opts.model.stat().st_size},
        "jobs": opts.jobs,
        "complete": False,
        "interrupted": False,
        "data": None, "latency": None, "quality": None, "input": None, "chart": None, "pick": None,
        "warnings": [],
        "variants": [{"label": s.label, "dir": str(s.out_dir.relative_to(opts.out_dir)), "recipe": s.recipe,
                      "overrides": dict(s.overrides), "status": "pending", "error": None, "seconds": None,
                      "artifact": None, "metrics": None, "gates": None, "pareto": False} for s in opts.specs],
    }


def _variant(doc: dict[str, Any], label: str) -> dict[str, Any]:
    return next(v for v in doc["variants"] if v["label"] == label)


def _record_build(doc: dict[str, Any], result: VariantResult) -> None:
    v = _variant(doc, result.label)
    v.update(status="built" if result.ok else "failed", error=result.error, seconds=result.seconds)
    if result.report is None:
        return
    final = result.report["final"]
    # A target whose runtime is missing here leaves the artifact unrun: its numbers are the last step's.
    numbers = final if final.get("runner") else (result.report["steps"] or [{}])[-1]
    v["artifact"] = str(Path(v["dir"]) / result.report["artifacts"][0]["path"])
    v["metrics"] = {"size_bytes": final["size_bytes"], "latency_ms": None, "p90_ms": None, "speedup": None,
                    "accuracy": numbers.get("accuracy"), "accuracy_drop": numbers.get("accuracy_drop"),
                    "cosine": (numbers.get("worst") or {}).get("cosine")}


def _measure(doc: dict[str, Any], opts: SweepOptions, specs: dict[str, VariantSpec],
             reports: dict[str, dict[str, Any]]) -> None:
    """Time every built variant side by side (`reports` in variant order), state which data scored them,
    and judge each variant's recipe gates on the sweep's own timing."""
    warn = doc["warnings"].append
    first = specs[next(iter(reports))]
    ref_stats, stats, doc["latency"] = _time_side_by_side(opts, first, specs, reports, warn)
    sources = {(r["data"]["evaluation"]["source"], r["data"]["evaluation"]["fingerprint"]) for r in reports.values()}
    doc["data"] = {"given": "--data" if first.data else "each recipe's own data",
                   "evaluation": sorted(s for s, _ in sources), "same_for_all": len(sources) == 1}
    if len(sources) > 1:
        warn("the variants were evaluated on different data: their accuracies are not comparable")
    doc["input"] = {"latency_ms": ref_stats.median_ms if ref_stats else None,
                    "accuracy": next(iter(reports.values()))["reference"]["accuracy"] if len(sources) == 1 else None}
    for label, report in reports.items():
        mine = stats.get(label)
        entry = _variant(doc, label)
        entry["metrics"].update(latency_ms=mine.median_ms if mine else None, p90_ms=mine.p90_ms if mine else None,
                                speedup=speedup(ref_stats, mine))
        entry["gates"] = _gates(report, entry["metrics"], mine)
        entry["status"] = "ok" if all(g["passed"] for g in entry["gates"]) else "gates-failed"


def _time_side_by_side(opts: SweepOptions, first: VariantSpec, specs: dict[str, VariantSpec],
                       reports: dict[str, dict[str, Any]], warn: Callable[[str], None]
                       ) -> tuple[LatencyStats | None, dict[str, LatencyStats], dict[str, Any] | None]:
    """The input model and every artifact timed in interleaved rounds in this process, on the first variant's
    data, batch, threads and run counts. Returns the input's stats, the variants' by label, and the settings
    used (None when nothing could be timed)."""
    recipe = first.resolve()
    v = recipe.validation
    ref = OrtRunner(opts.model, threads=v.threads)
    evaluation, _ = pipeline.load_data(recipe, pipeline.RunOptions(out_dir=opts.out_dir, data=first.data), ref, warn)
    runners: dict[str, Runner] = {"input": ref}
    labels: dict[str, str] = {}  # runner key -> variant label (labels are free text: one may read "input")
    for i, (label, report) in enumerate(reports.items()):
        runner = _artifact_runner(specs[label], report, v.threads, warn)
        if runner is not None:
            runners[f"variant{i}"], labels[f"variant{i}"] = runner, label
    batch = pipeline.latency_batch(list(runners.values()), v.batch, warn)
    if batch is None:
        return None, {}, None
    stats = side_by_side(runners, batch_feeds(evaluation.feeds, batch), rounds=ROUNDS, warmup=v.warmup, runs=v.runs)
    settings = {"batch": batch, "threads": ref.threads, "warmup": v.warmup, "runs": v.runs, "rounds": ROUNDS,
                "data": evaluation.source, "side_by_side": True}
    return stats["input"], {label: stats[key] for key, label in labels.items()}, settings


def _artifact_runner(spec: VariantSpec, report: dict[str, Any], threads: int | None,
                     warn: Callable[[str], None]) -> Runner | None:
    """The artifact loaded by its target's own runner, from the files its report lists (main file first)."""
    files = [spec.out_dir / a["path"] for a in report["artifacts"]]
    try:
        target = get_target(report["target"]["name"], report["target"]["options"])
        runner = target.runner(Artifact(path=files[0], files=files), threads=threads)
    except AccelError as e:
        warn(f"{spec.label}: not timed: {e}")
        return None
    if runner is None:
        warn(f"{spec.label}: not timed: no {report['target']['name']} runtime on this machine")
    elif not getattr(runner, "timed", True):  # a stand-in for the runtime (Core ML's MIL evaluator on Linux)
        warn(f"{spec.label}: not timed: its numerics are checked by {runner.description}")
        return None
    return runner


def _gates(report: dict[str, Any], metrics: dict[str, Any], stats: LatencyStats | None) -> list[dict[str, Any]]:
    """The variant's recipe gates, with latency and speedup from the sweep's side-by-side timing."""
    gates = Gates.model_validate(report["recipe"]["resolved"].get("gates") or {})
    final = {**report["final"], "latency": stats.to_dict() if stats else None, "speedup": metrics["speedup"]}
    return evaluate_gates(gates, {"final": final})


def _frontier(doc: dict[str, Any]) -> None:
    """Mark the Pareto-optimal variants: minimize latency, maximize accuracy (cosine without labels)."""
    built = [v for v in doc["variants"] if v["status"] in BUILT]
    quality = next((q for q in ("accuracy", "cosine")
                    if built and all(v["metrics"][q] is not None for v in built)), None)
    doc["quality"] = quality
    points = [(v["metrics"]["latency_ms"], v["metrics"][quality])
              if quality and v["metrics"]["latency_ms"] is not None else None for v in built]
    for v, flag in zip(built, pareto_flags(points)):
        v["pareto"] = flag


def _pick(doc: dict[str, Any], constraints: list[Constraint], out: Path) -> dict[str, Any]:
    """Copy the fastest variant meeting every constraint (artifact and reports) to OUT/picked/."""
    candidates = {v["label"]: v["metrics"] for v in doc["variants"] if v["status"] in BUILT}
    result: Pick = pick(candidates, constraints)
    record = {"constraints": [str(c) for c in constraints], "label": result.label, "path": None,
              "closest": result.closest, "missed": result.missed}
    if result.label is not None:
        src = out / _variant(doc, result.label)["dir"]
        tmp = out / ".picked.partial"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(src, tmp)
        os.replace(tmp, out / "picked")
        record["path"] = "picked"
    return record
