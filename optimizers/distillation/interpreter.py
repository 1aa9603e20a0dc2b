"""Run an ONNX graph with torch ops so that its weights can be trained, then write them back.

Why an interpreter and not onnx2torch + torch.onnx.export: onnx2torch needs torchvision, which does not import
beside the torch 2.13 CPU build this project pins, and it is no longer released. Here the graph is never rebuilt:
`OnnxModule` executes the ONNX nodes in file order (ONNX requires topological order) with torch functional ops,
holding the chosen float initializers as `nn.Parameter`s, and `write_back` puts the trained values into a copy of
the model's initializers. The nodes are untouched, so the output is valid by construction.

Semantics are those of inference: BatchNormalization uses its running statistics and Dropout is the identity, so
training changes weights, never the meaning of an op. One small function per op type sits in `OPS`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import helper, numpy_helper

from accelopt.errors import ConversionError

Tensor = torch.Tensor
_DEFAULT_DOMAINS = ("", "ai.onnx")
# Inputs of these ops are statistics, not weights: BatchNormalization's running mean and variance.
_FROZEN_INPUTS = {"BatchNormalization": {3, 4}}


@dataclass(frozen=True)
class Node:
    """One ONNX node, with its attributes decoded once (strings as str, tensors as torch tensors)."""

    op_type: str
    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    attrs: dict[str, Any]
    opset: int

    def attr(self, key: str, default: Any = None) -> Any:
        return self.attrs.get(key, default)

    def fail(self, what: str) -> ConversionError:
        return ConversionError(f"distill: {self.op_type} node {self.name!r}: {what} is not supported by the torch "
                               "interpreter")


Op = Callable[..., "Tensor | Sequence[Tensor]"]
OPS: dict[str, Op] = {}


def _op(*op_types: str) -> Callable[[Op], Op]:
    def add(fn: Op) -> Op:
        for op_type in op_types:
            OPS[op_type] = fn
        return fn
    return add


def _tensor(array: np.ndarray) -> Tensor:
    return torch.from_numpy(np.array(array, copy=True))


def _attr_value(attr: onnx.AttributeProto) -> Any:
    value = helper.get_attribute_value(attr)
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, onnx.TensorProto):
        return _tensor(numpy_helper.to_array(value))
    if isinstance(value, list) and value and isinstance(value[0], bytes):
        return [v.decode() for v in value]
    return value


def _ints(t: Tensor | None) -> list[int] | None:
    return None if t is None else [int(v) for v in t.reshape(-1).tolist()]


# --- element-wise --------------------------------------------------------------------------------------------------

_UNARY: dict[str, Callable[[Tensor], Tensor]] = {
    "Relu": F.relu, "Sigmoid": torch.sigmoid, "Tanh": torch.tanh, "Sqrt": torch.sqrt, "Erf": torch.erf,
    "Exp": torch.exp, "Log": torch.log, "Neg": torch.neg, "Abs": torch.abs, "Reciprocal": torch.reciprocal,
    "HardSwish": F.hardswish,
}
_BINARY: dict[str, Callable[[Tensor, Tensor], Tensor]] = {"Add": torch.add, "Sub": torch.sub, "Mul": torch.mul,
                                                          "Pow": torch.pow}


@_op(*_UNARY)
def _unary(node: Node, x: Tensor) -> Tensor:
    return _UNARY[node.op_type](x)


@_op(*_BINARY)
def _binary(node: Node, a: Tensor, b: Tensor) -> Tensor:
    return _BINARY[node.op_type](a, b)


@_op("Div")
def _div(node: Node, a: Tensor, b: Tensor) -> Tensor:
    return a / b if a.is_floating_point() else torch.div(a, b, rounding_mode="trunc")  # ONNX truncates integers


@_op("Identity", "Dropout")
def _identity(node: Node, x: Tensor, *_: Tensor) -> Tensor:
    return x


@_op("LeakyRelu")
def _leaky_relu(node: Node, x: Tensor) -> Tensor:
    return F.leaky_relu(x, node.attr("alpha", 0.01))


@_op("PRelu")
def _prelu(node: Node, x: Tensor, slope: Tensor) -> Tensor:
    return torch.where(x < 0, x * slope, x)  # numpy broadcasting, unlike F.prelu's channel axis


@_op("HardSigmoid")
def _hard_sigmoid(node: Node, x: Tensor) -> Tensor:
    return torch.clamp(node.attr("alpha", 0.2) * x + node.attr("beta", 0.5), 0.0, 1.0)


@_op("Gelu")
def _gelu(node: Node, x: Tensor) -> Tensor:
    return F.gelu(x, approximate=node.attr("approximate", "none"))


@_op("Clip")
def _clip(node: Node, x: Tensor, low: Tensor | None = None, high: Tensor | None = None) -> Tensor:
    if node.opset < 11:
        lo, hi = node.attr("min"), node.attr("max")
    else:
        lo, hi = (None if t is None else t.item() for t in (low, high))
    return x if lo is None and hi is None else torch.clamp(x, lo, hi)


@_op("Cast")
def _cast(node: Node, x: Tensor) -> Tensor:
    np_dtype = helper.tensor_dtype_to_np_dtype(node.attr("to"))
    return x.to(torch.from_numpy(np.zeros(0, np_dtype)).dtype)


# --- linear layers -------------------------------------------------------------------------------------------------

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CONV_T = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}
_MAX_POOL = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}
_AVG_POOL = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}


def _window(node: Node, x: Tensor, kernel: Sequence[int]) -> tuple[list[int], list[int], list[int]]:
    """(strides, dilations, pads in ONNX order [begin..., end...]) of a Conv or pooling node, auto_pad resolved."""
    n = len(kernel)
    strides, dilations = list(node.attr("strides", [1] * n)), list(node.attr("dilations", [1] * n))
    auto = node.attr("auto_pad", "NOTSET")
    if auto == "NOTSET":
        return strides, dilations, list(node.attr("pads", [0] * 2 * n))
    if auto == "VALID":
        return strides, dilations, [0] * 2 * n
    begins, ends = [], []
    for size, k, s, d in zip(x.shape[2:], kernel, strides, dilations):
        total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
        small, big = total // 2, total - total // 2
        begins.append(small if auto == "SAME_UPPER" else big)
        ends.append(big if auto == "SAME_UPPER" else small)
    return strides, dilations, begins + ends


def _pad(x: Tensor, pads: Sequence[int], value: float = 0.0) -> Tensor:
    """Pad the spatial axes: ONNX lists [begin..., end...] from the first axis, F.pad pairs from the last."""
    if not any(pads):
        return x
    n = len(pads) // 2
    return F.pad(x, [p for i in reversed(range(n)) for p in (pads[i], pads[i + n])], value=value)


@_op("Conv")
def _conv(node: Node, x: Tensor, w: Tensor, b: Tensor | None = None) -> Tensor:
    strides, dilations, pads = _window(node, x, w.shape[2:])
    return _CONV[w.dim() - 2](_pad(x, pads), w, b, strides, 0, dilations, node.attr("group", 1))


@_op("ConvTranspose")
def _conv_transpose(node: Node, x: Tensor, w: Tensor, b: Tensor | None = None) -> Tensor:
    if node.attr("output_shape") is not None or node.attr("auto_pad", "NOTSET") != "NOTSET":
        raise node.fail("output_shape / auto_pad")
    n = w.dim() - 2
    strides, dilations = node.attr("strides", [1] * n), node.attr("dilations", [1] * n)
    y = _CONV_T[n](x, w, b, strides, 0, node.attr("output_padding", [0] * n), node.attr("group", 1), dilations)
    pads = node.attr("pads", [0] * 2 * n)
    for axis in range(n):  # ONNX pads crop the full output; asymmetric crops are fine this way
        y = y.narrow(axis + 2, pads[axis], y.shape[axis + 2] - pads[axis] - pads[axis + n])
    return y


@_op("Gemm")
def _gemm(node: Node, a: Tensor, b: Tensor, c: Tensor | None = None) -> Tensor:
    a = a.t() if node.attr("transA", 0) else a
    b = b.t() if node.attr("transB", 0) else b
    y = node.attr("alpha", 1.0) * (a @ b)
    return y if c is None else y + node.attr("beta", 1.0) * c


@_op("MatMul")
def _matmul(node: Node, a: Tensor, b: Tensor) -> Tensor:
    return torch.matmul(a, b)


# --- normalization and pooling -------------------------------------------------------------------------------------


@_op("BatchNormalization")
def _batch_norm(node: Node, x: Tensor, scale: Tensor, bias: Tensor, mean: Tensor, var: Tensor) -> Tensor:
    if node.attr("training_mode", 0):
        raise node.fail("training_mode=1")
    return F.batch_norm(x, mean, var, scale, bias, training=False, eps=node.attr("epsilon", 1e-5))


@_op("LayerNormalization")
def _layer_norm(node: Node, x: Tensor, scale: Tensor, bias: Tensor | None = None) -> Tensor:
    shape = x.shape[node.attr("axis", -1) % x.dim():]
    return F.layer_norm(x, shape, scale.broadcast_to(shape), None if bias is None else bias.broadcast_to(shape),
                        node.attr("epsilon", 1e-5))


@_op("Softmax", "LogSoftmax")
def _softmax(node: Node, x: Tensor) -> Tensor:
    fn = F.softmax if node.op_type == "Softmax" else F.log_softmax
    if node.opset >= 13:
        return fn(x, dim=node.attr("axis", -1))
    axis = node.attr("axis", 1) % x.dim()  # before opset 13: over the input flattened to 2-D at `axis`
    return fn(x.reshape(math.prod(x.shape[:axis]), -1), dim=1).reshape(x.shape)


@_op("MaxPool")
def _max_pool(node: Node, x: Tensor) -> Tensor:
    kernel = node.attr("kernel_shape")
    strides, dilations, pads = _window(node, x, kernel)
    return _MAX_POOL[len(kernel)](_pad(x, pads, -math.inf), kernel, strides, 0, dilations,
                                  ceil_mode=bool(node.attr("ceil_mode", 0)))


@_op("AveragePool")
def _avg_pool(node: Node, x: Tensor) -> Tensor:
    kernel = node.attr("kernel_shape")
    strides, dilations, pads = _window(node, x, kernel)
    if any(d != 1 for d in dilations):
        raise node.fail("dilations")
    pool = _AVG_POOL[len(kernel)]
    ceil = bool(node.attr("ceil_mode", 0))
    y = pool(_pad(x, pads), kernel, strides, 0, ceil)
    if node.attr("count_include_pad", 0) or not any(pads):
        return y
    ones = torch.ones((1, 1, *x.shape[2:]), dtype=x.dtype)
    return y / pool(_pad(ones, pads), kernel, strides, 0, ceil)  # mean over real elements only


@_op("GlobalAveragePool", "GlobalMaxPool")
def _global_pool(node: Node, x: Tensor) -> Tensor:
    axes = tuple(range(2, x.dim()))
    return x.mean(axes, keepdim=True) if node.op_type == "GlobalAveragePool" else x.amax(axes, keepdim=True)


_REDUCE = {"ReduceMean": torch.mean, "ReduceSum": torch.sum, "ReduceMax": torch.amax}


@_op(*_REDUCE)
def _reduce(node: Node, x: Tensor, axes: Tensor | None = None) -> Tensor:
    dims = _ints(axes) if axes is not None else node.attr("axes")
    if not dims:
        if node.attr("noop_with_empty_axes", 0):
            return x
        dims = list(range(x.dim()))
    return _REDUCE[node.op_type](x, dim=tuple(dims), keepdim=bool(node.attr("keepdims", 1)))


@_op("Resize")
def _resize(node: Node, x: Tensor, roi: Tensor | None = None, scales: Tensor | None = None,
            sizes: Tensor | None = None) -> Tensor:
    if node.opset < 11 or node.attr("antialias", 0) or node.attr("axes") is not None:
        raise node.fail("Resize before opset 11, antialias or axes")
    mode, ctm = node.attr("mode", "nearest"), node.attr("coordinate_transformation_mode", "half_pixel")
    if mode == "nearest":
        # Exact equivalents only: torch 'nearest' floors asymmetric coordinates; 'nearest-exact' rounds half-pixel
        # ones up on ties.
        torch_mode = {("asymmetric", "floor"): "nearest", ("half_pixel", "round_prefer_ceil"): "nearest-exact"}.get(
            (ctm, node.attr("nearest_mode", "round_prefer_floor")))
        align = None
    elif mode == "linear" and ctm in ("half_pixel", "pytorch_half_pixel", "align_corners"):
        torch_mode = {3: "linear", 4: "bilinear", 5: "trilinear"}.get(x.dim())
        align = ctm == "align_corners"
    else:
        torch_mode = None
    if torch_mode is None:
        raise node.fail(f"mode {mode!r} with coordinate_transformation_mode {ctm!r}")
    if sizes is not None and sizes.numel():
        size = _ints(sizes)
        if size[:2] != list(x.shape[:2]):
            raise node.fail("resizing the batch or channel axis")
        target: dict[str, Any] = {"size": size[2:]}
    else:
        factor = [float(s) for s in scales.tolist()]
        if factor[:2] != [1.0, 1.0]:
            raise node.fail("resizing the batch or channel axis")
        target = {"scale_factor": factor[2:]}
    return F.interpolate(x, mode=torch_mode, align_corners=align, **target)


# --- shapes --------------------------------------------------------------------------------------------------------


@_op("Flatten")
def _flatten(node: Node, x: Tensor) -> Tensor:
    axis = node.attr("axis", 1)
    axis = axis + x.dim() if axis < 0 else axis  # the rank + 1 cut points make -1 mean before the last axis
    return x.reshape(math.prod(x.shape[:axis]), math.prod(x.shape[axis:]))


@_op("Reshape")
def _reshape(node: Node, x: Tensor, shape: Tensor) -> Tensor:
    dims = _ints(shape)
    if not node.attr("allowzero", 0):
        dims = [x.shape[i] if d == 0 else d for i, d in enumerate(dims)]
    return x.reshape(dims)


@_op("Transpose")
def _transpose(node: Node, x: Tensor) -> Tensor:
    return x.permute(node.attr("perm", list(reversed(range(x.dim())))))


@_op("Concat")
def _concat(node: Node, *xs: Tensor) -> Tensor:
    return torch.cat(xs, dim=node.attr("axis"))


@_op("Split")
def _split(node: Node, x: Tensor, split: Tensor | None = None) -> Sequence[Tensor]:
    axis = node.attr("axis", 0)
    sizes = _ints(split) if split is not None else node.attr("split")
    if sizes is None:  # equal parts, the last one smaller when they do not divide (opset 18's num_outputs)
        sizes = -(-x.shape[axis] // node.attr("num_outputs", len(node.outputs)))
    return torch.split(x, sizes, dim=axis)


@_op("Slice")
def _slice(node: Node, x: Tensor, starts: Tensor | None = None, ends: Tensor | None = None,
           axes: Tensor | None = None, steps: Tensor | None = None) -> Tensor:
    if node.opset < 10:
        begin, end, ax, step = node.attr("starts"), node.attr("ends"), node.attr("axes"), None
    else:
        begin, end, ax, step = _ints(starts), _ints(ends), _ints(axes), _ints(steps)
    ax = ax or list(range(len(begin)))
    step = step or [1] * len(begin)
    for a, s, e, st in zip(ax, begin, end, step):
        a %= x.dim()
        picked = range(*slice(s, e, st).indices(x.shape[a]))  # Python clamps out-of-range bounds as ONNX does
        x = x.narrow(a, picked.start, len(picked)) if st == 1 else \
            x.index_select(a, torch.tensor(list(picked), dtype=torch.long))
    return x


@_op("Squeeze")
def _squeeze(node: Node, x: Tensor, axes: Tensor | None = None) -> Tensor:
    dims = _ints(axes) if axes is not None else node.attr("axes")
    return x.squeeze() if not dims else x.squeeze(tuple(d % x.dim() for d in dims))


@_op("Unsqueeze")
def _unsqueeze(node: Node, x: Tensor, axes: Tensor | None = None) -> Tensor:
    dims = _ints(axes) if axes is not None else node.attr("axes")
    rank = x.dim() + len(dims)
    for d in sorted(d % rank for d in dims):
        x = x.unsqueeze(d)
    return x


@_op("Shape")
def _shape(node: Node, x: Tensor) -> Tensor:
    return torch.tensor(x.shape[slice(node.attr("start", 0), node.attr("end"))], dtype=torch.int64)


@_op("Gather")
def _gather(node: Node, x: Tensor, indices: Tensor) -> Tensor:
    axis = node.attr("axis", 0) % x.dim()
    idx = torch.where(indices < 0, indices + x.shape[axis], indices).long()
    picked = x.index_select(axis, idx.reshape(-1))
    return picked.reshape((*x.shape[:axis], *idx.shape, *x.shape[axis + 1:]))


@_op("Constant")
def _constant(node: Node) -> Tensor:
    if "value" in node.attrs:
        return node.attrs["value"]
    key, value = next(iter(node.attrs.items()))
    if key not in ("value_float", "value_floats", "value_int", "value_ints"):
        raise node.fail(f"attribute {key!r}")
    return torch.tensor(value, dtype=torch.float32 if "float" in key else torch.int64)


# --- the module ----------------------------------------------------------------------------------------------------


def _opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in _DEFAULT_DOMAINS), 1)


def unsupported(model: onnx.ModelProto) -> dict[str, list[str]]:
    """Op types the interpreter cannot run (domain-qualified when not standard ONNX) -> the nodes that use them."""
    found: dict[str, list[str]] = {}
    for node in model.graph.node:
        if node.domain not in _DEFAULT_DOMAINS or node.op_type not in OPS:
            key = node.op_type if node.domain in _DEFAULT_DOMAINS else f"{node.domain}.{node.op_type}"
            found.setdefault(key, []).append(node.name or node.output[0])
    return found


def trainable_initializers(model: onnx.ModelProto, op_types: Iterable[str]) -> list[str]:
    """float32 initializers that nodes of `op_types` read as weights, in file order.

    BatchNormalization keeps its running statistics; a MatMul also claims the constant addend of an Add that is
    its only consumer, the bias that exporters write after it.
    """
    op_types = set(op_types)
    floats = {t.name for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    outputs = {o.name for o in model.graph.output}
    chosen: set[str] = set()
    for node in model.graph.node:
        if node.op_type not in op_types or node.domain not in _DEFAULT_DOMAINS:
            continue
        frozen = _FROZEN_INPUTS.get(node.op_type, set())
        chosen |= {name for i, name in enumerate(node.input) if name in floats and i not in frozen}
        after = consumers.get(node.output[0], [])
        if node.op_type == "MatMul" and len(after) == 1 and after[0].op_type == "Add" \
                and node.output[0] not in outputs:
            chosen |= {name for name in after[0].input if name in floats}
    return [t.name for t in model.graph.initializer if t.name in chosen]


class OnnxModule(torch.nn.Module):
    """The ONNX graph as a torch module: `forward(feeds)` returns the graph outputs by name.

    The initializers named in `trainable` are `nn.Parameter`s (in `weights`, named in `names`); every other
    initializer is a fixed tensor.
    """

    def __init__(self, model: onnx.ModelProto, trainable: Iterable[str]):
        super().__init__()
        missing = unsupported(model)
        if missing:
            listed = "; ".join(f"{op} ({', '.join(nodes[:3])}{', ...' if len(nodes) > 3 else ''})"
                               for op, nodes in sorted(missing.items()))
            raise ConversionError(f"distill: the torch interpreter cannot run {len(missing)} op type(s): {listed}")
        opset = _opset(model)
        self.nodes = [Node(n.op_type, n.name or n.output[0], tuple(n.input), tuple(n.output),
                           {a.name: _attr_value(a) for a in n.attribute}, opset) for n in model.graph.node]
        self.outputs = [o.name for o in model.graph.output]
        arrays = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
        self.names = list(trainable)
        self.weights = torch.nn.ParameterList([torch.nn.Parameter(_tensor(arrays[n])) for n in self.names])
        trained = set(self.names)
        self.constants = {n: _tensor(a) for n, a in arrays.items() if n not in trained}

    def forward(self, feeds: dict[str, Tensor]) -> dict[str, Tensor]:
        env: dict[str, Tensor] = {**self.constants, **dict(zip(self.names, self.weights)), **feeds}
        for node in self.nodes:
            result = OPS[node.op_type](node, *[env[i] if i else None for i in node.inputs])
            values = [result] if isinstance(result, Tensor) else list(result)
            wanted = [i for i, name in enumerate(node.outputs) if name]
            if wanted and wanted[-1] >= len(values):
                raise node.fail(f"output {node.outputs[wanted[-1]]!r} (only the first {len(values)} are computed)")
            env.update({node.outputs[i]: values[i] for i in wanted})
        return {name: env[name] for name in self.outputs}

    def values(self) -> dict[str, np.ndarray]:
        """The trainable initializers' current values."""
        return {name: w.detach().numpy().copy() for name, w in zip(self.names, self.weights)}


def as_tensors(arrays: dict[str, np.ndarray]) -> dict[str, Tensor]:
    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()}


def run(module: OnnxModule, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The module's outputs as arrays, without gradients: what is checked against ONNX Runtime."""
    with torch.no_grad():
        return {k: v.numpy() for k, v in module(as_tensors(feeds)).items()}


def write_back(model: onnx.ModelProto, values: dict[str, np.ndarray]) -> onnx.ModelProto:
    """A copy of `model` whose initializers named in `values` hold those arrays (in each one's own dtype)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for tensor in out.graph.initializer:
        if tensor.name in values:
            dtype = helper.tensor_dtype_to_np_dtype(tensor.data_type)
            tensor.CopyFrom(numpy_helper.from_array(values[tensor.name].astype(dtype), tensor.name))
    return out
