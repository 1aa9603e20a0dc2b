"""accelopt sweep: variants, side-by-side timing, the Pareto frontier, --pick, failures and Ctrl-C."""

from __future__ import annotations

import json
import platform
from pathlib import Path

import onnx
import pytest

from accelopt.errors import BadInputError, Interrupted
from accelopt.sweeping.frontier import Constraint, parse_constraints, pareto_flags, pick
from accelopt.sweeping.variants import parse_grid, split_top_level
from tests import models

DIGITS = Path(__file__).resolve().parents[1] / "examples" / "digits"
QUICK = ["--set", "validation.runs=3", "--set", "validation.warmup=1"]
# The digits recipe with int8 steps; `on_slower: warn` ships int8 even where this CPU runs it slower.
DIGITS_INT8 = ["-r", DIGITS / "recipe.yaml", "--set",
               'steps=[simplify, {fuse: {ort: "off"}}, {quantize: {on_slower: warn, speed_runs: 3}}]',
               "--set", "validation.samples=100", *QUICK]


def test_pareto_flags_on_a_constructed_set():
    points = [(1.0, 0.90),   # fastest: optimal
              (2.0, 0.95),   # optimal
              (2.0, 0.93),   # dominated by (2.0, 0.95): as fast, less accurate
              (3.0, 0.95),   # dominated by (2.0, 0.95): slower, as accurate
              (4.0, 0.99),   # most accurate: optimal
              (4.0, 0.99),   # identical twin: neither dominates the other
              None]          # not measured: never optimal
    assert pareto_flags(points) == [True, True, False, False, True, True, False]


def test_pick_fastest_meeting_else_closest():
    metrics = {"a": {"latency_ms": 1.0, "accuracy_drop": 0.03, "cosine": 0.99},
               "b": {"latency_ms": 2.0, "accuracy_drop": 0.008, "cosine": 0.999},
               "c": {"latency_ms": 3.0, "accuracy_drop": 0.0, "cosine": 0.9999}}
    assert pick(metrics, parse_constraints("max_accuracy_drop=0.01")).label == "b"
    assert pick(metrics, parse_constraints("max_accuracy_drop=0.01,min_cosine=0.9995")).label == "c"
    none = pick(metrics, [Constraint("max_latency_ms", 0.9), Constraint("max_accuracy_drop", 0.01)])
    # relative misses: a 0.11 (latency) + 2.0 (drop), b 1.22 (latency), c 2.33 (latency): b is the closest
    assert none.label is None and none.closest == "b" and none.missed == ["latency_ms 2 vs max_latency_ms=0.9"]
    with pytest.raises(BadInputError, match="valid: max_accuracy_drop"):
        parse_constraints("max_drop=0.01")


def test_grid_parsing():
    assert parse_grid("steps.quantize.calibration=minmax, entropy").values == ("minmax", "entropy")
    assert split_top_level("[Conv,Gemm],{a: 1, b: 2},x") == ["[Conv,Gemm]", "{a: 1, b: 2}", "x"]
    for bad in ("steps.quantize.calibration", "=a,b", "key=a,,b", "key=a,a"):
        with pytest.raises(BadInputError):
            parse_grid(bad)


@pytest.mark.parametrize("args, message", [
    (["--recipe", "cpu-int8", "--grid", "steps.quantize.calibration"], "expected key.path=value1,value2"),
    (["--recipes", "cpu-fp32,no-such-recipe"], "unknown recipe 'no-such-recipe'"),
    (["--recipe", "cpu-int8", "--grid", "steps.quantize.calibration=minmax,bogus"], "variant 'calibration=bogus'"),
    (["--recipes", "cpu-fp32", "--pick", "fastest"], "unknown constraint"),
])
def test_bad_usage_exits_2_before_any_work(cli, conv_bn_path, tmp_path, args, message):
    r = cli("sweep", conv_bn_path, *args, "-o", tmp_path / "s")
    assert r.code == 2 and message in r.err and len(r.err.strip().splitlines()) == 1, r.err
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("args", [["--recipe", "cpu-int8", "--grid", "steps.quantize.calibration="],
                                  ["--recipe", "cpu-int8"]])
def test_an_empty_grid_exits_1_before_any_work(cli, conv_bn_path, tmp_path, args):
    r = cli("sweep", conv_bn_path, *args, "-o", tmp_path / "s")
    assert r.code == 1 and r.err.startswith("error: empty grid") and len(r.err.strip().splitlines()) == 1, r.err
    assert not (tmp_path / "s").exists()


def test_recipes_sweep_with_a_failing_variant_and_pick(cli, conv_bn_path, tmp_path):
    """cpu-int8 without calibration data fails; the fp32 variants build, are timed, and one is picked."""
    out = tmp_path / "s"
    r = cli("sweep", conv_bn_path, "--recipes", "cpu-fp32,cpu-int8", "--grid", "steps.fuse.ort=extended,basic",
            "-o", out, "--pick", "min_cosine=0.999", "--jobs", "2", *QUICK)
    assert r.code == 0, r.err
    doc = json.loads((out / "sweep.json").read_text())
    assert doc["schema"] == "accelopt.sweep/1" and doc["complete"] and doc["quality"] == "cosine"
    status = {v["label"]: v["status"] for v in doc["variants"]}
    assert status == {"cpu-fp32 ort=extended": "ok", "cpu-fp32 ort=basic": "ok",
                      "cpu-int8 ort=extended": "failed", "cpu-int8 ort=basic": "failed"}
    failed = next(v for v in doc["variants"] if v["status"] == "failed")
    assert "needs calibration data" in failed["error"] and "FAILED: quantize mode static needs" in r.out
    built = [v for v in doc["variants"] if v["status"] == "ok"]
    assert all(v["metrics"]["latency_ms"] > 0 and v["metrics"]["cosine"] > 0.999 for v in built)
    assert doc["latency"]["side_by_side"] and doc["input"]["latency_ms"] > 0
    fastest = min(built, key=lambda v: v["metrics"]["latency_ms"])
    assert fastest["pareto"] and doc["pick"]["label"] == fastest["label"]
    assert json.loads((out / "picked" / "report.json").read_text())["recipe"]["name"] == "cpu-fp32"
    assert (out / "picked" / "model.onnx").read_bytes() == (out / fastest["artifact"]).read_bytes()
    assert (out / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for text in ("cpu-fp32 ort=basic", "latency ms", "pareto", "side by side", f"picked: {fastest['label']}"):
        assert text in r.out


def test_grid_sweep_on_digits_and_nothing_meets_pick(cli, tmp_path):
    """Accuracy is the quality axis when the data has labels; an impossible --pick exits 1 naming the closest."""
    out = tmp_path / "s"
    r = cli("sweep", DIGITS / "digits_cnn.onnx", *DIGITS_INT8, "--grid", "steps.quantize.calibration=minmax,percentile",
            "-o", out, "--pick", "max_latency_ms=0.000001", "--json")
    assert r.code == 1, r.err
    doc = json.loads(r.out)
    assert [v["label"] for v in doc["variants"]] == ["calibration=minmax", "calibration=percentile"]
    assert doc["quality"] == "accuracy" and doc["data"]["same_for_all"]
    assert doc["data"]["evaluation"] == ["npz:evaluation.npz (450 samples)"]
    assert all(v["metrics"]["accuracy"] > 0.9 and v["metrics"]["size_bytes"] < 40_000 for v in doc["variants"])
    assert any(v["pareto"] for v in doc["variants"]) and doc["chart"] == "pareto.png"
    closest = min(doc["variants"], key=lambda v: v["metrics"]["latency_ms"])["label"]
    assert f"no variant meets max_latency_ms=1e-06; closest: {closest} (latency_ms" in r.err
    assert not (out / "picked").exists() and (out / "pareto.png").exists()
    assert (out / "variants" / "calibration-minmax" / "model.onnx").exists()


def test_ctrl_c_keeps_finished_variants(cli, conv_bn_path, tmp_path, monkeypatch):
    from accelopt.sweeping import build as sweep_build

    real_run, calls = sweep_build.pipeline.run, []

    def run_then_interrupt(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise Interrupted("interrupted; nothing was written to the output folder")
        return real_run(*args, **kwargs)

    monkeypatch.setattr(sweep_build.pipeline, "run", run_then_interrupt)
    out = tmp_path / "s"
    r = cli("sweep", conv_bn_path, "--recipe", "cpu-fp32", "--grid", "steps.fuse.ort=extended,basic,off", "-o", out,
            *QUICK)
    assert r.code == 130 and "1 finished variant(s) kept in" in r.err
    doc = json.loads((out / "sweep.json").read_text())
    assert doc["interrupted"] and not doc["complete"]
    assert [v["status"] for v in doc["variants"]] == ["built", "pending", "pending"]
    assert (out / doc["variants"][0]["artifact"]).exists()


def test_core_ml_variants_are_scored_but_not_timed_off_macos(cli, tmp_path):
    """Off macOS a Core ML package is run by the MIL evaluator: its speed is not Core ML's, so no latency."""
    pytest.importorskip("coremltools")
    if platform.system() == "Darwin":
        pytest.skip("Core ML itself runs here")
    path = tmp_path / "m.onnx"
    onnx.save(models.conv_stack(), str(path))
    out = tmp_path / "s"
    r = cli("sweep", path, "--recipes", "coreml-fp16,coreml-fp32", "-o", out, *QUICK)
    assert r.code == 0, r.err
    doc = json.loads((out / "sweep.json").read_text())
    assert [v["status"] for v in doc["variants"]] == ["ok", "ok"]
    assert all(v["metrics"]["latency_ms"] is None and v["metrics"]["cosine"] > 0.999 for v in doc["variants"])
    assert "coreml-fp16: not timed: its numerics are checked by numpy MIL evaluator" in r.out + r.err
