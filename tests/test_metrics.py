"""Output comparison: Polygraphy semantics, exact tolerance thresholds, task-aware splits."""

from __future__ import annotations

import math

import numpy as np
import pytest
from pydantic import ValidationError

from accelopt.errors import BadInputError, ConversionError, RecipeError
from accelopt.metrics import DEFAULT_TOLERANCES, TaskSpec, accuracy, compare_outputs, worst

RNG = np.random.default_rng(0)


def _one(ref, test, **kw):
    (m,) = compare_outputs({"y": ref}, {"y": test}, **kw)
    return m


def test_identical_outputs_pass_with_inf_sqnr():
    x = RNG.standard_normal((2, 10)).astype(np.float32)
    m = _one(x, x.copy())
    assert m.passed and m.cosine == 1.0 and m.sqnr_db == math.inf
    assert m.max_abs == 0.0 and m.min_atol == 0.0 and m.min_rtol == 0.0
    assert (m.atol, m.rtol) == DEFAULT_TOLERANCES["fp32"]
    assert m.to_dict()["shape"] == [2, 10]


def test_fp32_tolerances_fail_a_1e2_perturbation_fp16_pass():
    ref = RNG.uniform(1.5, 2.0, (4, 16)).astype(np.float32)
    test = ref + np.float32(1e-2)
    assert not _one(ref, test, precision="fp32").passed
    m = _one(ref, test, precision="fp16")
    assert m.passed and 0.0099 < m.max_abs < 0.0101
    assert 15.0 < m.sqnr_db < 60.0


def test_big_abs_small_rel_passes_polygraphy_and():
    ref = np.array([1000.0, 1.0])
    test = np.array([1000.5, 1.0])  # abs 0.5 >> atol, rel 5e-4 < rtol 1e-3
    m = _one(ref, test)
    assert m.passed
    assert not _one(ref, test, rtol=1e-4).passed


def test_min_tolerances_are_exact_thresholds():
    ref = RNG.standard_normal(1000)
    test = ref + RNG.standard_normal(1000) * 1e-3
    m = _one(ref, test, atol=1e-4, rtol=1e-2)
    assert not m.passed and m.min_atol > 1e-4 and m.min_rtol > 1e-2
    assert _one(ref, test, atol=m.min_atol, rtol=1e-2).passed
    assert not _one(ref, test, atol=m.min_atol * (1 - 1e-9), rtol=1e-2).passed
    assert _one(ref, test, atol=1e-4, rtol=m.min_rtol).passed
    assert not _one(ref, test, atol=1e-4, rtol=m.min_rtol * (1 - 1e-9)).passed


def test_nonfinite_must_match():
    ref = np.array([1.0, np.nan, np.inf, 2.0])
    same = _one(ref, ref.copy())
    assert same.passed and same.max_abs == 0.0
    moved = np.array([np.nan, 1.0, np.inf, 2.0])
    m = _one(ref, moved, atol=1e9, rtol=1e9)
    assert not m.passed and m.min_atol == math.inf
    assert not _one(ref, np.array([1.0, np.nan, -np.inf, 2.0]), atol=1e9).passed


def test_integer_outputs_compare_exactly():
    ref = np.array([3, 1, 2], dtype=np.int64)
    m = _one(ref, ref.copy())
    assert m.passed and m.cosine == 1.0 and (m.atol, m.rtol) == (0.0, 0.0)
    assert not _one(ref, np.array([3, 1, 3], dtype=np.int64), atol=10.0).passed
    assert _one(np.array([True, False]), np.array([True, False])).passed


def test_zero_reference_cosine():
    z = np.zeros(4)
    assert _one(z, z.copy()).cosine == 1.0
    m = _one(z, np.ones(4))
    assert m.cosine == 0.0 and m.sqnr_db == -math.inf


def _yolo_head():
    boxes = RNG.uniform(0, 320, (1, 4, 100))
    scores = RNG.uniform(0, 1, (1, 80, 100))
    return np.concatenate([boxes, scores], axis=1).astype(np.float32)


def test_detection_split_exposes_zeroed_scores():
    ref = _yolo_head()
    test = ref.copy()
    test[:, 4:, :] = 0.0
    assert _one(ref, test).cosine > 0.99  # the whole tensor hides it

    task = TaskSpec(kind="detection", axis=1, boxes=(0, 4), scores=(4, None), top_k=20)
    boxes, scores = compare_outputs({"out": ref}, {"out": test}, task=task)
    assert boxes.name == "out[boxes]" and boxes.shape == [1, 4, 100]
    assert boxes.cosine == 1.0 and boxes.sqnr_db == math.inf and boxes.passed and boxes.top1_agreement is None
    assert scores.name == "out[scores]" and scores.shape == [1, 80, 100]
    assert scores.cosine == 0.0 and scores.sqnr_db == pytest.approx(0.0) and not scores.passed
    assert scores.top1_agreement < 0.2
    summary = worst([boxes, scores])
    assert summary["cosine"] == 0.0 and not summary["passed"] and summary["top1_agreement"] < 0.2


def test_detection_top_k_agreement_on_confident_rows():
    ref = _yolo_head()
    test = ref.copy()
    scores = ref[0, 4:, :]
    weakest = np.argsort(scores.max(axis=0))[:50]  # scramble classes on the 50 least confident rows
    test[0, 4:, weakest] = RNG.permutation(test[0, 4:, weakest].T).T
    task = TaskSpec(kind="detection", axis=1, boxes=(0, 4), scores=(4, None), top_k=10)
    _, s = compare_outputs({"out": ref}, {"out": test}, task=task)
    assert s.top1_agreement == 1.0


def test_detection_requires_slices():
    with pytest.raises(ValidationError):
        TaskSpec(kind="detection", boxes=(0, 4))
    with pytest.raises(ValidationError):
        TaskSpec(kind="raw", unknown=1)


def test_classification_top1_agreement():
    ref = np.eye(4)[[0, 1, 2, 3]] + 0.1
    test = ref.copy()
    test[3] = np.eye(4)[0] * 5  # sample 3 flips to class 0
    task = TaskSpec(kind="classification")
    logits, other = compare_outputs({"logits": ref, "aux": ref}, {"logits": test, "aux": test}, task=task)
    assert logits.top1_agreement == 0.75
    assert other.top1_agreement is None  # task applies to the first output only


def test_embedding_min_per_sample_cosine():
    ref = RNG.standard_normal((8, 32))
    test = ref.copy()
    test[5] = -test[5]  # one embedding flipped; the flattened cosine stays near 0.75
    m = _one(ref, test, task=TaskSpec(kind="embedding"))
    assert m.cosine == pytest.approx(-1.0)
    assert m.cosine_mean == pytest.approx((7 - 1) / 8)


def test_accuracy_int_and_one_hot_labels():
    logits = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])
    labels = np.array([1, 0, 0, 0])
    assert accuracy(logits, labels) == 0.75
    assert accuracy(logits, np.eye(2)[labels]) == 0.75
    assert accuracy(logits.T, labels, axis=0) == 0.75
    with pytest.raises(BadInputError):
        accuracy(logits, np.array([1, 0]))


def test_missing_output_and_shape_mismatch_raise():
    x = np.ones((2, 3))
    with pytest.raises(ConversionError, match="'b'"):
        compare_outputs({"a": x, "b": x}, {"a": x})
    with pytest.raises(ConversionError, match="'a'.*shape"):
        compare_outputs({"a": x}, {"a": np.ones((3, 2))})


def test_worst_ignores_missing_top1():
    a = _one(np.ones(3), np.ones(3))
    b = _one(np.ones(3), np.ones(3) * 1.5)
    w = worst([a, b])
    assert w == {"cosine": 1.0, "sqnr_db": b.sqnr_db, "max_abs": 0.5, "top1_agreement": None, "passed": False}


def test_embedding_cosine_over_real_tokens_only():
    """Padding positions may differ freely; the mask input restricts the per-token cosine to real tokens."""
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((2, 4, 8))
    test = ref.copy()
    test[:, 3] = -ref[:, 3]  # the last token of each sample is padding and comes out flipped
    mask = np.array([[1, 1, 1, 0], [1, 1, 1, 0]])
    blind = compare_outputs({"y": ref}, {"y": test}, TaskSpec(kind="embedding"))[0]
    masked = compare_outputs({"y": ref}, {"y": test}, TaskSpec(kind="embedding", mask_input="m"),
                             feeds={"m": mask})[0]
    assert blind.cosine < 0.8 and masked.cosine == pytest.approx(1.0)
    with pytest.raises(RecipeError, match="not a model input"):
        compare_outputs({"y": ref}, {"y": test}, TaskSpec(kind="embedding", mask_input="nope"), feeds={"m": mask})


def test_nan_output_is_the_worst_error_not_a_perfect_match():
    """An fp16 overflow makes NaN everywhere; the finite positions alone (none) must not read as identical."""
    ref = np.random.default_rng(0).standard_normal((2, 4, 8)).astype(np.float32)
    all_nan = np.full_like(ref, np.nan)
    m = _one(ref, all_nan)
    assert not m.passed and m.cosine == 0.0 and m.sqnr_db == -math.inf and m.max_abs == math.inf
    assert m.nonfinite == ref.size
    some = ref.copy()
    some[1, 2, :] = np.nan
    m = _one(ref, some)
    assert m.cosine == 0.0 and m.nonfinite == 8
    emb = compare_outputs({"y": ref}, {"y": some}, task=TaskSpec(kind="embedding"))[0]
    assert emb.cosine == 0.0  # the sample with NaN is the minimum per-sample cosine
