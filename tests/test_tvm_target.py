"""The TVM target: missing extra, check findings, lowering vs ORT, tuning database reuse, the CLI recipe."""

from __future__ import annotations

import json
import os
import sys
import time

import numpy as np
import onnx
import pytest
from onnx import helper

from accelopt.errors import MissingExtraError, RecipeError
from accelopt.targets import get_target
from tests import models


def test_missing_extra_is_named(monkeypatch, cli, tmp_path):
    """Runs without TVM too (CI): a None in sys.modules makes find_spec('tvm') report it absent."""
    monkeypatch.setitem(sys.modules, "tvm", None)
    with pytest.raises(MissingExtraError, match=r"target tvm needs the \[tvm\] extra"):
        get_target("tvm")
    path = tmp_path / "m.onnx"
    onnx.save(models.conv_stack(), str(path))
    r = cli("convert", path, "-o", tmp_path / "o", "--recipe", "tvm-cpu")
    assert r.code == 2 and "pip install 'accelopt[tvm]'" in r.err


def test_bad_tuning_option_names_valid_keys():
    pytest.importorskip("tvm")
    with pytest.raises(RecipeError, match="option 'tuning.trails'"):
        get_target("tvm", {"tuning": {"trails": 3}})


tvm = pytest.importorskip("tvm")

from accelopt.targets.onnxruntime import OrtRunner  # noqa: E402
from accelopt.targets.tvm import lower as tvm_lower  # noqa: E402
from accelopt.targets.tvm import tune as tvm_tune  # noqa: E402


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def _x() -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(0).standard_normal((1, 3, 16, 16)).astype(np.float32)}


def test_check_names_unsupported_nodes_and_unpinned_inputs():
    model = models.conv_stack(batch="N")
    model.graph.node.append(helper.make_node("LSTM", ["y"], ["h"], name="rnn0"))
    model.graph.node.append(helper.make_node("QLinearConv", ["y"], ["q"], name="qconv"))
    findings = get_target("tvm").check(model)
    by_node = {f.node: f.message for f in findings if f.severity == "error"}
    assert "recurrent" in by_node["rnn0"] and "QDQ" in by_node["qconv"]
    assert "input 'x' has dynamic shape ['N', 3, 16, 16]" in by_node["x"] and "input.shapes" in by_node["x"]


def test_untuned_lower_runs_like_ort(tmp_path):
    model = models.conv_stack()
    target = get_target("tvm", {"threads": 1})
    assert target.check(model) == []
    artifact = target.lower(model, tmp_path)
    assert sorted(p.name for p in artifact.files) == ["model.json", "model.so"]
    runner = target.runner(artifact, threads=1)
    assert runner.threads == 1 and [s.name for s in runner.outputs] == ["y"]
    out = runner.run(_x())["y"]
    assert _cosine(out, OrtRunner(model, threads=1).run(_x())["y"]) >= 0.9999
    assert runner.bench(_x(), warmup=1, runs=3).runs == 3


@pytest.mark.skipif(os.environ.get("ACCELOPT_SLOW") != "1",
                    reason="tunes with MetaSchedule: about 6 minutes on 2 cores; ACCELOPT_SLOW=1 runs it")
def test_tuning_writes_a_database_that_trials_0_reuses(tmp_path):
    model = models.conv_stack(channels=16, size=8, layers=1)  # conv1 is Winograd-eligible
    shared = tmp_path / "db"
    tuned = get_target("tvm", {"threads": 1, "tuning": {"trials": 14, "database": str(shared)}})
    first = tuned.lower(model, tmp_path / "a")
    assert tvm_tune.has_database(tmp_path / "a") and tvm_tune.has_database(shared)
    assert first.meta["tuned"] and first.meta["kernels_tuned"] >= 1
    assert any("trials measured" in m for m in first.meta["log"])
    [row] = first.meta["winograd"]  # one eligible shape, each algorithm tuned and its error measured
    assert row["nodes"] == ["conv1"] and row["choice"] in ("direct", "f2", "f4")
    assert all(row[f"{a}_ms"] > 0 and row[f"{a}_error"] < 1e-5 for a in ("direct", "f2", "f4")), row

    reuse = get_target("tvm", {"threads": 1, "tuning": {"trials": 0, "database": str(shared)}})
    second = reuse.lower(model, tmp_path / "b")
    assert not any("tvm tuning:" in m for m in second.meta["log"])  # no tuning ran
    assert second.meta["kernels_tuned"] == first.meta["kernels_tuned"]
    assert second.meta["winograd"] == first.meta["winograd"]  # the choice is read back from the database
    a, b = (t.runner(art, threads=1).run(_x8())["y"] for t, art in ((tuned, first), (reuse, second)))
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert _cosine(a, OrtRunner(model, threads=1).run(_x8())["y"]) >= 0.9999

    other = models.conv_stack(channels=8, size=8, layers=1)  # other shapes: no workload matches
    with pytest.raises(Exception, match="has no records for this model"):
        reuse.lower(other, tmp_path / "c")


def _x8() -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(1).standard_normal((1, 3, 8, 8)).astype(np.float32)}


def test_trials_0_without_database_is_a_recipe_error(tmp_path):
    target = get_target("tvm", {"threads": 1, "tuning": {"trials": 0, "database": str(tmp_path / "none")}})
    with pytest.raises(RecipeError, match="tuning.trials is 0 but there is no tuning database"):
        target.lower(models.conv_stack(), tmp_path / "o")


def test_export_without_compiler_is_clear(monkeypatch):
    monkeypatch.setenv("CXX", "no-such-compiler")
    findings = get_target("tvm").check(models.conv_stack())
    assert [f.message for f in findings] == [
        "export_library needs a C++ compiler to write model.so: install g++ or clang++, or set CXX"]


def test_interrupted_database_keeps_complete_lines(tmp_path):
    (tmp_path / tvm_tune.WORKLOADS).write_text('["1", "abc"]\n')
    (tmp_path / tvm_tune.RECORDS).write_text('[0, [[], [0.001], {}, []]]\n[0, [[], [0.0005')
    tvm_tune.repair(tmp_path)
    assert tvm_tune.progress_of(tmp_path) == (1, 1, pytest.approx(1.0))


def test_cli_convert_with_tvm_recipe_passes_validation(cli, tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(models.conv_stack(), str(path))
    r = cli("convert", path, "-o", tmp_path / "o", "--recipe", "tvm-cpu", "--set", "target.options.tuning=null",
            "--set", "validation.runs=5")
    assert r.code == 0, r.err
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    assert report["final"]["runner"] == "TvmRunner" and report["passed"]
    assert report["final"]["worst"]["cosine"] >= 0.9999
    assert {a["path"] for a in report["artifacts"]} == {tvm_lower.LIBRARY, tvm_lower.IO_FILE}
    assert report["final"]["latency"]["threads"] == 1


def test_cuda_target_builds_here_and_is_not_run_without_a_gpu(tmp_path):
    """No GPU in CI or on this machine: the build for sm_80 is checked (it needs nvcc), running it is not."""
    import shutil

    model = models.conv_stack()
    no_arch = get_target("tvm", {"device": "cuda"})
    if tvm.cuda(0).exist:
        pytest.skip("a GPU is visible: this test is about a machine without one")
    [finding] = [f for f in no_arch.check(model) if "cuda" in f.message]
    assert "no CUDA GPU is visible" in finding.message and "arch" in finding.message
    if shutil.which("nvcc") is None:
        pytest.skip("building CUDA kernels needs nvcc")
    target = get_target("tvm", {"device": "cuda", "arch": "sm_80"})
    artifact = target.lower(model, tmp_path)
    assert artifact.path.stat().st_size > 0 and artifact.meta["target"]["kind"] == "cuda"
    assert any("DLight" in line for line in artifact.meta["log"])
    assert target.runner(artifact) is None  # the pipeline then says the artifact was not run


@pytest.mark.parametrize("stop", ["time limit", "ctrl-c"])
def test_tuning_leaves_no_process_behind(tmp_path, monkeypatch, stop):
    """The tuner and its build/run workers go with it: at the time limit, and on Ctrl-C in the parent."""
    psutil = pytest.importorskip("psutil")
    from accelopt.errors import ConversionError

    if stop == "ctrl-c":
        def interrupted(child, *args):
            time.sleep(3)  # the child is importing TVM and starting its workers
            raise KeyboardInterrupt
        monkeypatch.setattr(tvm_tune, "_watch", interrupted)
    before = {p.pid for p in psutil.Process().children(recursive=True)}  # e.g. multiprocessing's tracker
    target = get_target("tvm", {"threads": 1, "tuning": {"trials": 1000, "time_s": 3, "winograd": None}})
    with pytest.raises(KeyboardInterrupt if stop == "ctrl-c" else ConversionError):
        target.lower(models.conv_stack(), tmp_path)  # nothing measured in 3 s: an error, not an untuned build
    left = [p for p in psutil.Process().children(recursive=True) if p.pid not in before and p.is_running()]
    assert left == [], [p.cmdline() for p in left]
