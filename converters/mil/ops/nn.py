"""Neural-network ops: convolutions, pools, normalizations, Gemm/MatMul, the softmax family, Resize/Upsample and
the depth/space rearrangements.

MIL is NCHW with ONNX's weight layouts, so these are attribute translations. Padding is always given to MIL
explicitly (pad_type "custom", ONNX's [b1..bn, e1..en] interleaved as [b1, e1, b2, e2, ...]); ceil_mode
becomes extra end padding, which max/l2 pools ignore and average pools exclude (count_include_pad=1 is
rescaled by a constant map where the overhang would be counted). Resize computes ONNX's sampling of each
resized axis as a matrix (nearest: its coordinate transform and rounding; linear, cubic: onnx's reference
implementation on an identity basis) and uses the MIL resize op that samples exactly so (the op's sampling is
written out in kernels/nn.py), else a gather (nearest) or a constant matrix product (linear, cubic) per axis.
"""

from __future__ import annotations

import math

import numpy as np
from onnx import helper

from accelopt.converters.mil.kernels.nn import bilinear_matrix, nearest_index, window_count
from accelopt.converters.mil.registry import Node, handles, builder as _mb
from accelopt.converters.onnx_args import (ceil_extra, conv_pads, conv_transpose_pads, legacy_scales, resize_coeffs,
                                           resize_inputs, resize_matrix, resize_shape, strides_dilations)


def _attrs(proto) -> dict:
    """A NodeProto's attributes, strings decoded (for the static checks, which see no Node)."""
    values = {a.name: helper.get_attribute_value(a) for a in proto.attribute}
    return {k: v.decode() if isinstance(v, bytes) else v for k, v in values.items()}


def _wanted(proto, j: int) -> bool:
    """Whether optional output j is used."""
    return len(proto.output) > j and bool(proto.output[j])


def _float(node: Node, i: int = 0):
    """Input i as a float tensor (MIL's pools, convs and resizes are fp16/fp32 only; 8/16-bit integers are
    exact in fp32, and the translator casts the result back to the ONNX type)."""
    x = node.x(i)
    return x if node.dtype(i).kind == "f" else _mb().cast(x=x, dtype="fp32")


def _typed(node: Node, value: np.ndarray) -> np.ndarray:
    """A constant in input 0's float type (fp32 unless the model computes in fp16)."""
    return np.asarray(value, np.float16 if node.dtype(0) == np.float16 else np.float32)


def _raise_check(node: Node, check) -> None:
    """Fail with the first finding of the op's static check (the message without its op-type prefix)."""
    for reason, message in check(node.proto, node.opset):
        raise node.fail(reason, message.split(": ", 1)[1])


# ---------------------------------------------------------------------------------------------- geometry
def _interleave(pads: list[tuple[int, int]]) -> list[int]:
    return [int(p) for pair in pads for p in pair]


def _geometry(node: Node, kernel: list[int]):
    strides, dilations = strides_dilations(node, len(kernel))
    return strides, dilations, conv_pads(node, node.shape(0)[2:], kernel, strides, dilations)


def _spatial_rank(node: Node, allowed: tuple[int, ...] = (1, 2, 3)) -> int:
    n = node.rank(0) - 2
    if n not in allowed:
        raise node.fail("unsupported_rank", f"{n}-D {node.op_type} (Core ML has {'/'.join(map(str, allowed))}-D)")
    return n


# ---------------------------------------------------------------------------------------------- convolutions
@handles("Conv")
def conv(node: Node):
    _spatial_rank(node)
    weight = node.x(1)
    kernel = list(node.attr("kernel_shape") or weight.shape[2:])
    strides, dilations, pads = _geometry(node, kernel)
    if node.const(1) is None and any(d != 1 for d in dilations):
        raise node.fail("requires_constant_input", "a dilated convolution needs constant weights in Core ML")
    bias = _typed(node, node.need_const(2, "bias")) if node.has(2) else None
    return _mb().conv(x=_float(node), weight=weight, bias=bias, strides=strides, dilations=dilations,
                      groups=node.attr("group", 1), pad_type="custom", pad=_interleave(pads))


@handles("ConvTranspose")
def conv_transpose(node: Node):
    """conv_transpose crops its full output by `pad`; output_padding (rows at the end that only the bias
    reaches) and negative pads grow it, with a zero pad before the bias is added."""
    mb = _mb()
    n = _spatial_rank(node)
    weight = node.need_const(1, "weight")
    kernel = list(node.attr("kernel_shape") or weight.shape[2:])
    strides, dilations = strides_dilations(node, n)
    out_pad = list(node.attr("output_padding") or [0] * n)
    crops = conv_transpose_pads(node, node.shape(0)[2:], kernel, strides, dilations, out_pad)
    # the full output without output_padding is cropped by (b, e - out_pad); what is left negative grows it
    cut = [(max(b, 0), max(e - op, 0)) for (b, e), op in zip(crops, out_pad)]
    grow = [(max(-b, 0), max(op - e, 0)) for (b, e), op in zip(crops, out_pad)]
    bias = _typed(node, node.need_const(2, "bias")) if node.has(2) else None
    grows = any(g for pair in grow for g in pair)
    y = mb.conv_transpose(x=_float(node), weight=node.x(1), bias=None if grows else bias, strides=strides,
                          dilations=dilations, groups=node.attr("group", 1), pad_type="custom",
                          pad=_interleave(cut))
    if not grows:
        return y
    y = mb.pad(x=y, pad=[0, 0, 0, 0, *_interleave(grow)], mode="constant", constant_val=_typed(node, 0.0))
    return y if bias is None else mb.add(x=y, y=bias.reshape(-1, *[1] * n))


# ---------------------------------------------------------------------------------------------- pools
def _check_pool(proto, opset: int) -> list[tuple[str, str]]:
    attrs = _attrs(proto)
    found = []
    if any(d != 1 for d in attrs.get("dilations") or []):
        found.append(("unsupported_attribute_value",
                      f"{proto.op_type}: dilations={list(attrs['dilations'])} (Core ML pools have no dilations)"))
    if proto.op_type == "MaxPool" and _wanted(proto, 1):
        found.append(("unsupported_output", "MaxPool: the Indices output (Core ML's max_pool has none)"))
    if proto.op_type in ("LpPool", "GlobalLpPool") and attrs.get("p", 2) != 2:
        found.append(("unsupported_attribute_value", f"{proto.op_type}: p={attrs['p']} (Core ML has l2_pool: p=2)"))
    return found


@handles("MaxPool", "AveragePool", "LpPool", check=_check_pool)
def pool(node: Node):
    mb = _mb()
    _raise_check(node, _check_pool)
    n = _spatial_rank(node, (1, 2) if node.op_type == "LpPool" else (1, 2, 3))
    kernel = list(node.attr("kernel_shape"))
    strides, dilations, pads = _geometry(node, kernel)
    spatial = node.shape(0)[2:]
    extra = ceil_extra(spatial, kernel, strides, dilations, pads) if node.attr("ceil_mode", 0) else [0] * n
    full = [(b, e + x) for (b, e), x in zip(pads, extra)]
    args = dict(x=_float(node), kernel_sizes=kernel, strides=strides, pad_type="custom", pad=_interleave(full))
    if node.op_type == "MaxPool":
        return mb.max_pool(**args)
    if node.op_type == "LpPool":
        return mb.l2_pool(**args)
    include = bool(node.attr("count_include_pad", 0))
    y = mb.avg_pool(**args, exclude_padding_from_average=not include)
    if not include or not any(extra):
        return y
    # counted: the window's elements inside the declared padding, not the ceil_mode overhang
    padded = [s + b + e for s, (b, e) in zip(spatial, pads)]
    counts = window_count(padded, [(0, x) for x in extra], kernel, strides)
    return mb.mul(x=y, y=_typed(node, float(np.prod(kernel)) / counts))


@handles("GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool", check=_check_pool)
def global_pool(node: Node):
    """A pool whose window is the whole spatial extent."""
    _raise_check(node, _check_pool)
    _spatial_rank(node, (1, 2) if node.op_type == "GlobalLpPool" else (1, 2, 3))
    op = {"GlobalAveragePool": "avg_pool", "GlobalMaxPool": "max_pool", "GlobalLpPool": "l2_pool"}[node.op_type]
    return getattr(_mb(), op)(x=_float(node), kernel_sizes=node.shape(0)[2:], pad_type="valid")


# ---------------------------------------------------------------------------------------------- normalizations
def _check_batch_norm(proto, opset: int) -> list[tuple[str, str]]:
    attrs = _attrs(proto)
    if attrs.get("training_mode", 0) or any(_wanted(proto, j) for j in range(1, 5)):
        return [("unsupported_attribute_value", "BatchNormalization: training mode (running statistics outputs)")]
    if attrs.get("spatial", 1) == 0:
        return [("unsupported_attribute_value", "BatchNormalization: spatial=0 (per-element statistics)")]
    return []


@handles("BatchNormalization", check=_check_batch_norm)
def batch_norm(node: Node):
    mb = _mb()
    _raise_check(node, _check_batch_norm)
    scale, bias, mean, var = (node.need_const(i, what).astype(np.float64)
                              for i, what in ((1, "scale"), (2, "bias"), (3, "mean"), (4, "variance")))
    eps = node.attr("epsilon", 1e-5)
    if 3 <= node.rank(0) <= 5:
        return mb.batch_norm(x=node.x(0), mean=_typed(node, mean), variance=_typed(node, var),
                             gamma=_typed(node, scale), beta=_typed(node, bias), epsilon=_typed(node, eps))
    # [N, C]: a per-channel affine map along the last axis
    a = scale / np.sqrt(var + eps)
    return mb.add(x=mb.mul(x=node.x(0), y=_typed(node, a)), y=_typed(node, bias - mean * a))


def _affine(node: Node, y, scale: np.ndarray, bias: np.ndarray):
    """y * scale + bias with [C] constants along axis 1, as a batch_norm of mean 0 and variance 1 (coremltools
    fuses a mul/add pair into one anyway, with fp32 statistics that an fp16 model's gamma then mismatches)."""
    c = scale.size
    return _mb().batch_norm(x=y, mean=_typed(node, np.zeros(c)), variance=_typed(node, np.ones(c)),
                            gamma=_typed(node, scale), beta=_typed(node, bias), epsilon=_typed(node, 0.0))


@handles("InstanceNormalization")
def instance_norm(node: Node):
    mb = _mb()
    scale, bias = node.need_const(1, "scale"), node.need_const(2, "bias")
    eps = _typed(node, node.attr("epsilon", 1e-5))
    rank = node.rank(0)
    if rank in (3, 4):
        return mb.instance_norm(x=node.x(0), gamma=_typed(node, scale), beta=_typed(node, bias), epsilon=eps)
    if rank != 5:
        raise node.fail("unsupported_rank", f"rank {rank} input")
    y = mb.layer_norm(x=node.x(0), axes=list(range(2, rank)), epsilon=eps)
    return _affine(node, y, scale, bias)


@handles("LayerNormalization")
def layer_norm(node: Node):
    """layer_norm's gamma/beta have the normalized shape: constants ONNX broadcasts are expanded to it, runtime
    ones are applied with mul/add (which broadcast like ONNX). The optional Mean / InvStdDev outputs (training
    statistics) are computed beside it when the graph uses them."""
    mb = _mb()
    shape = node.shape(0)
    axis = node.attr("axis", -1) % len(shape)
    axes = list(range(axis, len(shape)))
    eps = _typed(node, node.attr("epsilon", 1e-5))
    normalized = shape[axis:]
    consts = [node.const(i) for i in (1, 2)]
    if all(c is not None or not node.has(i) for i, c in zip((1, 2), consts)):
        gamma, beta = (None if c is None else _typed(node, np.broadcast_to(c, normalized)) for c in consts)
        y = mb.layer_norm(x=node.x(0), axes=axes, gamma=gamma, beta=beta, epsilon=eps)
    else:
        y = mb.mul(x=mb.layer_norm(x=node.x(0), axes=axes, epsilon=eps), y=node.x(1))
        y = mb.add(x=y, y=node.x(2)) if node.has(2) else y
    if not (_wanted(node.proto, 1) or _wanted(node.proto, 2)):
        return y
    mean = mb.reduce_mean(x=node.x(0), axes=axes, keep_dims=True)
    centred = mb.sub(x=node.x(0), y=mean)
    variance = mb.reduce_mean(x=mb.mul(x=centred, y=centred), axes=axes, keep_dims=True)
    return y, mean, mb.rsqrt(x=variance, epsilon=eps)


@handles("GroupNormalization")
def group_norm(node: Node):
    """Normalizes [N, G, C/G * spatial] (a reshape), then the per-channel affine map. Opset 18 gives scale and
    bias per group, opset 21 per channel."""
    mb = _mb()
    shape = node.shape(0)
    groups = node.attr("num_groups")
    c = shape[1]
    scale, bias = node.need_const(1, "scale"), node.need_const(2, "bias")
    if scale.size == groups and groups != c:
        scale, bias = np.repeat(scale, c // groups), np.repeat(bias, c // groups)
    y = mb.reshape(x=node.x(0), shape=[shape[0], groups, -1])
    y = mb.layer_norm(x=y, axes=[2], epsilon=_typed(node, node.attr("epsilon", 1e-5)))
    return _affine(node, mb.reshape(x=y, shape=shape), scale, bias)


def _check_lrn(proto, opset: int) -> list[tuple[str, str]]:
    size = _attrs(proto).get("size")
    if size is not None and size % 2 == 0:
        return [("unsupported_attribute_value", f"LRN: size={size} (even: ONNX's window extends one channel further "
                                                "up; Core ML's local_response_norm does not say where)")]
    return []


@handles("LRN", check=_check_lrn)
def lrn(node: Node):
    _raise_check(node, _check_lrn)
    if node.rank(0) not in (3, 4):
        raise node.fail("unsupported_rank", f"rank {node.rank(0)} input (Core ML's local_response_norm: 3 or 4)")
    return _mb().local_response_norm(x=node.x(0), size=node.attr("size"), alpha=_typed(node, node.attr("alpha", 1e-4)),
                                     beta=_typed(node, node.attr("beta", 0.75)),
                                     k=_typed(node, node.attr("bias", 1.0)))


# ---------------------------------------------------------------------------------------------- dense math
def _compressed_weight(node: Node, transposed: bool):
    """B as `linear`'s weight [N, K] when it is a 2-D compressed weight (the output of a constexpr op, e.g. int8
    data dequantized on load, which linear takes where it takes a constant): that output, or for B [K, N] a
    constexpr op of the transposed data. None otherwise."""
    b = node.values[1]
    if isinstance(b, np.ndarray) or b.op is None or not b.op.op_type.startswith("constexpr_"):
        return None
    if node.rank(1) != 2 or node.dtype(1) != node.dtype(0):
        return None
    return b if transposed else _transposed_constexpr(b.op)


def _transposed_constexpr(op):
    """A constexpr op whose output is the transpose of 2-D `op`'s, or None for a constexpr op not handled here."""
    mb = _mb()

    def t(value):  # contiguous: coremltools serialises a transposed view's memory as is
        return np.ascontiguousarray(value.T)

    if op.op_type == "constexpr_affine_dequantize":
        return mb.constexpr_affine_dequantize(quantized_data=t(op.quantized_data.val), zero_point=op.zero_point.val,
                                              scale=op.scale.val, axis=1 - op.axis.val)
    if op.op_type == "constexpr_blockwise_shift_scale":
        offset = None if op.offset is None else t(op.offset.val)
        return mb.constexpr_blockwise_shift_scale(data=t(op.data.val), scale=t(op.scale.val), offset=offset)
    return None


def _linear_weight(node: Node, alpha: float, trans_b: bool):
    """Gemm's alpha * B' as `linear`'s weight [N, K]: from a constant B, or a compressed one when alpha is 1;
    None for any other B."""
    b = node.const(1)
    if b is not None:
        return np.ascontiguousarray(_typed(node, alpha * (b if trans_b else b.T).astype(np.float64)))
    return _compressed_weight(node, trans_b) if alpha == 1.0 else None


@handles("Gemm")
def gemm(node: Node):
    """alpha*A'B' + beta*C. A constant or compressed B (`_linear_weight`) makes `linear`, with beta*C as its bias
    when C is constant and broadcasts along rows; otherwise matmul with its transpose flags, then the scalings."""
    mb = _mb()
    alpha, beta = float(node.attr("alpha", 1.0)), float(node.attr("beta", 1.0))
    trans_a, trans_b = bool(node.attr("transA", 0)), bool(node.attr("transB", 0))
    c = node.const(2) if node.has(2) else None
    weight = _linear_weight(node, alpha, trans_b) if not trans_a and node.dtype(0).kind == "f" else None
    if weight is not None:
        row = c is not None and (c.ndim < 2 or c.shape[0] == 1)
        bias = _typed(node, np.broadcast_to(beta * c.astype(np.float64).reshape(-1), weight.shape[:1])) if row else None
        y = mb.linear(x=node.x(0), weight=weight, bias=bias)
        if row:
            return y
    else:
        y = mb.matmul(x=node.x(0), y=node.x(1), transpose_x=trans_a, transpose_y=trans_b)
        if alpha != 1.0:
            y = mb.mul(x=y, y=np.asarray(alpha, node.dtype(0)))
    if not node.has(2):
        return y
    if c is not None:
        return mb.add(x=y, y=np.asarray(beta * c, node.dtype(0)))
    return mb.add(x=y, y=node.x(2) if beta == 1.0 else mb.mul(x=node.x(2), y=np.asarray(beta, node.dtype(0))))


@handles("MatMul")
def matmul(node: Node):
    """A compressed 2-D B (`_compressed_weight`) makes `linear` (x of rank 1 to 3). MIL's matmul broadcasts batch
    dims like numpy, but mis-types a 1-D x against a batched y and rejects a 1-D y: those become a row / column and
    back."""
    mb = _mb()
    x, y = node.x(0), node.x(1)
    weight = _compressed_weight(node, False) if node.dtype(0).kind == "f" and node.rank(0) <= 3 else None
    if weight is not None:
        return mb.linear(x=x, weight=weight)
    if node.rank(0) == 1 and node.rank(1) > 2:
        row = x.reshape(1, -1) if isinstance(x, np.ndarray) else mb.expand_dims(x=x, axes=[0])
        return mb.squeeze(x=mb.matmul(x=row, y=y), axes=[-2])
    if node.rank(1) == 1:
        column = y.reshape(-1, 1) if isinstance(y, np.ndarray) else mb.expand_dims(x=y, axes=[-1])
        return mb.squeeze(x=mb.matmul(x=x, y=column), axes=[-1])
    return mb.matmul(x=x, y=y)


# ---------------------------------------------------------------------------------------------- softmax family
def _softmax_like(node: Node, build):
    """build(x, axis) over one axis; opset < 13 normalizes over the tail flattened from `axis` on (a reshape to
    2-D and back unless the tail is the last axis alone)."""
    mb = _mb()
    shape = node.shape(0)
    rank = len(shape)
    axis = node.attr("axis", -1 if node.opset >= 13 else 1) % rank
    if node.opset >= 13 or axis == rank - 1:
        return build(node.x(0), axis)
    flat = mb.reshape(x=node.x(0), shape=[int(np.prod(shape[:axis])), -1])
    return mb.reshape(x=build(flat, 1), shape=shape)


@handles("Softmax")
def softmax(node: Node):
    return _softmax_like(node, lambda x, axis: _mb().softmax(x=x, axis=axis))


@handles("LogSoftmax")
def log_softmax(node: Node):
    """x - logsumexp(x): log(softmax) would underflow to -inf where ONNX stays finite."""
    mb = _mb()
    return _softmax_like(node, lambda x, axis: mb.sub(x=x, y=mb.reduce_log_sum_exp(x=x, axes=[axis], keep_dims=True)))


@handles("Hardmax")
def hardmax(node: Node):
    """One-hot of the first maximum along the axis."""
    mb = _mb()

    def build(x, axis):
        index = mb.reduce_argmax(x=x, axis=axis, keep_dims=False)
        return mb.one_hot(indices=index, one_hot_vector_size=x.shape[axis], axis=axis, on_value=1.0, off_value=0.0)

    return _softmax_like(node, build)


# ---------------------------------------------------------------------------------------------- depth <-> space
def _check_depth_to_space(proto, opset: int) -> list[tuple[str, str]]:
    mode = _attrs(proto).get("mode", "DCR")
    return [] if mode in ("DCR", "CRD") else [("unsupported_attribute_value", f"DepthToSpace: mode={mode!r}")]


@handles("DepthToSpace", check=_check_depth_to_space)
def depth_to_space(node: Node):
    _raise_check(node, _check_depth_to_space)
    _spatial_rank(node, (2,))
    block = node.attr("blocksize")
    if node.attr("mode", "DCR") == "CRD":
        return _mb().pixel_shuffle(x=_float(node), upscale_factor=block)
    return _mb().depth_to_space(x=_float(node), block_size=block)


@handles("SpaceToDepth")
def space_to_depth(node: Node):
    _spatial_rank(node, (2,))
    return _mb().space_to_depth(x=_float(node), block_size=node.attr("blocksize"))


# ---------------------------------------------------------------------------------------------- Resize / Upsample
_MODES = ("nearest", "linear", "cubic")


def _check_resize(proto, opset: int) -> list[tuple[str, str]]:
    attrs = _attrs(proto)
    mode = {"bilinear": "linear"}.get(attrs.get("mode", "nearest"), attrs.get("mode", "nearest"))
    if mode not in _MODES:
        return [("unsupported_attribute_value", f"{proto.op_type}: mode={mode!r}")]
    if attrs.get("coordinate_transformation_mode") == "tf_crop_and_resize":
        return [("unsupported_attribute_value", f"{proto.op_type}: coordinate_transformation_mode="
                                                "'tf_crop_and_resize' (extrapolation outside the roi)")]
    return []


def _x_original(coord: str, size: int, out: int, scale: float) -> np.ndarray:
    """The input coordinate of each output position along one axis (ONNX Resize's coordinate_transformation_mode)."""
    i = np.arange(out, dtype=np.float64)
    if coord == "align_corners":
        return i * (size - 1) / (out - 1) if out > 1 else np.zeros(1)
    if coord == "asymmetric":
        return i / scale
    if coord == "tf_half_pixel_for_nn":
        return (i + 0.5) / scale
    if coord == "pytorch_half_pixel" and out == 1:
        return np.zeros(1)
    x = (i + 0.5) / scale - 0.5
    if coord == "half_pixel_symmetric":
        x += size / 2 * (1 - out / (scale * size))
    elif coord not in ("half_pixel", "pytorch_half_pixel"):
        raise ValueError(f"coordinate_transformation_mode {coord!r}")
    return x


_ROUND = {"floor": np.floor, "ceil": np.ceil, "round_prefer_floor": lambda x: np.ceil(x - 0.5),
          "round_prefer_ceil": lambda x: np.floor(x + 0.5)}


def _sampling(node: Node, size: int, out: int, scale: float, mode: str, coord: str, nearest_mode: str) -> np.ndarray:
    """ONNX's (out x size) matrix along one axis: nearest picks rounded coordinates as ONNX Runtime computes them
    (onnx's reference differs: it lacks tf_half_pixel_for_nn and maps pytorch_half_pixel's single output pixel
    to -0.5); linear and cubic are onnx's reference Resize applied to an identity basis (`onnx_args`)."""
    if mode == "nearest":
        if nearest_mode not in _ROUND:
            raise node.fail("unsupported_attribute_value", f"nearest_mode={nearest_mode!r}")
        idx = np.clip(_ROUND[nearest_mode](_x_original(coord, size, out, scale)), 0, size - 1).astype(np.int64)
        return np.eye(size)[idx]
    coeffs = resize_coeffs(node, mode, nearest_mode)
    return resize_matrix(node, size, out, scale, coeffs, coord)[0]


def _resize_args(node: Node):
    """(scales, sizes, mode, coordinate mode, nearest mode) of Resize (every opset) or Upsample."""
    mode = {"bilinear": "linear"}.get(node.attr("mode", "nearest"), node.attr("mode", "nearest"))
    if node.op_type == "Upsample" or node.opset < 11:
        return legacy_scales(node), None, mode, "asymmetric", "floor"
    return (*resize_inputs(node), mode, node.attr("coordinate_transformation_mode", "half_pixel"),
            node.attr("nearest_mode", "round_prefer_floor"))


def _native(mode: str, mats: list[np.ndarray], shape: list[int], out: list[int]):
    """(MIL op, its arguments) whose sampling of the last two axes is exactly these matrices, or None."""
    axes = list(zip(mats, shape[-2:], out[-2:]))  # (matrix, input size, output size) for height and width
    oh, ow = out[-2:]
    if mode == "nearest":
        factors = [o // s if o % s == 0 else 0 for _, s, o in axes]
        if all(factors) and all(np.array_equal(m.argmax(1), nearest_index("upsample_nearest_neighbor", s, o, f))
                                for (m, s, o), f in zip(axes, factors)):
            return "upsample_nearest_neighbor", dict(scale_factor_height=factors[0], scale_factor_width=factors[1])
        if all(np.array_equal(m.argmax(1), nearest_index("resize_nearest_neighbor", s, o)) for m, s, o in axes):
            return "resize_nearest_neighbor", dict(target_size_height=oh, target_size_width=ow)
    elif mode == "linear":
        for sampling in ("UNALIGN_CORNERS", "STRICT_ALIGN_CORNERS", "ALIGN_CORNERS", "DEFAULT", "OFFSET_CORNERS"):
            if all(np.allclose(m, bilinear_matrix(sampling, s, o), atol=1e-6) for m, s, o in axes):
                return "resize_bilinear", dict(target_size_height=oh, target_size_width=ow, sampling_mode=sampling)
    return None


@handles("Resize", "Upsample", check=_check_resize)
def resize(node: Node):
    mb = _mb()
    _raise_check(node, _check_resize)
    shape = node.shape(0)
    rank = len(shape)
    scales, sizes, mode, coord, nearest_mode = _resize_args(node)
    out, scale = resize_shape(node, shape, scales, sizes, float32=True)  # ONNX Runtime's sizes
    moved = [a for a in range(rank) if out[a] != shape[a] or not math.isclose(scale[a], 1.0)]
    if any(a < rank - 2 for a in moved):
        raise node.fail("unsupported_attribute_value", f"resizing axes {moved} of a rank-{rank} tensor (Core ML "
                                                       "resizes the last two)")
    if not moved:
        return mb.identity(x=node.x(0))
    if node.dtype(0).kind != "f" and mode != "nearest":
        raise node.fail("unsupported_type", f"mode {mode!r} on an integer tensor")
    mats = [_sampling(node, shape[a], out[a], scale[a], mode, coord, nearest_mode) if a in moved else np.eye(shape[a])
            for a in (rank - 2, rank - 1)]
    native = _native(mode, mats, shape, out) if rank >= 3 else None
    if native is not None:
        op, args = native
        return getattr(mb, op)(x=_float(node), **args)
    y = node.x(0)
    for a, m in zip((rank - 2, rank - 1), mats):
        if a not in moved:
            continue
        if mode == "nearest":  # exact for any type: a gather of the chosen indices
            y = mb.gather(x=y, indices=m.argmax(axis=1).astype(np.int32), axis=a)
        elif a == rank - 2:
            y = mb.matmul(x=_typed(node, m), y=y)
        else:
            y = mb.matmul(x=y, y=_typed(node, m.T))
    return y
