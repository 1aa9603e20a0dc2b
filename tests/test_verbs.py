"""inspect, compare, bench and recipes: output, --json, and exit codes."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
import yaml
from onnx import numpy_helper

from tests import models


def test_inspect_table_and_json(cli, conv_bn_path):
    r = cli("inspect", conv_bn_path)
    assert r.code == 0
    assert "BatchNormalization" in r.out and "batch" in r.out and "loads" in r.out
    d = json.loads(cli("inspect", conv_bn_path, "--json", "--shape", "x:2,3,16,16").out)
    assert d["dynamic_inputs"] == ["x"]
    assert d["op_histogram"]["BatchNormalization"] == 2
    # conv1 8*16*16*3*9 + conv2 8*16*16*8*9 + gemm 4*8, at batch 2
    assert d["macs"] == 2 * (8 * 256 * 27 + 8 * 256 * 72 + 32)


def test_compare_match_and_mismatch(cli, conv_bn_path, tmp_path):
    r = cli("compare", conv_bn_path, conv_bn_path, "--json")
    assert r.code == 0 and json.loads(r.out)["passed"]
    m = models.conv_bn_model()
    fc = next(i for i in m.graph.initializer if i.name == "fc_b")
    fc.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(fc) + 0.05, "fc_b"))
    other = tmp_path / "perturbed.onnx"
    onnx.save(m, str(other))
    r = cli("compare", conv_bn_path, other, "--json")
    assert r.code == 1
    out = json.loads(r.out)["outputs"][0]
    assert not out["passed"] and out["min_atol"] == pytest.approx(0.05, rel=1e-3)
    # the reported minimum tolerance is one that passes
    assert cli("compare", conv_bn_path, other, "--atol", str(out["min_atol"] * 1.001)).code == 0
    r = cli("compare", conv_bn_path, other)
    assert "MISMATCH" in r.out


def test_compare_with_data(cli, conv_bn_path, tmp_path):
    np.savez(tmp_path / "d.npz", x=np.ones((3, 3, 16, 16), np.float32))
    d = json.loads(cli("compare", conv_bn_path, conv_bn_path, "--data", tmp_path / "d.npz", "--json").out)
    assert "d.npz" in d["data"]
    np.savez(tmp_path / "bad.npz", y=np.ones((3, 3, 16, 16), np.float32))
    r = cli("compare", conv_bn_path, conv_bn_path, "--data", tmp_path / "bad.npz")
    assert r.code == 2 and "x" in r.err


def test_bench_batches_and_threads(cli, conv_bn_path):
    r = cli("bench", conv_bn_path, "--batch", "1,4", "--threads", "1,2", "--runs", "3", "--warmup", "1", "--json")
    assert r.code == 0, r.err
    res = json.loads(r.out)["results"]
    assert [(x["batch"], x["threads"]) for x in res] == [(1, 1), (4, 1), (1, 2), (4, 2)]
    assert all(x["p99_ms"] >= x["p90_ms"] >= x["median_ms"] > 0 for x in res)
    table = cli("bench", conv_bn_path, "--runs", "2", "--warmup", "0")
    assert table.code == 0 and "median ms" in table.out


def test_bench_batching_study_finds_the_knee_and_the_budget_batch(cli, conv_bn_path):
    r = cli("bench", conv_bn_path, "--batch", "1-4", "--runs", "3", "--warmup", "1", "--latency-budget", "10s",
            "--json")
    assert r.code == 0, r.err
    d = json.loads(r.out)
    assert [x["batch"] for x in d["results"]] == [1, 2, 4]
    (advice,) = d["batching"]
    assert advice["within_budget"] == 4 and advice["percentile"] == "p90" and advice["budget_ms"] == 10000
    assert advice["knee_batch"] in (1, 2, 4)
    text = cli("bench", conv_bn_path, "--batch", "1,2", "--runs", "2", "--warmup", "0", "--latency-budget", "10s")
    assert text.code == 0 and "throughput knee at batch" in text.out and "p90 <= 10000 ms: batch 2" in text.out
    missed = cli("bench", conv_bn_path, "--runs", "2", "--latency-budget", "0.000001ms")
    assert missed.code == 1 and "no batch size meets p90" in missed.err
    assert cli("bench", conv_bn_path, "--latency-budget", "fast").code == 2
    assert cli("bench", conv_bn_path, "--percentile", "p50").code == 2


def test_knee_is_the_smallest_batch_near_the_best_throughput():
    from accelopt.batching import advise
    from accelopt.targets.base import LatencyStats

    def stats(batch: int, ms: float) -> LatencyStats:
        return LatencyStats(batch, 1, 0, 1, ms, ms * 1.1, ms * 1.2, ms, ms, batch / ms * 1000)

    (a,) = advise([stats(1, 1.0), stats(2, 1.2), stats(4, 2.0), stats(8, 3.8), stats(16, 7.4)], budget_ms=4.5)
    # throughput 1000, 1667, 2000, 2105, 2162 samples/s: 90% of the best is 1946 -> batch 4
    assert (a.knee_batch, a.best_batch, a.within_budget) == (4, 16, 8)  # p90 of batch 8 = 4.18 ms


def test_bench_rejects_batch_on_static_model(cli, tmp_path):
    p = tmp_path / "static.onnx"
    onnx.save(models.conv_bn_model(dynamic_batch=False), str(p))
    r = cli("bench", p, "--batch", "8")
    assert r.code == 2 and "fixed at 1" in r.err
    assert cli("bench", p, "--batch", "x").code == 2


def test_recipes_list_show_steps(cli):
    r = cli("recipes", "list", "--json")
    names = [x["name"] for x in json.loads(r.out)]
    assert "cpu-fp32" in names
    assert "simplify" in cli("recipes", "show", "cpu-fp32").out
    steps = {s["name"]: s for s in json.loads(cli("recipes", "steps", "--json").out)}
    assert {"simplify", "fix-shapes", "fuse", "fp16"} <= set(steps)
    assert steps["fuse"]["config"]["ort"]["default"] == "extended"


def test_recipes_validate(cli, tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text("version: 1\nextends: cpu-fp32\ngates: {min_cosine: 0.999}\n")
    r = cli("recipes", "validate", good)
    assert r.code == 0 and "ok:" in r.out
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nstepz: []\n")
    r = cli("recipes", "validate", bad)
    assert r.code == 2 and "unknown key 'stepz'" in r.err and "steps" in r.err
    (tmp_path / "v2.yaml").write_text("version: 2\n")
    assert "version 2 is not supported" in cli("recipes", "validate", tmp_path / "v2.yaml").err
    (tmp_path / "broken.yaml").write_text("steps: [\n")
    r = cli("recipes", "validate", tmp_path / "broken.yaml")
    assert r.code == 2 and "not valid YAML" in r.err
    loop = tmp_path / "loop.yaml"
    loop.write_text(f"extends: {loop}\n")
    assert "extends itself" in cli("recipes", "validate", loop).err


def test_recipes_init_writes_valid_recipe(cli, tmp_path):
    dest = tmp_path / "recipe.yaml"
    r = cli("recipes", "init", "--target", "onnxruntime", "-o", dest)
    assert r.code == 0
    text = dest.read_text()
    assert text.count("#") > 10  # commented
    assert yaml.safe_load(text)["target"]["name"] == "onnxruntime"
    assert cli("recipes", "validate", dest).code == 0
    assert cli("recipes", "init", "-o", dest).code == 2  # never overwrites
    assert "unknown target" in cli("recipes", "init", "--target", "nope").err


def test_console_script_no_traceback(tmp_path):
    """The installed entry point: one line and exit code 2 for a corrupt model."""
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model at all")
    proc = subprocess.run([sys.executable, "-m", "accelopt.cli.app", "inspect", str(bad)],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error:") and "Traceback" not in proc.stderr
    help_ = subprocess.run([sys.executable, "-m", "accelopt.cli.app", "--help"], capture_output=True, text=True)
    assert help_.returncode == 0 and "convert" in help_.stdout


def test_inspect_paddle_style_dynamic_dims(cli, tmp_path):
    """Exporters mark dynamic dims as -1 or share one name ('?') across axes."""
    p = tmp_path / "paddle.onnx"
    onnx.save(models.paddle_style_model(), str(p))
    d = json.loads(cli("inspect", p, "--json").out)
    assert d["dynamic_inputs"] == ["x"]
    r = cli("inspect", p)
    assert r.code == 0 and "[-1, 3, ?, ?]" in r.out


def test_demo_example_converts(cli, tmp_path):
    """The bundled example with its own recipe: what `make demo` runs."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "examples" / "digits"
    out = tmp_path / "digits"
    r = cli("convert", root / "digits_cnn.onnx", "-r", root / "recipe.yaml", "-o", out, "--json",
            "--set", "validation.runs=5")
    assert r.code == 0, r.err
    rep = json.loads(r.out)
    assert rep["data"]["evaluation"]["samples"] == 450 and rep["data"]["calibration"]["samples"] == 128
    assert rep["reference"]["accuracy"] > 0.95
    assert rep["final"]["accuracy_drop"] == 0.0
    assert rep["steps"][1]["decisions"]["conv_bn_folded"] == 3
    assert all(g["passed"] for g in rep["gates"])


def test_steps_reference_doc_is_current(cli):
    """docs/steps.md is generated from the registry; regenerate it when a pass changes."""
    from pathlib import Path

    doc = Path(__file__).resolve().parents[1] / "docs" / "steps.md"
    assert cli("recipes", "steps", "--markdown").out == doc.read_text(), \
        "docs/steps.md is stale: accelopt recipes steps --markdown > docs/steps.md"


def test_compare_auto_task_reports_top1(cli, conv_bn_path):
    out = json.loads(cli("compare", conv_bn_path, conv_bn_path, "--json").out)["outputs"][0]
    assert out["top1_agreement"] == 1.0  # [samples, classes] output: top-1 applies
    raw = json.loads(cli("compare", conv_bn_path, conv_bn_path, "--task", "raw", "--json").out)["outputs"][0]
    assert raw["top1_agreement"] is None
    assert cli("compare", conv_bn_path, conv_bn_path, "--task", "yolo").code == 2


def test_recipes_json_forms(cli, tmp_path):
    shown = json.loads(cli("recipes", "show", "cpu-fp32", "--json").out)
    simplify = shown["steps"][0]["simplify"]  # every default spelled out
    assert simplify["check_n"] == 0 and simplify["fold_bn"] is False
    assert "fuse_attention" in simplify["skipped_optimizers"]
    good = tmp_path / "good.yaml"
    good.write_text("version: 1\nextends: cpu-fp32\n")
    assert json.loads(cli("recipes", "validate", good, "--json").out)["valid"] is True


def test_inspect_shows_symbolic_dims_literally(cli, conv_bn_path):
    """A shape like [batch, 3, 16, 16] must not be eaten as a terminal style tag."""
    assert "[batch, 3, 16, 16]" in cli("inspect", conv_bn_path).out


def test_inspect_runs_a_targets_check_naming_nodes(cli, tmp_path):
    """`inspect --target` answers "will this model lower?" before any work, node by node."""
    pytest.importorskip("coremltools")
    model = models.conv_stack(batch="N")
    model.graph.node.append(onnx.helper.make_node("Det", ["y"], ["d"], name="det0"))
    p = tmp_path / "m.onnx"
    onnx.save(model, str(p))
    r = cli("inspect", p, "--target", "coreml", "--target-option", "deployment_target=iOS16")
    assert r.code == 0 and "target coreml, deployment_target iOS16: 2 problem(s)" in r.out
    d = json.loads(cli("inspect", p, "--target", "coreml", "--shape", "x:1,3,16,16", "--json").out)
    assert [(f["node"], f["severity"]) for f in d["target"]["findings"]] == [("det0", "error")]
    assert "Det has no Core ML lowering" in d["target"]["findings"][0]["message"]
    r = cli("inspect", p, "--target", "coreml", "--target-option", "deployment_target")
    assert r.code == 2 and "expected KEY=VALUE" in r.err
