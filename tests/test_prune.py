"""The prune pass: channel dependency groups (exact sets on small graphs), the pruned graph runs with the expected
shapes, the least-squares refit recovers accuracy, the masked refit keeps its zeros, and every bad input fails with
a clear error."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
import yaml
from onnx import TensorProto, helper, numpy_helper
from pydantic import ValidationError

from accelopt.data import Dataset
from accelopt.errors import BadInputError, RecipeError
from accelopt.optimizers import PassContext, get_pass
from accelopt.optimizers.pruning.criteria import weight_scores
from accelopt.optimizers.pruning.groups import find_groups, infer_shapes, node_name
from accelopt.optimizers.pruning.refit import conv_rows, lsq_refit
from tests import models

DIGITS = Path(__file__).resolve().parents[1] / "examples" / "digits"


def prune(model: onnx.ModelProto, tmp_path: Path, calibration: np.ndarray | None = None,
          shapes: dict[str, list[int]] | None = None, **config: Any) -> tuple[onnx.ModelProto, PassContext]:
    """Run the pass; it must leave its input untouched and return a checker-valid model."""
    cls = get_pass("prune")
    name = model.graph.input[0].name
    data = None if calibration is None else Dataset({name: calibration}, None, "test")
    ctx = PassContext(tmp_dir=tmp_path, calibration=data, input_shapes=shapes or {})
    before = model.SerializeToString()
    out = cls().apply(model, cls.Config(**config), ctx)
    assert model.SerializeToString() == before, "prune mutated its input"
    onnx.checker.check_model(out, full_check=True)
    return out, ctx


def run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {model.graph.input[0].name: x})[0]


def sqnr_db(ref: np.ndarray, y: np.ndarray) -> float:
    return float(20 * np.log10(np.linalg.norm(ref) / np.linalg.norm(ref - y)))


def samples(n: int, *shape: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, *shape)).astype(np.float32)


def weights(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Initializers by the node and input index that read them, e.g. "conv1:1" (names change when pruned)."""
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    return {f"{n.name}:{i}": inits[v] for n in model.graph.node for i, v in enumerate(n.input) if v in inits}


def groups(model: onnx.ModelProto) -> dict[str, tuple]:
    """name -> (channels, producers, consumers, members, fixed) of every group some layer writes."""
    found = find_groups(ir.from_proto(model).graph, infer_shapes(model, {}))
    return {g.name: (g.size, sorted(map(node_name, g.producers + g.depthwise)), sorted(map(node_name, g.consumers)),
                     sorted(f"{m.node.inputs[m.input].name}[{m.axis}]" for m in g.members), bool(g.fixed))
            for g in found if g.producers or g.depthwise}


def _t(rng: np.random.Generator, name: str, *shape: int, scale: float = 0.3) -> onnx.TensorProto:
    return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)


def residual_model() -> onnx.ModelProto:
    """stem Conv 3->16 + Relu = r0; branch a (16->8) + Relu, b (8->16), times a per-channel gamma [1,16,1,1];
    Add(r0, branch) + Relu; GAP, Flatten, Gemm 16->10. Input "x" [N,3,8,8], output "y" [N,10]."""
    rng = np.random.default_rng(11)
    inits = [_t(rng, "ws", 16, 3, 3, 3), _t(rng, "bs", 16), _t(rng, "wa", 8, 16, 3, 3), _t(rng, "ba", 8),
             _t(rng, "wb", 16, 8, 3, 3), _t(rng, "bb", 16), _t(rng, "gamma", 1, 16, 1, 1), _t(rng, "fc_w", 10, 16),
             _t(rng, "fc_b", 10)]
    pad = {"pads": [1, 1, 1, 1]}
    nodes = [helper.make_node("Conv", ["x", "ws", "bs"], ["s"], name="stem", **pad),
             helper.make_node("Relu", ["s"], ["r0"], name="relu0"),
             helper.make_node("Conv", ["r0", "wa", "ba"], ["a"], name="a", **pad),
             helper.make_node("Relu", ["a"], ["ra"], name="relu_a"),
             helper.make_node("Conv", ["ra", "wb", "bb"], ["b"], name="b", **pad),
             helper.make_node("Mul", ["b", "gamma"], ["bg"], name="layer_scale"),
             helper.make_node("Add", ["r0", "bg"], ["sum"], name="residual"),
             helper.make_node("Relu", ["sum"], ["r1"], name="relu1"),
             helper.make_node("GlobalAveragePool", ["r1"], ["p"], name="gap"),
             helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
             helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["y"], name="fc", transB=1)]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])
    model = helper.make_model(helper.make_graph(nodes, "residual", [x], [y], initializer=inits),
                              opset_imports=[helper.make_opsetid("", models.OPSET)], ir_version=models.IR_VERSION)
    onnx.checker.check_model(model)
    return model


def concat_model() -> onnx.ModelProto:
    """Two 1x1 Convs on "x" [N,4,6,6] concatenated along the channels, then a 1x1 Conv: "y" [N,4,6,6]."""
    rng = np.random.default_rng(12)
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], name="left"),
             helper.make_node("Conv", ["x", "w2"], ["c2"], name="right"),
             helper.make_node("Concat", ["c1", "c2"], ["cat"], name="cat", axis=1),
             helper.make_node("Conv", ["cat", "w3"], ["y"], name="out")]
    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N", 4, 6, 6]) for n in ("x", "y")]
    inits = [_t(rng, "w1", 8, 4, 1, 1), _t(rng, "w2", 8, 4, 1, 1), _t(rng, "w3", 4, 16, 1, 1)]
    return helper.make_model(helper.make_graph(nodes, "concat", io[:1], io[1:], initializer=inits),
                             opset_imports=[helper.make_opsetid("", models.OPSET)], ir_version=models.IR_VERSION)


def c2f_model() -> onnx.ModelProto:
    """YOLOv8's C2f in small: cv1 Conv 3->16 + Relu, Split in two halves of 8; the second half through Conv m
    (8->8) + Relu and a residual Add; Concat(half 0, half 1, the Add) = 24 channels; 1x1 Conv head 24->6 = "y"."""
    rng = np.random.default_rng(13)
    inits = [_t(rng, "w1", 16, 3, 3, 3), _t(rng, "b1", 16), _t(rng, "wm", 8, 8, 3, 3), _t(rng, "bm", 8),
             _t(rng, "w2", 6, 24, 1, 1), _t(rng, "b2", 6),
             numpy_helper.from_array(np.array([8, 8], np.int64), "halves")]
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="cv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Split", ["r1", "halves"], ["h0", "h1"], name="split", axis=1),
             helper.make_node("Conv", ["h1", "wm", "bm"], ["cm"], name="m", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["cm"], ["rm"], name="relu_m"),
             helper.make_node("Add", ["h1", "rm"], ["a"], name="residual"),
             helper.make_node("Concat", ["h0", "h1", "a"], ["cat"], name="cat", axis=1),
             helper.make_node("Conv", ["cat", "w2", "b2"], ["y"], name="cv2")]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 6, 8, 8])
    model = helper.make_model(helper.make_graph(nodes, "c2f", [x], [y], initializer=inits),
                              opset_imports=[helper.make_opsetid("", models.OPSET)], ir_version=models.IR_VERSION)
    onnx.checker.check_model(model)
    return model


# --- groups ------------------------------------------------------------------------------------------------------


def test_groups_of_a_conv_stack_run_through_gap_and_flatten_into_the_gemm_head():
    assert groups(models.conv_stack(layers=2)) == {
        "conv0": (16, ["conv0"], ["conv1"], ["b0[0]", "w0[0]", "w1[1]"], False),
        "conv1": (16, ["conv1"], ["conv2"], ["b1[0]", "w1[0]", "w2[1]"], False),
        "conv2": (16, ["conv2"], ["fc"], ["b2[0]", "fc_w[1]", "w2[0]"], False),
        "fc": (10, ["fc"], [], ["fc_b[0]", "fc_w[0]"], True),  # graph output
    }


def test_a_residual_add_couples_both_branches_and_slices_per_channel_constants():
    assert groups(residual_model()) == {
        "stem": (16, ["b", "stem"], ["a", "fc"], ["bb[0]", "bs[0]", "fc_w[1]", "gamma[1]", "wa[1]", "wb[0]", "ws[0]"],
                 False),
        "a": (8, ["a"], ["b"], ["ba[0]", "wa[0]", "wb[1]"], False),
        "fc": (10, ["fc"], [], ["fc_b[0]", "fc_w[0]"], True),
    }


def test_batchnorm_parameters_are_members_and_depthwise_convs_join_in_and_out():
    bn = groups(models.conv_bn_model())
    assert bn["conv1"][3] == ["b1[0]", "bn1_bias[0]", "bn1_mean[0]", "bn1_scale[0]", "bn1_var[0]", "w1[0]", "w2[1]"]
    assert bn["conv2"][:3] == (8, ["conv2"], ["fc"])
    dw = groups(models.spiky_depthwise_model())
    assert dw["conv1"] == (8, ["conv1", "dw"], ["pw"], ["b1[0]", "bd[0]", "w1[0]", "wd[0]", "wp[1]"], False)


def test_split_parts_are_groups_and_the_concat_output_is_their_composite():
    found = {g.name: g for g in find_groups(ir.from_proto(c2f_model()).graph, infer_shapes(c2f_model(), {}))}
    shape = {name: (g.size, sorted(map(node_name, g.producers)), sorted(map(node_name, g.consumers)),
                    sorted(f"{m.node.inputs[m.input].name}[{m.axis}]" for m in g.members), bool(g.fixed),
                    [p.name for p in g.parts], sorted(map(node_name, g.splits)))
             for name, g in found.items() if name != "x"}
    assert shape == {
        "cv1": (16, ["cv1"], [], ["b1[0]", "w1[0]"], False, ["cv1[0]", "m"], ["split"]),  # Split input: composite
        "cv1[0]": (8, [], [], [], False, [], []),  # half 0: written by cv1 through the Split
        "m": (8, ["m"], ["m"], ["bm[0]", "wm[0]", "wm[1]"], False, [], []),  # half 1 = m's input = the residual
        "cat": (24, [], ["cv2"], ["w2[1]"], False, ["cv1[0]", "m", "m"], []),  # half 1 twice: itself and the Add
        "cv2": (6, ["cv2"], [], ["b2[0]", "w2[0]"], True, [], []),  # graph output
    }
    assert weight_scores(found["cv1[0]"], "l1", list(found.values())).min() > 0  # cv1's rows at the half's offsets
    assert [g.name for g in find_groups(ir.from_proto(concat_model()).graph, infer_shapes(concat_model(), {}))
            if g.parts] == ["cat"]


def test_reshape_and_layer_norm_fix_their_groups():
    yolo = groups(models.yolo_like_head())  # SiLU couples; the head's Reshape fixes
    assert not yolo["conv1"][4] and yolo["head_conv"][4]
    bert = groups(models.tiny_bert_like())  # only the feed-forward hidden dim is free
    assert [name for name, g in bert.items() if not g[4]] == ["ff1_mm"]


# --- the pruned graph ----------------------------------------------------------------------------------------------


def test_pruned_model_runs_with_the_expected_shapes(tmp_path):
    model = onnx.shape_inference.infer_shapes(models.conv_stack(layers=2, batch="N"))  # stale value_info must go
    out, ctx = prune(model, tmp_path, samples(16, 3, 16, 16), ratio=0.5, protect_first_last=False)
    w = weights(out)
    assert w["conv0:1"].shape == (8, 3, 3, 3) and w["conv1:1"].shape == (8, 8, 3, 3)
    assert w["conv2:1"].shape == (8, 8, 3, 3) and w["fc:1"].shape == (10, 8) and w["fc:2"].shape == (10,)
    assert run(out, samples(5, 3, 16, 16, seed=1)).shape == (5, 10)
    assert [(g["group"], g["channels_before"], g["channels_after"]) for g in ctx.decisions["groups_pruned"]] == [
        ("conv0", 16, 8), ("conv1", 16, 8), ("conv2", 16, 8)]
    assert ctx.decisions["params"]["after"] < ctx.decisions["params"]["before"] / 2
    assert ctx.decisions["macs"]["after"] < ctx.decisions["macs"]["before"] / 2
    again, _ = prune(model, tmp_path, samples(16, 3, 16, 16), ratio=0.5, protect_first_last=False)
    assert again.SerializeToString() == out.SerializeToString()  # deterministic: later steps' cache keys hold


@pytest.mark.parametrize("build, shape", [(residual_model, (3, 8, 8)), (models.spiky_depthwise_model, (8, 16, 16)),
                                          (lambda: models.conv_bn_model(weights_as_constants=True), (3, 16, 16)),
                                          (models.tiny_bert_like, (4, 16)), (models.mlp_chain_model, (16,))])
def test_coupled_graphs_prune_consistently_and_refit_stays_close(build, shape, tmp_path):
    model = build()
    x = samples(32, *shape)
    out, ctx = prune(model, tmp_path, x, ratio=0.5, round_to=4, protect_first_last=False)
    assert ctx.decisions["groups_pruned"]
    assert sqnr_db(run(model, x), run(out, x)) > 10
    if build is models.spiky_depthwise_model:
        dw = next(n for n in out.graph.node if n.name == "dw")
        assert helper.get_attribute_value(next(a for a in dw.attribute if a.name == "group")) == 4


def test_protected_nodes_keep_their_output_channels(tmp_path):
    """As Torch-Pruning's ignored layers: conv2's outputs stay, its inputs shrink with conv1's pruned group."""
    model = models.conv_stack(layers=4)
    out, ctx = prune(model, tmp_path, samples(16, 3, 16, 16), ratio=0.5, protect=["conv2"], protect_first_last=False)
    before, after = weights(model), weights(out)
    assert before["conv2:1"].shape == (16, 16, 3, 3) and after["conv2:1"].shape == (16, 8, 3, 3)
    assert after["conv2:2"].shape == (16,)  # refit, but one bias per kept output channel
    assert [g["group"] for g in ctx.decisions["groups_pruned"]] == ["conv0", "conv1", "conv3", "conv4"]
    whole = {g["group"]: g["reason"] for g in ctx.decisions["groups_kept_whole"]}
    assert whole["conv2"] == "protected: conv2"


def test_first_and_last_layers_are_protected_by_default(tmp_path):
    _, ctx = prune(models.conv_stack(layers=2), tmp_path, samples(16, 3, 16, 16))
    # the head's outputs are the graph output; the channels it reads (conv2's) may shrink
    assert [g["group"] for g in ctx.decisions["groups_pruned"]] == ["conv1", "conv2"]
    whole = {g["group"]: g["reason"] for g in ctx.decisions["groups_kept_whole"]}
    assert "protect_first_last" in whole["conv0"]


def test_kept_channels_round_up_to_round_to(tmp_path):
    model = models.conv_stack(channels=24, layers=2)
    x = samples(16, 3, 16, 16)
    _, ctx = prune(model, tmp_path, x, ratio=0.5, protect_first_last=False, criterion="l1", refit=False)
    assert [g["channels_after"] for g in ctx.decisions["groups_pruned"]] == [16, 16, 16]  # 12 rounded up to 8s
    _, ctx = prune(model, tmp_path, x, ratio=0.5, round_to=1, per_layer={"conv1": 0.0, "conv2": 0.75},
                   protect_first_last=False, criterion="activation", refit=False)
    assert [(g["group"], g["channels_after"]) for g in ctx.decisions["groups_pruned"]] == [("conv0", 12), ("conv2", 6)]


def test_a_c2f_block_prunes_its_split_halves_and_slices_split_sizes_and_the_concat_consumer(tmp_path):
    model = c2f_model()
    x, ev = samples(32, 3, 8, 8), samples(16, 3, 8, 8, seed=1)
    refit, ctx = prune(model, tmp_path, x, ratio=0.5, round_to=4, protect_first_last=False)
    plain, _ = prune(model, tmp_path, x, ratio=0.5, round_to=4, protect_first_last=False, refit=False)
    assert [(g["group"], g["channels_after"]) for g in ctx.decisions["groups_pruned"]] == [("cv1[0]", 4), ("m", 4)]
    assert [(g["group"], g["channels_after"]) for g in ctx.decisions["composites_sliced"]] == [("cv1", 8), ("cat", 12)]
    for out in (refit, plain):
        w = weights(out)
        assert w["cv1:1"].shape == (8, 3, 3, 3) and w["m:1"].shape == (4, 4, 3, 3) and w["cv2:1"].shape == (6, 12, 1, 1)
        assert w["split:1"].tolist() == [4, 4]
        assert run(out, ev).shape == (16, 6, 8, 8)
    assert {r["layer"] for r in ctx.decisions["refit"]} == {"m", "cv2"}
    ref = run(model, ev)
    assert sqnr_db(ref, run(refit, ev)) > sqnr_db(ref, run(plain, ev)) + 1


def test_a_concat_of_two_convs_prunes_both_and_slices_the_consumer_at_their_offsets(tmp_path):
    model = concat_model()
    out, ctx = prune(model, tmp_path, ratio=0.5, round_to=1, protect_first_last=False, criterion="l1", refit=False)
    assert [(g["group"], g["channels_after"]) for g in ctx.decisions["groups_pruned"]] == [("left", 4), ("right", 4)]
    before, after = weights(model), weights(out)
    rows = lambda w, kept: [int(np.flatnonzero((w == r).all(axis=(1, 2, 3)))[0]) for r in kept]  # noqa: E731
    left, right = rows(before["left:1"], after["left:1"]), rows(before["right:1"], after["right:1"])
    assert len(set(left)) == len(set(right)) == 4
    np.testing.assert_array_equal(after["out:1"], before["out:1"][:, left + [8 + i for i in right]])
    x = samples(3, 4, 6, 6)
    conv = lambda w, v: np.einsum("oc,nchw->nohw", w[:, :, 0, 0], v)  # noqa: E731 (1x1, no bias)
    cat = np.concatenate([conv(before["left:1"][left], x), conv(before["right:1"][right], x)], axis=1)
    y = conv(before["out:1"][:, left + [8 + i for i in right]], cat)
    np.testing.assert_allclose(run(out, x), y, rtol=1e-4, atol=1e-4)


# --- refit ---------------------------------------------------------------------------------------------------------


def test_refit_recovers_the_digits_cnn(tmp_path):
    """Measured: default config 98.9 -> 99.1 % with refit, 39.8 % without; all three groups 98.2 % / 26.7 %."""
    model = onnx.load(str(DIGITS / "digits_cnn.onnx"))
    cal, ev = np.load(DIGITS / "calibration.npz")["input"], np.load(DIGITS / "evaluation.npz")
    ref = run(model, ev["input"])
    accuracy = lambda m: float((run(m, ev["input"]).argmax(1) == ev["labels"]).mean())  # noqa: E731
    refit, ctx = prune(model, tmp_path, cal, ratio=0.5)
    plain, _ = prune(model, tmp_path, cal, ratio=0.5, refit=False)
    assert accuracy(refit) >= accuracy(model) - 0.01
    assert accuracy(plain) < accuracy(model) - 0.3
    assert sqnr_db(ref, run(refit, ev["input"])) > sqnr_db(ref, run(plain, ev["input"])) + 8
    fit = ctx.decisions["refit"][0]
    assert fit["layer"] == "/conv3/Conv" and fit["fit_sqnr_db_after"] > fit["fit_sqnr_db_before"] + 5


def test_refit_warns_when_calibration_rows_are_fewer_than_the_fan_in(tmp_path):
    _, ctx = prune(models.mlp_chain_model(features=64), tmp_path, samples(8, 64), ratio=0.5,
                   protect_first_last=False, criterion="l2")
    assert any("WARNING" in n and "fc2" in n and "ridge" in n for n in ctx.notes)


@pytest.mark.parametrize("attrs", [{"pads": [1, 0, 2, 1], "strides": [2, 1], "dilations": [1, 2]},
                                   {"auto_pad": "SAME_UPPER", "strides": [2, 2]}, {}])
def test_conv_rows_reproduce_the_convolution(attrs):
    rng = np.random.default_rng(3)
    w, b = rng.standard_normal((5, 3, 3, 2)).astype(np.float32), rng.standard_normal(5).astype(np.float32)
    node = helper.make_node("Conv", ["x", "w", "b"], ["y"], name="conv", **attrs)
    graph = helper.make_graph([node], "c", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 9, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              initializer=[numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", models.OPSET)], ir_version=models.IR_VERSION)
    x = rng.standard_normal((2, 3, 9, 8)).astype(np.float32)
    y = run(model, x)
    a, t = conv_rows(next(iter(ir.from_proto(model).graph)), x, y, np.arange(y.size // y.shape[1]))
    np.testing.assert_allclose(a @ w.reshape(5, -1).T + b, t, rtol=1e-4, atol=1e-4)


def test_lsq_refit_and_its_masked_form():
    rng = np.random.default_rng(4)
    w, b = rng.standard_normal((6, 16)), rng.standard_normal(6)
    a = rng.standard_normal((400, 16))
    got_w, got_b = lsq_refit(a, a @ w.T + b, ridge=0)
    np.testing.assert_allclose(got_w, w, atol=1e-8)
    np.testing.assert_allclose(got_b, b, atol=1e-8)
    # 2:4 along the inputs: keep the two largest |w| of every four; inputs correlated, so refitting the kept
    # weights can make up for the dropped ones
    mix = a @ (np.eye(16) + 0.6 * rng.standard_normal((16, 16)))
    y = mix @ w.T + b
    groups4 = np.abs(w).reshape(6, 4, 4)
    mask = (groups4 >= np.sort(groups4, axis=2)[:, :, 2:3]).reshape(6, 16)
    fit_w, fit_b = lsq_refit(mix, y, ridge=1e-6, mask=mask)
    assert np.all(fit_w[~mask] == 0) and np.count_nonzero(fit_w) == mask.sum()
    plain = np.linalg.norm(y - (mix @ (w * mask).T + b))
    assert np.linalg.norm(y - (mix @ fit_w.T + fit_b)) < 0.8 * plain
    ones = np.hstack([mix[:, mask[0]], np.ones((len(mix), 1))])  # row 0 is the least-squares optimum over its mask
    np.testing.assert_allclose(np.append(fit_w[0, mask[0]], fit_b[0]), np.linalg.lstsq(ones, y[:, 0])[0], atol=1e-4)


# --- bad input -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("config", [{"ratio": 0}, {"ratio": 1}, {"ratio": 1.5}, {"per_layer": {"conv1": 1.0}},
                                    {"round_to": 0}, {"criterion": "lasso"}, {"samples": 2}, {"ratios": 0.5}])
def test_bad_config_values_are_rejected(config):
    with pytest.raises(ValidationError):
        get_pass("prune").Config(**config)


def test_calibration_data_is_required_for_refit_and_data_criteria(tmp_path):
    model = models.conv_stack(layers=2)
    with pytest.raises(RecipeError, match="refit and criterion reconstruction need calibration data.*refit: false"):
        prune(model, tmp_path)
    with pytest.raises(RecipeError, match="criterion activation needs calibration data"):
        prune(model, tmp_path, refit=False, criterion="activation")
    with pytest.raises(BadInputError, match="4 calibration sample.*too few"):
        prune(model, tmp_path, samples(4, 3, 16, 16))
    out, _ = prune(model, tmp_path, refit=False, criterion="l2")  # data-free
    assert run(out, samples(1, 3, 16, 16)).shape == (1, 10)


def test_dynamic_shapes_that_block_inference_ask_for_pins(tmp_path):
    """torch's x.squeeze() exports a Squeeze without axes: with a symbolic batch, the rank of its output is unknown."""
    model = models.conv_stack(layers=2, batch="N")
    flatten = next(n for n in model.graph.node if n.op_type == "Flatten")
    flatten.CopyFrom(helper.make_node("Squeeze", ["p"], ["f"], name="squeeze"))
    with pytest.raises(BadInputError, match="shape of tensor 'f' is unknown.*input shapes.*x:"):
        prune(model, tmp_path, refit=False, criterion="l2")
    out, _ = prune(model, tmp_path, shapes={"x": [2, 3, 16, 16]}, refit=False, criterion="l2")
    assert run(out, samples(2, 3, 16, 16)).shape == (2, 10)


def test_models_without_a_prunable_group_are_refused(tmp_path):
    with pytest.raises(BadInputError, match="no prunable channel group.*graph output"):
        prune(models.paddle_style_model(), tmp_path, refit=False, criterion="l2")
    with pytest.raises(BadInputError, match="no prunable channel group.*protect_first_last"):
        prune(models.conv_norm_conv(), tmp_path, refit=False, criterion="l2")


@pytest.mark.parametrize("config, error", [
    ({"ratio": 0.95, "round_to": 1}, "would leave group 'conv1' \\(16 channels\\) empty"),
    ({"ratio": 0.3}, "removes no channel"),
    ({"protect": ["conv9"]}, "unknown node.*conv9"),
    ({"per_layer": {"relu1": 0.5}}, "per_layer key 'relu1' names no layer.*conv1"),
    ({"per_layer": {"conv0": 0.5}}, "kept whole.*protect_first_last"),
])
def test_configs_the_model_cannot_honour_are_refused(config, error, tmp_path):
    with pytest.raises(RecipeError, match=error):
        prune(models.conv_stack(layers=2), tmp_path, refit=False, criterion="l2", **config)


# --- end to end ------------------------------------------------------------------------------------------------------


def digits_recipe(tmp_path: Path, *steps: dict) -> Path:
    recipe = tmp_path / "prune.yaml"
    recipe.write_text(yaml.safe_dump({
        "version": 1, "task": {"kind": "classification"}, "validation": {"samples": 64, "latency": False},
        "data": {"calibration": {"type": "npz", "path": str(DIGITS / "calibration.npz")},
                 "evaluation": {"type": "npz", "path": str(DIGITS / "evaluation.npz")}},
        "steps": list(steps)}))
    return recipe


def test_convert_with_a_prune_recipe_reports_groups_and_params(cli, tmp_path):
    r = cli("convert", DIGITS / "digits_cnn.onnx", "--recipe", digits_recipe(tmp_path, {"prune": {"ratio": 0.5}}),
            "-o", tmp_path / "out")
    assert r.code == 0, r.err
    step = json.loads((tmp_path / "out" / "report.json").read_text())["steps"][0]
    assert step["decisions"]["groups_pruned"][0]["channels_after"] == 16
    assert step["decisions"]["params"]["after"] < 0.6 * step["decisions"]["params"]["before"]
    assert step["accuracy_drop"] <= 0.02


def test_prune_then_quantize_in_one_recipe(cli, tmp_path):
    """Pruning composes with INT8: the quantize step reads the pruned graph, and the report has both steps."""
    recipe = digits_recipe(tmp_path, {"prune": {"ratio": 0.5}}, {"quantize": {"speed_guard": False}})
    r = cli("convert", DIGITS / "digits_cnn.onnx", "--recipe", recipe, "-o", tmp_path / "out")
    assert r.code == 0, r.err
    prune_step, quantize_step = json.loads((tmp_path / "out" / "report.json").read_text())["steps"]
    assert quantize_step["decisions"]["quantized_nodes"]["Conv"] == 3
    assert quantize_step["accuracy_drop"] <= 0.02 and prune_step["name"] == "prune"
    pruned = onnx.load(str(tmp_path / "out" / "model.onnx"))
    assert any(n.op_type == "QuantizeLinear" for n in pruned.graph.node)
