"""Gates: each one's pass, fail and can't-measure cases, on a report's `final` section."""

from __future__ import annotations

import pytest

from accelopt.recipes.schema import Gates
from accelopt.report import GATES, evaluate_gates, render_junit

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
