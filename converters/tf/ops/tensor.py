"""Shape and data-movement ops. Shapes are static here, so Shape/Size give numpy constants and every shape
argument (Reshape's shape, Slice's starts, Pad's pads...) must fold to a constant."""

from __future__ import annotations

import numpy as np

from accelopt.converters.onnx_args import pad_args, slice_range, split_sizes, squeeze_axes, unsqueeze_axes
from accelopt.converters.tf import load_tf as _tf
from accelopt.converters.tf.registry import Node, handles


@handles("Shape")
def shape(node: Node):
    dims = np.array(node.shape(0), np.int64)
    start, end = node.attr("start", 0), node.attr("end")
    out = dims[start:end]
    if out.size == 0:
        raise node.fail("empty_tensor", "an empty shape (TFLite has no zero-size tensors)")
    return out


@handles("Size")
def size(node: Node):
    return np.array(int(np.prod(node.shape(0))), np.int64)


@handles("Reshape")
def reshape(node: Node):
    tf = _tf()
    shape = node.need_const(1, "shape").astype(np.int64).copy()
    src = node.shape(0)
    if not node.attr("allowzero", 0):
        shape = np.where(shape == 0, np.array(src + [0] * max(0, len(shape) - len(src)))[:len(shape)], shape)
    if -1 in shape:
        known = int(np.prod([d for d in shape if d != -1]))
        shape[list(shape).index(-1)] = int(np.prod(src)) // max(known, 1)
    return tf.reshape(node.x(0), shape.astype(np.int32))


@handles("Flatten")
def flatten(node: Node):
    tf = _tf()
    src = node.shape(0)
    axis = node.attr("axis", 1)
    axis = axis + len(src) if axis < 0 else axis
    return tf.reshape(node.x(0), [int(np.prod(src[:axis])), int(np.prod(src[axis:]))])


@handles("Transpose")
def transpose(node: Node):
    perm = node.attr("perm")
    return _tf().transpose(node.x(0), perm if perm is not None else list(reversed(range(node.rank(0)))))


@handles("Squeeze")
def squeeze(node: Node):
    tf = _tf()
    src = node.shape(0)
    axes = squeeze_axes(node, src)
    return tf.reshape(node.x(0), [d for i, d in enumerate(src) if i not in axes])


@handles("Unsqueeze")
def unsqueeze(node: Node):
    tf = _tf()
    src = node.shape(0)
    out = list(src)
    for a in unsqueeze_axes(node, len(src)):
        out.insert(a, 1)
    return tf.reshape(node.x(0), out)


@handles("Concat")
def concat(node: Node):
    tf = _tf()
    parts = [node.x(i) for i in range(len(node.values)) if node.has(i)]
    rank = len(node.values[0].shape)
    return tf.concat(parts, axis=node.attr("axis") % rank)


@handles("Split")
def split(node: Node):
    tf = _tf()
    src = node.shape(0)
    axis = node.attr("axis", 0) % len(src)
    return tf.split(node.x(0), split_sizes(node, src[axis]), axis=axis)


@handles("Slice")
def slice_(node: Node):
    tf = _tf()
    begin, end, stride, _ = slice_range(node, node.shape(0))
    mask = sum(1 << a for a, (e, st) in enumerate(zip(end, stride)) if st < 0 and e == -1)
    return tf.strided_slice(node.x(0), begin, end, stride, end_mask=mask)


@handles("Gather")
def gather(node: Node):
    tf = _tf()
    src = node.shape(0)
    axis = node.attr("axis", 0) % len(src)
    indices = node.x(1)
    const = node.const(1)
    if const is not None:
        indices = np.where(const < 0, const + src[axis], const).astype(np.int32)
    else:  # negative indices are legal in ONNX and not in TFLite's GATHER; FLOOR_MOD maps [-n, n) onto [0, n)
        indices = tf.math.floormod(indices, src[axis])  # (a SELECT here stops 16x8 quantization)
    return tf.gather(node.x(0), indices, axis=axis)


@handles("Expand")
def expand(node: Node):
    tf = _tf()
    shape = node.need_const(1, "shape").tolist()
    src = node.shape(0)
    out = np.broadcast_shapes(tuple(src), tuple(int(d) for d in shape))
    return tf.broadcast_to(node.x(0), out)


@handles("Tile")
def tile(node: Node):
    return _tf().tile(node.x(0), node.need_const(1, "repeats").astype(np.int32))


@handles("Pad")
def pad(node: Node):
    tf = _tf()
    widths, value = pad_args(node, node.rank(0))
    mode = node.attr("mode", "constant")
    if any(w < 0 for ws in widths for w in ws):
        raise node.fail("unsupported_attribute_value", "negative pads")
    if mode == "constant":
        return tf.pad(node.x(0), widths, constant_values=value)
    if mode == "reflect":
        return tf.pad(node.x(0), widths, mode="REFLECT")
    if mode == "edge":
        return tf.pad(node.x(0), widths, mode="SYMMETRIC") if all(w <= 1 for ws in widths for w in ws) \
            else _edge_pad(node.x(0), widths)
    if mode == "wrap":
        x = node.x(0)
        shape = node.shape(0)
        if any(w > shape[a] for a, ws in enumerate(widths) for w in ws):
            raise node.fail("unsupported_attribute_value", "wrap pads wider than the axis")
        for axis, (before, after) in enumerate(widths):
            parts = []
            if before:
                parts.append(_axis_slice(x, axis, shape[axis] - before, shape[axis]))
            parts.append(x)
            if after:
                parts.append(_axis_slice(x, axis, 0, after))
            x = tf.concat(parts, axis=axis) if len(parts) > 1 else x
        return x
    raise node.fail("unsupported_attribute_value", f"mode {mode!r}")


def _axis_slice(x, axis: int, start: int, stop: int):
    index = [slice(None)] * len(x.shape)
    index[axis] = slice(start, stop)
    return x[tuple(index)]


def _edge_pad(x, widths):
    """Edge padding as repeated border slices (TFLite has no EDGE mode)."""
    tf = _tf()
    for axis, (before, after) in enumerate(widths):
        if before:
            first = tf.gather(x, [0] * before, axis=axis)
            x = tf.concat([first, x], axis=axis)
        if after:
            last = tf.gather(x, [x.shape[axis] - 1] * after, axis=axis)
            x = tf.concat([x, last], axis=axis)
    return x


@handles("ConstantOfShape")
def constant_of_shape(node: Node):
    tf = _tf()
    value = node.attr("value")
    fill = onnx_value(value) if value is not None else np.zeros(1, np.float32)
    return tf.fill(node.x(0), fill.reshape(()).astype(fill.dtype))


def onnx_value(tensor) -> np.ndarray:
    from onnx import numpy_helper

    return numpy_helper.to_array(tensor)


@handles("Dropout")
def dropout(node: Node):
    tf = _tf()
    x = node.x(0)
    training = False
    if node.has(2):
        mode = node.const(2)
        if mode is None:
            raise node.fail("requires_constant_input", "a constant training_mode")
        training = bool(mode)
    if training and (not node.has(1) or node.const(1) is None or float(node.const(1)) != 0.0):
        raise node.fail("unsupported_attribute_value", "training_mode=1 (random dropout)")
    if len(node.proto.output) > 1 and node.proto.output[1]:
        return [tf.identity(x), tf.ones_like(x, dtype=tf.bool)]
    return tf.identity(x)


@handles("Range")
def range_(node: Node):
    tf = _tf()
    return tf.range(node.x(0), node.x(1), node.x(2))


@handles("Constant")
def constant(node: Node):
    from onnx import numpy_helper

    for a in node.proto.attribute:
        if a.name == "value":
            return numpy_helper.to_array(a.t)
        if a.name == "value_float":
            return np.array(a.f, np.float32)
        if a.name == "value_floats":
            return np.array(list(a.floats), np.float32)
        if a.name == "value_int":
            return np.array(a.i, np.int64)
        if a.name == "value_ints":
            return np.array(list(a.ints), np.int64)
    raise node.fail("unsupported_attribute_value", "a sparse or string constant")


@handles("EyeLike")
def eye_like(node: Node):
    shape = node.shape(0)
    k = node.attr("k", 0)
    dtype = node.out_dtypes[0] if node.out_dtypes and node.out_dtypes[0] is not None else np.float32
    return np.eye(shape[0], shape[1], k, dtype=dtype)


@handles("Trilu")
def trilu(node: Node):
    tf = _tf()
    shape = node.shape(0)
    k = int(node.need_const(1, "k")) if node.has(1) else 0
    rows, cols = shape[-2], shape[-1]
    i = np.arange(rows)[:, None]
    j = np.arange(cols)[None, :]
    keep = (j - i >= k) if node.attr("upper", 1) else (j - i <= k)
    x = node.x(0)
    return tf.where(keep, x, tf.zeros_like(x))


def _norm_indices(tf, indices, size):
    """ONNX allows negative indices; TFLite's gathers do not."""
    if isinstance(indices, np.ndarray):
        return np.where(indices < 0, indices + size, indices).astype(np.int32)
    return tf.math.floormod(tf.cast(indices, tf.int32), size)  # [-size, size) -> [0, size)


def _full_indices(tf, indices, shape: list[int], axis: int):
    """GatherElements/ScatterElements indices along `axis` as GATHER_ND coordinates (..., rank)."""
    rank = len(shape)
    grids = np.meshgrid(*[np.arange(d) for d in shape], indexing="ij")
    coords = []
    for a in range(rank):
        if a == axis:
            coords.append(tf.cast(indices, tf.int32) if not isinstance(indices, np.ndarray) else indices)
        else:
            coords.append(grids[a].astype(np.int32))
    return tf.stack([tf.convert_to_tensor(c, tf.int32) for c in coords], axis=-1)


@handles("GatherElements")
def gather_elements(node: Node):
    tf = _tf()
    src = node.shape(0)
    axis = node.attr("axis", 0) % len(src)
    indices = _norm_indices(tf, node.x(1), src[axis])
    coords = _full_indices(tf, indices, node.shape(1), axis)
    return tf.gather_nd(node.x(0), coords)


@handles("GatherND")
def gather_nd(node: Node):
    tf = _tf()
    src = node.shape(0)
    batch = node.attr("batch_dims", 0)
    idx_shape = node.shape(1)
    depth = idx_shape[-1]
    indices = node.x(1)
    if isinstance(indices, np.ndarray):
        indices = indices.astype(np.int32)
        sizes = np.array(src[batch:batch + depth], np.int32)
        indices = np.where(indices < 0, indices + sizes, indices).astype(np.int32)
    else:
        indices = tf.cast(indices, tf.int32)
        indices = tf.math.floormod(indices, tf.constant(src[batch:batch + depth], tf.int32))
    if batch == 0:
        return tf.gather_nd(node.x(0), indices)
    # batch_dims: prepend the batch coordinates and flatten the batch dims of the output.
    bshape = idx_shape[:batch]
    grids = np.meshgrid(*[np.arange(d) for d in bshape], indexing="ij")
    inner = idx_shape[batch:-1]
    prefix = np.stack(grids, -1).reshape(*bshape, *[1] * len(inner), batch)
    prefix = np.broadcast_to(prefix, (*bshape, *inner, batch)).astype(np.int32)
    return tf.gather_nd(node.x(0), tf.concat([prefix, indices], axis=-1))


def _scatter(node: Node, data, coords, updates, reduction: str):
    """data with `updates` written (or reduced) at `coords`: TFLite's SCATTER_ND only scatters into zeros, so the
    result is data * (1 - hit mask) + scattered updates (reductions use the scattered sum/count)."""
    tf = _tf()
    shape = node.shape(0)
    data = tf.convert_to_tensor(data)
    updates = tf.cast(updates, data.dtype)
    work = tf.float32 if data.dtype == tf.bool else data.dtype
    data_w, upd_w = tf.cast(data, work), tf.cast(updates, work)
    ones = tf.ones_like(upd_w)
    hits = tf.scatter_nd(coords, ones, shape)  # how many updates land on each element
    if reduction == "none":
        # Duplicate indices are undefined in ONNX; SCATTER_ND adds them. Divide by the count keeps one value.
        written = tf.scatter_nd(coords, upd_w, shape) / tf.maximum(hits, tf.ones_like(hits)) \
            if work.is_floating else tf.scatter_nd(coords, upd_w, shape)
        out = tf.where(hits > 0, written, data_w)
    elif reduction == "add":
        out = data_w + tf.scatter_nd(coords, upd_w, shape)
    elif reduction == "mul":
        if not work.is_floating:
            raise node.fail("unsupported_attribute_value", "reduction 'mul' on integers")
        # product of updates per element = exp(sum(log|u|)) with the sign by the count of negatives
        logs = tf.scatter_nd(coords, tf.math.log(tf.abs(upd_w)), shape)
        negs = tf.scatter_nd(coords, tf.cast(upd_w < 0, work), shape)
        sign = 1.0 - 2.0 * tf.math.floormod(negs, 2.0)
        zeros = tf.scatter_nd(coords, tf.cast(upd_w == 0, work), shape)
        prod = tf.where(zeros > 0, tf.zeros_like(logs), sign * tf.exp(logs))
        out = tf.where(hits > 0, data_w * prod, data_w)
    elif reduction in ("max", "min"):
        raise node.fail("unsupported_attribute_value", f"reduction {reduction!r} (no scatter-max kernel)")
    else:
        raise node.fail("unsupported_attribute_value", f"reduction {reduction!r}")
    return tf.cast(out, data.dtype)


@handles("ScatterND")
def scatter_nd(node: Node):
    tf = _tf()
    shape = node.shape(0)
    depth = node.shape(1)[-1]
    indices = node.x(1)
    if isinstance(indices, np.ndarray):
        indices = np.where(indices < 0, indices + np.array(shape[:depth]), indices).astype(np.int32)
    else:
        indices = tf.cast(indices, tf.int32)
        indices = tf.math.floormod(indices, tf.constant(shape[:depth], tf.int32))
    return _scatter(node, node.x(0), indices, node.x(2), node.attr("reduction", "none"))


@handles("ScatterElements", "Scatter")
def scatter_elements(node: Node):
    tf = _tf()
    shape = node.shape(0)
    axis = node.attr("axis", 0) % len(shape)
    indices = _norm_indices(tf, node.x(1), shape[axis])
    coords = _full_indices(tf, indices, node.shape(1), axis)
    return _scatter(node, node.x(0), coords, node.x(2), node.attr("reduction", "none"))


@handles("OneHot")
def one_hot(node: Node):
    tf = _tf()
    depth = int(np.asarray(node.need_const(1, "depth")).reshape(-1)[0])
    values = node.need_const(2, "values")
    off, on = values.reshape(-1)[0], values.reshape(-1)[1]
    indices = node.x(0)
    rank = len(node.shape(0))
    axis = node.attr("axis", -1)
    axis = axis + rank + 1 if axis < 0 else axis
    indices = tf.cast(indices, tf.int32) if not isinstance(indices, np.ndarray) else indices.astype(np.int32)
    indices = tf.where(indices < 0, indices + depth, indices)
    from accelopt.converters.tf.registry import narrow_array

    on, off = narrow_array(np.asarray(on)), narrow_array(np.asarray(off))
    return tf.one_hot(indices, depth, on_value=tf.constant(on), off_value=tf.constant(off), axis=axis)


@handles("ReverseSequence")
def reverse_sequence(node: Node):
    tf = _tf()
    lens = node.need_const(1, "sequence_lens").astype(np.int64)
    shape = node.shape(0)
    t_axis, b_axis = node.attr("time_axis", 0), node.attr("batch_axis", 1)
    # A constant permutation of the (time, batch) plane: one GATHER_ND.
    coords = np.stack(np.meshgrid(*[np.arange(d) for d in shape], indexing="ij"), -1)
    b = coords[..., b_axis]
    t = coords[..., t_axis]
    n = lens[b]
    coords[..., t_axis] = np.where(t < n, n - 1 - t, t)
    return tf.gather_nd(node.x(0), coords.astype(np.int32))


@handles("CenterCropPad")
def center_crop_pad(node: Node):
    tf = _tf()
    src = node.shape(0)
    target = node.need_const(1, "shape").tolist()
    axes = node.attr("axes") or list(range(len(src)))
    x = node.x(0)
    for a, want in zip(axes, target):
        a = a % len(src)
        have = src[a]
        if want < have:
            start = (have - want) // 2
            x = _axis_slice(x, a, start, start + want)
        elif want > have:
            before = (want - have) // 2
            widths = [[0, 0] for _ in src]
            widths[a] = [before, want - have - before]
            x = tf.pad(x, widths)
    return tf.identity(x)


@handles("DepthToSpace", channels_last=True)
def depth_to_space(node: Node):
    tf = _tf()
    x = node.x(0)
    n, h, w, c = node.shape(0)
    b = node.attr("blocksize")
    if node.attr("mode", "DCR") == "DCR":
        return tf.nn.depth_to_space(x, b)
    # CRD: channels are (C', b, b); TF's order is (b, b, C')
    x = tf.reshape(x, [n, h, w, c // (b * b), b, b])
    x = tf.transpose(x, [0, 1, 4, 2, 5, 3])
    return tf.reshape(x, [n, h * b, w * b, c // (b * b)])


@handles("SpaceToDepth", channels_last=True)
def space_to_depth(node: Node):
    return _tf().nn.space_to_depth(node.x(0), node.attr("blocksize"))
