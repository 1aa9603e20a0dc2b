"""Elementwise ops: math, activations, comparisons, logic and casts. ONNX and MIL broadcast alike (numpy rules).

Where MIL's op differs from ONNX's, the handler builds ONNX's semantics from other ops: integer Div truncates
(MIL `floor_div` floors), Reciprocal and Log pass `epsilon=0` (MIL adds 1e-4 / 1e-45), ThresholdedRelu is
strict (`x > alpha`; MIL's `thresholded_relu` keeps `x == alpha`), Clip with one bound or with runtime bounds
uses maximum/minimum (MIL `clip` wants two constant bounds, lower < upper), PRelu uses MIL `prelu` only for a
per-channel slope on a rank-4 input. MIL's `mod` is avoided: coremltools evaluates it as Python's `%` but the
Core ML runtime as C's fmod, so Mod is written with floor/floor_div. A float `floor_div` is avoided too:
coremltools' noop_elimination drops `floor_div(x, 1)`, which is wrong for fractions.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx

from accelopt.converters.mil.registry import Node, compute_dtype, handles, mil_dtype, builder as _mb
from accelopt.converters.registry import Unsupported


def _is_const(value: Any) -> bool:
    return isinstance(value, np.ndarray)


def _scalar(value: float, dtype: np.dtype) -> np.ndarray:
    """A constant in the type of the tensor it meets (MIL operands and alpha/beta share one type)."""
    return np.array(value, dtype=dtype)


def _as(value: Any, dtype: np.dtype) -> Any:
    """A constant in `dtype` (ONNX gives an op's operands one type, but a float16 constant can meet an input
    that crosses as fp32); runtime values unchanged."""
    return value.astype(dtype) if _is_const(value) and value.dtype != dtype else value


def _operands(node: Node, indices: list[int]) -> tuple[list[Any], np.dtype]:
    """Inputs `indices` with constants in the type of the runtime ones, and that type."""
    values = [node.x(i) for i in indices]
    dtype = np.dtype(next((node.dtype(i) for i, v in zip(indices, values) if not _is_const(v)), values[0].dtype))
    return [_as(v, dtype) for v in values], dtype


def _legacy_broadcast(node: Node, a: Any, b: Any) -> Any:
    """Opset < 7 binary ops broadcast B only with broadcast=1, its dims aligned with A's from `axis`."""
    if node.opset >= 7 or not node.attr("broadcast", 0) or node.attr("axis") is None:
        return b
    rank_a, rank_b = len(a.shape), len(b.shape)
    axis = node.attr("axis") % rank_a
    shape = [1] * axis + list(b.shape) + [1] * (rank_a - axis - rank_b)
    return b.reshape(shape) if _is_const(b) else _mb().reshape(x=b, shape=shape)


def _trunc_div(a: Any, b: Any) -> Any:
    """Integer division toward zero: sign(a) * sign(b) * floor_div(|a|, |b|)."""
    mb = _mb()
    quotient = mb.floor_div(x=mb.abs(x=a), y=mb.abs(x=b))
    return mb.mul(x=mb.mul(x=mb.sign(x=a), y=mb.sign(x=b)), y=quotient)


def _floor_mod(x: Any, y: Any, dtype: np.dtype) -> Any:
    """x - floor(x / y) * y: the divisor's sign (a float floor_div is avoided, see the module docstring)."""
    mb = _mb()
    quotient = mb.floor(x=mb.real_div(x=x, y=y)) if dtype.kind == "f" else mb.floor_div(x=x, y=y)
    return mb.sub(x=x, y=mb.mul(x=quotient, y=y))


# ONNX op -> MIL op for binary ops whose semantics agree (numeric or bool operands of one type).
_BINARY = {"Add": "add", "Sub": "sub", "Mul": "mul", "Equal": "equal", "Less": "less", "Greater": "greater",
           "LessOrEqual": "less_equal", "GreaterOrEqual": "greater_equal", "And": "logical_and",
           "Or": "logical_or", "Xor": "logical_xor"}


@handles(*_BINARY, "Div")
def binary(node: Node):
    mb = _mb()
    (a, b), dtype = _operands(node, [0, 1])
    b = _legacy_broadcast(node, a, b)
    if node.op_type == "Div":
        return mb.real_div(x=a, y=b) if dtype.kind == "f" else _trunc_div(a, b)
    if node.op_type == "Equal" and dtype == np.bool_:  # MIL's equal compares numbers only
        return mb.logical_not(x=mb.logical_xor(x=a, y=b))
    return getattr(mb, _BINARY[node.op_type])(x=a, y=b)


@handles("Pow")
def power(node: Node):
    """ONNX lets the exponent have its own type; an integer base with a float exponent is computed in float
    and truncated, as onnxruntime does."""
    mb = _mb()
    base, exponent = node.x(0), node.x(1)
    base_type = node.dtype(0)
    if base_type.kind != "f" and node.dtype(1).kind == "f":
        base = base.astype(np.float32) if _is_const(base) else mb.cast(x=base, dtype="fp32")
        base_type = np.dtype(np.float32)
    if _is_const(exponent):
        exponent = exponent.astype(base_type)
    elif node.dtype(1) != base_type:
        exponent = mb.cast(x=exponent, dtype=mil_dtype(base_type))
    return mb.pow(x=base, y=_legacy_broadcast(node, base, exponent))


@handles("Mod")
def mod(node: Node):
    """fmod=0 (integers): the divisor's sign, a - floor(a / b) * b. fmod=1: the dividend's sign,
    sign(a) * (|a| mod |b|)."""
    mb = _mb()
    (a, b), dtype = _operands(node, [0, 1])
    fmod = node.attr("fmod", 0)
    if dtype.kind == "f" and not fmod:
        raise node.fail("unsupported_attribute_value", "fmod=0 on floats (ONNX requires fmod=1)")
    if not fmod:
        return _floor_mod(a, b, dtype)
    return mb.mul(x=mb.sign(x=a), y=_floor_mod(mb.abs(x=a), mb.abs(x=b), dtype))


@handles("Max", "Min", "Sum", "Mean")
def variadic(node: Node):
    mb = _mb()
    values, dtype = _operands(node, list(range(len(node.values))))
    fold = {"Max": mb.maximum, "Min": mb.minimum, "Sum": mb.add, "Mean": mb.add}[node.op_type]
    out = values[0]
    for value in values[1:]:
        out = fold(x=out, y=value)
    if node.op_type == "Mean" and len(values) > 1:
        return mb.real_div(x=out, y=_scalar(len(values), dtype))
    return out if len(values) > 1 else mb.identity(x=out)


# ONNX op -> MIL op for unary ops whose semantics agree.
_UNARY = {"Abs": "abs", "Exp": "exp", "Sqrt": "sqrt", "Floor": "floor", "Ceil": "ceil", "Round": "round",
          "Sign": "sign", "Sin": "sin", "Cos": "cos", "Tan": "tan", "Asin": "asin", "Acos": "acos", "Atan": "atan",
          "Sinh": "sinh", "Cosh": "cosh", "Tanh": "tanh", "Atanh": "atanh", "Erf": "erf", "Sigmoid": "sigmoid",
          "Softplus": "softplus", "Softsign": "softsign", "Not": "logical_not", "Identity": "identity"}


@handles(*_UNARY)
def unary(node: Node):
    return getattr(_mb(), _UNARY[node.op_type])(x=node.x(0))


@handles("Neg", "Reciprocal", "Log", "Relu", "Asinh", "Acosh", "Mish", "HardSwish", "IsNaN")
def composite(node: Node):
    """Unary ops MIL has no exact op for, written with others."""
    mb = _mb()
    x, dtype = node.x(0), node.dtype(0)
    op = node.op_type
    if op == "Neg":
        return mb.mul(x=x, y=_scalar(-1, dtype))
    if op == "Reciprocal":
        return mb.inverse(x=x, epsilon=_scalar(0, dtype))
    if op == "Log":
        return mb.log(x=x, epsilon=_scalar(0, dtype))
    if op == "Relu":  # MIL's relu is float only; ONNX's takes integers too
        return mb.relu(x=x) if dtype.kind == "f" else mb.maximum(x=x, y=_scalar(0, dtype))
    if op == "Asinh":  # sign(x) * log(|x| + sqrt(x^2 + 1)), odd so that large negative x does not cancel
        ax = mb.abs(x=x)
        root = mb.sqrt(x=mb.add(x=mb.mul(x=ax, y=ax), y=_scalar(1, dtype)))
        return mb.mul(x=mb.sign(x=x), y=mb.log(x=mb.add(x=ax, y=root), epsilon=_scalar(0, dtype)))
    if op == "Acosh":  # log(x + sqrt(x^2 - 1))
        root = mb.sqrt(x=mb.sub(x=mb.mul(x=x, y=x), y=_scalar(1, dtype)))
        return mb.log(x=mb.add(x=x, y=root), epsilon=_scalar(0, dtype))
    if op == "Mish":
        return mb.mul(x=x, y=mb.tanh(x=mb.softplus(x=x)))
    if op == "HardSwish":  # x * clip(x / 6 + 1/2, 0, 1)
        return mb.mul(x=x, y=mb.sigmoid_hard(x=x, alpha=_scalar(1 / 6, dtype), beta=_scalar(0.5, dtype)))
    return mb.not_equal(x=x, y=x)  # IsNaN: NaN alone is unequal to itself


@handles("IsInf")
def is_inf(node: Node):
    mb = _mb()
    x, dtype = node.x(0), node.dtype(0)
    positive, negative = node.attr("detect_positive", 1), node.attr("detect_negative", 1)
    if positive and negative:
        return mb.equal(x=mb.abs(x=x), y=_scalar(np.inf, dtype))
    if positive or negative:
        return mb.equal(x=x, y=_scalar(np.inf if positive else -np.inf, dtype))
    return np.zeros(node.shape(0), dtype=bool)


_GELU = {"none": "EXACT", "tanh": "TANH_APPROXIMATION"}


def _check_gelu(proto: onnx.NodeProto, opset: int) -> list[tuple[str, str]]:
    mode = next((a.s.decode() for a in proto.attribute if a.name == "approximate"), "none")
    if mode not in _GELU:
        return [("unsupported_attribute_value", f"Gelu: approximate={mode!r} (ONNX defines none and tanh)")]
    return []


def _refuse(node: Node, check) -> None:
    """Raise the first finding of a handler's static check, if any."""
    found = check(node.proto, node.opset)
    if found:
        raise Unsupported(*found[0])


@handles("Gelu", check=_check_gelu)
def gelu(node: Node):
    _refuse(node, _check_gelu)
    return _mb().gelu(x=node.x(0), mode=_GELU[node.attr("approximate", "none")])


@handles("LeakyRelu", "Elu", "Selu", "Celu", "HardSigmoid", "ThresholdedRelu")
def activation(node: Node):
    """Activations with alpha (and beta/gamma) attributes, at ONNX's default values."""
    mb = _mb()
    x, dtype = node.x(0), node.dtype(0)
    op = node.op_type

    def attr(name: str, default: float) -> np.ndarray:
        return _scalar(node.attr(name, default), dtype)

    if op == "LeakyRelu":
        return mb.leaky_relu(x=x, alpha=attr("alpha", 0.01))
    if op == "Elu":
        return mb.elu(x=x, alpha=attr("alpha", 1.0))
    if op == "Selu":
        return mb.mul(x=mb.elu(x=x, alpha=attr("alpha", 1.67326319217681884765625)),
                      y=attr("gamma", 1.05070102214813232421875))
    if op == "Celu":  # max(0, x) + min(0, alpha * (exp(x / alpha) - 1)) = alpha * elu(x / alpha)
        alpha = attr("alpha", 1.0)
        if alpha == 1:
            return mb.elu(x=x, alpha=alpha)
        return mb.mul(x=mb.elu(x=mb.real_div(x=x, y=alpha), alpha=_scalar(1, dtype)), y=alpha)
    if op == "HardSigmoid":
        return mb.sigmoid_hard(x=x, alpha=attr("alpha", 0.2), beta=attr("beta", 0.5))
    return mb.select(cond=mb.greater(x=x, y=attr("alpha", 1.0)), a=x, b=_scalar(0, dtype))  # ThresholdedRelu


@handles("PRelu")
def prelu(node: Node):
    """MIL prelu takes a constant per-channel slope on rank-4 inputs (rank 3 and 5 only with one value): one
    slope value is leaky_relu, anything else max(x, 0) + min(x, 0) * slope."""
    mb = _mb()
    (x, slope), dtype = _operands(node, [0, 1])
    shape = tuple(node.shape(0))
    if _is_const(slope) and dtype.kind == "f" and np.broadcast_shapes(shape, slope.shape) == shape:
        if np.all(slope == slope.flat[0]):
            return mb.leaky_relu(x=x, alpha=slope.flat[0])
        padded = (1,) * (len(shape) - slope.ndim) + slope.shape
        if len(shape) == 4 and all(d == 1 for i, d in enumerate(padded) if i != 1):
            return mb.prelu(x=x, alpha=slope.reshape(-1))
    zero = _scalar(0, dtype)
    return mb.add(x=mb.maximum(x=x, y=zero), y=mb.mul(x=mb.minimum(x=x, y=zero), y=slope))


@handles("Clip")
def clip(node: Node):
    """Opset < 11: `min`/`max` attributes; 11+: optional inputs, possibly runtime ones. MIL clip only for two
    constant float bounds with lower < upper; otherwise maximum/minimum (relu for a lower bound of 0)."""
    mb = _mb()
    x, dtype = node.x(0), node.dtype(0)
    if node.opset < 11:
        lo, hi = (None if node.attr(name) is None else _scalar(node.attr(name), dtype) for name in ("min", "max"))
    else:
        lo, hi = (_as(node.x(i), dtype) if node.has(i) else None for i in (1, 2))
    lo = None if _is_const(lo) and np.all(lo == -np.inf) else lo  # infinite bounds bound nothing
    hi = None if _is_const(hi) and np.all(hi == np.inf) else hi
    if dtype.kind == "f" and _is_const(lo) and _is_const(hi) and lo.size == hi.size == 1 and lo.item() < hi.item():
        return mb.clip(x=x, alpha=lo.reshape(()), beta=hi.reshape(()))
    if lo is not None:
        relu = dtype.kind == "f" and _is_const(lo) and lo.size == 1 and lo.item() == 0
        x = mb.relu(x=x) if relu else mb.maximum(x=x, y=lo)
    if hi is not None:
        x = mb.minimum(x=x, y=hi)
    return x if lo is not None or hi is not None else mb.identity(x=x)


def _broadcast_to(value: Any, shape: list[int]) -> Any:
    """A value repeated to `shape` (numpy broadcasting): numpy for constants, reshape + tile otherwise."""
    if _is_const(value):
        return np.ascontiguousarray(np.broadcast_to(value, shape))
    mb = _mb()
    have = [1] * (len(shape) - len(value.shape)) + list(value.shape)
    if len(have) != len(value.shape):
        value = mb.reshape(x=value, shape=have)
    return mb.tile(x=value, reps=[want // got for want, got in zip(shape, have)])


@handles("Where")
def where(node: Node):
    """MIL select takes its output shape from a and b alone: when the condition is larger, one of them is
    broadcast to the full shape first (a constant one where there is one)."""
    (a, b), _ = _operands(node, [1, 2])
    cond_shape, a_shape, b_shape = (tuple(node.shape(i)) for i in range(3))
    full = list(np.broadcast_shapes(cond_shape, a_shape, b_shape))
    if list(np.broadcast_shapes(a_shape, b_shape)) != full:
        if _is_const(b) and not _is_const(a):
            b = _broadcast_to(b, full)
        else:
            a = _broadcast_to(a, full)
    return _mb().select(cond=node.x(0), a=a, b=b)


# ONNX element types Core ML can compute (the rest: strings, bfloat16, float8, int4, complex).
_CASTABLE = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BOOL,
             onnx.TensorProto.INT8, onnx.TensorProto.UINT8, onnx.TensorProto.INT16, onnx.TensorProto.UINT16,
             onnx.TensorProto.INT32, onnx.TensorProto.UINT32, onnx.TensorProto.INT64, onnx.TensorProto.UINT64}


def _cast_to(proto: onnx.NodeProto) -> int:
    """Cast's `to` as an element type (opset < 6 gives it as a name such as "FLOAT")."""
    to = next((onnx.helper.get_attribute_value(a) for a in proto.attribute if a.name == "to"), None)
    return onnx.TensorProto.DataType.Value(to.decode()) if isinstance(to, bytes) else int(to)


def _check_cast(proto: onnx.NodeProto, opset: int) -> list[tuple[str, str]]:
    to = _cast_to(proto)
    if to not in _CASTABLE:
        return [("unsupported_type", f"Cast: to={onnx.TensorProto.DataType.Name(to)}: Core ML computes in fp32, "
                                     "fp16, int32 and bool")]
    return []


def _cast(node: Node, x: Any, target: np.dtype) -> Any:
    """x converted to the ONNX type `target`, computed in MIL's type for it. Integers narrowed to 8 or 16 bits
    wrap around as in ONNX (the value stays int32 but within the narrow type's range)."""
    mb = _mb()
    want = compute_dtype(target)
    source = node.dtype(0)
    x = mb.cast(x=x, dtype=mil_dtype(want)) if source != want else mb.identity(x=x)
    if target.kind in "iu" and target.itemsize < 4 and source.kind in "iu":  # (x - min) mod 2^bits + min
        info = np.iinfo(target)
        low = _scalar(int(info.min), want)
        wrapped = _floor_mod(mb.sub(x=x, y=low), _scalar(int(info.max) - int(info.min) + 1, want), want)
        x = mb.add(x=wrapped, y=low)
    return x


@handles("Cast", check=_check_cast)
def cast(node: Node):
    _refuse(node, _check_cast)
    return _cast(node, node.x(0), np.dtype(onnx.helper.tensor_dtype_to_np_dtype(_cast_to(node.proto))))


@handles("CastLike")
def cast_like(node: Node):
    target = node.out_dtypes[0] if node.out_dtypes and node.out_dtypes[0] is not None else None
    if target is None:
        target = node.const(1).dtype if node.const(1) is not None else node.dtype(1)
    return _cast(node, node.x(0), np.dtype(target))


@handles("Dropout")
def dropout(node: Node):
    """Inference: the input unchanged, and a mask of ones (bool from opset 10, the input's type before).
    Opset 12's training_mode must be a constant false, or true with a constant ratio of 0."""
    training = node.const(2) if node.opset >= 12 and node.has(2) else np.array(False)
    ratio = node.const(1) if node.opset >= 12 and node.has(1) else np.array(node.attr("ratio", 0.5))
    if training is None or (bool(training) and ratio is None):
        raise node.fail("requires_constant_input", "training_mode (and with it ratio) must be constants")
    if bool(training) and float(ratio) != 0:
        raise node.fail("unsupported_attribute_value", "training_mode=1 with ratio > 0 (random dropout): the "
                                                       "Core ML lowering is for inference")
    y = _mb().identity(x=node.x(0))
    if len(node.proto.output) < 2 or not node.proto.output[1]:
        return y
    mask_type = node.out_dtypes[1] if len(node.out_dtypes) > 1 and node.out_dtypes[1] is not None else \
        (np.dtype(bool) if node.opset >= 10 else node.dtype(0))
    return y, np.ones(node.shape(0), dtype=mask_type)
