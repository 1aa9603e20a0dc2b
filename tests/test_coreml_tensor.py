"""Core ML lowering of the shape/data-movement ops and the reductions (converters/mil/ops/tensor.py, reduce.py):
each ONNX model is translated, converted by coremltools (its full pass pipeline) and evaluated by the numpy MIL
evaluator, against ONNX Runtime.

Data inputs are graph inputs (the translator folds all-constant nodes); axes, shapes and indices are
initializers unless a case is about runtime indices. A conversion costs about a second, so the cases of a table
run side by side in one graph (names prefixed with the case, one graph per opset): a mismatch names the case's
output, a lowering error its node."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import compose, helper, numpy_helper

pytest.importorskip("coremltools")

from accelopt.converters.mil.registry import REGISTRY  # noqa: E402
from accelopt.converters.mil.translator import translate  # noqa: E402
from accelopt.converters.registry import Unsupported  # noqa: E402
from tests.coreml_util import assert_matches_ort  # noqa: E402

RNG = np.random.default_rng(0)
I64_MAX, I64_MIN = np.iinfo(np.int64).max, np.iinfo(np.int64).min


def i64(*values) -> np.ndarray:
    return np.array(values, np.int64)


def _model(nodes, inputs, inits: dict, opset: int) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(np.dtype(t)), s)
                     for n, t, s in inputs],
        [helper.make_empty_tensor_value_info(o) for o in nodes[-1].output],
        [numpy_helper.from_array(v, n) for n, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 10
    return onnx.shape_inference.infer_shapes(model, strict_mode=True)


def node_model(op: str, x_shape, inits: dict | None = None, inputs: list | None = None, outputs: int = 1,
               opset: int = 17, x_dtype=np.float32, **attrs) -> onnx.ModelProto:
    """One `op` node on graph input x, then the initializers in order ("_" names skip an optional input), then
    further graph `inputs` (name, dtype, shape); its outputs are typed by shape inference."""
    inits = inits or {}
    names = ["x", *["" if n.startswith("_") else n for n in inits], *[n for n, _, _ in inputs or []]]
    node = helper.make_node(op, names, [f"y{i}" for i in range(outputs)], **attrs)
    return _model([node], [("x", x_dtype, x_shape), *(inputs or [])],
                  {n: v for n, v in inits.items() if not n.startswith("_")}, opset)


def side_by_side(models: dict[str, onnx.ModelProto]) -> list[onnx.ModelProto]:
    """The models in one graph per opset, every name prefixed with its case."""
    graphs: dict[int, onnx.ModelProto] = {}
    for case, model in models.items():
        opset = model.opset_import[0].version
        if opset not in graphs:
            graphs[opset] = helper.make_model(helper.make_graph([], "cases", [], []),
                                              opset_imports=[helper.make_opsetid("", opset)])
            graphs[opset].ir_version = 10
        prefixed = compose.add_prefix(model, f"{case}__").graph
        for field in ("node", "input", "output", "initializer", "value_info"):
            getattr(graphs[opset].graph, field).extend(getattr(prefixed, field))
    return list(graphs.values())


def feeds_for(model: onnx.ModelProto, ints=(-3, 3), ties: bool = False, positive: bool = False) -> dict:
    """Random data for the graph inputs: floats normal (in [0.5, 2) when positive, small integers when ties),
    integers in `ints` (indices in range for every index case here)."""
    feeds = {}
    for value in model.graph.input:
        shape = [d.dim_value for d in value.type.tensor_type.shape.dim]
        dtype = helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type)
        if dtype.kind == "f":
            data = RNG.integers(0, 3, shape) if ties else RNG.uniform(0.5, 2.0, shape) if positive else \
                RNG.standard_normal(shape)
        else:
            data = RNG.integers(*ints, shape)
        feeds[value.name] = np.asarray(data).astype(dtype)
    return feeds


def check(model: onnx.ModelProto, feeds: dict | None = None, **kw) -> None:
    assert_matches_ort(model, feeds or feeds_for(model), **kw)


def check_cases(cases: dict, precision: str = "fp32", **data) -> None:
    for model in side_by_side({case: build() for case, build in cases.items()}):
        check(model, feeds_for(model, **data), precision=precision)


# --- shapes, concat, split --------------------------------------------------------------------------------------

SHAPE_CASES = {
    "reshape_zero_and_minus_one": lambda: node_model("Reshape", [2, 3, 4], {"s": i64(0, -1)}),
    "reshape_allowzero_opset14": lambda: node_model("Reshape", [2, 3, 4], {"s": i64(4, -1, 2)}, opset=14,
                                                    allowzero=1),
    "reshape_to_scalar": lambda: node_model("Reshape", [1, 1], {"s": np.zeros(0, np.int64)}),
    "reshape_opset1_attr": lambda: node_model("Reshape", [2, 3, 4], opset=1, shape=[6, 4]),
    "flatten_axis2": lambda: node_model("Flatten", [2, 3, 4, 5], axis=2),
    "flatten_axis0": lambda: node_model("Flatten", [2, 3, 4], axis=0),
    "flatten_negative_axis": lambda: node_model("Flatten", [2, 3, 4, 5], axis=-1),
    "transpose_default_reverses": lambda: node_model("Transpose", [2, 3, 4]),
    "transpose_perm": lambda: node_model("Transpose", [1, 3, 4, 5], perm=[0, 2, 3, 1]),
    "squeeze_opset11_attr": lambda: node_model("Squeeze", [2, 1, 3, 1], opset=11, axes=[-1]),
    "squeeze_opset13_input": lambda: node_model("Squeeze", [2, 1, 3, 1], {"a": i64(1)}),
    "squeeze_all_ones": lambda: node_model("Squeeze", [1, 3, 1, 2]),
    "unsqueeze_opset11_attr": lambda: node_model("Unsqueeze", [2, 3], opset=11, axes=[0, -1]),
    "unsqueeze_opset13_input": lambda: node_model("Unsqueeze", [2, 3], {"a": i64(3, 1)}),
    "expand_bidirectional": lambda: node_model("Expand", [3, 1], {"s": i64(2, 1, 4)}),
    "tile": lambda: node_model("Tile", [2, 3], {"r": i64(2, 3)}),
    "concat_with_constant_and_empty": lambda: node_model(
        "Concat", [2, 3], {"c": np.ones((2, 2), np.float32), "e": np.zeros((2, 0), np.float32)}, axis=-1),
    "concat_int64": lambda: node_model("Concat", [2, 3], {"c": i64([7, 8, 9])}, x_dtype=np.int64, axis=0),
    "split_opset11_attr": lambda: node_model("Split", [4, 6], outputs=2, opset=11, axis=1, split=[2, 4]),
    "split_opset13_input": lambda: node_model("Split", [4, 6], {"s": i64(1, 3)}, outputs=2),
    "split_equal_default": lambda: node_model("Split", [6, 2], outputs=3),
    "split_opset18_num_outputs_uneven": lambda: node_model("Split", [7, 2], outputs=3, opset=18, num_outputs=3),
}


def test_shape_ops():
    check_cases(SHAPE_CASES)


def test_shape_size_range_and_constant_of_shape_fold_around_runtime_data():
    """Shape/Size of a runtime tensor are constants, so the shape subgraph after them folds."""
    nodes = [helper.make_node("Shape", ["x"], ["s"], start=-1),
             helper.make_node("ConstantOfShape", ["s"], ["half"],
                              value=numpy_helper.from_array(np.array([0.5], np.float32))),
             helper.make_node("Size", ["x"], ["n"]),
             helper.make_node("Range", ["zero", "n", "one"], ["r"]),
             helper.make_node("Cast", ["r"], ["rf"], to=onnx.TensorProto.FLOAT),
             helper.make_node("Shape", ["x"], ["full"]),
             helper.make_node("Reshape", ["rf", "full"], ["ramp"]),
             helper.make_node("Add", ["x", "ramp"], ["t"]),
             helper.make_node("Mul", ["t", "half"], ["y"])]
    model = _model(nodes, [("x", np.float32, [2, 3, 4])], {"zero": np.array(0, np.int64),
                                                           "one": np.array(1, np.int64)}, 17)
    translated = translate(model)
    assert set(translated.folded) == {"ConstantOfShape", "Range", "Cast", "Reshape"}
    assert {op.op_type for op in translated.program.functions["main"].operations} <= {"const", "add", "mul"}
    check(model)


# --- slice ------------------------------------------------------------------------------------------------------

SLICE_CASES = {  # starts, ends, axes, steps on a [2, 5, 6] input
    "int64_max_end_negative_start": {"s": i64(1, -4), "e": i64(I64_MAX, 1000), "a": i64(1, 2)},
    "negative_step_int64_min_end": {"s": i64(-1), "e": i64(I64_MIN), "a": i64(2), "t": i64(-1)},
    "negative_steps": {"s": i64(4, 100), "e": i64(-100, 0), "a": i64(2, -2), "t": i64(-2, -3)},
    "positive_step_past_end": {"s": i64(0), "e": i64(9), "a": i64(-1), "t": i64(4)},
    "no_axes_input": {"s": i64(1, 1), "e": i64(2, -1)},
}


def test_slice():
    check_cases({case: lambda inits=inits: node_model("Slice", [2, 5, 6], inits)
                 for case, inits in SLICE_CASES.items()}
                | {"opset9_attributes": lambda: node_model("Slice", [2, 5, 6], opset=9, starts=[1, -3],
                                                           ends=[I64_MAX, -1], axes=[0, 2])})


def test_slice_to_nothing_is_refused():
    with pytest.raises(Unsupported, match="empty"):
        translate(node_model("Slice", [2, 5], {"s": i64(3), "e": i64(1), "a": i64(1)}))


# --- gathers and scatters ---------------------------------------------------------------------------------------


def _runtime_indices(op, x_shape, index_shape, **attrs):
    return node_model(op, x_shape, inputs=[("i", np.int64, index_shape)], **attrs)


GATHER_CASES = {  # runtime indices are drawn from [-3, 3)
    "gather_constant_negative_indices": lambda: node_model("Gather", [3, 5, 2], {"i": i64([-1, 0], [2, -5])},
                                                           axis=1),
    "gather_constant_scalar_index": lambda: node_model("Gather", [3, 5], {"i": np.array(-2, np.int64)}, axis=1),
    "gather_runtime_negative_indices": lambda: _runtime_indices("Gather", [4, 3], [2, 3]),
    "gather_bool_data": lambda: node_model("Gather", [4, 3], {"i": i64(3, -4)}, x_dtype=np.bool_),
    "gather_elements_constant": lambda: node_model("GatherElements", [3, 4], {"i": i64([0, -1, 2], [3, 1, -4])},
                                                   axis=1),
    "gather_elements_runtime_smaller_indices": lambda: _runtime_indices("GatherElements", [5, 4], [2, 4], axis=0),
    "gather_nd": lambda: node_model("GatherND", [3, 4, 2], {"i": i64([[0, -1], [2, 1]], [[-3, 0], [1, 3]])}),
    "gather_nd_batch_dims": lambda: node_model("GatherND", [2, 4, 3], {"i": i64([[1], [-1]], [[0], [2]])},
                                               batch_dims=1),
    "gather_nd_runtime_indices": lambda: _runtime_indices("GatherND", [3, 4], [5, 2]),
}


def test_gathers():
    check_cases(GATHER_CASES)


def test_gather_from_constant_table_with_runtime_indices_per_target():
    """An embedding lookup (table an initializer, indices the input). Before iOS17 MIL's gather takes negative
    indices itself; from iOS17 on they are guarded (the evaluator refuses negative indices there)."""
    table = RNG.standard_normal((6, 4)).astype(np.float32)
    model = _model([helper.make_node("Gather", ["t", "i"], ["y"])], [("i", np.int64, [2, 3])], {"t": table}, 17)
    for target in ("iOS15", "iOS17"):
        check(model, {"i": i64([0, -1, 5], [-6, 2, 3])}, target=target)


def test_evaluator_refuses_negative_gather_indices_from_ios17():
    """MIL's gathers wrap negative indices before iOS17 and leave them undefined after: the evaluator follows,
    so a lowering that forgets to guard them fails here rather than passing on numpy's wrap-around."""
    import coremltools as ct
    from coremltools.converters.mil import Builder as mb

    from accelopt.converters.mil.evaluate import run_program

    x = np.arange(12, dtype=np.float32).reshape(4, 3)
    for target in (ct.target.iOS16, ct.target.iOS17):
        @mb.program(input_specs=[mb.TensorSpec(shape=(2,), dtype=ct.converters.mil.mil.types.int32)],
                    opset_version=target)
        def prog(i):
            return mb.gather(x=x, indices=i, axis=0)

        run = lambda: run_program(prog, {"i": np.array([-1, 0], np.int32)})  # noqa: E731
        if target == ct.target.iOS16:
            np.testing.assert_array_equal(next(iter(run().values())), x[[-1, 0]])
        else:
            with pytest.raises(ValueError, match="negative indices"):
                run()


def test_gather_nd_batch_dims_needs_ios16():
    with pytest.raises(Unsupported, match="iOS16"):
        translate(GATHER_CASES["gather_nd_batch_dims"](), "iOS15")


def _scatter_nd(opset: int, reduction: str = "none"):
    """Runtime data and updates, constant indices with negatives (and a duplicate where a reduction is set)."""
    indices = i64([[0, 1]], [[-3, 2]]) if reduction == "none" else i64([[0, 1]], [[-3, 1]], [[2, -1]])
    return node_model("ScatterND", [3, 4, 3], {"i": indices}, inputs=[("u", np.float32, [*indices.shape[:-1], 3])],
                      opset=opset, reduction=reduction)


def _scatter_elements(opset: int, x_shape, axis: int, indices, reduction: str = "none"):
    indices = np.array(indices, np.int64)
    return node_model("ScatterElements", x_shape, {"i": indices}, inputs=[("u", np.float32, list(indices.shape))],
                      opset=opset, axis=axis, reduction=reduction)


UNIQUE, DUPLICATES = [[0, -1, 1], [2, 0, -2]], [[0, -1, 0], [1, 1, 0]]
SCATTER_CASES = {
    "scatter_nd_none": lambda: _scatter_nd(16),
    "scatter_nd_add": lambda: _scatter_nd(16, "add"),
    "scatter_nd_mul": lambda: _scatter_nd(16, "mul"),
    "scatter_nd_max_opset18": lambda: _scatter_nd(18, "max"),
    "scatter_elements_none": lambda: _scatter_elements(16, [2, 3], 1, UNIQUE),
    "scatter_elements_add": lambda: _scatter_elements(16, [2, 3], -1, DUPLICATES, "add"),
    "scatter_elements_smaller_indices": lambda: _scatter_elements(16, [4, 3], 1, UNIQUE),
    "scatter_elements_min_opset18_axis0": lambda: _scatter_elements(18, [3, 3], 0, np.transpose(DUPLICATES), "min"),
}


def test_scatters():
    check_cases(SCATTER_CASES)


# --- pad --------------------------------------------------------------------------------------------------------

PAD_CASES = {  # pads (then constant_value, axes) on [2, 3, 4] or, with 8 pads, [2, 3, 4, 4]
    "constant_value": (17, {"p": i64(0, 1, 2, 0, 2, 1), "v": np.array(1.5, np.float32)}, {}),
    "reflect": (17, {"p": i64(0, 0, 1, 2, 0, 0, 2, 1)}, {"mode": "reflect"}),
    "edge": (17, {"p": i64(0, 0, 3, 0, 0, 1, 0, 2)}, {"mode": "edge"}),
    "edge_wider_than_input": (17, {"p": i64(0, 5, 0, 0, 0, 1)}, {"mode": "edge"}),
    "negative_pads_crop": (17, {"p": i64(0, -1, 2, 0, 1, -2)}, {}),
    "axes_opset18": (18, {"p": i64(1, 2, 3, 0), "_v": None, "a": i64(-1, 1)}, {}),
    "wrap_opset19": (19, {"p": i64(0, 1, 2, 0, 0, 2, 1, 1)}, {"mode": "wrap"}),
}


def _pad(case: str):
    opset, inits, attrs = PAD_CASES[case]
    return node_model("Pad", [2, 3, 4, 4] if len(inits["p"]) == 8 else [2, 3, 4], inits, opset=opset, **attrs)


def test_pad():
    check_cases({case: lambda case=case: _pad(case) for case in PAD_CASES}
                | {"opset2_attributes": lambda: node_model("Pad", [2, 3], opset=2, pads=[1, 0, 0, 2], value=2.0)})


def test_pad_int32_data():
    check(node_model("Pad", [2, 3], {"p": i64(1, 1, 0, 2), "v": np.array(7, np.int32)}, x_dtype=np.int32))


# --- one-hot, non-zero, trilu -----------------------------------------------------------------------------------


def test_one_hot_negative_and_out_of_range_indices():
    model = node_model("OneHot", [2, 3], {"d": i64(4), "v": np.array([-1.0, 5.0], np.float32)}, axis=1,
                       x_dtype=np.int64)
    check(model, {"x": i64([0, -1, 3], [-4, 7, 2])})


def test_non_zero_is_rank_by_count():
    """ONNX's NonZero is [rank, N] (MIL's non_zero [N, rank]): summing over N keeps the result static."""
    nodes = [helper.make_node("NonZero", ["x"], ["nz"]), helper.make_node("ReduceSum", ["nz", "a"], ["y"], keepdims=0)]
    model = _model(nodes, [("x", np.float32, [3, 4])], {"a": i64(1)}, 17)
    check(model, {"x": np.array([[0, 1, 0, 2], [3, 0, 0, 0], [0, 0, 5, 6]], np.float32)})


def test_trilu():
    """band_part where it can express the triangle (k on the diagonal's side), a constant-mask select where not."""
    check_cases({f"{'upper' if upper else 'lower'}_{k}".replace("-", "m"):
                 lambda upper=upper, k=k: node_model("Trilu", [2, 4, 5], {"k": np.array(k, np.int64)}, upper=upper)
                 for upper, k in [(1, 0), (1, -1), (1, 2), (0, 0), (0, 1), (0, -2)]})


# --- reductions -------------------------------------------------------------------------------------------------

REDUCES = ["ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
           "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare"]


def test_reduce_axes_attribute_opset17():
    """Axes as the attribute (ReduceSum takes them as an input from opset 13)."""
    check_cases({op: lambda op=op: node_model(op, [2, 3, 4], {"a": i64(1, -1)}, keepdims=1) if op == "ReduceSum"
                 else node_model(op, [2, 3, 4], axes=[1, -1], keepdims=1) for op in REDUCES}, positive=True)


REDUCE_INPUT_CASES = {
    "mean_negative_axes_keepdims0": lambda: node_model("ReduceMean", [2, 3, 4], {"a": i64(-1, 0)}, opset=18,
                                                       keepdims=0),
    "max_no_axes_is_all": lambda: node_model("ReduceMax", [2, 3, 4], opset=18, keepdims=0),
    "log_sum_exp_empty_axes_is_all": lambda: node_model("ReduceLogSumExp", [2, 3, 4], {"a": np.zeros(0, np.int64)},
                                                        opset=18),
    "sum_noop_with_empty_axes": lambda: node_model("ReduceSum", [2, 3, 4], {"a": np.zeros(0, np.int64)}, opset=18,
                                                   noop_with_empty_axes=1),
    "l2_axis2": lambda: node_model("ReduceL2", [2, 3, 4], {"a": i64(2)}, opset=18, keepdims=0),
    "min_int32": lambda: node_model("ReduceMin", [2, 3, 4], {"a": i64(1)}, opset=18, x_dtype=np.int32),
}


def test_reduce_axes_input_opset18():
    check_cases(REDUCE_INPUT_CASES)


ARG_CASES = {"argmax_keepdims0": ("ArgMax", {"axis": 1, "keepdims": 0}), "argmin_last_axis": ("ArgMin", {"axis": -1}),
             "argmax_last_index": ("ArgMax", {"axis": 0, "select_last_index": 1}),
             "argmin_last_index": ("ArgMin", {"axis": 1, "keepdims": 0, "select_last_index": 1})}


def test_arg_max_min_with_ties():
    """Small integer values: many ties, so the first or last index matters."""
    check_cases({case: lambda op=op, attrs=attrs: node_model(op, [3, 4], **attrs)
                 for case, (op, attrs) in ARG_CASES.items()}, ties=True)


TOPK_CASES = {
    "largest_last_axis": lambda: node_model("TopK", [4, 6], {"k": i64(3)}, outputs=2),
    "smallest_axis0": lambda: node_model("TopK", [4, 6], {"k": i64(2)}, outputs=2, axis=0, largest=0),
    "opset9_k_attribute": lambda: node_model("TopK", [4, 6], outputs=2, opset=9, k=2, axis=1),
}


def test_top_k():
    check_cases(TOPK_CASES)


def test_cum_sum():
    check_cases({f"exclusive{e}_reverse{r}": lambda e=e, r=r: node_model(
        "CumSum", [3, 4], {"a": np.array(-1 if r else 0, np.int64)}, exclusive=e, reverse=r)
        for e in (0, 1) for r in (0, 1)})


EINSUMS = {"bij,bjk->bik": ([2, 3, 4], [2, 4, 5]), "ij->ji": ([3, 4],), "...ij,...jk->...ik": ([2, 3, 4], [2, 4, 5]),
           "bhid,bhjd->bhij": ([1, 2, 3, 4], [1, 2, 5, 4]), "ij,j": ([3, 4], [4]), "bij->bj": ([2, 3, 4],),
           "i,i->": ([4], [4])}


def _einsum(equation: str):
    names = [f"x{i}" for i in range(len(EINSUMS[equation]))]
    return _model([helper.make_node("Einsum", names, ["y"], equation=equation)],
                  [(n, np.float32, s) for n, s in zip(names, EINSUMS[equation])], {}, 17)


def test_einsum():
    check_cases({f"einsum{i}": lambda eq=eq: _einsum(eq) for i, eq in enumerate(EINSUMS)})


def test_einsum_diagonal_is_refused_by_check():
    proto = helper.make_node("Einsum", ["x"], ["y"], equation="ii->i")
    assert REGISTRY.facts("", "Einsum")["check"](proto, 17)[0][0] == "unsupported_attribute_value"


# --- fp16 -------------------------------------------------------------------------------------------------------


def test_fp16():
    check_cases({"transpose": SHAPE_CASES["transpose_perm"], "gather": GATHER_CASES["gather_constant_negative_indices"],
                 "slice": lambda: node_model("Slice", [2, 5, 6], SLICE_CASES["negative_steps"]),
                 "pad_reflect": lambda: _pad("reflect"),
                 "reduce_mean": lambda: node_model("ReduceMean", [2, 3, 4], axes=[1], keepdims=0),
                 "cumsum": lambda: node_model("CumSum", [3, 4], {"a": np.array(1, np.int64)})}, precision="fp16")
