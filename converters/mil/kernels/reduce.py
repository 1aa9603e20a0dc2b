"""Kernels of MIL's reductions (reduce_*, reduce_argmax/argmin) and of topk, argsort and cumsum.

Ties: MIL leaves argmax/argmin/topk ties unspecified; these kernels take the lowest index first (numpy's
argmax, stable sorts), which is ONNX's rule, so an ONNX comparison checks the translation and not tie luck.
"""

from __future__ import annotations

import numpy as np

from accelopt.converters.mil.kernels import Args, kernel


def _log_sum_exp(x, axis, keepdims):
    top = np.max(x, axis=axis, keepdims=True)
    top = np.where(np.isfinite(top), top, 0)
    y = np.log(np.sum(np.exp(x - top), axis=axis, keepdims=True)) + top
    return y if keepdims else np.squeeze(y, axis=axis)


_REDUCE = {
    "reduce_sum": np.sum,
    "reduce_mean": np.mean,
    "reduce_max": np.max,
    "reduce_min": np.min,
    "reduce_prod": np.prod,
    "reduce_l1_norm": lambda x, axis, keepdims: np.sum(np.abs(x), axis=axis, keepdims=keepdims),
    "reduce_l2_norm": lambda x, axis, keepdims: np.sqrt(np.sum(np.square(x), axis=axis, keepdims=keepdims)),
    "reduce_sum_square": lambda x, axis, keepdims: np.sum(np.square(x), axis=axis, keepdims=keepdims),
    "reduce_log_sum": lambda x, axis, keepdims: np.log(np.sum(x, axis=axis, keepdims=keepdims)),
    "reduce_log_sum_exp": _log_sum_exp,
}


@kernel(*_REDUCE)
def reduce(a: Args):
    """Over `axes` (all when absent); keep_dims (default False) keeps them as 1-dims."""
    x = np.asarray(a("x"))
    axes = a("axes")
    axis = tuple(range(x.ndim)) if axes is None else tuple(int(v) % x.ndim for v in np.asarray(axes).reshape(-1))
    return _REDUCE[a.op.op_type](x, axis=axis, keepdims=bool(a("keep_dims", False)))


@kernel("reduce_argmax", "reduce_argmin")
def reduce_arg(a: Args):
    x = np.asarray(a("x"))
    axis = int(a("axis", -1)) % x.ndim
    fn = np.argmax if a.op.op_type == "reduce_argmax" else np.argmin
    y = fn(x, axis=axis)
    return np.expand_dims(y, axis) if a("keep_dims", False) else y


def _order(x: np.ndarray, axis: int, ascending: bool) -> np.ndarray:
    """Indices that sort x along axis, equal values keeping their order."""
    key = x if ascending else -(x.astype(np.int64) if x.dtype.kind in "iub" else x)
    return np.argsort(key, axis=axis, kind="stable")


@kernel("topk")
def topk(a: Args):
    """The k largest (smallest when ascending) along axis, sorted, with int32 indices unless
    return_indices is False (iOS16+); k = -1 (iOS17+) takes them all."""
    x = np.asarray(a("x"))
    axis = int(a("axis", -1)) % x.ndim
    k = int(a("k", 1))
    k = x.shape[axis] if k == -1 else k
    indices = np.take(_order(x, axis, bool(a("ascending", False))), np.arange(k), axis=axis)
    values = np.take_along_axis(x, indices, axis=axis)
    return (values, indices) if a("return_indices", True) else values


@kernel("argsort")
def argsort(a: Args):
    x = np.asarray(a("x"))
    return _order(x, int(a("axis", -1)) % x.ndim, bool(a("ascending", False)))


@kernel("cumsum")
def cumsum(a: Args):
    """Inclusive, or exclusive (each element the sum before it); reverse sums from the end."""
    x = np.asarray(a("x"))
    axis = int(a("axis", 0)) % x.ndim
    if a("reverse", False):
        x = np.flip(x, axis)
    y = np.cumsum(x, axis=axis, dtype=x.dtype)
    if a("exclusive", False):
        y = np.concatenate([np.zeros_like(np.take(y, [0], axis=axis)), np.take(y, np.arange(y.shape[axis] - 1),
                                                                                axis=axis)], axis=axis)
    return np.flip(y, axis) if a("reverse", False) else y
