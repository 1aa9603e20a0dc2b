"""Kernels of MIL's tensor ops: tensor_transformation (reshape, transpose, slices, squeeze, expand_dims,
reverse, flatten2d), tensor_operation (concat, split, stack, tile, pad, fill, range_1d, one_hot, non_zero,
band_part, shape) and scatter_gather.

From iOS17 on MIL's gathers and scatters treat negative indices as out of bounds (undefined on device): the
kernels raise on them there, so a lowering that forgets to make indices non-negative fails in the evaluator
instead of passing on numpy's wrap-around. Earlier opsets wrap them, as MIL documents.
"""

from __future__ import annotations

import numpy as np

from accelopt.converters.mil.kernels import Args, kernel


def since(a: Args, target: str) -> bool:
    """The op is of the opset of this deployment target or newer."""
    from coremltools import target as targets

    return a.op.opset_version is not None and a.op.opset_version >= getattr(targets, target)


def _int(value) -> int:
    return int(np.asarray(value).reshape(()))


def _ints(value) -> list[int]:
    return [int(v) for v in np.asarray(value).reshape(-1)]


def indices_of(a: Args, name: str = "indices") -> np.ndarray:
    """The op's indices, checked against MIL's rule for negative ones (module docstring)."""
    indices = np.asarray(a(name)).astype(np.int64)
    if since(a, "iOS17") and indices.size and indices.min() < 0:
        raise ValueError(f"{a.op.op_type} {a.op.name!r}: negative indices are out of bounds from iOS17 on")
    return indices


# --- tensor_transformation --------------------------------------------------------------------------------------


@kernel("reshape")
def reshape(a: Args):
    """0 copies a dim of x: at the same position before iOS17, counting from the right from iOS17 on (a 0
    with no dim there is 1)."""
    x = np.asarray(a("x"))
    shape = _ints(a("shape"))
    if 0 in shape:
        offset = x.ndim - len(shape) if since(a, "iOS17") else 0
        shape = [(x.shape[i + offset] if 0 <= i + offset < x.ndim else 1) if d == 0 else d
                 for i, d in enumerate(shape)]
    return x.reshape(shape)


@kernel("transpose")
def transpose(a: Args):
    return np.transpose(a("x"), _ints(a("perm")))


@kernel("squeeze")
def squeeze(a: Args):
    """Squeezes the given axes that are 1 and ignores the others (PyTorch's rule); all 1-dims by default."""
    x = np.asarray(a("x"))
    axes = range(x.ndim) if a("axes") is None else [ax % x.ndim for ax in _ints(a("axes"))]
    return np.squeeze(x, axis=tuple(ax for ax in axes if x.shape[ax] == 1))


@kernel("expand_dims")
def expand_dims(a: Args):
    x = np.asarray(a("x"))
    axes = _ints(a("axes"))
    rank = x.ndim + len(axes)
    return np.expand_dims(x, tuple(sorted(ax % rank for ax in axes)))


@kernel("slice_by_index")
def slice_by_index(a: Args):
    """x[begin:end:stride] per axis: a masked begin or end is open (numpy's None, so from the far end for a
    negative stride), a squeezed axis takes the element at begin."""
    x = np.asarray(a("x"))
    rank = x.ndim
    begin, end = _ints(a("begin")), _ints(a("end"))
    stride = _ints(a("stride")) if a.has("stride") else [1] * rank
    masks = [list(np.asarray(a(m)).reshape(-1)) if a.has(m) else [False] * rank
             for m in ("begin_mask", "end_mask", "squeeze_mask")]
    index = tuple(begin[i] if masks[2][i] else
                  slice(None if masks[0][i] else begin[i], None if masks[1][i] else end[i], stride[i])
                  for i in range(rank))
    return np.asarray(x[index])


@kernel("slice_by_size")
def slice_by_size(a: Args):
    x = np.asarray(a("x"))
    begin = [b + d if b < 0 else b for b, d in zip(_ints(a("begin")), x.shape)]
    size = _ints(a("size"))
    return x[tuple(slice(b, None if s == -1 else b + s) for b, s in zip(begin, size))]


@kernel("reverse")
def reverse(a: Args):
    x = np.asarray(a("x"))
    return np.flip(x, axis=None if a("axes") is None else tuple(_ints(a("axes"))))


@kernel("flatten2d")
def flatten2d(a: Args):
    x = np.asarray(a("x"))
    axis = _int(a("axis", 1))
    axis = axis + x.ndim if axis < 0 else axis
    return x.reshape(int(np.prod(x.shape[:axis])), int(np.prod(x.shape[axis:])))


# --- tensor_operation -------------------------------------------------------------------------------------------


@kernel("concat")
def concat(a: Args):
    """interleave takes one slice of each input in turn (all inputs have the same shape)."""
    values = [np.asarray(v) for v in a("values")]
    axis = _int(a("axis"))
    if not a("interleave", False):
        return np.concatenate(values, axis=axis)
    axis = axis % values[0].ndim
    shape = list(values[0].shape)
    shape[axis] *= len(values)
    return np.stack(values, axis=axis + 1).reshape(shape)


@kernel("stack")
def stack(a: Args):
    return np.stack([np.asarray(v) for v in a("values")], axis=_int(a("axis")))


@kernel("split")
def split(a: Args):
    x = np.asarray(a("x"))
    axis = _int(a("axis"))
    if a.has("split_sizes"):
        sizes = _ints(a("split_sizes"))
    else:
        count = _int(a("num_splits"))
        sizes = [x.shape[axis] // count] * count
    return np.split(x, np.cumsum(sizes)[:-1], axis=axis)


@kernel("tile")
def tile(a: Args):
    return np.tile(a("x"), _ints(a("reps")))


@kernel("pad")
def pad(a: Args):
    """`pad` holds (before, after) pairs for the last len(pad) / 2 dims, first to last; replicate is numpy's
    edge."""
    x = np.asarray(a("x"))
    pairs = np.asarray(_ints(a("pad"))).reshape(-1, 2).tolist()
    widths = [(0, 0)] * (x.ndim - len(pairs)) + [tuple(p) for p in pairs]
    mode = a("mode", "constant")
    if mode == "constant":
        return np.pad(x, widths, constant_values=a("constant_val", 0.0))
    return np.pad(x, widths, mode={"reflect": "reflect", "replicate": "edge"}[mode])


@kernel("fill")
def fill(a: Args):
    return np.full(_ints(a("shape")), a("value", 0.0), a.out_dtype)


@kernel("fill_like")
def fill_like(a: Args):
    return np.full(np.shape(a("ref_tensor")), a("value", 0.0), a.out_dtype)


@kernel("range_1d")
def range_1d(a: Args):
    return np.arange(a("start"), a("end"), a("step")).astype(a.out_dtype)


@kernel("shape")
def shape(a: Args):
    return np.array(np.shape(a("x")), np.int32)


@kernel("one_hot")
def one_hot(a: Args):
    """on_value where the index equals the position along the new axis, off_value elsewhere (so an index out
    of [0, size) gives a row of off_value)."""
    indices = np.asarray(a("indices")).astype(np.int64)
    size = _int(a("one_hot_vector_size"))
    axis = _int(a("axis", -1))
    axis = axis + indices.ndim + 1 if axis < 0 else axis
    positions = np.arange(size).reshape([size if i == axis else 1 for i in range(indices.ndim + 1)])
    hot = np.expand_dims(indices, axis) == positions
    return np.where(hot, a("on_value", 1), a("off_value", 0))


@kernel("non_zero")
def non_zero(a: Args):
    """[N, rank]: one row per non-zero element, in row-major order."""
    return np.argwhere(np.asarray(a("x")) != 0).astype(np.int32)


@kernel("band_part")
def band_part(a: Args):
    """Keeps the last two dims' band (m - n) <= lower and (n - m) <= upper; a negative bound keeps that whole
    triangle."""
    x = np.asarray(a("x"))
    lower, upper = _int(a("lower", -1)), _int(a("upper", -1))
    m, n = np.arange(x.shape[-2])[:, None], np.arange(x.shape[-1])[None, :]
    keep = ((lower < 0) | (m - n <= lower)) & ((upper < 0) | (n - m <= upper))
    return np.where(keep, x, np.zeros((), x.dtype))


# --- scatter_gather ---------------------------------------------------------------------------------------------


@kernel("gather")
def gather(a: Args):
    """x's slices along `axis` at `indices`; with batch_dims b the first b dims of x and indices pair up."""
    x = np.asarray(a("x"))
    indices = indices_of(a)
    axis = _int(a("axis", 0)) % x.ndim
    batch = _int(a("batch_dims", 0))
    if not batch:
        return np.take(x, indices, axis=axis)
    lead = x.shape[:batch]
    xs = x.reshape(-1, *x.shape[batch:])
    ins = indices.reshape(-1, *indices.shape[batch:])
    out = np.stack([np.take(xs[i], ins[i], axis=axis - batch) for i in range(xs.shape[0])])
    return out.reshape(*lead, *out.shape[1:])


@kernel("gather_along_axis")
def gather_along_axis(a: Args):
    return np.take_along_axis(np.asarray(a("x")), indices_of(a), axis=_int(a("axis", 0)))


def _nd_coords(indices: np.ndarray, batch: int) -> tuple:
    """gather_nd/scatter_nd indices [..., depth] as a numpy index tuple (batch coordinates first)."""
    coords = tuple(np.moveaxis(indices, -1, 0))
    if not batch:
        return coords
    grids = np.indices(indices.shape[:batch]).reshape(batch, *indices.shape[:batch],
                                                      *[1] * (indices.ndim - 1 - batch))
    return tuple(np.broadcast_to(g, indices.shape[:-1]) for g in grids) + coords


@kernel("gather_nd")
def gather_nd(a: Args):
    return np.asarray(a("x"))[_nd_coords(indices_of(a), _int(a("batch_dims", 0)))]


_SCATTER = {"add": np.add, "sub": np.subtract, "mul": np.multiply, "div": np.divide, "max": np.maximum,
            "min": np.minimum}


def _scatter(a: Args, coords: tuple, updates: np.ndarray) -> np.ndarray:
    """data with updates written (mode update: the last write wins for a duplicate index, which MIL leaves
    undefined) or combined with what is there; MIL's default mode is add."""
    out = np.array(a("data"), copy=True)
    mode = a("mode", "add")
    if mode == "update":
        out[coords] = updates
    else:
        _SCATTER[mode].at(out, coords, updates.astype(out.dtype))
    return out


@kernel("scatter_nd")
def scatter_nd(a: Args):
    return _scatter(a, _nd_coords(indices_of(a), 0), np.asarray(a("updates")))


@kernel("scatter_along_axis")
def scatter_along_axis(a: Args):
    indices = indices_of(a)
    axis = _int(a("axis", 0)) % indices.ndim
    coords = list(np.indices(indices.shape, sparse=True))
    coords[axis] = indices
    return _scatter(a, tuple(np.broadcast_arrays(*coords)), np.asarray(a("updates")))


@kernel("scatter")
def scatter(a: Args):
    """1-D indices along `axis`: updates' slice i goes to (or combines with) data's slice indices[i]."""
    axis = _int(a("axis", 0)) % np.ndim(a("data"))
    return _scatter(a, (slice(None),) * axis + (indices_of(a),), np.asarray(a("updates")))
