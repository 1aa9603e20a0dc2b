"""Shape and data-movement ops. Shapes are static here, so Shape/Size give numpy constants and every shape
argument (Reshape's shape, Slice's starts, Pad's pads...) must fold to a constant."""

from __future__ import annotations

import numpy as np

from accelopt.converters.tf import load_tf as _tf
from accelopt.converters.tf.registry import Node, handles


def _axes(node: Node, index: int, rank: int, attr: str = "axes") -> list[int] | None:
    """Axes from the attribute (older opsets) or a constant input (newer), normalized to >= 0."""
    axes = node.attr(attr)
    if axes is None and node.has(index):
        axes = node.need_const(index, attr).tolist()
    return None if axes is None else [int(a) % rank for a in axes]


@handles("Shape")
def shape(node: Node):
    dims = np.array(node.shape(0), np.int64)
    start, end = node.attr("start", 0), node.attr("end")
    return dims[start:end]


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
    axis = node.attr("axis", 1) % (len(src) + 1) if src else 0
    return tf.reshape(node.x(0), [int(np.prod(src[:axis])), int(np.prod(src[axis:]))])


@handles("Transpose")
def transpose(node: Node):
    perm = node.attr("perm")
    return _tf().transpose(node.x(0), perm if perm is not None else list(reversed(range(node.rank(0)))))


@handles("Squeeze")
def squeeze(node: Node):
    tf = _tf()
    src = node.shape(0)
    axes = _axes(node, 1, len(src))
    return tf.reshape(node.x(0), [d for i, d in enumerate(src) if (axes is not None and i not in axes)
                                  or (axes is None and d != 1)])


@handles("Unsqueeze")
def unsqueeze(node: Node):
    tf = _tf()
    src = node.shape(0)
    axes = node.attr("axes")
    axes = node.need_const(1, "axes").tolist() if axes is None else axes
    out = list(src)
    for a in sorted(int(a) % (len(src) + len(axes)) for a in axes):
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
    sizes = node.attr("split")
    if sizes is None and node.has(1):
        sizes = node.need_const(1, "split").tolist()
    outputs = len(node.proto.output)
    if sizes is None:
        chunk = -(-src[axis] // node.attr("num_outputs", outputs))
        sizes = [min(chunk, src[axis] - i * chunk) for i in range(outputs)]
    return tf.split(node.x(0), [int(s) for s in sizes], axis=axis)


@handles("Slice")
def slice_(node: Node):
    tf = _tf()
    src = node.shape(0)
    rank = len(src)
    if node.opset < 10:
        starts, ends = node.attr("starts"), node.attr("ends")
        axes, steps = node.attr("axes") or list(range(len(starts))), [1] * len(starts)
    else:
        starts, ends = node.need_const(1, "starts").tolist(), node.need_const(2, "ends").tolist()
        axes = node.need_const(3, "axes").tolist() if node.has(3) else list(range(len(starts)))
        steps = node.need_const(4, "steps").tolist() if node.has(4) else [1] * len(starts)
    begin, end, stride = [0] * rank, list(src), [1] * rank
    for s, e, a, st in zip(starts, ends, axes, steps):
        a = int(a) % rank
        size = src[a]
        # Clamp as ONNX does, so huge 'to the end' markers and negative indices become plain indices.
        s = s + size if s < 0 else s
        e = e + size if e < 0 else e
        if st > 0:
            s, e = min(max(s, 0), size), min(max(e, 0), size)
        else:
            s, e = min(max(s, -1), size - 1), min(max(e, -1), size - 1)
        begin[a], end[a], stride[a] = int(s), int(e), int(st)
    mask = sum(1 << a for a in range(rank) if stride[a] < 0 and end[a] == -1)
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
    else:  # negative indices are legal in ONNX and not in TFLite's GATHER
        indices = tf.where(indices < 0, indices + src[axis], indices)
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
    rank = node.rank(0)
    if node.opset < 11:
        pads, value = node.attr("pads"), node.attr("value", 0.0)
    else:
        pads = node.need_const(1, "pads").tolist()
        value = node.need_const(2, "constant_value").item() if node.has(2) else 0
    n = len(pads) // 2
    axes = _axes(node, 3, rank) if node.opset >= 18 and node.has(3) else list(range(rank))
    widths = [[0, 0] for _ in range(rank)]
    for i, a in enumerate(axes[:n]):
        widths[a] = [int(pads[i]), int(pads[i + n])]
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
    raise node.fail("unsupported_attribute_value", f"mode {mode!r}")


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
    if len(node.proto.output) > 1 and node.proto.output[1]:
        return [tf.identity(x), tf.ones_like(x, dtype=tf.bool)]
    return tf.identity(x)


@handles("Range")
def range_(node: Node):
    tf = _tf()
    return tf.range(node.x(0), node.x(1), node.x(2))
