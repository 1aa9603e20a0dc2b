"""QuantizeLinear / DequantizeLinear / DynamicQuantizeLinear emulated in float (round half to even, saturate,
per-tensor, per-axis and blocked scales): exact for fp32 lowering of QDQ graphs; the TFLiteConverter's own
int8 path is the way to get integer kernels. Scales and zero points must be constants."""

from __future__ import annotations

import numpy as np

from accelopt.converters.tf import load_tf as _tf
from accelopt.converters.tf.registry import Node, handles

_RANGES = {np.dtype(t): (np.iinfo(t).min, np.iinfo(t).max)
           for t in (np.int8, np.uint8, np.int16, np.uint16, np.int32, np.uint32)}


def _broadcast(node: Node, value: np.ndarray, rank: int, shape: list[int]) -> np.ndarray:
    """A scale or zero point shaped to broadcast against the input: per tensor, per axis or blocked."""
    if value.size == 1:
        return value.reshape(())
    axis = node.attr("axis", 1) % rank
    if value.ndim == 1 and node.attr("block_size", 0) == 0:
        return value.reshape([value.size if a == axis else 1 for a in range(rank)])
    block = node.attr("block_size", 0)
    if block <= 0 or value.ndim != rank:
        raise node.fail("unsupported_attribute_value", f"scale of shape {list(value.shape)}")
    return np.repeat(value, block, axis=axis)[tuple(slice(0, d) for d in shape)]


@handles("QuantizeLinear")
def quantize_linear(node: Node):
    tf = _tf()
    shape = node.shape(0)
    scale = node.need_const(1, "y_scale").astype(np.float32)
    zp = node.const(2) if node.has(2) else None
    if node.has(2) and zp is None:
        raise node.fail("requires_constant_input", "a constant y_zero_point")
    out = node.out_dtypes[0] if node.out_dtypes and node.out_dtypes[0] is not None else \
        (zp.dtype if zp is not None else np.dtype(np.uint8))
    if np.dtype(out) not in _RANGES:
        raise node.fail("unsupported_type", f"quantizing to {np.dtype(out)}")
    lo, hi = _RANGES[np.dtype(out)]
    x = tf.cast(node.x(0), tf.float32)
    q = tf.round(x / _broadcast(node, scale, len(shape), shape))
    if zp is not None:
        q = q + _broadcast(node, zp.astype(np.float32), len(shape), shape)
    q = tf.clip_by_value(q, float(lo), float(hi))
    return tf.cast(q, tf.int32) if np.dtype(out) in (np.dtype(np.int32), np.dtype(np.uint32)) else q


@handles("DequantizeLinear")
def dequantize_linear(node: Node):
    tf = _tf()
    shape = node.shape(0)
    scale = node.need_const(1, "x_scale").astype(np.float32)
    zp = node.const(2) if node.has(2) else None
    if node.has(2) and zp is None:
        raise node.fail("requires_constant_input", "a constant x_zero_point")
    x = tf.cast(node.x(0), tf.float32)
    if zp is not None and np.any(zp != 0):
        x = x - _broadcast(node, zp.astype(np.float32), len(shape), shape)
    return x * _broadcast(node, scale, len(shape), shape)


@handles("DynamicQuantizeLinear")
def dynamic_quantize_linear(node: Node):
    tf = _tf()
    x = tf.cast(node.x(0), tf.float32)
    hi = tf.maximum(tf.reduce_max(x), 0.0)
    lo = tf.minimum(tf.reduce_min(x), 0.0)
    scale = (hi - lo) / 255.0
    safe = tf.where(scale > 0, scale, tf.ones_like(scale))
    zp = tf.clip_by_value(tf.round(-lo / safe), 0.0, 255.0)
    y = tf.clip_by_value(tf.round(x / safe) + zp, 0.0, 255.0)
    return [y, scale, zp]
