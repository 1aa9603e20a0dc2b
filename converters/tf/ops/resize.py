"""Resize and Upsample, exact to ONNX's definition.

ONNX resizing is separable: along each resized axis the output is a fixed (out x in) coefficient matrix times
the input, whatever the mode (nearest, linear, cubic, antialias) and coordinate transform. The matrices are
computed here from onnx's reference implementation applied to an identity basis. When TFLite's
RESIZE_NEAREST_NEIGHBOR / RESIZE_BILINEAR with some (align_corners, half_pixel_centers) computes the same
matrices (emulated here in float32, TFLite's own rounding included), that builtin is used; otherwise each
axis becomes a GATHER (nearest) or a matmul (the rest), so the numbers are ONNX's either way.
"""

from __future__ import annotations

import math

import numpy as np

from accelopt.converters.onnx_args import (legacy_scales, resize_axes, resize_coeffs, resize_inputs, resize_matrix,
                                           resize_shape)
from accelopt.converters.tf import load_tf as _tf
from accelopt.converters.tf.registry import Node, handles


def _tflite_nearest(size: int, out: int, align: bool, half: bool) -> np.ndarray:
    """RESIZE_NEAREST_NEIGHBOR's index map (tensorflow/lite/kernels/internal/reference/resize_nearest_neighbor.h)."""
    scale = np.float32((size - 1) / (out - 1)) if align and out > 1 else np.float32(size / out)
    offset = np.float32(0.5 if half else 0.0)
    y = (np.arange(out, dtype=np.float32) + offset) * scale
    idx = np.floor(y + np.float32(0.5)) if align else np.floor(y)  # TfLiteRound on non-negatives
    idx = np.minimum(idx.astype(np.int64), size - 1)
    return np.maximum(idx, 0) if half else idx


def _tflite_bilinear(size: int, out: int, align: bool, half: bool) -> np.ndarray:
    """RESIZE_BILINEAR's coefficient matrix (reference_ops ResizeBilinear, float path)."""
    scale = np.float32((size - 1) / (out - 1)) if align and out > 1 else np.float32(size / out)
    y = np.arange(out, dtype=np.float32)
    v = (y + np.float32(0.5)) * scale - np.float32(0.5) if half else y * scale
    lo = np.maximum(np.floor(v), 0).astype(np.int64)
    hi = np.minimum(np.ceil(v).astype(np.int64), size - 1)
    m = np.zeros((out, size))
    rows = np.arange(out)
    np.add.at(m, (rows, lo), 1 - (v - lo))
    np.add.at(m, (rows, hi), v - lo)
    return m


def _builtin_flags(mode: str, mats: list[np.ndarray], sizes: list[int], outs: list[int]) -> tuple[bool, bool] | None:
    """(align_corners, half_pixel_centers) under which TFLite's resize builtin reproduces the ONNX matrices of
    the two spatial axes exactly, or None."""
    for align, half in ((False, True), (True, False), (False, False)):
        ok = True
        for m, size, out in zip(mats, sizes, outs):
            if mode == "nearest":
                want = np.eye(size)[_tflite_nearest(size, out, align, half)]
                ok = ok and np.array_equal(m, want)
            else:
                ok = ok and np.allclose(m, _tflite_bilinear(size, out, align, half), atol=1e-6)
        if ok:
            return align, half
    return None


def _apply_axis(x, axis: int, m: np.ndarray, shape: list[int]):
    tf = _tf()
    onehot = np.all((m == 0) | (m == 1), axis=None) and np.all(m.sum(axis=1) == 1)
    if onehot:
        return tf.gather(x, m.argmax(axis=1).astype(np.int32), axis=axis)
    rank = len(shape)
    perm = [a for a in range(rank) if a != axis] + [axis]
    moved = tf.transpose(x, perm) if axis != rank - 1 else x
    flat = tf.reshape(moved, [-1, shape[axis]])
    y = tf.linalg.matmul(flat, m.T.astype(np.float32))
    out_shape = [shape[a] for a in perm[:-1]] + [m.shape[0]]
    y = tf.reshape(y, out_shape)
    if axis != rank - 1:
        y = tf.transpose(y, list(np.argsort(perm)))
    return y


def resize_nd(node: Node, x, scales: list[float] | None, sizes: list[int] | None, *, mode: str, coord: str,
              nearest_mode: str, roi=None, extrapolation: float = 0.0):
    """x resized as the node says (its axes, keep_aspect_ratio_policy, antialias, cubic_coeff_a and
    exclude_outside attributes); roi only for tf_crop_and_resize."""
    tf = _tf()
    shape = node.shape(0)  # as the handler sees it: channels-last when node.channels_last
    rank = len(shape)
    # ONNX axis -> position in x
    tf_axis = (lambda a: 0 if a == 0 else rank - 1 if a == 1 else a - 1) if node.channels_last else (lambda a: a)
    onnx_shape = [shape[0], shape[-1], *shape[1:-1]] if node.channels_last else list(shape)
    out_size, scale_f = resize_shape(node, onnx_shape, scales, sizes)
    axes = resize_axes(node, rank)
    roi_full = None
    if roi is not None and np.asarray(roi).size:
        roi = np.asarray(roi, np.float64).reshape(-1)
        roi_full = [0.0] * rank + [1.0] * rank
        n = len(axes)
        for i, a in enumerate(axes):
            roi_full[a], roi_full[rank + a] = roi[i], roi[n + i]
    fn = resize_coeffs(node, mode, nearest_mode)
    mats: dict[int, tuple[np.ndarray, np.ndarray | None]] = {}
    for a in axes:
        identity = math.isclose(scale_f[a], 1.0) and out_size[a] == onnx_shape[a] and (
            roi_full is None or (math.isclose(roi_full[a], 0.0) and math.isclose(roi_full[rank + a], 1.0)))
        if identity:
            continue
        axis_roi = None if roi_full is None else [roi_full[a], roi_full[rank + a]]
        mats[a] = resize_matrix(node, onnx_shape[a], out_size[a], scale_f[a], fn, coord, axis_roi)
    if not mats:
        return tf.identity(x)
    x_dtype = x.dtype if isinstance(x, tf.Tensor) else tf.as_dtype(np.asarray(x).dtype)
    extrapolating = any(o is not None for _, o in mats.values())
    spatial = rank == 4 and node.channels_last and set(mats) <= {2, 3}
    if spatial and not extrapolating and mode in ("nearest", "linear") and x_dtype == tf.float32:
        eye = {a: np.eye(onnx_shape[a]) for a in (2, 3)}
        ms = [mats[a][0] if a in mats else eye[a] for a in (2, 3)]
        flags = _builtin_flags(mode, ms, [onnx_shape[2], onnx_shape[3]], [out_size[2], out_size[3]])
        if flags is not None:
            align, half = flags
            size = [out_size[2], out_size[3]]
            op = tf.raw_ops.ResizeNearestNeighbor if mode == "nearest" else tf.raw_ops.ResizeBilinear
            return op(images=x, size=size, align_corners=align, half_pixel_centers=half)
    y = x
    gather_only = all(np.all((m == 0) | (m == 1)) for m, _ in mats.values())
    if not gather_only and not x_dtype.is_floating:
        y = tf.cast(y, tf.float32)
    cur = [shape[i] for i in range(rank)]
    for a, (m, _) in mats.items():
        t = tf_axis(a)
        y = _apply_axis(y, t, m, cur)
        cur[t] = m.shape[0]
    if extrapolating:
        mask = np.zeros(cur, bool)
        for a, (_, outside) in mats.items():
            if outside is not None:
                index = [None] * rank
                index[tf_axis(a)] = slice(None)
                mask = mask | outside[tuple(index)]
        y = tf.where(mask, tf.cast(extrapolation, y.dtype), y)
    if not gather_only and not x_dtype.is_floating:
        y = tf.cast(tf.round(y), x_dtype)
    return y


@handles("Resize", channels_last=True)
def resize(node: Node):
    x = node.x(0)
    if node.opset < 11:
        scales = legacy_scales(node)
        mode = node.attr("mode", "nearest")
        nearest = "floor" if all(s >= 1 for s in scales) else "ceil"
        return resize_nd(node, x, scales, None, mode=mode, coord="asymmetric", nearest_mode=nearest)
    scales, sizes = resize_inputs(node)
    roi = node.const(1) if node.has(1) else None
    coord = node.attr("coordinate_transformation_mode", "half_pixel")
    if coord == "tf_crop_and_resize" and roi is None:
        raise node.fail("requires_constant_input", "a constant roi for tf_crop_and_resize")
    return resize_nd(node, x, scales, sizes, mode=node.attr("mode", "nearest"), coord=coord,
                     nearest_mode=node.attr("nearest_mode", "round_prefer_floor"),
                     roi=roi if coord == "tf_crop_and_resize" else None,
                     extrapolation=node.attr("extrapolation_value", 0.0))


@handles("Upsample", channels_last=True)
def upsample(node: Node):
    mode = node.attr("mode", "nearest")
    mode = "linear" if mode == "bilinear" else mode
    return resize_nd(node, node.x(0), legacy_scales(node), None, mode=mode, coord="asymmetric", nearest_mode="floor")
