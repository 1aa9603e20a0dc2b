"""Kernels of MIL's neural-network ops: conv, conv_transpose, pools, normalizations, linear/matmul, softmax,
the resize family and the depth/space rearrangements.

Convolutions loop over kernel taps (one strided view of the padded input per tap) and do one batched matmul
over channels per tap, so the evaluator runs a MobileNet in seconds. The resize ops' sampling grids are
written out as index maps (nearest) and coefficient matrices (bilinear) that the translator also uses to
pick the MIL op that computes exactly what ONNX asks (`nearest_index`, `bilinear_matrix`): what Core ML
computes for these ops is taken from the MIL op definitions, which only a Mac can confirm.
"""

from __future__ import annotations

import math

import numpy as np

from accelopt.converters.mil.kernels import Args, kernel


def _ints(value, default: list[int]) -> list[int]:
    return default if value is None else [int(v) for v in np.asarray(value).reshape(-1)]


def pads_of(pad_type: str, spatial: list[int], kernel_eff: list[int], strides: list[int],
            pad: list[int] | None) -> list[tuple[int, int]]:
    """(begin, end) padding per spatial dim for MIL's pad_type (coremltools' `aggregated_pad`): "same" puts the
    odd pixel at the end, "same_lower" at the beginning."""
    if pad_type == "custom":
        return [(pad[2 * i], pad[2 * i + 1]) for i in range(len(spatial))]
    if pad_type == "valid":
        return [(0, 0)] * len(spatial)
    out = []
    for size, k, s in zip(spatial, kernel_eff, strides):
        total = max(0, s * math.ceil(size / s) - size + k - s)
        small = total // 2
        out.append((small, total - small) if pad_type == "same" else (total - small, small))
    return out


def _pad(x: np.ndarray, pads: list[tuple[int, int]], value: float = 0.0) -> np.ndarray:
    if not any(b or e for b, e in pads):
        return x
    return np.pad(x, [(0, 0)] * (x.ndim - len(pads)) + list(pads), constant_values=value)


def _tap_index(tap: tuple[int, ...], dilations: list[int], strides: list[int], outs: list[int]) -> tuple:
    """The spatial positions kernel tap `tap` meets at each of `outs` output positions (strided slices)."""
    return tuple(slice(t * d, t * d + (o - 1) * s + 1, s) for t, d, s, o in zip(tap, dilations, strides, outs))


@kernel("conv")
def conv(a: Args):
    x, w = a("x"), a("weight")
    n_sp = x.ndim - 2
    strides = _ints(a("strides"), [1] * n_sp)
    dilations = _ints(a("dilations"), [1] * n_sp)
    groups = int(a("groups", 1))
    kernel_sz = list(w.shape[2:])
    eff = [(k - 1) * d + 1 for k, d in zip(kernel_sz, dilations)]
    pads = pads_of(a("pad_type", "valid"), list(x.shape[2:]), eff, strides, _ints(a("pad"), None))
    xp = _pad(x, pads)
    outs = [(p - e) // s + 1 for p, e, s in zip(xp.shape[2:], eff, strides)]
    n, c_in = x.shape[:2]
    c_out = w.shape[0]
    xg = xp.reshape(n, groups, c_in // groups, *xp.shape[2:])
    wg = w.reshape(groups, c_out // groups, c_in // groups, *kernel_sz)
    acc = np.zeros((n, groups, c_out // groups, int(np.prod(outs))), np.float32)
    for tap in np.ndindex(*kernel_sz):
        xt = xg[(Ellipsis, *_tap_index(tap, dilations, strides, outs))].reshape(n, groups, c_in // groups, -1)
        wt = wg[(Ellipsis, *tap)]  # [groups, out/group, in/group]
        if wt.shape[1:] == (1, 1):  # depthwise: a per-channel scale
            acc += xt * wt
        else:
            acc += np.matmul(wt, xt)
    y = acc.reshape(n, c_out, *outs)
    bias = a("bias")
    return y if bias is None else y + bias.reshape(-1, *[1] * n_sp)


@kernel("conv_transpose")
def conv_transpose(a: Args):
    """The full transposed convolution (each input pixel scatters its kernel), cropped by the pads (pad_type
    same: as conv's "same" pads); output_shape, when given, sets the size kept after the begin crop."""
    x, w = a("x"), a("weight")  # w: [C_in, C_out/groups, *K]
    n_sp = x.ndim - 2
    strides = _ints(a("strides"), [1] * n_sp)
    dilations = _ints(a("dilations"), [1] * n_sp)
    groups = int(a("groups", 1))
    kernel_sz = list(w.shape[2:])
    n, c_in = x.shape[:2]
    per_out = w.shape[1]
    spatial = list(x.shape[2:])
    full = [(d - 1) * s + (k - 1) * dl + 1 for d, s, k, dl in zip(spatial, strides, kernel_sz, dilations)]
    y = np.zeros((n, groups, per_out, *full), np.float32)
    xg = x.reshape(n, groups, c_in // groups, -1)
    wg = w.reshape(groups, c_in // groups, per_out, *kernel_sz)
    for tap in np.ndindex(*kernel_sz):
        contrib = np.matmul(np.swapaxes(wg[(Ellipsis, *tap)], 1, 2), xg)  # [n, groups, per_out, D...]
        y[(slice(None),) * 3 + _tap_index(tap, dilations, strides, spatial)] += contrib.reshape(
            n, groups, per_out, *spatial)
    y = y.reshape(n, groups * per_out, *full)
    pad_type = a("pad_type", "valid")
    if pad_type == "same":
        crops = []
        for f, d, s in zip(full, spatial, strides):
            total = f - d * s
            crops.append((total // 2, total - total // 2))
    elif pad_type == "custom":
        pad = _ints(a("pad"), [0] * 2 * n_sp)
        crops = [(pad[2 * i], pad[2 * i + 1]) for i in range(n_sp)]
    else:
        crops = [(0, 0)] * n_sp
    output_shape = a("output_shape")  # coremltools adds it to every conv_transpose: the size after the crops
    if output_shape is not None:
        want = [int(v) for v in np.asarray(output_shape).reshape(-1)[2:]]
        crops = [(b, f - b - size) for (b, _), f, size in zip(crops, full, want)]
    y = y[(slice(None), slice(None), *[slice(b, f - e) for (b, e), f in zip(crops, full)])]
    bias = a("bias")
    return y if bias is None else y + bias.reshape(-1, *[1] * n_sp)


def _pool_windows(a: Args, fill: float):
    """What every pool reduces: (the windows [n, C, *out, *kernel] of the input padded with `fill`, the spatial
    shape, the pads, the pads with ceil_mode's end overhang added (as MIL sizes its output), kernel, strides)."""
    x = a("x")
    n_sp = x.ndim - 2
    kernel_sz = _ints(a("kernel_sizes"), None)
    strides = _ints(a("strides"), [1] * n_sp)
    spatial = list(x.shape[2:])
    pads = pads_of(a("pad_type", "valid").lower(), spatial, kernel_sz, strides, _ints(a("pad"), None))
    ceil_extra = [0] * n_sp
    if a("ceil_mode", False):
        for i, (size, k, s, (b, e)) in enumerate(zip(spatial, kernel_sz, strides, pads)):
            out = (size + b + e - k + s - 1) // s + 1
            if (out - 1) * s >= size + b and (b or e):
                out -= 1
            ceil_extra[i] = max(0, (out - 1) * s + k - (size + b + e))
    full = [(b, e + c) for (b, e), c in zip(pads, ceil_extra)]
    xp = _pad(x, full, fill)
    windows = np.lib.stride_tricks.sliding_window_view(xp, kernel_sz, axis=tuple(range(2, x.ndim)))
    windows = windows[(Ellipsis, *[slice(None, None, s) for s in strides], *[slice(None)] * n_sp)]
    return windows, spatial, pads, full, kernel_sz, strides


def window_count(shape: list[int], pads, kernel_sz, strides) -> np.ndarray:
    """How many elements of a ones-map of `shape`, padded by `pads` with zeros, each window covers."""
    ones = _pad(np.ones(shape, np.float32), pads)
    windows = np.lib.stride_tricks.sliding_window_view(ones, kernel_sz)
    windows = windows[tuple(slice(None, None, s) for s in strides)]
    return windows.sum(axis=tuple(range(-len(kernel_sz), 0)))


def _reduce_axes(n_sp: int) -> tuple[int, ...]:
    return tuple(range(-n_sp, 0))


@kernel("max_pool")
def max_pool(a: Args):
    windows, *_, kernel_sz, _ = _pool_windows(a, -np.inf)
    return windows.max(axis=_reduce_axes(len(kernel_sz)))


@kernel("l2_pool")
def l2_pool(a: Args):
    windows, *_, kernel_sz, _ = _pool_windows(a, 0.0)
    return np.sqrt(np.square(windows).sum(axis=_reduce_axes(len(kernel_sz))))


@kernel("avg_pool")
def avg_pool(a: Args):
    """Divides by the window's input elements (exclude_padding_from_average) or by its elements inside the
    padded input (the ceil_mode overhang never counts, as in PyTorch)."""
    windows, spatial, pads, full, kernel_sz, strides = _pool_windows(a, 0.0)
    total = windows.sum(axis=_reduce_axes(len(kernel_sz)))
    if a("exclude_padding_from_average", False):
        count = window_count(spatial, full, kernel_sz, strides)
    else:
        padded = [s + b + e for s, (b, e) in zip(spatial, pads)]
        count = window_count(padded, [(0, f[1] - p[1]) for f, p in zip(full, pads)], kernel_sz, strides)
    return total / np.maximum(count, 1.0)


def _channel(v: np.ndarray, rank: int) -> np.ndarray:
    """A [C] vector shaped to broadcast along axis 1 of a rank-`rank` tensor."""
    return np.asarray(v).reshape(-1, *[1] * (rank - 2))


@kernel("batch_norm")
def batch_norm(a: Args):
    x = a("x")
    y = (x - _channel(a("mean"), x.ndim)) / np.sqrt(_channel(a("variance"), x.ndim) + a("epsilon", 1e-5))
    if a.has("gamma"):
        y = y * _channel(a("gamma"), x.ndim)
    return y + _channel(a("beta"), x.ndim) if a.has("beta") else y


def _normalize(x: np.ndarray, axes: tuple[int, ...], eps: float) -> np.ndarray:
    mean = x.mean(axis=axes, keepdims=True)
    centered = x - mean
    return centered / np.sqrt(np.square(centered).mean(axis=axes, keepdims=True) + eps)


@kernel("instance_norm")
def instance_norm(a: Args):
    x = a("x")
    y = _normalize(x, tuple(range(2, x.ndim)), a("epsilon", 1e-5))
    if a.has("gamma"):
        y = y * _channel(a("gamma"), x.ndim)
    return y + _channel(a("beta"), x.ndim) if a.has("beta") else y


@kernel("layer_norm")
def layer_norm(a: Args):
    x = a("x")
    axes = tuple(sorted(int(v) % x.ndim for v in _ints(a("axes"), list(range(x.ndim)))))
    y = _normalize(x, axes, a("epsilon", 1e-5))
    shape = [x.shape[i] if i in axes else 1 for i in range(x.ndim)]
    if a.has("gamma"):
        y = y * np.reshape(a("gamma"), shape)
    return y + np.reshape(a("beta"), shape) if a.has("beta") else y


@kernel("local_response_norm")
def local_response_norm(a: Args):
    """x / (k + alpha/size * sum of squares over the `size` channels centred on each)^beta (odd sizes: MIL does
    not say where an even window sits)."""
    x, size = a("x"), int(a("size"))
    if size % 2 == 0:
        raise NotImplementedError(f"local_response_norm with an even size ({size}): MIL leaves its window undefined")
    half = (size - 1) // 2
    sq = np.pad(np.square(x), [(0, 0), (half, half)] + [(0, 0)] * (x.ndim - 2))
    acc = sum(sq[:, i:i + x.shape[1]] for i in range(size))
    return x / np.power(a("k", 1.0) + a("alpha", 1e-4) / size * acc, a("beta", 0.75))


@kernel("linear")
def linear(a: Args):
    y = np.matmul(a("x"), np.asarray(a("weight")).T)
    return y + a("bias") if a.has("bias") else y


@kernel("matmul")
def matmul(a: Args):
    x, y = np.asarray(a("x")), np.asarray(a("y"))
    if a("transpose_x", False) and x.ndim > 1:
        x = np.swapaxes(x, -1, -2)
    if a("transpose_y", False) and y.ndim > 1:
        y = np.swapaxes(y, -1, -2)
    return np.matmul(x, y)


@kernel("softmax")
def softmax(a: Args):
    x, axis = a("x"), int(a("axis", -1))
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


# depth/space rearrangements: depth_to_space is DCR (TF's order), pixel_shuffle CRD (PyTorch's)
@kernel("depth_to_space")
def depth_to_space(a: Args):
    x, b = a("x"), int(a("block_size"))
    n, c, h, w = x.shape
    y = x.reshape(n, b, b, c // (b * b), h, w).transpose(0, 3, 4, 1, 5, 2)
    return y.reshape(n, c // (b * b), h * b, w * b)


@kernel("pixel_shuffle")
def pixel_shuffle(a: Args):
    x, f = a("x"), int(a("upscale_factor"))
    n, c, h, w = x.shape
    y = x.reshape(n, c // (f * f), f, f, h, w).transpose(0, 1, 4, 2, 5, 3)
    return y.reshape(n, c // (f * f), h * f, w * f)


@kernel("space_to_depth")
def space_to_depth(a: Args):
    x, b = a("x"), int(a("block_size"))
    n, c, h, w = x.shape
    y = x.reshape(n, c, h // b, b, w // b, b).transpose(0, 3, 5, 1, 2, 4)
    return y.reshape(n, c * b * b, h // b, w // b)


@kernel("pixel_unshuffle")
def pixel_unshuffle(a: Args):
    x, f = a("x"), int(a("downscale_factor"))
    n, c, h, w = x.shape
    y = x.reshape(n, c, h // f, f, w // f, f).transpose(0, 1, 3, 5, 2, 4)
    return y.reshape(n, c * f * f, h // f, w // f)


# The resize family. Index maps and coefficient matrices per axis (in x out), in float32 like the devices.
def nearest_index(op: str, size: int, out: int, scale: float | None = None) -> np.ndarray:
    """Input index of each output position along one axis. upsample_nearest_neighbor: floor(i / scale) (integer
    scales, where every reading agrees); resize_nearest_neighbor: TF's half-pixel nearest,
    min(floor((i + 0.5) * size / out), size - 1)."""
    i = np.arange(out, dtype=np.float32)
    if op == "upsample_nearest_neighbor":
        idx = np.floor(i / np.float32(scale))
    else:
        idx = np.floor((i + np.float32(0.5)) * np.float32(size / out))
    return np.minimum(idx.astype(np.int64), size - 1)


def grid(sampling_mode: str, size: int, out: int) -> np.ndarray:
    """The input coordinate each output position samples (resize_bilinear's sampling modes), clamped."""
    i = np.arange(out, dtype=np.float32)
    if sampling_mode in ("STRICT_ALIGN_CORNERS", "ALIGN_CORNERS"):
        if out == 1:
            x = np.full(1, (size - 1) / 2 if sampling_mode == "ALIGN_CORNERS" else 0.0, np.float32)
        else:
            x = i * np.float32((size - 1) / (out - 1))
    elif sampling_mode == "DEFAULT":
        x = i * np.float32(size / out)
    elif sampling_mode == "OFFSET_CORNERS":
        delta = np.float32(max(1, size - 1) / out)
        x = np.float32(0.5) * delta + i * delta
    elif sampling_mode == "UNALIGN_CORNERS":
        spacing = np.float32(size / out)
        x = i * spacing + np.float32(0.5) * spacing - np.float32(0.5)
    else:
        raise ValueError(f"unknown sampling_mode {sampling_mode!r}")
    return np.clip(x, 0, size - 1)


def bilinear_matrix(sampling_mode: str, size: int, out: int) -> np.ndarray:
    """(out x size) linear-interpolation weights along one axis for a sampling mode."""
    x = grid(sampling_mode, size, out)
    lo = np.floor(x).astype(np.int64)
    hi = np.minimum(lo + 1, size - 1)
    frac = (x - lo).astype(np.float64)
    m = np.zeros((out, size))
    rows = np.arange(out)
    np.add.at(m, (rows, lo), 1 - frac)
    np.add.at(m, (rows, hi), frac)
    return m


def _upsample_grid_mode(align_corners: bool, half_pixel: bool) -> str:
    """upsample_bilinear's grid as a resize_bilinear sampling mode (its doc: align_corners=True is
    STRICT_ALIGN_CORNERS; align_corners=False with half-pixel centers is UNALIGN_CORNERS, without is DEFAULT)."""
    if align_corners:
        return "STRICT_ALIGN_CORNERS"
    return "UNALIGN_CORNERS" if half_pixel else "DEFAULT"


def _resize_last2(x: np.ndarray, mats: list[np.ndarray]) -> np.ndarray:
    """x resized along its last two axes by (out x in) matrices."""
    y = np.einsum("oh,...hw->...ow", mats[0], x.astype(np.float64))
    return np.einsum("...hw,ow->...ho", y, mats[1])


def _gather_last2(x: np.ndarray, idx: list[np.ndarray]) -> np.ndarray:
    return x[..., idx[0][:, None], idx[1][None, :]]


def _out_hw(a: Args) -> tuple[int, int]:
    shape = a.op.outputs[0].shape
    return int(shape[-2]), int(shape[-1])


@kernel("upsample_nearest_neighbor")
def upsample_nearest_neighbor(a: Args):
    x = a("x")
    scales = [float(a("scale_factor_height", 1)), float(a("scale_factor_width", 1))]
    outs = _out_hw(a)
    return _gather_last2(x, [nearest_index("upsample_nearest_neighbor", x.shape[-2 + i], outs[i], scales[i])
                             for i in range(2)])


@kernel("resize_nearest_neighbor")
def resize_nearest_neighbor(a: Args):
    x = a("x")
    outs = _out_hw(a)
    return _gather_last2(x, [nearest_index("resize_nearest_neighbor", x.shape[-2 + i], outs[i]) for i in range(2)])


@kernel("resize_bilinear")
def resize_bilinear(a: Args):
    x = a("x")
    mode = a("sampling_mode", "DEFAULT")
    outs = _out_hw(a)
    return _resize_last2(x, [bilinear_matrix(mode, x.shape[-2 + i], outs[i]) for i in range(2)])


@kernel("upsample_bilinear")
def upsample_bilinear(a: Args):
    x = a("x")
    align = bool(a("align_corners", True))
    mode = _upsample_grid_mode(align, bool(a("half_pixel_centers", not align)))
    outs = _out_hw(a)
    return _resize_last2(x, [bilinear_matrix(mode, x.shape[-2 + i], outs[i]) for i in range(2)])


@kernel("resize")
def resize(a: Args):
    """iOS17 resize, LINEAR over the last one or two dims (its nearest-neighbour grid is not documented)."""
    x = a("x")
    dims = int(a("resized_dims"))
    if a("interpolation_mode", "LINEAR") != "LINEAR" or dims not in (1, 2):
        raise NotImplementedError(f"resize with interpolation_mode {a('interpolation_mode')!r} over {dims} dims")
    mode = a("sampling_mode", "DEFAULT")
    out_shape = [int(v) for v in a.op.outputs[0].shape]
    y = x.astype(np.float64)
    for axis in range(x.ndim - dims, x.ndim):
        m = bilinear_matrix(mode, x.shape[axis], out_shape[axis])
        y = np.moveaxis(np.tensordot(y, m, axes=([axis], [1])), -1, axis)
    return y
