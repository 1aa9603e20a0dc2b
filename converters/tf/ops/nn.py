"""Neural-network ops: convolutions, pools and normalizations (channels-last), dense math, softmax.

Convolution padding follows ONNX exactly: pads that TF's "SAME" reproduces use it, others become an explicit
PAD before a VALID conv. Max pools never pad with -inf (it wrecks int8 ranges): asymmetric pads that "SAME"
cannot express are an error instead.
"""

from __future__ import annotations

import numpy as np

from accelopt.converters.onnx_args import (ceil_extra, conv_pads, conv_transpose_full, conv_transpose_pads,
                                           same_pads, strides_dilations)
from accelopt.converters.tf import load_tf as _tf
from accelopt.converters.tf.registry import Node, handles


def _padding(pads: list[tuple[int, int]], spatial, kernel, strides, dilations) -> str | None:
    """"VALID" or "SAME" when one of them is exactly these pads, else None (pad explicitly)."""
    if all(p == (0, 0) for p in pads):
        return "VALID"
    if pads == same_pads(spatial, kernel, strides, dilations):
        return "SAME"
    return None


def _pad_last(x, pads: list[tuple[int, int]], value: float = 0.0):
    tf = _tf()
    return tf.pad(x, [[0, 0], *[list(p) for p in pads], [0, 0]], constant_values=value)


def _ceil_pads(node: Node, spatial, kernel, strides, dilations, pads):
    """ceil_mode: extra end padding so the last partial window counts, as ONNX computes the output size."""
    if not node.attr("ceil_mode", 0):
        return pads
    return [(b, e + x) for (b, e), x in zip(pads, ceil_extra(spatial, kernel, strides, dilations, pads))]


@handles("Conv", channels_last=True)
def conv(node: Node):
    tf = _tf()
    x = node.x(0)
    w = node.need_const(1, "weight").astype(np.float32)
    shape = node.shape(0)
    rank = len(shape)
    n = rank - 2
    if n not in (1, 2, 3):
        raise node.fail("unsupported_rank", f"{n}-D convolution")
    kernel = list(w.shape[2:])
    strides, dilations = strides_dilations(node, n)
    group = node.attr("group", 1)
    spatial = shape[1:-1]
    pads = conv_pads(node, spatial, kernel, strides, dilations)
    if n == 1:  # as a 2-D conv over a height of 1
        x = tf.expand_dims(x, 1)
        w, kernel, strides, dilations = w[:, :, None, :], [1, *kernel], [1, *strides], [1, *dilations]
        pads, spatial = [(0, 0), *pads], [1, *spatial]
    padding = _padding(pads, spatial, kernel, strides, dilations)
    if padding is None:
        x, padding = _pad_last(x, pads), "VALID"
    c_in = shape[-1]
    hw_io = np.transpose(w, [*range(2, w.ndim), 1, 0])  # OI(spatial) -> (spatial)IO
    if n == 3:
        if group != 1:
            raise node.fail("unsupported_attribute_value", "grouped 3-D convolution")
        y = tf.nn.conv3d(x, hw_io, strides=[1, *strides, 1], padding=padding, dilations=[1, *dilations, 1])
    elif group == 1:
        y = tf.nn.conv2d(x, hw_io, strides=strides, padding=padding, dilations=dilations)
    elif group == c_in and w.shape[1] == 1:
        mult = w.shape[0] // c_in
        dw = np.transpose(w.reshape(c_in, mult, *kernel), [2, 3, 0, 1])  # [kh, kw, C, multiplier]
        if strides[0] == strides[1]:
            y = tf.nn.depthwise_conv2d(x, dw, strides=[1, *strides, 1], padding=padding, dilations=dilations)
        else:  # TF's depthwise kernel wants equal strides (text models use 2x1): stride 1, keep every s-th
            if padding == "SAME":
                x, padding = _pad_last(x, pads), "VALID"
            y = tf.nn.depthwise_conv2d(x, dw, strides=[1, 1, 1, 1], padding=padding, dilations=dilations)
            y = y[:, ::strides[0], ::strides[1], :]
    else:  # grouped: one conv per group (TFLite has no grouped CONV_2D that every runtime takes)
        per_in, per_out = c_in // group, w.shape[0] // group
        parts = tf.split(x, group, axis=-1)
        y = tf.concat([tf.nn.conv2d(p, hw_io[..., g * per_out:(g + 1) * per_out], strides=strides,
                                    padding=padding, dilations=dilations)
                       for g, p in enumerate(parts)], axis=-1)
        assert per_in == w.shape[1]
    if node.has(2):
        y = tf.nn.bias_add(y, node.x(2))
    return tf.squeeze(y, 1) if n == 1 else y


@handles("ConvTranspose", channels_last=True)
def conv_transpose(node: Node):
    tf = _tf()
    x = node.x(0)
    w = node.need_const(1, "weight").astype(np.float32)  # [C_in, C_out/group, k...]
    shape = node.shape(0)
    n = len(shape) - 2
    if n not in (1, 2, 3):
        raise node.fail("unsupported_rank", f"{n}-D transposed convolution")
    group = node.attr("group", 1)
    kernel = list(w.shape[2:])
    strides, dilations = strides_dilations(node, n)
    out_pad = list(node.attr("output_padding") or [0] * n)
    spatial = shape[1:-1]
    full = conv_transpose_full(spatial, kernel, strides, dilations, out_pad)
    pads = conv_transpose_pads(node, spatial, kernel, strides, dilations, out_pad)
    if any(d != 1 for d in dilations):  # a dilated kernel is the kernel with zeros between its taps
        eff = [(k - 1) * d + 1 for k, d in zip(kernel, dilations)]
        wd = np.zeros([*w.shape[:2], *eff], np.float32)
        wd[(slice(None), slice(None), *[slice(None, None, d) for d in dilations])] = w
        w, kernel = wd, eff
    if n == 1:  # as 2-D over a height of 1
        x = tf.expand_dims(x, 1)
        w = w[:, :, None, :]
        strides2, full2 = [1, *strides], [1, *full]
    else:
        strides2, full2 = strides, full
    c_in, c_out_g = w.shape[0], w.shape[1]
    per_in = c_in // group
    parts = tf.split(x, group, axis=-1) if group > 1 else [x]
    ys = []
    for g, part in enumerate(parts):
        wg = w[g * per_in:(g + 1) * per_in]
        filters = np.ascontiguousarray(np.transpose(wg, [*range(2, wg.ndim), 1, 0]))  # [k..., C_out, C_in]
        out_shape = [shape[0], *full2, c_out_g]
        if len(full2) == 3:
            ys.append(tf.nn.conv3d_transpose(part, filters, out_shape, strides=[1, *strides2, 1], padding="VALID"))
        else:
            ys.append(tf.nn.conv2d_transpose(part, filters, out_shape, strides=strides2, padding="VALID"))
    y = tf.concat(ys, axis=-1) if len(ys) > 1 else ys[0]
    if n == 1:
        y = tf.squeeze(y, 1)
    # pads crop; negative pads (output_shape past the full output) extend with zeros
    grow = [[0, 0], *[[max(-b, 0), max(-e, 0)] for b, e in pads], [0, 0]]
    if any(g for gs in grow for g in gs):
        y = tf.pad(y, grow)
    sizes = [f + max(-b, 0) + max(-e, 0) for f, (b, e) in zip(full, pads)]
    begin = [0, *[max(b, 0) for b, _ in pads], 0]
    end = [shape[0], *[size - max(e, 0) for size, (_, e) in zip(sizes, pads)], y.shape[-1]]
    if begin[1:-1] != [0] * n or end[1:-1] != sizes:
        y = tf.strided_slice(y, begin, end)
    if node.has(2):
        y = tf.nn.bias_add(y, node.x(2))
    return y


def _pool_geometry(node: Node):
    shape = node.shape(0)
    n = len(shape) - 2
    kernel = node.attr("kernel_shape")
    strides, dilations = strides_dilations(node, n)
    spatial = shape[1:-1]
    pads = _ceil_pads(node, spatial, kernel, strides, dilations, conv_pads(node, spatial, kernel, strides, dilations))
    return n, spatial, kernel, strides, dilations, pads


def _tap_pool(node: Node, x, kind: str, p: int = 2):
    """A pool as an elementwise max/sum over its kernel taps (strided slices of the padded input): any rank,
    dilations and pads. kind: max, avg or lp."""
    tf = _tf()
    n, spatial, kernel, strides, dilations, pads = _pool_geometry(node)
    shape = node.shape(0)
    if kind == "max":
        floor = tf.reduce_min(x)
        xp = _pad_last(x, pads, value=float(np.finfo(np.float32).min) / 2)
        xp = tf.maximum(xp, floor) if any(b or e for b, e in pads) else xp
    else:
        xp = _pad_last(x, pads) if any(b or e for b, e in pads) else x
        if kind == "lp":
            xp = tf.abs(xp) if p == 1 else tf.pow(tf.abs(xp), float(p)) if p != 2 else xp * xp
    outs = [(size + b + e - ((k - 1) * d + 1)) // s + 1
            for size, k, s, d, (b, e) in zip(spatial, kernel, strides, dilations, pads)]
    acc = None
    for tap in np.ndindex(*kernel):
        begin = [0, *[t * d for t, d in zip(tap, dilations)], 0]
        end = [shape[0], *[t * d + (o - 1) * s + 1 for t, d, o, s in zip(tap, dilations, outs, strides)], shape[-1]]
        part = tf.strided_slice(xp, begin, end, [1, *strides, 1])
        acc = part if acc is None else (tf.maximum(acc, part) if kind == "max" else acc + part)
    if kind == "max":
        return acc
    if kind == "lp":
        return acc if p == 1 else tf.sqrt(acc) if p == 2 else tf.pow(acc, 1.0 / p)
    include = node.attr("count_include_pad", 0)
    declared = conv_pads(node, spatial, kernel, strides, dilations)
    ones = np.ones(spatial, np.float32)
    if include:  # pads count, the ceil_mode overhang does not
        base = np.pad(np.pad(ones, declared, constant_values=1.0),
                      [(0, e - d[1]) for (_, e), d in zip(pads, declared)])
    else:
        base = np.pad(ones, pads)
    counts = np.zeros(outs, np.float32)
    for tap in np.ndindex(*kernel):
        index = tuple(slice(t * d, t * d + (o - 1) * s + 1, s) for t, d, o, s in zip(tap, dilations, outs, strides))
        counts += base[index]
    return acc / np.maximum(counts, 1.0)[None, ..., None]


def _float_pool(node: Node, x):
    """Integer pools compute in float32 (exact for 8/16-bit values); the emitter casts back."""
    tf = _tf()
    return tf.cast(x, tf.float32) if x.dtype != tf.float32 else x


@handles("MaxPool", channels_last=True)
def max_pool(node: Node):
    tf = _tf()
    if len(node.proto.output) > 1 and node.proto.output[1]:
        raise node.fail("unsupported_output", "the Indices output")
    n, spatial, kernel, strides, dilations, pads = _pool_geometry(node)
    x = _float_pool(node, node.x(0))
    if n != 2 or any(d != 1 for d in dilations):
        return _tap_pool(node, x, "max")
    padding = _padding(pads, spatial, kernel, strides, dilations)
    if padding is None:  # pad with the input's minimum, never -inf: keeps int8 ranges usable
        x, padding = _pad_last(x, pads, value=float(np.finfo(np.float32).min) / 2), "VALID"
        x = tf.maximum(x, tf.reduce_min(node.x(0)))
    return tf.nn.max_pool(x, kernel, strides, padding)


@handles("AveragePool", channels_last=True)
def average_pool(node: Node):
    tf = _tf()
    n, spatial, kernel, strides, dilations, pads = _pool_geometry(node)
    x = _float_pool(node, node.x(0))
    if n != 2 or any(d != 1 for d in dilations):
        return _tap_pool(node, x, "avg")
    padding = _padding(pads, spatial, kernel, strides, dilations)
    include = node.attr("count_include_pad", 0)
    if padding == "VALID" or (padding == "SAME" and not include):
        return tf.nn.avg_pool(x, kernel, strides, padding)
    summed = tf.nn.avg_pool(_pad_last(x, pads), kernel, strides, "VALID")
    if include and not node.attr("ceil_mode", 0):
        return summed
    # Divide by the real (or in-pad) element count per window: a constant map, computed here.
    ones = np.ones(spatial, np.float32)
    counts = _window_sum(np.pad(ones, pads), kernel, strides)
    if include:  # only the ceil_mode overhang is excluded
        declared = conv_pads(node, spatial, kernel, strides, dilations)
        inpad = np.pad(np.pad(ones, declared, constant_values=1.0),
                       [(0, e - d[1]) for (_, e), d in zip(pads, declared)])
        counts = _window_sum(inpad, kernel, strides)
    return summed * float(np.prod(kernel)) / counts[None, ..., None]


@handles("LpPool", channels_last=True)
def lp_pool(node: Node):
    return _tap_pool(node, _float_pool(node, node.x(0)), "lp", node.attr("p", 2))


@handles("GlobalLpPool", channels_last=True)
def global_lp_pool(node: Node):
    tf = _tf()
    p = node.attr("p", 2)
    axes = list(range(1, node.rank(0) - 1))
    x = node.x(0)
    if p == 1:
        return tf.reduce_sum(tf.abs(x), axes, keepdims=True)
    if p == 2:
        return tf.sqrt(tf.reduce_sum(x * x, axes, keepdims=True))
    return tf.pow(tf.reduce_sum(tf.pow(tf.abs(x), float(p)), axes, keepdims=True), 1.0 / p)


@handles("LRN", channels_last=True)
def lrn(node: Node):
    tf = _tf()
    size = node.attr("size")
    alpha, beta, bias = node.attr("alpha", 1e-4), node.attr("beta", 0.75), node.attr("bias", 1.0)
    x = node.x(0)
    if size % 2 == 1 and node.rank(0) == 4:
        return tf.nn.local_response_normalization(x, (size - 1) // 2, bias, alpha / size, beta)
    # even sizes: the window is [c - floor((size-1)/2), c + ceil((size-1)/2)]
    c = node.shape(0)[-1]
    lo, hi = (size - 1) // 2, size - 1 - (size - 1) // 2
    sq = tf.pad(x * x, [[0, 0]] * (node.rank(0) - 1) + [[lo, hi]])
    acc = None
    for i in range(size):
        part = sq[..., i:i + c]
        acc = part if acc is None else acc + part
    return x / tf.pow(bias + (alpha / size) * acc, beta)


def _window_sum(a: np.ndarray, kernel: list[int], strides: list[int]) -> np.ndarray:
    windows = np.lib.stride_tricks.sliding_window_view(a, kernel)[tuple(slice(None, None, s) for s in strides)]
    return windows.sum(axis=tuple(range(-len(kernel), 0))).astype(np.float32)


@handles("GlobalAveragePool", "GlobalMaxPool", channels_last=True)
def global_pool(node: Node):
    tf = _tf()
    axes = list(range(1, node.rank(0) - 1))
    reduce = tf.reduce_mean if node.op_type == "GlobalAveragePool" else tf.reduce_max
    return reduce(node.x(0), axis=axes, keepdims=True)


@handles("BatchNormalization", channels_last=True)
def batch_norm(node: Node):
    tf = _tf()
    eps = node.attr("epsilon", 1e-5)
    if node.attr("training_mode", 0):
        raise node.fail("unsupported_attribute_value", "training_mode=1")
    scale, bias, mean, var = (node.const(i) for i in range(1, 5))
    if any(v is None for v in (scale, bias, mean, var)):
        return (node.x(0) - node.x(3)) * tf.math.rsqrt(node.x(4) + eps) * node.x(1) + node.x(2)
    a = (scale / np.sqrt(var.astype(np.float64) + eps)).astype(np.float32)
    return node.x(0) * a + (bias - mean * a).astype(np.float32)


@handles("InstanceNormalization", channels_last=True)
def instance_norm(node: Node):
    tf = _tf()
    x = node.x(0)
    axes = list(range(1, node.rank(0) - 1))
    mean, var = tf.nn.moments(x, axes=axes, keepdims=True)
    return (x - mean) * tf.math.rsqrt(var + node.attr("epsilon", 1e-5)) * node.x(1) + node.x(2)


@handles("LayerNormalization")
def layer_norm(node: Node):
    tf = _tf()
    x = node.x(0)
    rank = node.rank(0)
    axis = node.attr("axis", -1) % rank
    axes = list(range(axis, rank))
    mean = tf.reduce_mean(x, axis=axes, keepdims=True)
    centered = x - mean
    var = tf.reduce_mean(centered * centered, axis=axes, keepdims=True)
    inv = tf.math.rsqrt(var + node.attr("epsilon", 1e-5))
    y = centered * inv * node.x(1)
    if node.has(2):
        y = y + node.x(2)
    return [y, mean, inv][:max(1, len(node.proto.output))]


@handles("Gemm")
def gemm(node: Node):
    tf = _tf()
    a, b = node.x(0), node.x(1)
    alpha, beta = node.attr("alpha", 1.0), node.attr("beta", 1.0)
    if node.attr("transA", 0):
        a = tf.transpose(a)
    b_const = node.const(1)
    if b_const is not None and node.attr("transB", 0):
        b = np.ascontiguousarray(b_const.T)
    elif node.attr("transB", 0):
        b = tf.transpose(b)
    y = tf.matmul(a, b)
    if alpha != 1.0:
        y = y * alpha
    if node.has(2):
        c = node.x(2)
        y = y + (c * beta if beta != 1.0 else c)
    return y


@handles("MatMul")
def matmul(node: Node):
    tf = _tf()
    a, b = node.x(0), node.x(1)
    ra, rb = node.rank(0), node.rank(1)
    if ra == 1:
        a = tf.expand_dims(a, 0)
    if rb == 1:
        b = tf.expand_dims(b, -1)
    if ra == 1 and rb == 1:
        return tf.reshape(tf.linalg.matmul(a, b), [])
    y = tf.linalg.matmul(a, b)
    if rb == 1:
        y = tf.squeeze(y, -1)
    if ra == 1:
        y = tf.squeeze(y, -2)
    return y


def _softmax_like(node: Node, fn):
    tf = _tf()
    x = node.x(0)
    shape = node.shape(0)
    rank = len(shape)
    axis = node.attr("axis", -1 if node.opset >= 13 else 1) % rank
    if node.opset >= 13 or axis == rank - 1:
        return fn(x, axis=axis)
    flat = tf.reshape(x, [int(np.prod(shape[:axis])), -1])  # opset < 13: softmax over the flattened tail
    return tf.reshape(fn(flat, axis=-1), shape)


@handles("Softmax")
def softmax(node: Node):
    return _softmax_like(node, _tf().nn.softmax)


@handles("LogSoftmax")
def log_softmax(node: Node):
    return _softmax_like(node, _tf().nn.log_softmax)
