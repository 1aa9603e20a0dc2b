"""Reductions and what is built on them: Reduce*, ArgMax/ArgMin, TopK, CumSum, Hardmax, LpNormalization,
MeanVarianceNormalization, GroupNormalization, RMSNormalization, Einsum.

Reductions take their axes from the attribute (older opsets) or a constant input (ReduceSum 13+, the rest 18+);
TFLite's REDUCE kernels compute float32/int32, other types are widened (`elementwise.widen`).
"""

from __future__ import annotations

import numpy as np

from accelopt.converters.onnx_args import reduce_axes
from accelopt.converters.tf import load_tf as _tf
from accelopt.converters.tf.ops.elementwise import widen
from accelopt.converters.tf.registry import Node, handles


_REDUCE = {
    "ReduceSum": lambda tf, x, ax, k: tf.reduce_sum(x, ax, keepdims=k),
    "ReduceMean": lambda tf, x, ax, k: tf.reduce_mean(x, ax, keepdims=k),
    "ReduceMax": lambda tf, x, ax, k: tf.reduce_max(x, ax, keepdims=k),
    "ReduceMin": lambda tf, x, ax, k: tf.reduce_min(x, ax, keepdims=k),
    "ReduceProd": lambda tf, x, ax, k: tf.reduce_prod(x, ax, keepdims=k),
    "ReduceL1": lambda tf, x, ax, k: tf.reduce_sum(tf.abs(x), ax, keepdims=k),
    "ReduceL2": lambda tf, x, ax, k: tf.sqrt(tf.reduce_sum(x * x, ax, keepdims=k)),
    "ReduceSumSquare": lambda tf, x, ax, k: tf.reduce_sum(x * x, ax, keepdims=k),
    "ReduceLogSum": lambda tf, x, ax, k: tf.math.log(tf.reduce_sum(x, ax, keepdims=k)),
    "ReduceLogSumExp": lambda tf, x, ax, k: _logsumexp(tf, x, ax, k),
}


def _logsumexp(tf, x, axes, keepdims):
    m = tf.stop_gradient(tf.reduce_max(x, axes, keepdims=True))
    m = tf.where(tf.math.is_finite(m), m, tf.zeros_like(m))
    y = tf.math.log(tf.reduce_sum(tf.exp(x - m), axes, keepdims=True)) + m
    return y if keepdims else tf.squeeze(y, axes)


_EMPTY = {"ReduceSum": 0.0, "ReduceMean": np.nan, "ReduceMax": -np.inf, "ReduceMin": np.inf, "ReduceProd": 1.0,
          "ReduceL1": 0.0, "ReduceL2": 0.0, "ReduceSumSquare": 0.0, "ReduceLogSum": -np.inf,
          "ReduceLogSumExp": -np.inf}


@handles(*_REDUCE)
def reduce(node: Node):
    tf = _tf()
    shape = node.shape(0)
    rank = len(shape)
    axes = reduce_axes(node, rank)
    if axes == []:
        return tf.identity(node.x(0))
    axes = list(range(rank)) if axes is None else axes
    keep = bool(node.attr("keepdims", 1))
    if 0 in shape:  # nothing to reduce: the result is the op's identity element, a constant
        out_shape = [1 if a in axes else d for a, d in enumerate(shape)] if keep else \
            [d for a, d in enumerate(shape) if a not in axes]
        if 0 in out_shape:
            raise node.fail("empty_tensor", "a zero-size output (TFLite has no empty tensors)")
        dtype = node.out_dtypes[0] if node.out_dtypes and node.out_dtypes[0] is not None else np.float32
        value = _EMPTY[node.op_type]
        if np.dtype(dtype).kind in "iu" and not np.isfinite(value):
            info = np.iinfo(dtype)
            value = info.min if value < 0 else info.max
        return np.full(out_shape, value, dtype)
    x = node.x(0)
    dtype = x.dtype if isinstance(x, tf.Tensor) else tf.as_dtype(np.asarray(x).dtype)
    if dtype == tf.bool:
        if node.op_type not in ("ReduceMax", "ReduceMin"):
            raise node.fail("unsupported_type", "bool input")
        fn = tf.reduce_any if node.op_type == "ReduceMax" else tf.reduce_all
        return fn(x, axes, keepdims=keep)
    (x,) = widen(x)
    return _REDUCE[node.op_type](tf, tf.convert_to_tensor(x), axes, keep)


@handles("ArgMax", "ArgMin")
def arg_max(node: Node):
    tf = _tf()
    shape = node.shape(0)
    axis = node.attr("axis", 0) % len(shape)
    (x,) = widen(node.x(0))
    fn = tf.math.argmax if node.op_type == "ArgMax" else tf.math.argmin
    if node.attr("select_last_index", 0):
        y = (shape[axis] - 1) - fn(tf.reverse(x, [axis]), axis=axis, output_type=tf.int32)
    else:
        y = fn(x, axis=axis, output_type=tf.int32)
    return tf.expand_dims(y, axis) if node.attr("keepdims", 1) else y


@handles("TopK")
def top_k(node: Node):
    tf = _tf()
    shape = node.shape(0)
    rank = len(shape)
    axis = node.attr("axis", -1) % rank
    k = node.attr("k") if node.opset < 10 else int(node.need_const(1, "K").reshape(-1)[0])
    if not node.attr("sorted", 1):
        pass  # sorted output is a valid unsorted output
    (x,) = widen(node.x(0))
    x = tf.convert_to_tensor(x)
    if axis != rank - 1:
        perm = [a for a in range(rank) if a != axis] + [axis]
        x = tf.transpose(x, perm)
    largest = node.attr("largest", 1)
    if largest:
        values, indices = tf.math.top_k(x, k)
    else:
        if x.dtype.is_floating or x.dtype == tf.int32:
            values, indices = tf.math.top_k(-x, k)
            values = -values
        else:
            raise node.fail("unsupported_type", f"largest=0 on {x.dtype.name}")
    if axis != rank - 1:
        inv = list(np.argsort(perm))
        values, indices = tf.transpose(values, inv), tf.transpose(indices, inv)
    return [values, indices]


@handles("CumSum")
def cum_sum(node: Node):
    tf = _tf()
    axis = int(node.need_const(1, "axis").reshape(-1)[0]) % node.rank(0)
    (x,) = widen(node.x(0))
    return tf.math.cumsum(x, axis=axis, exclusive=bool(node.attr("exclusive", 0)),
                          reverse=bool(node.attr("reverse", 0)))


@handles("Hardmax")
def hardmax(node: Node):
    tf = _tf()
    shape = node.shape(0)
    rank = len(shape)
    axis = node.attr("axis", -1 if node.opset >= 13 else 1) % rank
    x = node.x(0)
    if node.opset < 13:  # over the flattened tail
        flat = tf.reshape(x, [int(np.prod(shape[:axis])), -1])
        idx = tf.math.argmax(flat, axis=-1, output_type=tf.int32)
        return tf.reshape(tf.one_hot(idx, flat.shape[-1], dtype=flat.dtype), shape)
    idx = tf.math.argmax(x, axis=axis, output_type=tf.int32)
    return tf.one_hot(idx, shape[axis], axis=axis, dtype=x.dtype)


@handles("LpNormalization")
def lp_normalization(node: Node):
    tf = _tf()
    axis = node.attr("axis", -1) % node.rank(0)
    p = node.attr("p", 2)
    x = node.x(0)
    if p == 1:
        norm = tf.reduce_sum(tf.abs(x), axis, keepdims=True)
    elif p == 2:
        norm = tf.sqrt(tf.reduce_sum(x * x, axis, keepdims=True))
    else:
        raise node.fail("unsupported_attribute_value", f"p={p}")
    return x / norm


@handles("MeanVarianceNormalization")
def mean_variance_normalization(node: Node):
    tf = _tf()
    axes = [a % node.rank(0) for a in (node.attr("axes") or [0, 2, 3])]
    x = node.x(0)
    mean = tf.reduce_mean(x, axes, keepdims=True)
    centered = x - mean
    var = tf.reduce_mean(centered * centered, axes, keepdims=True)
    return centered / (tf.sqrt(var) + 1e-9)


@handles("GroupNormalization")
def group_normalization(node: Node):
    tf = _tf()
    shape = node.shape(0)
    n, c = shape[0], shape[1]
    groups = node.attr("num_groups")
    eps = node.attr("epsilon", 1e-5)
    x = tf.reshape(node.x(0), [n, groups, -1])
    mean = tf.reduce_mean(x, -1, keepdims=True)
    centered = x - mean
    var = tf.reduce_mean(centered * centered, -1, keepdims=True)
    y = tf.reshape(centered * tf.math.rsqrt(var + eps), shape)
    scale, bias = node.x(1), node.x(2)

    def per_channel(v):
        size = node.shape(1 if v is scale else 2)[0]
        if size == groups and groups != c:  # opset 18: one value per group
            v = tf.repeat(v, c // groups) if not isinstance(v, np.ndarray) else np.repeat(v, c // groups)
        return tf.reshape(v, [c] + [1] * (len(shape) - 2))

    return y * per_channel(scale) + per_channel(bias)


@handles("RMSNormalization")
def rms_normalization(node: Node):
    tf = _tf()
    rank = node.rank(0)
    axis = node.attr("axis", -1) % rank
    axes = list(range(axis, rank))
    (x,) = widen(node.x(0))
    ms = tf.reduce_mean(x * x, axes, keepdims=True)
    y = x * tf.math.rsqrt(ms + node.attr("epsilon", 1e-5))
    (scale,) = widen(node.x(1))
    return y * scale


@handles("Einsum")
def einsum(node: Node):
    equation = node.attr("equation").replace(" ", "")
    operands = widen(*[node.x(i) for i in range(len(node.values))])
    if "..." in equation:  # spell the ellipsis dims out with unused labels
        lhs, _, rhs = equation.partition("->")
        free = [c for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZ" if c not in equation]
        terms, widest = [], ""
        for i, term in enumerate(lhs.split(",")):
            if "..." in term:
                n = node.rank(i) - (len(term) - 3)
                dots = "".join(free[len(free) - n:]) if n > 0 else ""
                widest = dots if len(dots) > len(widest) else widest
                term = term.replace("...", dots)
            terms.append(term)
        if "->" in equation:
            rhs = rhs.replace("...", widest)
        equation = ",".join(terms) + ("->" + rhs if "->" in equation else "")
        if "->" not in equation:
            labels = equation.replace(",", "")
            equation += "->" + widest + "".join(sorted(ch for ch in set(labels) if labels.count(ch) == 1
                                                       and ch not in widest))
    if "->" not in equation:  # implicit output: the labels seen once, sorted
        labels = equation.replace(",", "")
        equation += "->" + "".join(sorted(ch for ch in set(labels) if labels.count(ch) == 1))
    return einsum_ops(node, equation, operands)


def einsum_ops(node: Node, equation: str, operands: list):
    """An einsum as TRANSPOSE/RESHAPE/BATCH_MATMUL/SUM (TFLite has no EINSUM kernel): one or two operands."""
    tf = _tf()
    inputs, out = equation.split("->")
    terms = inputs.split(",")
    ops = [tf.convert_to_tensor(o) for o in operands]
    shapes = [node.shape(i) for i in range(len(ops))]

    def diag_and_sum(t, term, shape, keep: set[str]):
        # repeated labels within one operand: take the diagonal
        while len(set(term)) != len(term):
            ch = next(c for c in term if term.count(c) > 1)
            i, j = term.index(ch), term.index(ch, term.index(ch) + 1)
            size = shape[i]
            mask = np.eye(size, dtype=bool).reshape([size if a in (i, j) else 1 for a in range(len(term))])
            t = tf.reduce_sum(tf.where(mask, t, tf.zeros_like(t)), axis=j)
            term = term[:j] + term[j + 1:]
            shape = shape[:j] + shape[j + 1:]
        drop = [a for a, ch in enumerate(term) if ch not in keep]
        if drop:
            t = tf.reduce_sum(t, axis=drop)
            term = "".join(ch for a, ch in enumerate(term) if a not in drop)
            shape = [d for a, d in enumerate(shape) if a not in drop]
        return t, term, shape

    if len(ops) == 1:
        t, term, _ = diag_and_sum(ops[0], terms[0], shapes[0], set(out))
        return tf.transpose(t, [term.index(ch) for ch in out]) if term != out else tf.identity(t)
    if len(ops) != 2:
        raise node.fail("unsupported_attribute_value", f"{len(ops)} operands in {node.attr('equation')!r}")
    (a, ta, sa), (b, tb, sb) = (diag_and_sum(ops[0], terms[0], shapes[0], set(terms[1]) | set(out)),
                                diag_and_sum(ops[1], terms[1], shapes[1], set(terms[0]) | set(out)))
    size = {**dict(zip(ta, sa)), **dict(zip(tb, sb))}
    batch = [c for c in ta if c in tb and c in out]
    contract = [c for c in ta if c in tb and c not in out]
    free_a = [c for c in ta if c not in tb]
    free_b = [c for c in tb if c not in ta]
    a = tf.transpose(a, [ta.index(c) for c in batch + free_a + contract])
    b = tf.transpose(b, [tb.index(c) for c in batch + contract + free_b])

    def prod(cs):
        return int(np.prod([size[c] for c in cs])) if cs else 1

    bs = [size[c] for c in batch]
    a = tf.reshape(a, [*bs, prod(free_a), prod(contract)])
    b = tf.reshape(b, [*bs, prod(contract), prod(free_b)])
    y = tf.linalg.matmul(a, b)
    y = tf.reshape(y, [*bs, *[size[c] for c in free_a], *[size[c] for c in free_b]])
    got = batch + free_a + free_b
    return tf.transpose(y, [got.index(c) for c in out]) if got != list(out) else y
