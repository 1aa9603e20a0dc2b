"""Kernels of MIL's elementwise ops: the iOS15/iOS17 defs in elementwise_unary.py, elementwise_binary.py and
activation.py (softmax aside: the reductions' family), plus cast, identity and select. Each follows the op's
definition in coremltools, including its defaults (inverse's epsilon 1e-4, log's 1e-45, `thresholded_relu`
keeping x == alpha). Not here: `mod`, whose definition (Python's `%`) is not what the Core ML runtime computes
(C's fmod); the translator never emits it.
"""

from __future__ import annotations

import numpy as np

from accelopt.converters.mil.kernels import Args, kernel


def _kernel(op_type: str):
    """`kernel`, with numpy's floating-point warnings off: inf and nan are results here (log(0), 1/0,
    asin(2)), as they are in Core ML."""

    def register(fn):
        kernel(op_type)(np.errstate(all="ignore")(fn))
        return fn

    return register


def _unary(op_type: str, fn) -> None:
    _kernel(op_type)(lambda a: fn(np.asarray(a("x"))))


def _binary(op_type: str, fn) -> None:
    _kernel(op_type)(lambda a: fn(np.asarray(a("x")), np.asarray(a("y"))))


_ERFC_COEFFS = (-1.26551223, 1.00002368, 0.37409196, 0.09678418, -0.18628806, 0.27886807, -1.13520398, 1.48851587,
                -0.82215223, 0.17087277)


def erf(x: np.ndarray) -> np.ndarray:
    """erf in float64 without scipy: the Maclaurin series below |x| = 0.5 (exact to float64), Numerical
    Recipes' erfc above (relative error < 1.2e-7 of erfc <= 0.48, so absolute error < 6e-8)."""
    x = np.asarray(x, dtype=np.float64)
    z = np.abs(x)
    t = 1.0 / (1.0 + 0.5 * z)
    poly = np.zeros_like(z)
    for c in reversed(_ERFC_COEFFS[1:]):
        poly = (poly + c) * t
    erfc = t * np.exp(-z * z + _ERFC_COEFFS[0] + poly)
    small = np.minimum(z, 0.5)
    series, term = np.zeros_like(z), small
    for n in range(12):  # sum (-1)^n z^(2n+1) / (n! (2n+1)) * 2 / sqrt(pi)
        series += term / (2 * n + 1)
        term = -term * small * small / (n + 1)
    return np.sign(x) * np.where(z < 0.5, series * (2 / np.sqrt(np.pi)), 1.0 - erfc)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    e = np.exp(-np.abs(x))  # never overflows
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e))


def _softplus(x: np.ndarray) -> np.ndarray:
    return np.log1p(np.exp(-np.abs(x))) + np.maximum(x, 0)


def _per_channel(a: Args, name: str, rank: int) -> np.ndarray:
    """A [C] parameter (prelu alpha, softplus_parametric alpha/beta) shaped to broadcast along axis 1."""
    return np.asarray(a(name)).reshape([-1 if i == 1 else 1 for i in range(rank)])


for _op, _fn in {
    "abs": np.abs, "acos": np.arccos, "asin": np.arcsin, "atan": np.arctan, "atanh": np.arctanh, "ceil": np.ceil,
    "cos": np.cos, "cosh": np.cosh, "erf": erf, "exp": np.exp, "exp2": np.exp2, "floor": np.floor,
    "round": np.round,  # half to even ("0.5 is rounded to 0")
    "sign": np.sign, "sin": np.sin, "sinh": np.sinh, "sqrt": np.sqrt, "square": np.square, "tan": np.tan,
    "tanh": np.tanh, "logical_not": np.logical_not, "relu": lambda x: np.maximum(x, 0),
    "relu6": lambda x: np.clip(x, 0, 6), "sigmoid": _sigmoid, "silu": lambda x: x * _sigmoid(x),
    "softplus": _softplus, "softsign": lambda x: x / (1 + np.abs(x)), "identity": lambda x: x,
}.items():
    _unary(_op, _fn)

for _op, _fn in {
    "add": np.add, "sub": np.subtract, "mul": np.multiply, "real_div": np.true_divide, "maximum": np.maximum,
    "minimum": np.minimum, "equal": np.equal, "not_equal": np.not_equal, "less": np.less,
    "less_equal": np.less_equal, "greater": np.greater, "greater_equal": np.greater_equal,
    "logical_and": np.logical_and, "logical_or": np.logical_or, "logical_xor": np.logical_xor,
}.items():
    _binary(_op, _fn)


@_kernel("floor_div")
def floor_div(a: Args):
    return np.floor_divide(a("x"), a("y"))


@_kernel("pow")
def power(a: Args):
    """Integer powers computed in float64 and truncated by the evaluator (numpy refuses negative integer
    exponents)."""
    x, y = np.asarray(a("x")), np.asarray(a("y"))
    return np.power(x.astype(np.float64), y) if x.dtype.kind in "iu" else np.power(x, y)


@_kernel("inverse")
def inverse(a: Args):
    return 1 / (np.asarray(a("x")) + a("epsilon", 1e-4))


@_kernel("log")
def log(a: Args):
    return np.log(np.asarray(a("x")) + a("epsilon", 1e-45))


@_kernel("rsqrt")
def rsqrt(a: Args):
    return 1 / np.sqrt(np.asarray(a("x")) + a("epsilon", 1e-12))


@_kernel("clip")
def clip(a: Args):
    return np.minimum(np.maximum(a("x"), a("alpha")), a("beta"))


@_kernel("threshold")
def threshold(a: Args):
    return np.maximum(a("x"), a("alpha"))


@_kernel("cast")
def cast(a: Args):
    return np.asarray(a("x")).astype(a.out_dtype)


@_kernel("select")
def select(a: Args):
    return np.where(a("cond"), a("a"), a("b"))


@_kernel("leaky_relu")
def leaky_relu(a: Args):
    x = np.asarray(a("x"))
    return np.where(x >= 0, x, x * a("alpha"))


@_kernel("prelu")
def prelu(a: Args):
    x = np.asarray(a("x"))
    return np.maximum(x, 0) + np.minimum(x, 0) * _per_channel(a, "alpha", x.ndim)


@_kernel("elu")
def elu(a: Args):
    x = np.asarray(a("x"))
    return np.where(x > 0, x, a("alpha") * np.expm1(np.minimum(x, 0)))


@_kernel("thresholded_relu")
def thresholded_relu(a: Args):
    x = np.asarray(a("x"))
    return np.where(x >= a("alpha"), x, 0)


@_kernel("clamped_relu")
def clamped_relu(a: Args):
    x, beta = np.asarray(a("x")), a("beta")
    return np.minimum(np.maximum(x, 0), beta) + np.minimum(np.minimum(x, 0) * a("alpha"), beta)


@_kernel("linear_activation")
def linear_activation(a: Args):
    return a("alpha") * np.asarray(a("x")) + a("beta")


@_kernel("scaled_tanh")
def scaled_tanh(a: Args):
    return a("alpha") * np.tanh(a("beta") * np.asarray(a("x")))


@_kernel("sigmoid_hard")
def sigmoid_hard(a: Args):
    return np.clip(a("alpha") * np.asarray(a("x")) + a("beta"), 0, 1)


@_kernel("softplus_parametric")
def softplus_parametric(a: Args):
    x = np.asarray(a("x"))
    return _per_channel(a, "alpha", x.ndim) * _softplus(x * _per_channel(a, "beta", x.ndim))


@_kernel("gelu")
def gelu(a: Args):
    x = np.asarray(a("x"), dtype=np.float32)
    mode = a("mode", "EXACT")
    if mode == "TANH_APPROXIMATION":
        return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))
    if mode == "SIGMOID_APPROXIMATION":
        return x * _sigmoid(1.702 * x)
    return 0.5 * x * (1 + erf(x / np.sqrt(2)))
