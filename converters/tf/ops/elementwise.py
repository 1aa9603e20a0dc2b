"""Elementwise ops: math, activations, comparisons and logic. ONNX and TF broadcast alike (numpy rules)."""

from __future__ import annotations

import numpy as np

from accelopt.converters.tf import load_tf as _tf
from accelopt.converters.tf.registry import Node, handles


# TFLite's arithmetic and comparison kernels take float32, int32 and int64 (int8/uint8/int16 only quantized):
# other integer types compute as int32 and float16 as float32; the emitter casts results back to the ONNX type.
_WIDE = {"int8": "int32", "uint8": "int32", "int16": "int32", "uint16": "int32", "uint32": "int32",
         "float16": "float32"}


def dtype_of(x):
    tf = _tf()
    return x.dtype if isinstance(x, tf.Tensor) else tf.as_dtype(np.asarray(x).dtype)


def widen(*xs):
    """The values in the type TFLite computes them in (see `_WIDE`)."""
    tf = _tf()
    out = []
    for x in xs:
        wide = _WIDE.get(dtype_of(x).name)
        if wide is None:
            out.append(x)
        elif isinstance(x, np.ndarray):
            out.append(x.astype(wide))
        else:
            out.append(tf.cast(x, wide))
    return out


_UNARY = {
    "Abs": lambda tf, x: tf.abs(x), "Neg": lambda tf, x: tf.negative(x), "Exp": lambda tf, x: tf.exp(x),
    "Log": lambda tf, x: tf.math.log(x), "Sqrt": lambda tf, x: tf.sqrt(x), "Floor": lambda tf, x: tf.floor(x),
    "Ceil": lambda tf, x: tf.math.ceil(x), "Round": lambda tf, x: tf.round(x), "Sign": lambda tf, x: tf.sign(x),
    "Sin": lambda tf, x: tf.sin(x), "Cos": lambda tf, x: tf.cos(x), "Tanh": lambda tf, x: tf.tanh(x),
    "Sigmoid": lambda tf, x: tf.sigmoid(x), "Relu": lambda tf, x: tf.nn.relu(x),
    "Reciprocal": lambda tf, x: tf.math.reciprocal(x), "Softsign": lambda tf, x: tf.nn.softsign(x),
    "Softplus": lambda tf, x: tf.nn.softplus(x), "Not": lambda tf, x: tf.logical_not(x),
    "Identity": lambda tf, x: tf.identity(x), "IsNaN": lambda tf, x: tf.math.is_nan(x),
    # No TFLite kernels for these: written with SIN/COS/EXP/LOG/SQRT/ATAN2.
    "Tan": lambda tf, x: tf.sin(x) / tf.cos(x),
    "Asin": lambda tf, x: tf.math.atan2(x, tf.sqrt(1.0 - x * x)),
    "Acos": lambda tf, x: tf.math.atan2(tf.sqrt(1.0 - x * x), x),
    "Atan": lambda tf, x: tf.math.atan2(x, tf.ones_like(x)),
    "Sinh": lambda tf, x: (tf.exp(x) - tf.exp(-x)) * 0.5, "Cosh": lambda tf, x: (tf.exp(x) + tf.exp(-x)) * 0.5,
    "Asinh": lambda tf, x: tf.sign(x) * tf.math.log(tf.abs(x) + tf.sqrt(x * x + 1.0)),
    "Acosh": lambda tf, x: tf.math.log(x + tf.sqrt(x * x - 1.0)),
    "Atanh": lambda tf, x: 0.5 * tf.math.log((1.0 + x) / (1.0 - x)),
}


@handles(*_UNARY)
def unary(node: Node):
    tf = _tf()
    x = node.x(0)
    if node.op_type == "Identity":
        return tf.identity(x)
    (x,) = widen(x)
    return _UNARY[node.op_type](tf, tf.convert_to_tensor(x))


_BINARY = {
    "Add": lambda tf, a, b: tf.add(a, b), "Sub": lambda tf, a, b: tf.subtract(a, b),
    "Mul": lambda tf, a, b: tf.multiply(a, b), "Pow": lambda tf, a, b: tf.pow(a, b),
    "Equal": lambda tf, a, b: tf.equal(a, b), "Less": lambda tf, a, b: tf.less(a, b),
    "Greater": lambda tf, a, b: tf.greater(a, b), "LessOrEqual": lambda tf, a, b: tf.less_equal(a, b),
    "GreaterOrEqual": lambda tf, a, b: tf.greater_equal(a, b), "And": lambda tf, a, b: tf.logical_and(a, b),
    "Or": lambda tf, a, b: tf.logical_or(a, b), "Xor": lambda tf, a, b: tf.math.logical_xor(a, b),
}


@handles(*_BINARY)
def binary(node: Node):
    tf = _tf()
    a, b = widen(node.x(0), node.x(1))
    if node.op_type == "Pow":  # ONNX lets the exponent have its own type; TF wants one
        b = tf.cast(b, tf.convert_to_tensor(a).dtype)
    return _BINARY[node.op_type](tf, a, b)


@handles("Div")
def div(node: Node):
    tf = _tf()
    a, b = widen(node.x(0), node.x(1))
    if tf.convert_to_tensor(a).dtype.is_integer:  # ONNX integer division truncates toward zero
        return tf.truncatediv(a, b)
    return tf.divide(a, b)


@handles("Max", "Min", "Sum", "Mean")
def variadic(node: Node):
    tf = _tf()
    fold = {"Max": tf.maximum, "Min": tf.minimum, "Sum": tf.add, "Mean": tf.add}[node.op_type]
    values = widen(*[node.x(i) for i in range(len(node.values))])
    out = values[0]
    for v in values[1:]:
        out = fold(out, v)
    return out / len(values) if node.op_type == "Mean" else tf.identity(out)


@handles("Where")
def where(node: Node):
    return _tf().where(node.x(0), node.x(1), node.x(2))


@handles("Cast")
def cast(node: Node):
    tf = _tf()
    return tf.cast(node.x(0), node.out_dtype(0))


@handles("CastLike")
def cast_like(node: Node):
    tf = _tf()
    return tf.cast(node.x(0), tf.convert_to_tensor(node.x(1)).dtype)


@handles("Clip")
def clip(node: Node):
    tf = _tf()
    (x,) = widen(node.x(0))
    if node.opset < 11:
        lo, hi = node.attr("min"), node.attr("max")
    else:
        lo = widen(node.x(1))[0] if node.has(1) else None
        hi = widen(node.x(2))[0] if node.has(2) else None
    if lo is not None:
        x = tf.maximum(x, lo)
    if hi is not None:
        x = tf.minimum(x, hi)
    return x


@handles("LeakyRelu")
def leaky_relu(node: Node):
    return _tf().nn.leaky_relu(node.x(0), alpha=node.attr("alpha", 0.01))


@handles("PRelu")
def prelu(node: Node):
    tf = _tf()
    x, slope = node.x(0), node.x(1)
    return tf.where(x >= 0, x, x * slope)


@handles("Elu")
def elu(node: Node):
    tf = _tf()
    alpha = node.attr("alpha", 1.0)
    x = node.x(0)
    return tf.nn.elu(x) if alpha == 1.0 else tf.where(x > 0, x, alpha * (tf.exp(x) - 1))


@handles("Selu")
def selu(node: Node):
    tf = _tf()
    alpha, gamma = node.attr("alpha", 1.67326319217681884765625), node.attr("gamma", 1.05070102214813232421875)
    x = node.x(0)
    return gamma * tf.where(x > 0, x, alpha * (tf.exp(x) - 1))


@handles("Celu")
def celu(node: Node):
    tf = _tf()
    alpha = node.attr("alpha", 1.0)
    x = node.x(0)
    return tf.maximum(x, 0.0) + tf.minimum(0.0, alpha * (tf.exp(x / alpha) - 1))


@handles("ThresholdedRelu")
def thresholded_relu(node: Node):
    tf = _tf()
    x = node.x(0)
    return tf.where(x > node.attr("alpha", 1.0), x, tf.zeros_like(x))


@handles("HardSigmoid")
def hard_sigmoid(node: Node):
    tf = _tf()
    alpha, beta = node.attr("alpha", 0.2), node.attr("beta", 0.5)
    return tf.clip_by_value(alpha * node.x(0) + beta, 0.0, 1.0)


@handles("HardSwish")
def hard_swish(node: Node):
    tf = _tf()
    x = node.x(0)
    return x * tf.nn.relu6(x + 3.0) / 6.0  # TFLite's converter fuses this form into HARD_SWISH


@handles("Gelu")
def gelu(node: Node):
    return _tf().nn.gelu(node.x(0), approximate=node.attr("approximate", "none") == "tanh")


# Abramowitz & Stegun 7.1.26 (|error| <= 1.5e-7): TFLite has no ERF kernel. GELU written with Erf is fused
# into one Gelu node before emission (`patterns.fuse_gelu`), which becomes TFLite's GELU builtin.
_ERF_P = 0.3275911
_ERF_A = (0.254829592, -0.284496736, 1.421413741, -1.453152027, 1.061405429)


@handles("Erf")
def erf(node: Node):
    tf = _tf()
    x = node.x(0)
    ax = tf.abs(x)
    t = 1.0 / (1.0 + _ERF_P * ax)
    poly = _ERF_A[4]
    for a in reversed(_ERF_A[:4]):
        poly = poly * t + a
    return tf.sign(x) * (1.0 - poly * t * tf.exp(-ax * ax))


@handles("Mish")
def mish(node: Node):
    tf = _tf()
    x = node.x(0)
    return x * tf.tanh(tf.nn.softplus(x))


@handles("IsInf")
def is_inf(node: Node):
    tf = _tf()
    (x,) = widen(node.x(0))
    pos, neg = node.attr("detect_positive", 1), node.attr("detect_negative", 1)
    big = np.float32(np.finfo(np.float32).max)  # comparisons with an inf constant do not survive conversion
    if pos and neg:
        return tf.greater(tf.abs(x), big)
    if pos:
        return tf.greater(x, big)
    if neg:
        return tf.less(x, -big)
    return tf.zeros_like(x, dtype=tf.bool)


@handles("Mod")
def mod(node: Node):
    tf = _tf()
    a, b = widen(node.x(0), node.x(1))
    a, b = tf.convert_to_tensor(a), tf.convert_to_tensor(b)
    if not node.attr("fmod", 0):  # the divisor's sign: floor modulo
        if a.dtype.is_floating:
            raise node.fail("unsupported_attribute_value", "fmod=0 on floats (ONNX requires fmod=1)")
        return tf.math.floormod(a, b)
    if a.dtype.is_integer:  # the dividend's sign: C fmod
        return a - b * tf.truncatediv(a, b)
    q = a / b
    return a - b * tf.where(q < 0, tf.math.ceil(q), tf.floor(q))


@handles("BitShift")
def bit_shift(node: Node):
    tf = _tf()
    x, s = widen(node.x(0), node.x(1))
    if node.out_dtype(0) is not None and node.out_dtype(0) == np.uint32:
        raise node.fail("unsupported_type", "uint32 shifts (computed as int32 here, which would lose the top bit)")
    if node.attr("direction") == "RIGHT":
        return tf.bitwise.right_shift(x, tf.cast(s, x.dtype) if isinstance(s, tf.Tensor) else s)
    return x * tf.pow(tf.constant(2, x.dtype), tf.cast(s, x.dtype))  # no LEFT_SHIFT kernel


@handles("BitwiseXor")
def bitwise_xor(node: Node):
    a, b = widen(node.x(0), node.x(1))
    return _tf().bitwise.bitwise_xor(a, b)


@handles("Shrink")
def shrink(node: Node):
    tf = _tf()
    (x,) = widen(node.x(0))
    lambd, bias = node.attr("lambd", 0.5), node.attr("bias", 0.0)
    x = tf.convert_to_tensor(x)
    lo = tf.cast(x + tf.cast(bias, x.dtype), x.dtype)
    hi = tf.cast(x - tf.cast(bias, x.dtype), x.dtype)
    return tf.where(tf.cast(x, tf.float32) < -lambd, lo,
                    tf.where(tf.cast(x, tf.float32) > lambd, hi, tf.zeros_like(x)))


@handles("Swish")
def swish(node: Node):
    tf = _tf()
    x = node.x(0)
    alpha = node.attr("alpha", 1.0)
    return x * tf.sigmoid(alpha * x) if alpha != 1.0 else x * tf.sigmoid(x)
