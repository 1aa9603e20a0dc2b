"""Quantizer groups and the accuracy fallback search: exact groups on a hand-built graph, the search on fake
callables (errors, NaN, budget), and end to end with real ONNX Runtime INT8 on the notes' outlier model, where
the fallback must find the two convs around the injected outlier channels."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                      create_calibrator, quantize_static, save_tensors_data)

from accelopt.optimizers.quantization import fallback as quant_fallback
from accelopt.optimizers.quantization.fallback import Group, accuracy_fallback, quantizer_groups
from tests import models

QUANTIZED_OPS = {"Conv", "Gemm"}
OUTLIER_TARGET_DB = 35.0  # measured: full INT8 19.1 dB, {conv4} 28.1 dB, {conv4, conv3} 41.2 dB (clean model 41.3)


# --- real INT8 on the outlier model ------------------------------------------------------------------------------


class _Feeds(CalibrationDataReader):
    def __init__(self, feeds: list[dict[str, np.ndarray]]):
        self._it = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


@dataclass
class Bench:
    """A float model with its calibration cached once, so each candidate costs a quantize_static without
    inference plus one batched run for the score."""

    model: onnx.ModelProto
    quantize: Callable[[set[str]], onnx.ModelProto]
    quantize_only: Callable[[set[str]], onnx.ModelProto]
    score: Callable[[onnx.ModelProto], float]


def _bench(model: onnx.ModelProto, tmp: Path) -> Bench:
    rng = np.random.default_rng(0)
    onnx.save(model, tmp / "float.onnx")
    calibrator = create_calibrator(tmp / "float.onnx", sorted(QUANTIZED_OPS), augmented_model_path=str(tmp / "a.onnx"),
                                   calibrate_method=CalibrationMethod.MinMax)
    calibrator.collect_data(_Feeds([{"x": rng.standard_normal((1, 8, 16, 16), np.float32)} for _ in range(16)]))
    save_tensors_data(calibrator.compute_data(), tmp / "ranges.json")
    x = rng.standard_normal((16, 8, 16, 16), np.float32)
    reference = _run(model, x)

    def quantize_with(**nodes: list[str]) -> onnx.ModelProto:
        quantize_static(model, tmp / "q.onnx", None, calibration_cache_path=tmp / "ranges.json",
                        calibrate_method=CalibrationMethod.MinMax, quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        op_types_to_quantize=sorted(QUANTIZED_OPS), **nodes)
        return onnx.load(tmp / "q.onnx")

    def sqnr(candidate: onnx.ModelProto) -> float:
        error = np.linalg.norm(reference - _run(candidate, x))
        with np.errstate(divide="ignore"):  # identical outputs: inf dB
            return float(20 * np.log10(np.linalg.norm(reference) / error))

    return Bench(model, lambda excluded: quantize_with(nodes_to_exclude=sorted(excluded)),
                 lambda nodes: quantize_with(nodes_to_quantize=sorted(nodes)), sqnr)


@pytest.fixture(scope="module")
def outlier(tmp_path_factory) -> Bench:
    return _bench(models.outlier_conv_model(), tmp_path_factory.mktemp("outlier"))


@pytest.fixture(scope="module")
def outlier_groups(outlier) -> list[Group]:
    return quantizer_groups(outlier.model, QUANTIZED_OPS)


def test_outlier_channels_cost_int8_accuracy(outlier, tmp_path):
    clean = _bench(models.outlier_conv_model(factor=1.0), tmp_path)
    clean_db, outlier_db = clean.score(clean.quantize(set())), outlier.score(outlier.quantize(set()))
    assert clean.score(clean.model) == outlier.score(outlier.model) == float("inf")
    assert clean_db > 35 and outlier_db < clean_db - 10
    assert outlier_db < OUTLIER_TARGET_DB - 8


def test_outlier_model_groups_are_one_per_quantized_op(outlier_groups):
    """Relu is not quantized here, so no tensor joins two convs: each Conv/Gemm is its own group."""
    expected = [(f"c{i}", [f"conv{i}"]) for i in range(1, 7)] + [("y", ["fc"])]
    assert [(g.name, g.nodes) for g in outlier_groups] == expected


def test_fallback_finds_the_convs_around_the_outlier(outlier, outlier_groups):
    result = accuracy_fallback(outlier_groups, outlier.quantize, outlier.quantize_only, outlier.score,
                               OUTLIER_TARGET_DB)
    assert result.met and result.score >= OUTLIER_TARGET_DB
    assert sorted(result.excluded) == ["conv3", "conv4"]
    assert len(result.history) <= 3 and all(h["kept"] for h in result.history)
    assert [r["nodes"] for r in result.ranking[:2]] == [["conv4"], ["conv3"]]  # quantize-only finds the culprits
    assert min(r["score"] for r in result.ranking[2:]) > result.ranking[1]["score"] + 5
    assert outlier.score(result.model) == pytest.approx(result.score)
    assert _float_nodes(result.model) == {"conv3", "conv4"}


def test_unreachable_target_returns_best_model_and_history(outlier, outlier_groups):
    """conv1 is offered no group, so it stays INT8 and 200 dB cannot be reached."""
    full = outlier.score(outlier.quantize(set()))
    groups = outlier_groups[1:]
    result = accuracy_fallback(groups, outlier.quantize, outlier.quantize_only, outlier.score, 200.0)
    assert not result.met
    assert len(result.history) == len(groups)  # every group tried once
    best_seen = max(h["score"] for h in result.history if h["kept"])
    assert result.score == best_seen > full + 10
    assert outlier.score(result.model) == pytest.approx(result.score)
    assert result.excluded == [n for h in result.history if h["kept"] for n in h["nodes"]]
    assert all(h["seconds"] >= 0 and not h.get("error") for h in result.history)


def test_zero_budget_returns_full_int8(outlier, outlier_groups):
    result = accuracy_fallback(outlier_groups, outlier.quantize, outlier.quantize_only, outlier.score,
                               OUTLIER_TARGET_DB, budget_s=0.0)
    assert result.excluded == [] and result.history == [] and not result.met
    assert [r["score"] for r in result.ranking] == [None] * len(outlier_groups)
    assert [r["group"] for r in result.ranking] == [g.name for g in outlier_groups]  # unranked: graph order
    assert result.score == pytest.approx(outlier.score(outlier.quantize(set())))
    assert result.seconds < 2


def test_pinned_nodes_stay_float_in_every_candidate(outlier, outlier_groups):
    excluded_calls: list[set[str]] = []
    only_calls: list[set[str]] = []

    def quantize(excluded: set[str]) -> onnx.ModelProto:
        excluded_calls.append(set(excluded))
        return outlier.quantize(excluded)

    def quantize_only(nodes: set[str]) -> onnx.ModelProto:
        only_calls.append(set(nodes))
        return outlier.quantize_only(nodes)

    result = accuracy_fallback(outlier_groups, quantize, quantize_only, outlier.score, OUTLIER_TARGET_DB,
                               pinned=frozenset({"fc"}))
    assert all("fc" in c for c in excluded_calls) and only_calls and not any("fc" in c for c in only_calls)
    assert result.met and result.excluded[0] == "fc" and sorted(result.excluded[1:]) == ["conv3", "conv4"]
    assert "y" not in [r["group"] for r in result.ranking]  # a fully pinned group is no candidate
    assert _float_nodes(result.model) == {"conv3", "conv4", "fc"}


def _float_nodes(model: onnx.ModelProto) -> set[str]:
    """Conv/Gemm nodes whose weight does not come from a DequantizeLinear, i.e. that run in float."""
    dequantized = {out for n in model.graph.node if n.op_type == "DequantizeLinear" for out in n.output}
    return {n.name for n in model.graph.node if n.op_type in QUANTIZED_OPS and n.input[1] not in dequantized}


# --- quantizer_groups on a hand-built graph ----------------------------------------------------------------------


def _branchy_model(name_nodes: bool = True) -> onnx.ModelProto:
    """conv_a -> relu -> {conv_b, conv_c} -> add_bc -> relu_s -> conv_d -> add_dk(+k) = y1; add_x2k(x2 + k) = y2.

    All convs share the initializer `w` and both Adds the Constant `k`: weights must not merge groups."""
    w = numpy_helper.from_array(np.full((4, 4, 1, 1), 0.1, np.float32), "w")
    k = numpy_helper.from_array(np.ones((4, 1, 1), np.float32), "k_value")
    spec = [("Conv", ["x", "w"], "a", "conv_a"), ("Relu", ["a"], "r", "relu_a"), ("Conv", ["r", "w"], "b", "conv_b"),
            ("Conv", ["r", "w"], "c", "conv_c"), ("Add", ["b", "c"], "s", "add_bc"), ("Relu", ["s"], "t", "relu_s"),
            ("Conv", ["t", "w"], "d", "conv_d"), ("Add", ["d", "k"], "y1", "add_dk"),
            ("Add", ["x2", "k"], "y2", "add_x2k")]
    nodes = [helper.make_node(op, ins, [out], name=name if name_nodes else "") for op, ins, out, name in spec]
    nodes.insert(6, helper.make_node("Constant", [], ["k"], name="k_const", value=k))
    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 4, 2, 2]) for n in ("x", "x2", "y1", "y2")]
    model = helper.make_model(helper.make_graph(nodes, "branchy", io[:2], io[2:], initializer=[w]),
                              opset_imports=[helper.make_opsetid("", 17)], ir_version=models.IR_VERSION)
    onnx.checker.check_model(model)
    return model


def test_groups_merge_producer_and_consumers_but_not_through_weights():
    groups = quantizer_groups(_branchy_model(), {"Conv", "Add"})
    assert [(g.name, g.nodes) for g in groups] == [
        ("a", ["conv_a"]),  # relu_a is not quantized, so r ties conv_b/conv_c only to each other
        ("b", ["conv_b", "conv_c", "add_bc"]),  # r, b and c all share nodes
        ("d", ["conv_d", "add_dk"]),  # k is a Constant: add_dk and add_x2k stay apart
        ("y2", ["add_x2k"]),
    ]


def test_groups_with_activations_quantized_chain_through_them():
    groups = quantizer_groups(_branchy_model(), {"Conv", "Add", "Relu"})
    assert [(g.name, g.nodes) for g in groups] == [
        ("a", ["conv_a", "relu_a", "conv_b", "conv_c", "add_bc", "relu_s", "conv_d", "add_dk"]),
        ("y2", ["add_x2k"]),
    ]


def test_groups_need_node_names():
    with pytest.raises(ValueError, match="has no name.*name"):
        quantizer_groups(_branchy_model(name_nodes=False), {"Conv"})


# --- the search on fake callables ----------------------------------------------------------------------------------


class Fake:
    """Scores that depend only on which nodes are float: base 10, +5 for "a", +3 for "c", "d" changes nothing,
    quantizing with "b" excluded fails. Quantize-only scores rank c (NaN), b, d, a. A model's doc_string names
    its case so `score` can look it up; every score call advances a fake clock by one second."""

    ONLY = {"a": 1.0, "b": 0.5, "c": float("nan"), "d": 0.7}
    GAIN = {"a": 5.0, "c": 3.0, "d": 0.0}

    def __init__(self) -> None:
        self.now = 0.0
        self.only_calls = 0

    def quantize(self, excluded: set[str]) -> onnx.ModelProto:
        if "b" in excluded:
            raise RuntimeError("quantizer failed")
        return onnx.ModelProto(doc_string="ex:" + ",".join(sorted(excluded)))

    def quantize_only(self, nodes: set[str]) -> onnx.ModelProto:
        self.only_calls += 1
        return onnx.ModelProto(doc_string="only:" + ",".join(sorted(nodes)))

    def score(self, model: onnx.ModelProto) -> float:
        self.now += 1.0
        kind, names = model.doc_string.split(":")
        nodes = [n for n in names.split(",") if n]
        if kind == "only":
            return self.ONLY[nodes[0]]
        return 10.0 + sum(self.GAIN.get(n, 0.0) for n in nodes)

    def search(self, target: float, **kwargs) -> quant_fallback.FallbackResult:
        groups = [Group(f"t_{n}", [n]) for n in "abcd"]
        return accuracy_fallback(groups, self.quantize, self.quantize_only, self.score, target, **kwargs)


@pytest.fixture
def fake(monkeypatch) -> Fake:
    fake = Fake()
    monkeypatch.setattr(quant_fallback, "monotonic", lambda: fake.now)
    return fake


def test_search_skips_failures_undoes_useless_exclusions_and_ranks_nan_first(fake):
    result = fake.search(18.0)
    assert [r["group"] for r in result.ranking] == ["t_c", "t_b", "t_d", "t_a"]
    assert result.ranking[0]["score"] == float("-inf")
    assert [(h["group"], h["kept"]) for h in result.history] == [("t_c", True), ("t_b", False), ("t_d", False),
                                                                 ("t_a", True)]
    assert "quantizer failed" in result.history[1]["error"]
    assert result.excluded == ["c", "a"] and result.met and result.score == 18.0
    assert result.model.doc_string == "ex:a,c"


def test_search_returns_first_model_when_it_already_meets_the_target(fake):
    result = fake.search(10.0)
    assert result.met and result.excluded == [] and result.ranking == [] and fake.only_calls == 0


def test_search_without_groups_returns_first_model(fake):
    result = accuracy_fallback([], fake.quantize, fake.quantize_only, fake.score, 99.0, pinned=frozenset({"a"}))
    assert not result.met and result.excluded == ["a"] and result.score == 15.0 and result.history == []


@pytest.mark.parametrize("budget, ranked, tried, score", [
    (2.5, ["t_b", "t_a"], [], 10.0),  # q0 + 2 rankings spend it: c and d unranked, no greedy step
    (5.5, ["t_c", "t_b", "t_d", "t_a"], ["t_c"], 13.0),  # ranking done, one greedy step, best so far kept
])
def test_budget_stops_ranking_and_greedy_with_best_so_far(fake, budget, ranked, tried, score):
    result = fake.search(18.0, budget_s=budget)
    scored = [r["group"] for r in result.ranking if r["score"] is not None]
    assert scored == ranked
    assert [r["group"] for r in result.ranking] == ranked + [g for g in ["t_a", "t_b", "t_c", "t_d"] if g not in ranked]
    assert [h["group"] for h in result.history] == tried
    assert result.score == score and not result.met


def test_a_culprit_that_hurts_alone_is_retried_with_the_next(monkeypatch):
    """Floating one side of an outlier pair scores worse; floating both scores best."""
    scores = {frozenset(): 20.0, frozenset({"p"}): 15.0, frozenset({"q"}): 12.0, frozenset({"p", "q"}): 40.0}

    def quantize(excluded):
        m = onnx.ModelProto()
        m.doc_string = ",".join(sorted(excluded))
        return m

    def score(model):
        return scores[frozenset(filter(None, model.doc_string.split(",")))]

    groups = [Group("tp", ["p"]), Group("tq", ["q"])]
    result = accuracy_fallback(groups, quantize, lambda nodes: quantize(set()), score, 35.0)
    assert result.met and sorted(result.excluded) == ["p", "q"]
    assert [(h["group"], h["kept"]) for h in result.history] == [("tp", False), ("tq", False), ("tp+tq", True)]
