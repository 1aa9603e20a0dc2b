"""The Core ML lowering of LSTM, GRU and RNN (converters/mil/ops/rnn.py) against ONNX Runtime, through
coremltools' pass pipeline and the numpy MIL evaluator (converters/mil/kernels/rnn.py).

ct.convert costs about a second per model, so each test puts its cases side by side in one model (one node
and its own inputs per case; a mismatch names the case's output). ONNX Runtime has no layout=1 recurrences:
those cases are compared with ORT on the same node in layout 0, inputs and outputs transposed."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

pytest.importorskip("coremltools")

from accelopt.converters.mil.registry import REGISTRY  # noqa: E402
from accelopt.converters.mil.translator import translate  # noqa: E402
from accelopt.converters.registry import Unsupported  # noqa: E402
from accelopt.targets.onnxruntime import OrtRunner  # noqa: E402
from tests.coreml_util import assert_matches_ort, coreml_outputs  # noqa: E402

RNG = np.random.default_rng(0)
GATES = {"RNN": 1, "GRU": 3, "LSTM": 4}
STATES = {"RNN": 1, "GRU": 1, "LSTM": 2}


def case(op: str, dirs: int = 1, hidden: int = 5, size: int = 3, seq: int = 4, batch: int = 2, init=None,
         lens=None, peephole: bool = False, outputs: str = "YHC", **attrs) -> dict:
    """One node. init: None (zeros), "const" or "input" initial states; lens: None, a list (constant
    sequence_lens) or ("input", list); outputs: which of Y, Y_h (H), Y_c (C) the graph uses."""
    if dirs == 2:
        attrs.setdefault("direction", "bidirectional")
    return dict(op=op, dirs=dirs, hidden=hidden, size=size, seq=seq, batch=batch, init=init, lens=lens,
                peephole=peephole, outputs=outputs, attrs=attrs)


def rand(*shape, scale: float = 1.0) -> np.ndarray:
    return (RNG.standard_normal(shape) * scale).astype(np.float32)


def build(cases: dict[str, dict], opset: int = 14) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """A model with one node per case, each with its own inputs, initializers and outputs."""
    nodes, inputs, outputs, inits, feeds = [], [], [], [], {}

    def add(name: str, value: np.ndarray, runtime: bool) -> str:
        if runtime:
            feeds[name] = value
            inputs.append(helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(value.dtype),
                                                        value.shape))
        else:
            inits.append(numpy_helper.from_array(value, name))
        return name

    for name, c in cases.items():
        layout = c["attrs"].get("layout", 0)
        g, d, h, b = GATES[c["op"]], c["dirs"], c["hidden"], c["batch"]
        x = rand(*((b, c["seq"], c["size"]) if layout else (c["seq"], b, c["size"])))
        names = [add(f"{name}_x", x, True), add(f"{name}_W", rand(d, g * h, c["size"], scale=0.5), False),
                 add(f"{name}_R", rand(d, g * h, h, scale=0.5), False),
                 add(f"{name}_B", rand(d, 2 * g * h, scale=0.5), False)]
        lens = c["lens"]
        runtime_lens = isinstance(lens, tuple)
        names.append("" if lens is None else add(f"{name}_L", np.array(lens[1] if runtime_lens else lens, np.int32),
                                                 runtime_lens))
        for k in range(STATES[c["op"]]):
            state = rand(*((b, d, h) if layout else (d, b, h)))
            names.append("" if c["init"] is None else add(f"{name}_s{k}", state, c["init"] == "input"))
        if c["peephole"]:
            names.append(add(f"{name}_P", rand(d, 3 * h), False))
        while not names[-1]:
            names.pop()
        outs = [f"{name}_{o}" if o in c["outputs"] else "" for o in "YHC"[:1 + STATES[c["op"]]]]
        nodes.append(helper.make_node(c["op"], names, outs, name=name, hidden_size=h, **c["attrs"]))
        outputs += [helper.make_tensor_value_info(o, onnx.TensorProto.FLOAT, None) for o in outs if o]
    graph = helper.make_graph(nodes, "g", inputs, outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=9), feeds


def mil_ops(model: onnx.ModelProto) -> set[str]:
    """The MIL op types the translation builds."""
    return {op.op_type for op in translate(model, "iOS17").program.functions["main"].operations}


# ---------------------------------------------------------------------------------------------- native ops
NATIVE = {
    "lstm_fwd": case("LSTM", init="input", hidden=8, batch=3),
    "lstm_rev": case("LSTM", direction="reverse", init="const", outputs="YC"),
    "lstm_bi": case("LSTM", dirs=2, seq=5, hidden=6, outputs="YH"),
    "lstm_peep": case("LSTM", dirs=2, peephole=True, init="input"),
    "lstm_h": case("LSTM", outputs="H", lens=[4, 4]),  # full-length sequence_lens: still native
    "gru_fwd": case("GRU", init="input", hidden=16, seq=6),
    "gru_rev": case("GRU", direction="reverse", outputs="Y"),
    "gru_bi": case("GRU", dirs=2, init="const", batch=3),
    "rnn_fwd": case("RNN", init="input", hidden=4, seq=3),
    "rnn_rev": case("RNN", direction="reverse", activations=["Relu"]),
    "rnn_bi": case("RNN", dirs=2, activations=["Sigmoid", "Tanh"], outputs="H"),
}


def test_native_ops_match_ort():
    model, feeds = build(NATIVE)
    assert {"lstm", "gru", "rnn"} <= mil_ops(model)
    assert "matmul" not in mil_ops(model)  # nothing unrolled
    assert_matches_ort(model, feeds)


def test_native_ops_fp16():
    model, feeds = build({k: NATIVE[k] for k in ("lstm_bi", "lstm_peep", "gru_rev", "rnn_fwd")})
    assert_matches_ort(model, feeds, precision="fp16")


def test_native_ops_ios15_opset7():
    """iOS15's recurrent ops are fp32 only: an fp16 program keeps them in fp32."""
    model, feeds = build({k: NATIVE[k] for k in ("lstm_rev", "gru_bi", "rnn_rev")}, opset=7)
    assert_matches_ort(model, feeds, target="iOS15")
    assert_matches_ort(model, feeds, target="iOS15", precision="fp16")


# ---------------------------------------------------------------------------------------------- unrolled
UNROLLED = {
    "gru_lbr": case("GRU", linear_before_reset=1, init="input", hidden=6),
    "gru_lbr_bi": case("GRU", dirs=2, linear_before_reset=1, outputs="Y"),
    "gru_lbr_rev": case("GRU", direction="reverse", linear_before_reset=1, outputs="H", batch=1),
    "lstm_clip": case("LSTM", dirs=2, clip=0.4, peephole=True, init="const"),
    "gru_clip": case("GRU", direction="reverse", clip=0.3),
    "rnn_clip": case("RNN", clip=0.2, init="input"),
    "lstm_lens": case("LSTM", dirs=2, lens=[2, 4, 3], batch=3, init="input", peephole=True),
    "gru_lens": case("GRU", direction="reverse", lens=("input", [3, 1]), init="input"),
    "rnn_lens": case("RNN", dirs=2, lens=("input", [1, 4])),
    "lstm_acts": case("LSTM", activations=["HardSigmoid", "LeakyRelu", "Softsign"], activation_alpha=[0.3, 0.05],
                      activation_beta=[0.4]),
    "gru_acts": case("GRU", dirs=2, activations=["Sigmoid", "ScaledTanh", "HardSigmoid", "Elu"],
                     activation_alpha=[0.8, 0.25, 0.7], activation_beta=[1.5, 0.45]),
    "rnn_affine": case("RNN", activations=["Affine"], activation_alpha=[0.5], activation_beta=[0.1]),
    "rnn_thresh": case("RNN", direction="reverse", activations=["ThresholdedRelu"], activation_alpha=[0.2]),
    "rnn_softplus": case("RNN", activations=["Softplus"], hidden=4),
}


def test_unrolled_match_ort():
    model, feeds = build(UNROLLED)
    assert not {"lstm", "gru", "rnn"} & mil_ops(model)
    assert_matches_ort(model, feeds)


def test_unrolled_fp16():
    model, feeds = build({k: UNROLLED[k] for k in ("gru_lbr", "lstm_clip", "lstm_lens", "rnn_lens")})
    assert_matches_ort(model, feeds, precision="fp16")


# ---------------------------------------------------------------------------------------------- layout 1
def _layout0(model: onnx.ModelProto, feeds: dict[str, np.ndarray]):
    """The same model in layout 0 (x and the initial states transposed), for ONNX Runtime."""
    batch_first = onnx.ModelProto()
    batch_first.CopyFrom(model)
    for node in batch_first.graph.node:
        for a in node.attribute:
            if a.name == "layout":
                a.i = 0
    for value in batch_first.graph.input:
        dims = value.type.tensor_type.shape.dim
        dims[0].dim_value, dims[1].dim_value = dims[1].dim_value, dims[0].dim_value
    return batch_first, {k: np.ascontiguousarray(v.swapaxes(0, 1)) for k, v in feeds.items()}


def test_layout_1():
    model, feeds = build({"lstm": case("LSTM", dirs=2, layout=1, init="input", peephole=True, batch=3),
                          "gru": case("GRU", layout=1, init="input", linear_before_reset=1),
                          "rnn": case("RNN", layout=1, direction="reverse", init="input", hidden=6)})
    expected = OrtRunner(_layout0(model, feeds)[0]).run(_layout0(model, feeds)[1])
    got = coreml_outputs(model, feeds)
    for name, want in expected.items():
        want = want.transpose(2, 0, 1, 3) if want.ndim == 4 else want.swapaxes(0, 1)  # Y, or a state
        np.testing.assert_allclose(got[name], want, rtol=1e-5, atol=1e-5, err_msg=name)


# ---------------------------------------------------------------------------------------------- unsupported
@pytest.mark.parametrize("c, message", [
    (case("LSTM", input_forget=1), "input_forget=1"),
    (case("GRU", activations=["Sigmoid", "Gelu"]), "activations contains 'Gelu'"),
    (case("RNN", direction="sideways"), "direction='sideways'"),
])
def test_unsupported_attributes(c, message):
    model, _ = build({"n": c})
    check = REGISTRY.facts("", c["op"])["check"]
    assert any(message in m for _, m in check(model.graph.node[0], 14))
    with pytest.raises(Unsupported, match=message):
        translate(model)


def test_runtime_weights_fail():
    model, feeds = build({"n": case("RNN")})
    w = model.graph.initializer[0]
    model.graph.input.append(helper.make_tensor_value_info(w.name, onnx.TensorProto.FLOAT, list(w.dims)))
    model.graph.initializer.remove(w)
    with pytest.raises(Unsupported, match="constant W"):
        translate(model)
