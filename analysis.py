"""What `accelopt inspect` shows: I/O, opsets, op histogram, parameters, a MAC estimate, ORT loadability.

The MAC estimate pins dynamic input dims on a weightless copy of the model (so the input model is
never touched and a multi-GB model needs no multi-GB copy), infers shapes, and counts multiply-
accumulates of the ops that dominate compute (convolutions and matrix products) in the main graph.
"""

from __future__ import annotations

import math
import tempfile
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import onnx

from accelopt.converters.onnx_io import copy_model, is_large, model_bytes, model_files, save_model
from accelopt.isolation import quiet_native_stderr, symbolic_shape_inference

Shape = list[int | str | None]
Shapes = dict[str, Shape | None]  # tensor name -> shape, None where even the rank is unknown
MacCounter = Callable[[onnx.NodeProto, Shapes], int | None]

# Initializers above this many elements lose their data in the shape-inference copy: shape
# computations only ever read small integer tensors.
_KEEP_DATA_ELEMENTS = 1024

# Packed types numpy stores one per byte; the set grows with onnx versions, so look names up.
_PACKED_BITS = {
    getattr(onnx.TensorProto, name): bits
    for name, bits in (("INT4", 4), ("UINT4", 4), ("FLOAT4E2M1", 4), ("INT2", 2), ("UINT2", 2))
    if hasattr(onnx.TensorProto, name)
}


@dataclass
class ModelSummary:
    path: str | None
    size_bytes: int
    ir_version: int
    opsets: dict[str, int]
    producer: str
    inputs: list[dict[str, Any]]  # {"name", "dtype", "shape"}: int, str (dim_param) or None per dim
    outputs: list[dict[str, Any]]
    dynamic_inputs: list[str]
    node_count: int  # subgraphs included
    op_histogram: dict[str, int]  # most frequent first
    params: int  # elements in initializers and Constant tensors
    param_bytes: int
    macs: int | None
    macs_by_op: dict[str, int]
    macs_note: str | None
    ort_loads: bool
    ort_error: str | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def summarize(
    model: onnx.ModelProto, path: str | None = None, input_shapes: dict[str, list[int]] | None = None
) -> ModelSummary:
    """Everything `inspect` reports about a model; `input_shapes` pins dims for the MAC estimate."""
    graph = model.graph
    inputs = _graph_inputs(graph)
    ops = op_histogram(model)
    params, param_bytes = _param_counts(graph)
    macs, macs_by_op, macs_note = estimate_macs(model, input_shapes)
    ort_error = _ort_error(model, path)
    return ModelSummary(
        path=path,
        size_bytes=_size_bytes(model, path),
        ir_version=model.ir_version,
        opsets={o.domain or "ai.onnx": o.version for o in model.opset_import},
        producer=f"{model.producer_name} {model.producer_version}".strip(),
        inputs=[_io_entry(v) for v in inputs],
        outputs=[_io_entry(v) for v in graph.output],
        dynamic_inputs=[v.name for v in inputs if not _is_static(_shape(v))],
        node_count=sum(ops.values()),
        op_histogram=dict(sorted(ops.items(), key=lambda kv: (-kv[1], kv[0]))),
        params=params,
        param_bytes=param_bytes,
        macs=macs,
        macs_by_op=macs_by_op,
        macs_note=macs_note,
        ort_loads=ort_error is None,
        ort_error=ort_error,
    )


def estimate_macs(
    model: onnx.ModelProto, input_shapes: dict[str, list[int]] | None = None
) -> tuple[int | None, dict[str, int], str | None]:
    """(total MACs, MACs per op type, note) for one inference; total None when shapes stay unknown.

    Dynamic dims come from `input_shapes` where given, else 1 (the note names them).
    """
    counts, note = _node_counts(model, input_shapes)
    if any(value is None for _, value in counts):
        return None, {}, note
    by_op: Counter[str] = Counter()
    for node, value in counts:
        by_op[node.op_type] += value or 0
    return sum(by_op.values()), dict(by_op.most_common()), note


def node_macs(
    model: onnx.ModelProto, input_shapes: dict[str, list[int]] | None = None
) -> tuple[dict[str, int | None], str | None]:
    """(MACs of each counted node, note), as `estimate_macs` counts them; None where shapes stay unknown.

    Keyed by the node's first output: names may be missing, outputs are unique and survive constant folding.
    """
    counts, note = _node_counts(model, input_shapes)
    return {node.output[0]: value for node, value in counts}, note


def _node_counts(
    model: onnx.ModelProto, input_shapes: dict[str, list[int]] | None
) -> tuple[list[tuple[onnx.NodeProto, int | None]], str | None]:
    """(node, MACs) of every counted node, with a note on pinned dims, constant folding and unknown shapes."""
    copy, pinned = _pinned_copy(model, input_shapes or {})
    counts = _mac_counts(copy.graph, _infer_shapes(copy))
    notes = [f"dynamic dims set to 1 for the estimate: {', '.join(pinned)}"] if pinned else []
    if any(value is None for _, value in counts) and not is_large(model):
        folded = _constant_folded(model, {v.name: _shape(v) for v in _graph_inputs(copy.graph)})
        if folded is not None:
            counts = _mac_counts(folded.graph, _infer_shapes(folded))
            notes.append("shapes found after onnxsim constant folding")
    unknown = [node.name or node.op_type for node, value in counts if value is None]
    if unknown:
        notes.append(f"shapes unknown for {len(unknown)} op(s), e.g. {unknown[0]}")
    return counts, "; ".join(notes) or None


def _constant_folded(model: onnx.ModelProto, pins: dict[str, Shape | None]) -> onnx.ModelProto | None:
    """Shape subgraphs that neither shape inference can see through (Paddle exports build Reshape
    targets from Shape/Slice/Concat chains) disappear once onnxsim folds them; compute is unchanged."""
    import onnxsim

    static = {name: shape for name, shape in pins.items() if _is_static(shape)}
    try:
        with quiet_native_stderr():  # it warns for every shape subgraph it cannot fold
            folded, _ = onnxsim.simplify(copy_model(model), check_n=0, skip_fuse_bn=True,
                                         overwrite_input_shapes=static or None)
    except Exception:  # best effort: unknown shapes only make macs None
        return None
    return folded


def _mac_counts(graph: onnx.GraphProto, shapes: Shapes) -> list[tuple[onnx.NodeProto, int | None]]:
    """(node, MACs) for each counted op of the main graph; MACs None where its shapes are unknown."""
    counted = [(n, _MAC_COUNTERS.get((n.domain or "ai.onnx", n.op_type))) for n in graph.node]
    return [(n, count(n, shapes)) for n, count in counted if count is not None]


def _graph_inputs(graph: onnx.GraphProto) -> list[onnx.ValueInfoProto]:
    """Real inputs: older exporters also list every initializer as a graph input."""
    weights = {t.name for t in graph.initializer}
    return [v for v in graph.input if v.name not in weights]


def op_histogram(model: onnx.ModelProto) -> Counter[str]:
    """Node count per op type, subgraphs included; custom-domain ops are written `domain.Op`."""
    return Counter(_op_name(n) for n in _all_nodes(model.graph))


def op_delta(before: Counter[str], after: Counter[str]) -> dict[str, int]:
    """What changed per op type, e.g. {"Constant": -308, "Shape": -20}; unchanged ops are left out."""
    return {op: after[op] - before[op] for op in sorted(before | after) if after[op] != before[op]}


def _all_nodes(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    for node in graph.node:
        yield node
        for sub in _subgraphs(node):
            yield from _all_nodes(sub)


def _all_graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    yield graph
    for node in graph.node:
        for sub in _subgraphs(node):
            yield from _all_graphs(sub)


def _subgraphs(node: onnx.NodeProto) -> Iterator[onnx.GraphProto]:
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            yield attr.g
        elif attr.type == onnx.AttributeProto.GRAPHS:
            yield from attr.graphs


def _op_name(node: onnx.NodeProto) -> str:
    return node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"


def _shape(value: onnx.ValueInfoProto) -> Shape | None:
    """Dims as int (static), str (dim_param) or None (unknown); None when the rank is unknown."""
    tensor = value.type.tensor_type
    if not value.type.HasField("tensor_type") or not tensor.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tensor.shape.dim]


def _is_static(shape: Shape | None) -> bool:
    """Every dim a positive int: exporters write dynamic dims as dim_param, unset, or -1 (Paddle)."""
    return shape is not None and all(isinstance(d, int) and d > 0 for d in shape)


def _io_entry(value: onnx.ValueInfoProto) -> dict[str, Any]:
    if not value.type.HasField("tensor_type"):
        return {"name": value.name, "dtype": value.type.WhichOneof("value"), "shape": None}
    return {"name": value.name, "dtype": _dtype_name(value.type.tensor_type.elem_type), "shape": _shape(value)}


def _dtype_name(elem_type: int) -> str:
    """numpy's (or ml_dtypes') spelling: float32, int64, bfloat16, float8_e4m3fn; ONNX's as a fallback."""
    try:
        name = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type)).name
    except (KeyError, TypeError, ValueError):
        name = ""
    if name and name not in ("object", "void"):
        return name
    return onnx.TensorProto.DataType.Name(elem_type).lower()


def _param_counts(graph: onnx.GraphProto) -> tuple[int, int]:
    """(elements, bytes) of every initializer and Constant tensor, subgraphs included."""
    tensors = [t for g in _all_graphs(graph) for t in g.initializer]
    tensors += [a.t for n in _all_nodes(graph) if n.op_type == "Constant" for a in n.attribute if a.name == "value"]
    elements = [math.prod(t.dims) for t in tensors]
    nbytes = [math.ceil(n * _bits(t.data_type) / 8) for n, t in zip(elements, tensors)]
    return sum(elements), sum(nbytes)


def _bits(elem_type: int) -> int:
    """Bits per element, from the dims alone, so tensors kept in external data count too."""
    if elem_type in _PACKED_BITS:
        return _PACKED_BITS[elem_type]
    if elem_type == onnx.TensorProto.STRING:
        return 0  # strings have no fixed size
    try:
        return 8 * np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type)).itemsize
    except (KeyError, TypeError, ValueError):
        return 0  # undefined type


def _size_bytes(model: onnx.ModelProto, path: str | None) -> int:
    """The file(s) on disk when there is a path, else the serialized size."""
    if path and Path(path).is_file():
        return sum(f.stat().st_size for f in model_files(path))
    return model_bytes(model)


def _ort_error(model: onnx.ModelProto, path: str | None) -> str | None:
    """None when ONNX Runtime (CPU) can create a session for the model, else its first error line."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # the error text is returned, not logged
    try:
        if not is_large(model):
            ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        elif path:
            ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        else:
            with tempfile.TemporaryDirectory() as d:
                saved = save_model(model, Path(d) / "model.onnx")
                ort.InferenceSession(str(saved), options, providers=["CPUExecutionProvider"])
    except Exception as e:  # ORT raises several unrelated exception types for a bad model
        lines = str(e).strip().splitlines()
        return (lines[0] if lines else type(e).__name__)[:300]
    return None


def _pinned_copy(model: onnx.ModelProto, input_shapes: dict[str, list[int]]) -> tuple[onnx.ModelProto, list[str]]:
    """A weightless copy whose inputs have static shapes, and the names of the dims pinned to 1."""
    copy = onnx.ModelProto()
    copy.ir_version = model.ir_version
    copy.opset_import.extend(model.opset_import)
    copy.functions.extend(model.functions)
    graph = copy.graph
    graph.node.extend(model.graph.node)
    graph.input.extend(model.graph.input)
    graph.initializer.extend(_weightless(t) for t in model.graph.initializer)
    graph.sparse_initializer.extend(model.graph.sparse_initializer)
    for out in model.graph.output:  # re-inferred: declared dim_params would hide pinned values
        copied = graph.output.add()
        copied.CopyFrom(out)
        if copied.type.HasField("tensor_type"):
            copied.type.tensor_type.ClearField("shape")
    pinned: list[str] = []
    for value in _graph_inputs(graph):
        pinned += _pin_dims(value, input_shapes.get(value.name))
    return copy, list(dict.fromkeys(pinned))


def _weightless(tensor: onnx.TensorProto) -> onnx.TensorProto:
    if math.prod(tensor.dims) <= _KEEP_DATA_ELEMENTS:
        return tensor
    return onnx.TensorProto(name=tensor.name, dims=tensor.dims, data_type=tensor.data_type)


def _pin_dims(value: onnx.ValueInfoProto, given: list[int] | None) -> list[str]:
    """Set every dynamic dim of `value` in place (a copy's input); return the dims that fell back to 1."""
    if not value.type.HasField("tensor_type") or not value.type.tensor_type.HasField("shape"):
        return []
    pinned = []
    for i, dim in enumerate(value.type.tensor_type.shape.dim):
        pin = given[i] if given is not None and i < len(given) and isinstance(given[i], int) else None
        if pin is not None:
            dim.dim_value = pin
        elif not dim.HasField("dim_value") or dim.dim_value <= 0:
            pinned.append(dim.dim_param or f"{value.name}[{i}]")
            dim.dim_value = 1
    return pinned


def _infer_shapes(model: onnx.ModelProto) -> Shapes:
    """Tensor shapes from onnx's inference, falling back to ORT's symbolic inference where it stops."""
    shapes = _known_shapes(model)
    try:
        shapes.update(_known_shapes(onnx.shape_inference.infer_shapes(model, data_prop=True)))
    except Exception:  # custom ops or odd models: fall through to the fallback
        pass
    if all(value is not None for _, value in _mac_counts(model.graph, shapes)):
        return shapes
    try:
        inferred = symbolic_shape_inference(model)
    except Exception:  # the fallback is best effort: unknown shapes only make macs None
        return shapes
    if inferred is not None:
        for name, shape in _known_shapes(inferred).items():
            if _is_static(shape) or name not in shapes:
                shapes[name] = shape
    return shapes


def _known_shapes(model: onnx.ModelProto) -> Shapes:
    graph = model.graph
    shapes: Shapes = {t.name: list(t.dims) for t in graph.initializer}
    for value in [*graph.input, *graph.value_info, *graph.output]:
        shapes[value.name] = _shape(value)
    for node in graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    shapes[node.output[0]] = list(attr.t.dims)
    return shapes


def _static(shapes: Shapes, name: str) -> list[int] | None:
    shape = shapes.get(name)
    return shape if _is_static(shape) else None  # type: ignore[return-value]


def _conv_macs(w: int) -> MacCounter:
    """Conv-like op: N*Cout*prod(out spatial) * (Cin/groups)*prod(kernel) = numel(Y) * prod(W[1:])."""

    def count(node: onnx.NodeProto, shapes: Shapes) -> int | None:
        weight = _static(shapes, node.input[w])
        out = _static(shapes, node.output[0])
        return None if weight is None or out is None else math.prod(out) * math.prod(weight[1:])

    return count


def _conv_transpose_macs(node: onnx.NodeProto, shapes: Shapes) -> int | None:
    """Every input element meets (Cout/groups)*prod(kernel) weights: numel(X) * prod(W[1:])."""
    x, weight = _static(shapes, node.input[0]), _static(shapes, node.input[1])
    return None if x is None or weight is None else math.prod(x) * math.prod(weight[1:])


def _gemm_macs(node: onnx.NodeProto, shapes: Shapes) -> int | None:
    a, b = _static(shapes, node.input[0]), _static(shapes, node.input[1])
    if a is None or b is None or len(a) != 2 or len(b) != 2:
        return None
    attrs = {at.name: at.i for at in node.attribute}
    m, k = reversed(a) if attrs.get("transA") else a
    n = b[0] if attrs.get("transB") else b[1]
    return m * n * k


def _matmul_macs(a_index: int, b_index: int) -> MacCounter:
    """numpy matmul semantics: prod(broadcast batch) * M * N * K, 1-D operands promoted."""

    def count(node: onnx.NodeProto, shapes: Shapes) -> int | None:
        a, b = _static(shapes, node.input[a_index]), _static(shapes, node.input[b_index])
        if a is None or b is None or not a or not b:
            return None
        a2 = [1, *a] if len(a) == 1 else a
        b2 = [*b, 1] if len(b) == 1 else b
        try:
            batch = np.broadcast_shapes(tuple(a2[:-2]), tuple(b2[:-2]))
        except ValueError:
            return None
        return math.prod(batch) * a2[-2] * b2[-1] * a2[-1]

    return count


def _matmul_nbits_macs(node: onnx.NodeProto, shapes: Shapes) -> int | None:
    """com.microsoft MatMulNBits (int4 weights): A[..., K] x W[K, N] with N an attribute."""
    a = _static(shapes, node.input[0])
    n = next((at.i for at in node.attribute if at.name == "N"), None)
    return None if a is None or n is None else math.prod(a) * n


_MAC_COUNTERS: dict[tuple[str, str], MacCounter] = {
    ("ai.onnx", "Conv"): _conv_macs(1),
    ("ai.onnx", "ConvInteger"): _conv_macs(1),
    ("ai.onnx", "QLinearConv"): _conv_macs(3),
    ("ai.onnx", "ConvTranspose"): _conv_transpose_macs,
    ("ai.onnx", "Gemm"): _gemm_macs,
    ("ai.onnx", "MatMul"): _matmul_macs(0, 1),
    ("ai.onnx", "MatMulInteger"): _matmul_macs(0, 1),
    ("ai.onnx", "QLinearMatMul"): _matmul_macs(0, 3),
    ("com.microsoft", "MatMulNBits"): _matmul_nbits_macs,
}
