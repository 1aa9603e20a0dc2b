"""Shape and data-movement ops: Reshape, Transpose, Concat, Split, Slice, the gathers and scatters, Squeeze,
Unsqueeze, Flatten, Expand, Tile, Pad, Shape, Size, ConstantOfShape, Range, OneHot, NonZero, Trilu.

Shapes are static here, so Shape/Size give numpy constants and every shape-like argument (Reshape's shape,
Slice's starts, Pad's pads, axes given as inputs) must fold to a constant; the data input may be a runtime
value. ONNX allows negative indices; from iOS17 on MIL's gathers and scatters treat them as out of bounds, so
constant indices are normalised here and runtime ones guarded with `select(i >= 0, i, i + size)` (for gather
and gather_nd coremltools' `guard_negative_gather_indices` pass adds that guard itself).
"""

from __future__ import annotations

import numpy as np

from accelopt.converters.mil.registry import Node, handles, builder as _mb
from accelopt.converters.onnx_args import pad_args, slice_range, split_sizes, squeeze_axes, unsqueeze_axes


def proto_attr(proto, name: str, default=None):
    """An attribute of a NodeProto, for the static checks (which see no Node)."""
    from onnx import helper

    found = [helper.get_attribute_value(a) for a in proto.attribute if a.name == name]
    value = found[0] if found else default
    return value.decode() if isinstance(value, bytes) else value


def numeric(x):
    """x in a type MIL's gathers, scatters, pads and reductions take: bool computes as int32 (the translator
    casts the result back to the ONNX output's type)."""
    if isinstance(x, np.ndarray):
        return x.astype(np.int32) if x.dtype == np.bool_ else x
    return _mb().cast(x=x, dtype="int32") if x.dtype == _bool_type() else x


def _bool_type():
    from coremltools.converters.mil.mil import types

    return types.bool


def nonnegative(indices, sizes):
    """ONNX indices in [-size, size) as MIL ones in [0, size): constants are normalised, runtime values guarded.
    `sizes` is the axis size, or one size per index component (GatherND/ScatterND's last axis)."""
    sizes = np.asarray(sizes, np.int32)
    if isinstance(indices, np.ndarray):
        return np.where(indices < 0, indices + sizes, indices).astype(np.int32)
    mb = _mb()
    return mb.select(cond=mb.greater_equal(x=indices, y=np.int32(0)), a=indices, b=mb.add(x=indices, y=sizes))


def _empty(node: Node, shape) -> None:
    if 0 in shape:
        raise node.fail("empty_tensor", f"a zero-size result {list(shape)} (Core ML has no empty tensors)")


# --- shapes -----------------------------------------------------------------------------------------------------


@handles("Shape")
def shape(node: Node):
    dims = np.array(node.shape(0), np.int64)
    return dims[node.attr("start", 0):node.attr("end")]


@handles("Size")
def size(node: Node):
    return np.array(int(np.prod(node.shape(0))), np.int64)


def reshape_dims(src: list[int], shape: list[int], allowzero: bool) -> list[int]:
    """ONNX Reshape's output shape: 0 copies the input dim (unless allowzero), -1 takes what is left."""
    dims = [src[i] if d == 0 and not allowzero else int(d) for i, d in enumerate(shape)]
    if -1 in dims:
        known = int(np.prod([d for d in dims if d != -1]))
        dims[dims.index(-1)] = int(np.prod(src)) // known if known else 0
    return dims


@handles("Reshape")
def reshape(node: Node):
    shape = node.attr("shape") if node.opset < 5 else node.need_const(1, "shape").tolist()
    dims = reshape_dims(node.shape(0), shape, bool(node.attr("allowzero", 0)))
    _empty(node, dims)
    return _mb().reshape(x=node.x(0), shape=np.array(dims, np.int32))  # an empty list would be fp32


@handles("Flatten")
def flatten(node: Node):
    src = node.shape(0)
    axis = node.attr("axis", 1)
    axis = axis + len(src) if axis < 0 else axis
    return _mb().reshape(x=node.x(0), shape=[int(np.prod(src[:axis])), int(np.prod(src[axis:]))])


@handles("Transpose")
def transpose(node: Node):
    rank = node.rank(0)
    perm = node.attr("perm") or list(reversed(range(rank)))
    if list(perm) == list(range(rank)):
        return node.x(0)
    return _mb().transpose(x=node.x(0), perm=list(perm))


@handles("Squeeze")
def squeeze(node: Node):
    src = node.shape(0)
    axes = squeeze_axes(node, src)
    if any(src[a] != 1 for a in axes):
        raise node.fail("invalid_model", f"squeezes axes {axes} of shape {src} (not all 1)")
    return _mb().squeeze(x=node.x(0), axes=axes) if axes else node.x(0)


@handles("Unsqueeze")
def unsqueeze(node: Node):
    return _mb().expand_dims(x=node.x(0), axes=unsqueeze_axes(node, node.rank(0)))


@handles("Expand")
def expand(node: Node):
    """Bidirectional broadcast: leading 1-dims, then tile the 1-dims that grow."""
    src = node.shape(0)
    out = list(np.broadcast_shapes(tuple(src), tuple(int(d) for d in node.need_const(1, "shape").reshape(-1))))
    _empty(node, out)
    x = node.x(0)
    lead = len(out) - len(src)
    if lead:
        x = _mb().expand_dims(x=x, axes=list(range(lead)))
    reps = [o // s for o, s in zip(out, [1] * lead + src)]
    return _mb().tile(x=x, reps=reps) if any(r != 1 for r in reps) else x


@handles("Tile")
def tile(node: Node):
    reps = node.need_const(1, "repeats").reshape(-1).tolist()
    _empty(node, reps)
    return _mb().tile(x=node.x(0), reps=reps) if any(r != 1 for r in reps) else node.x(0)


@handles("ConstantOfShape")
def constant_of_shape(node: Node):
    from onnx import numpy_helper

    value = node.attr("value")
    fill = numpy_helper.to_array(value) if value is not None else np.zeros(1, np.float32)
    return np.full(node.need_const(0, "shape").reshape(-1).tolist(), fill.reshape(-1)[0], fill.dtype)


@handles("Range")
def range_(node: Node):
    start, limit, delta = (node.need_const(i, name).reshape(()) for i, name in
                           enumerate(("start", "limit", "delta")))
    return np.arange(start, limit, delta, dtype=start.dtype)


# --- concat, split, slice ---------------------------------------------------------------------------------------


@handles("Concat")
def concat(node: Node):
    rank = node.rank(0)
    axis = node.attr("axis") % rank
    parts = [node.x(i) for i in range(len(node.values)) if node.has(i) and node.values[i].shape[axis] != 0]
    _empty(node, [len(parts)])
    return _mb().concat(values=parts, axis=axis) if len(parts) > 1 else parts[0]


@handles("Split")
def split(node: Node):
    src = node.shape(0)
    axis = node.attr("axis", 0) % len(src)
    sizes = split_sizes(node, src[axis])
    if any(s <= 0 for s in sizes):
        raise node.fail("empty_tensor", f"split sizes {sizes} of a dim of {src[axis]} (Core ML has no empty tensors)")
    if len(sizes) == 1:
        return [node.x(0)]
    return list(_mb().split(x=node.x(0), split_sizes=sizes, axis=axis))


@handles("Slice")
def slice_(node: Node):
    src = node.shape(0)
    rank = len(src)
    begin, end, stride, out = slice_range(node, src)
    _empty(node, out)
    end_mask = [st < 0 and e == -1 for e, st in zip(end, stride)]
    end = [0 if through else e for e, through in zip(end, end_mask)]  # -1 would index the last element
    if begin == [0] * rank and end == src and stride == [1] * rank:
        return node.x(0)
    return _mb().slice_by_index(x=node.x(0), begin=begin, end=end, stride=stride, end_mask=end_mask)


# --- gathers and scatters ---------------------------------------------------------------------------------------


@handles("Gather")
def gather(node: Node):
    src = node.shape(0)
    axis = node.attr("axis", 0) % len(src)
    indices = node.x(1)  # runtime indices get coremltools' guard (module docstring)
    if isinstance(indices, np.ndarray):
        indices = nonnegative(indices, src[axis])
    return _mb().gather(x=numeric(node.x(0)), indices=indices, axis=axis)


@handles("GatherElements")
def gather_elements(node: Node):
    src, idx_shape = node.shape(0), node.shape(1)
    axis = node.attr("axis", 0) % len(src)
    x = numeric(node.x(0))
    crop = [d if a == axis else idx_shape[a] for a, d in enumerate(src)]
    if crop != src:  # ONNX lets indices be smaller than data off the axis; MIL wants them equal
        x = _mb().slice_by_index(x=x, begin=[0] * len(src), end=crop)
    return _mb().gather_along_axis(x=x, indices=nonnegative(node.x(1), src[axis]), axis=axis)


@handles("GatherND")
def gather_nd(node: Node):
    src = node.shape(0)
    batch = node.attr("batch_dims", 0)
    depth = node.shape(1)[-1]
    indices = node.x(1)  # runtime indices get coremltools' guard (module docstring)
    if isinstance(indices, np.ndarray):
        indices = nonnegative(indices, src[batch:batch + depth])
    x = numeric(node.x(0))
    if not batch:
        return _mb().gather_nd(x=x, indices=indices)
    node.require("iOS16", f"batch_dims={batch}")
    return _mb().gather_nd(x=x, indices=indices, batch_dims=batch)


_SCATTER_MODES = {"none": "update", "add": "add", "mul": "mul", "max": "max", "min": "min"}


def _check_reduction(proto, opset: int) -> list[tuple[str, str]]:
    reduction = proto_attr(proto, "reduction", "none")
    if reduction not in _SCATTER_MODES:
        return [("unsupported_attribute_value", f"{proto.op_type}: reduction {reduction!r}")]
    return []


@handles("ScatterND", check=_check_reduction)
def scatter_nd(node: Node):
    src = node.shape(0)
    depth = node.shape(1)[-1]
    mode = _SCATTER_MODES[node.attr("reduction", "none")]
    return _mb().scatter_nd(data=numeric(node.x(0)), indices=nonnegative(node.x(1), src[:depth]),
                            updates=numeric(node.x(2)), mode=mode)


@handles("ScatterElements", "Scatter", check=_check_reduction)
def scatter_elements(node: Node):
    mb = _mb()
    src, idx_shape = node.shape(0), node.shape(1)
    axis = node.attr("axis", 0) % len(src)
    mode = _SCATTER_MODES[node.attr("reduction", "none")]
    data, updates = numeric(node.x(0)), numeric(node.x(2))
    indices = nonnegative(node.x(1), src[axis])
    if all(d == i for a, (d, i) in enumerate(zip(src, idx_shape)) if a != axis):
        return mb.scatter_along_axis(data=data, indices=indices, updates=updates, axis=axis, mode=mode)
    # ONNX lets indices be smaller than data off the axis, MIL does not: scatter_nd at full coordinates
    grids = np.indices(idx_shape, np.int32)[..., None]
    parts = [grids[a] if a != axis else indices[..., None] if isinstance(indices, np.ndarray)
             else mb.expand_dims(x=indices, axes=[-1]) for a in range(len(src))]
    coords = np.concatenate(parts, -1) if isinstance(indices, np.ndarray) else mb.concat(values=parts, axis=-1)
    return mb.scatter_nd(data=data, indices=coords, updates=updates, mode=mode)


# --- pad --------------------------------------------------------------------------------------------------------

_PAD_MODES = {"constant": "constant", "reflect": "reflect", "edge": "replicate", "wrap": "wrap"}


def _check_pad(proto, opset: int) -> list[tuple[str, str]]:
    mode = proto_attr(proto, "mode", "constant")
    return [] if mode in _PAD_MODES else [("unsupported_attribute_value", f"Pad: mode {mode!r}")]


@handles("Pad", check=_check_pad)
def pad(node: Node):
    src = node.shape(0)
    widths, value = pad_args(node, len(src))
    grow = [[max(w, 0) for w in ws] for ws in widths]
    x = node.x(0)
    if any(w for ws in grow for w in ws):
        x = _pad(node, x, src, grow, _PAD_MODES[node.attr("mode", "constant")], value)
    if any(w < 0 for ws in widths for w in ws):  # negative pads crop
        grown = [d + b + e for d, (b, e) in zip(src, grow)]
        begin = [-min(b, 0) for b, _ in widths]
        end = [d + min(e, 0) for d, (_, e) in zip(grown, widths)]
        _empty(node, [e - b for b, e in zip(begin, end)])
        x = _mb().slice_by_index(x=x, begin=begin, end=end)
    return x


def _pad(node: Node, x, src: list[int], widths: list[list[int]], mode: str, value):
    """MIL pad (pairs for every dim, first to last) in fp32/fp16, the only types it takes; wrap as concat.
    MIL's replicate pads at most the dim's size at a time: wider edge pads take several."""
    mb = _mb()
    if mode == "wrap":
        return _wrap(node, x, src, widths)
    if mode == "reflect" and any(w >= d for d, ws in zip(src, widths) for w in ws):
        raise node.fail("unsupported_attribute_value", f"reflect pads {widths} as wide as the input {src}")
    dtype = node.dtype(0)
    if dtype.kind != "f":
        x, dtype = mb.cast(x=x, dtype="fp32"), np.dtype(np.float32)
    shape = list(src)
    while any(w for ws in widths for w in ws):
        step = [[min(w, d) if mode == "replicate" else w for w in ws] for d, ws in zip(shape, widths)]
        x = mb.pad(x=x, pad=[w for ws in step for w in ws], mode=mode, constant_val=np.array(value, dtype))
        widths = [[w - s for w, s in zip(ws, ss)] for ws, ss in zip(widths, step)]
        shape = [d + sum(ss) for d, ss in zip(shape, step)]
    return x


def _wrap(node: Node, x, src: list[int], widths: list[list[int]]):
    """Wrap padding: the far end of each axis before it and the near end after it."""
    mb = _mb()
    shape = list(src)
    for axis, (before, after) in enumerate(widths):
        if before > shape[axis] or after > shape[axis]:
            raise node.fail("unsupported_attribute_value", f"wrap pads {widths} wider than the input {src}")
        if not before and not after:
            continue

        def part(start: int, stop: int):
            begin, end = [0] * len(shape), list(shape)
            begin[axis], end[axis] = start, stop
            return mb.slice_by_index(x=x, begin=begin, end=end)

        parts = ([part(shape[axis] - before, shape[axis])] if before else []) + [x] + \
                ([part(0, after)] if after else [])
        x = mb.concat(values=parts, axis=axis)
        shape[axis] += before + after
    return x


# --- one-hot, non-zero, trilu -----------------------------------------------------------------------------------


@handles("OneHot")
def one_hot(node: Node):
    depth = int(node.need_const(1, "depth").reshape(-1)[0])
    node.need_const(2, "values")
    off, on = node.x(2).reshape(-1)[:2]
    indices = node.x(0)
    if node.dtype(0).kind == "f":
        indices = _mb().cast(x=indices, dtype="int32")
    axis = node.attr("axis", -1)
    axis = axis + node.rank(0) + 1 if axis < 0 else axis
    return _mb().one_hot(indices=nonnegative(indices, depth), one_hot_vector_size=depth, axis=axis,
                         on_value=on, off_value=off)


@handles("NonZero")
def non_zero(node: Node):
    """MIL's non_zero is [N, rank], ONNX's [rank, N]. N depends on the data, so the result has a dynamic dim."""
    mb = _mb()
    return mb.transpose(x=mb.non_zero(x=node.x(0)), perm=[1, 0])


@handles("Trilu")
def trilu(node: Node):
    """band_part when the kept triangle reaches the main diagonal (upper with k <= 0, lower with k >= 0), else
    select with a constant mask: band_part cannot drop the diagonals next to the main one."""
    mb = _mb()
    shape = node.shape(0)
    k = int(node.need_const(1, "k").reshape(-1)[0]) if node.has(1) else 0
    upper = bool(node.attr("upper", 1))
    x = node.x(0)
    if upper and k <= 0:
        return mb.band_part(x=x, lower=-k, upper=-1)
    if not upper and k >= 0:
        return mb.band_part(x=x, lower=-1, upper=k)
    rows, cols = np.arange(shape[-2])[:, None], np.arange(shape[-1])[None, :]
    keep = (cols - rows >= k) if upper else (cols - rows <= k)
    return mb.select(cond=keep, a=x, b=np.zeros((), np.dtype(node.dtype(0))))


@handles("Constant")
def constant(node: Node):
    """A constant, computed by onnx's reference evaluator (every attribute form: value, value_float(s),
    value_int(s), value_string(s), sparse_value): it folds into the handlers after it."""
    from accelopt.converters.registry import fold_node

    return fold_node(node.proto, [], node.opset)[0]
