"""ONNX's semantics of op arguments, for every lowering (the TF emitter, the MIL translator): padding from auto_pad,
Slice's clamped ranges, axes given by attribute or input, Split sizes, Pad widths, Resize's output sizes and
per-axis sampling. One definition here keeps the backends from drifting apart on ONNX's corner cases; the
handlers only say how their backend expresses the result.

Functions take the shared `OnnxNode` (attributes, constant inputs, the opset) or plain values and return plain
Python/numpy values; none builds a backend op.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from accelopt.converters.registry import OnnxNode


# ---------------------------------------------------------------------------------------------- conv / pool windows
def strides_dilations(node: OnnxNode, n: int) -> tuple[list[int], list[int]]:
    """The strides and dilations of an n-D conv or pool (ONNX's default: 1 each)."""
    return list(node.attr("strides") or [1] * n), list(node.attr("dilations") or [1] * n)


def same_pads(spatial, kernel, strides, dilations, upper: bool = True) -> list[tuple[int, int]]:
    """(begin, end) padding of auto_pad SAME_UPPER (the odd pixel at the end, as TF's "SAME") or SAME_LOWER."""
    pads = []
    for size, k, s, d in zip(spatial, kernel, strides, dilations):
        total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
        small = total // 2
        pads.append((small, total - small) if upper else (total - small, small))
    return pads


def conv_pads(node: OnnxNode, spatial, kernel, strides, dilations) -> list[tuple[int, int]]:
    """(begin, end) padding per spatial dim of a conv or pool: auto_pad, else the pads attribute."""
    auto_pad = node.attr("auto_pad", "NOTSET")
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        return same_pads(spatial, kernel, strides, dilations, auto_pad == "SAME_UPPER")
    n = len(spatial)
    if auto_pad == "VALID":
        return [(0, 0)] * n
    pads = node.attr("pads") or [0] * (2 * n)
    return [(pads[i], pads[i + n]) for i in range(n)]


def ceil_extra(spatial, kernel, strides, dilations, pads) -> list[int]:
    """ceil_mode's extra end padding per dim, so the last partial window counts as ONNX computes the output size
    (a window that would start in the end padding is dropped)."""
    extra = []
    for size, k, s, d, (b, e) in zip(spatial, kernel, strides, dilations, pads):
        span = (k - 1) * d + 1
        out = math.ceil((size + b + e - span) / s) + 1
        if (out - 1) * s >= size + b:
            out -= 1
        extra.append(max((out - 1) * s + span - (size + b + e), 0))
    return extra


def conv_transpose_full(spatial, kernel, strides, dilations, out_pad) -> list[int]:
    """ConvTranspose's output size per dim before its pads crop it (output_padding included)."""
    return [(d - 1) * s + (k - 1) * dl + 1 + op for d, s, k, dl, op in zip(spatial, strides, kernel, dilations,
                                                                          out_pad)]


def conv_transpose_pads(node: OnnxNode, spatial, kernel, strides, dilations, out_pad) -> list[tuple[int, int]]:
    """ConvTranspose's (begin, end) crop of the full output: pads, or what output_shape / auto_pad imply (ONNX:
    SAME_UPPER puts the odd one at the end, otherwise at the beginning). Negative values grow the output."""
    n = len(spatial)
    auto_pad = node.attr("auto_pad", "NOTSET")
    if node.attr("output_shape"):
        target = list(node.attr("output_shape"))[-n:]
    elif auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        target = [d * s for d, s in zip(spatial, strides)]
    elif auto_pad == "VALID":
        return [(0, 0)] * n
    else:
        p = node.attr("pads") or [0] * (2 * n)
        return [(p[i], p[i + n]) for i in range(n)]
    full = conv_transpose_full(spatial, kernel, strides, dilations, out_pad)
    totals = [f - t for f, t in zip(full, target)]
    upper = auto_pad == "SAME_UPPER"
    return [(t // 2, t - t // 2) if upper else (t - t // 2, t // 2) for t in totals]


# ---------------------------------------------------------------------------------------------- axes
def axes_arg(node: OnnxNode, index: int, rank: int) -> list[int] | None:
    """Axes from the `axes` attribute (older opsets) or constant input `index` (newer), normalised to >= 0;
    None when neither is given."""
    axes = node.attr("axes")
    if axes is None and node.has(index):
        axes = node.need_const(index, "axes").reshape(-1).tolist()
    return None if axes is None else [int(a) % rank for a in axes]


def reduce_axes(node: OnnxNode, rank: int) -> list[int] | None:
    """A reduction's axes (sorted, >= 0): [] for none (noop_with_empty_axes), None for all."""
    axes = axes_arg(node, 1, rank)
    if not axes:
        return [] if node.attr("noop_with_empty_axes", 0) else None
    return sorted(set(axes))


def squeeze_axes(node: OnnxNode, shape: list[int]) -> list[int]:
    """The axes Squeeze removes (sorted): those given, else every 1-dim."""
    axes = axes_arg(node, 1, len(shape))
    return [a for a, d in enumerate(shape) if d == 1] if axes is None else sorted(set(axes))


def unsqueeze_axes(node: OnnxNode, rank: int) -> list[int]:
    """The output axes Unsqueeze inserts (sorted, >= 0) into a rank-`rank` input."""
    axes = node.attr("axes")
    axes = node.need_const(1, "axes").reshape(-1).tolist() if axes is None else axes
    return sorted(int(a) % (rank + len(axes)) for a in axes)


# ---------------------------------------------------------------------------------------------- Split, Slice, Pad
def split_sizes(node: OnnxNode, dim: int) -> list[int]:
    """Split's part sizes along an axis of `dim`: the split attribute or input, else equal chunks (opset 18's
    num_outputs lets the last one be smaller)."""
    sizes = node.attr("split")
    if sizes is None and node.has(1):
        sizes = node.need_const(1, "split").reshape(-1).tolist()
    if sizes is None:
        count = node.attr("num_outputs", len(node.proto.output))
        chunk = -(-dim // count)
        sizes = [min(chunk, dim - i * chunk) for i in range(count)]
    return [int(s) for s in sizes]


class SliceRange(NamedTuple):
    """Slice as per-axis begin, end and stride over the whole input (clamped, >= 0 except that end -1 with a
    negative stride means 'through index 0'), and the output shape."""

    begin: list[int]
    end: list[int]
    stride: list[int]
    shape: list[int]


def slice_bounds(size: int, start: int, end: int, step: int) -> tuple[int, int, int]:
    """ONNX Slice's start and end for one axis, clamped as ONNX does (INT64_MAX/MIN 'to the end' markers,
    negative indices), and the number of elements it takes. For a negative step, end -1 means 'through 0'."""
    start = start + size if start < 0 else start
    end = end + size if end < 0 else end
    low, high = (0, size) if step > 0 else (-1, size - 1)
    start, end = min(max(start, low), high), min(max(end, low), high)
    return start, end, max(0, -(-(end - start) // step))


def slice_range(node: OnnxNode, shape: list[int]) -> SliceRange:
    """Slice's starts/ends/axes/steps (attributes before opset 10, constant inputs since) on a `shape` input."""
    if node.opset < 10:
        starts, ends = node.attr("starts"), node.attr("ends")
        axes, steps = node.attr("axes") or list(range(len(starts))), [1] * len(starts)
    else:
        starts, ends = node.need_const(1, "starts").tolist(), node.need_const(2, "ends").tolist()
        axes = node.need_const(3, "axes").tolist() if node.has(3) else list(range(len(starts)))
        steps = node.need_const(4, "steps").tolist() if node.has(4) else [1] * len(starts)
    rank = len(shape)
    out = SliceRange([0] * rank, list(shape), [1] * rank, list(shape))
    for s, e, a, step in zip(starts, ends, axes, steps):
        a = int(a) % rank
        if step == 0:
            raise node.fail("invalid_model", "a step of 0")
        out.begin[a], out.end[a], out.shape[a] = slice_bounds(shape[a], int(s), int(e), int(step))
        out.stride[a] = int(step)
    return out


def pad_args(node: OnnxNode, rank: int) -> tuple[list[list[int]], float | int]:
    """Pad's [before, after] widths per axis (negative: crop) and constant value: attributes before opset 11
    (`paddings` in opset 1), constant inputs since, with opset 18's axes."""
    if node.opset < 11:
        pads, value = node.attr("pads", node.attr("paddings")), node.attr("value", 0.0)
        axes = None
    else:
        pads = node.need_const(1, "pads").reshape(-1).tolist()
        value = node.need_const(2, "constant_value").reshape(-1)[0].item() if node.has(2) else 0
        axes = axes_arg(node, 3, rank) if node.opset >= 18 else None
    axes = list(range(rank)) if axes is None else axes
    n = len(pads) // 2
    widths = [[0, 0] for _ in range(rank)]
    for i, a in enumerate(axes[:n]):
        widths[a] = [int(pads[i]), int(pads[i + n])]
    return widths, value


# ---------------------------------------------------------------------------------------------- Resize / Upsample
def legacy_scales(node: OnnxNode) -> list[float]:
    """The scales of Upsample (an attribute before opset 9, then input 1) and Resize-10 (input 1)."""
    scales = node.attr("scales") if node.op_type == "Upsample" else None
    return list(scales) if scales is not None else node.need_const(1, "scales").astype(np.float64).tolist()


def resize_inputs(node: OnnxNode) -> tuple[list[float] | None, list[int] | None]:
    """Resize's (opset 11+) scales or sizes (the other None): constant inputs, an empty one counting as absent."""
    scales = node.const(2) if node.has(2) else None
    sizes = node.const(3) if node.has(3) else None
    if (node.has(2) and scales is None) or (node.has(3) and sizes is None):
        raise node.fail("requires_constant_input", "constant scales/sizes (run simplify and fix-shapes first)")
    scales = scales.astype(np.float64).tolist() if scales is not None and scales.size else None
    sizes = sizes.astype(np.int64).tolist() if sizes is not None and sizes.size else None
    if scales is None and sizes is None:
        raise node.fail("unsupported_attribute_value", "neither scales nor sizes")
    return scales, sizes


def resize_axes(node: OnnxNode, rank: int) -> list[int]:
    """The axes Resize's scales/sizes/roi list (the axes attribute of opset 18, else all), >= 0."""
    return [a % rank for a in (node.attr("axes") or range(rank))]


def resize_shape(node: OnnxNode, shape: list[int], scales, sizes, *, float32: bool = False) -> tuple[list[int],
                                                                                                     list[float]]:
    """Output size and scale per axis, from scales or sizes (with the axes and keep_aspect_ratio_policy
    attributes). From scales the size is the product truncated: onnx's reference and shape inference multiply
    in float64, ONNX Runtime in float32 (`float32`), which differ when the float32 product rounds up to an
    integer (1.4 x 5)."""
    rank = len(shape)
    axes = resize_axes(node, rank)
    if sizes is not None:
        out = list(shape)
        for a, s in zip(axes, sizes):
            out[a] = int(s)
        scale = [o / s for o, s in zip(out, shape)]
        policy = node.attr("keep_aspect_ratio_policy", "stretch")
        if policy != "stretch":
            pick = (min if policy == "not_larger" else max)(scale[a] for a in axes)
            scale = [pick if a in axes else 1.0 for a in range(rank)]
            out = [int(pick * shape[a] + 0.5) if a in axes else shape[a] for a in range(rank)]
        return out, scale
    scale = [1.0] * rank
    for a, s in zip(axes, scales):
        scale[a] = float(s)
    if float32:
        return [int(np.float32(s) * np.float32(d)) for s, d in zip(scale, shape)], scale
    return [int(s * d) for s, d in zip(scale, shape)], scale


def resize_coeffs(node: OnnxNode, mode: str, nearest_mode: str):
    """onnx's reference coefficient function (ratio, scale) -> weights of the neighbours for a Resize mode, with
    the node's antialias and cubic_coeff_a."""
    from onnx.reference.ops import op_resize as ref

    antialias = bool(node.attr("antialias", 0))
    if mode == "nearest":
        if antialias:
            raise node.fail("unsupported_attribute_value", "antialias with mode 'nearest'")
        return lambda r, s: ref._nearest_coeffs(r, mode=nearest_mode)
    if mode == "linear":
        return ref._linear_coeffs_antialias if antialias else ref._linear_coeffs
    if mode == "cubic":
        cubic, a = (ref._cubic_coeffs_antialias if antialias else ref._cubic_coeffs), node.attr("cubic_coeff_a", -0.75)
        return lambda r, s: cubic(r, s, A=a)
    raise node.fail("unsupported_attribute_value", f"mode {mode!r}")


def resize_matrix(node: OnnxNode, size: int, out: int, scale: float, coeffs, coord: str,
                  roi=None) -> tuple[np.ndarray, np.ndarray | None]:
    """(M, outside) along one axis: M (out x size) maps the input axis to the output (onnx's reference Resize
    applied to an identity basis, with the node's exclude_outside); outside flags the output positions
    tf_crop_and_resize fills with extrapolation_value (None when there are none)."""
    try:
        from onnx.reference.ops.op_resize import _interpolate_1d_along_axis
    except ImportError as e:  # older onnx: no vectorised 1-D resize
        raise node.fail("unsupported_op", f"needs onnx >= 1.19's reference Resize ({e})") from None
    kwargs = dict(roi=roi, coordinate_transformation_mode=coord, exclude_outside=bool(node.attr("exclude_outside", 0)))
    m = _interpolate_1d_along_axis(np.eye(size), 0, scale, out, coeffs, extrapolation_value=0.0, **kwargs)
    outside = None
    if coord == "tf_crop_and_resize":
        probe = _interpolate_1d_along_axis(np.ones((size, 1)), 0, scale, out, coeffs, extrapolation_value=np.nan,
                                           **kwargs)
        outside = np.isnan(probe[:, 0])
        outside = outside if outside.any() else None
    return np.asarray(m, np.float64), outside


def scalar_constant(constants: dict[str, np.ndarray], name: str) -> float | None:
    """The value of a one-element constant (initializer), else None: what pattern matchers compare."""
    value = constants.get(name)
    return float(value.reshape(-1)[0]) if value is not None and value.size == 1 else None
