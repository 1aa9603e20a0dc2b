"""Gates: each one's pass, fail and can't-measure cases, on a report's `final` section."""

from __future__ import annotations

import pytest

from accelopt.recipes.schema import Gates
from accelopt.report import GATES, evaluate_gates, render_junit, waterfall_rows

FINAL = {"worst": {"cosine": 0.9995, "sqnr_db": 31.0, "top1_agreement": 0.96}, "accuracy_drop": 0.004, "speedup": 1.3,
         "size_bytes": 2_500_000}


def test_every_recipe_gate_has_an_evaluator():
    assert set(Gates.model_fields) == set(GATES)


@pytest.mark.parametrize("gate, ok, bad", [
    ("min_cosine", 0.999, 0.9999), ("min_sqnr_db", 30.0, 35.0), ("min_top1_agreement", 0.95, 0.97),
    ("max_accuracy_drop", 0.01, 0.001),
    ("min_speedup", 1.2, 1.5), ("max_size_mb", 3.0, 2.0),
])
def test_gate_pass_and_fail(gate, ok, bad):
    for threshold, expected in ((ok, True), (bad, False)):
        (result,) = evaluate_gates(Gates(**{gate: threshold}), {"final": FINAL})
        assert result["passed"] is expected and result["threshold"] == threshold and result["value"] is not None


def test_unmeasurable_gates_fail_with_reason():
    final = {"worst": {}, "accuracy_drop": None, "speedup": None, "size_bytes": 10}
    results = evaluate_gates(Gates(min_cosine=0.9, max_accuracy_drop=0.1, min_speedup=1.0), {"final": final})
    assert [r["passed"] for r in results] == [False, False, False]
    assert all(r["reason"] for r in results)


def test_junit_counts_failures():
    report = {"recipe": {"name": "r"}, "steps": [{"name": "fuse", "within_tolerance": True, "seconds": 0.1,
                                                   "precision": "fp32"}],
              "gates": evaluate_gates(Gates(min_speedup=2.0, max_size_mb=3.0), {"final": FINAL})}
    xml = render_junit(report)
    assert 'tests="3" failures="1"' in xml and 'name="gate.min_speedup"' in xml


def _report(accuracy: bool) -> dict:
    """The parts of a report the waterfall reads: input, then prune and quantize."""
    acc = (lambda v: v) if accuracy else (lambda v: None)
    return {"reference": {"latency": {"median_ms": 10.0}, "accuracy": acc(0.99)},
            "steps": [{"name": "prune", "latency": {"median_ms": 5.0}, "accuracy": acc(0.985), "worst": {"cosine": 0.99}},
                      {"name": "quantize", "latency": {"median_ms": 4.0}, "accuracy": acc(0.98),
                       "worst": {"cosine": 0.97}}]}


def test_waterfall_shows_each_step_against_the_one_before():
    rows = waterfall_rows(_report(accuracy=True))
    assert [r["step"] for r in rows] == ["input", "prune", "quantize"]
    assert [r["factor"] for r in rows] == ["-", "2.00x", "1.25x"]  # INT8 adds 1.25x on top of pruning
    assert [r["speedup"] for r in rows] == ["1.00x", "2.00x", "2.50x"]
    assert [r["delta_quality"] for r in rows] == ["-", "-0.50 pt", "-0.50 pt"]
    cosine = waterfall_rows(_report(accuracy=False))
    assert cosine[2]["quality"] == "0.970000" and cosine[2]["delta_quality"] == "-0.020000"
    assert waterfall_rows({"reference": {"latency": None}, "steps": []}) == []
