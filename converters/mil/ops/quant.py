"""QuantizeLinear / DequantizeLinear (QDQ graphs, e.g. from onnxruntime's quantize_static).

- DequantizeLinear of a constant (quantized weights) becomes a constexpr op, so the weight stays int8 in the
  .mlpackage: `constexpr_affine_dequantize` (iOS16, per tensor or per axis) or `constexpr_blockwise_shift_scale`
  (iOS18+, also opset 21's `block_size`). What no constexpr op holds (int32 biases, int16/int4 data, blocks
  before iOS18, any weight before iOS16) folds to a float constant: the same numbers, uncompressed.
- Q/DQ of activations become MIL `quantize` / `dequantize` (iOS17, int8/uint8 only). The translator computes
  integer tensors as int32 and so casts a QuantizeLinear's int8/uint8 result to int32; DequantizeLinear reads
  through that cast (`_quantized`), so the int8 tensor passes between the two and the cast is dead code that
  coremltools' pass pipeline removes.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx

from accelopt.converters.mil import target_at_least
from accelopt.converters.mil.registry import Node, handles, builder as _mb
from accelopt.converters.registry import fold_node

_QUANTIZED = {np.dtype(np.int8): "int8", np.dtype(np.uint8): "uint8"}  # what MIL quantize/dequantize hold


def _block_size(proto: onnx.NodeProto) -> int:
    return next((a.i for a in proto.attribute if a.name == "block_size"), 0)


def _check_quantize(proto: onnx.NodeProto, opset: int) -> list[tuple[str, str]]:
    found = []
    if _block_size(proto):
        found.append(("unsupported_attribute_value", f"QuantizeLinear: block_size={_block_size(proto)} (blocked "
                                                     "activation quantization): MIL quantize has per-tensor and "
                                                     "per-axis scales only"))
    out = next((a.i for a in proto.attribute if a.name == "output_dtype"), 0)
    if out and out not in (onnx.TensorProto.INT8, onnx.TensorProto.UINT8):
        found.append(("unsupported_type", f"QuantizeLinear: output_dtype={onnx.TensorProto.DataType.Name(out)}: "
                                          "MIL quantize has int8 and uint8 outputs only"))
    return found


def _params(node: Node, rank: int, scale_name: str) -> tuple[np.ndarray, np.ndarray | None, int | None]:
    """Scale (fp32) and zero point (its ONNX integer type, None when absent or all zero), both scalars or
    vectors, and the axis for vectors (None per tensor): what MIL's quantize ops take."""
    scale = node.need_const(1, scale_name).astype(np.float32)
    zero = node.const(2) if node.has(2) else None
    if node.has(2) and zero is None:
        raise node.fail("requires_constant_input", "needs a constant zero point (input 2)")
    if node.attr("block_size", 0):
        raise node.fail("unsupported_attribute_value", f"block_size={node.attr('block_size')} on a runtime tensor: "
                                                       "MIL (de)quantize has per-tensor and per-axis scales only")
    if zero is not None and not np.any(zero):
        zero = None
    if scale.size == 1:
        return scale.reshape(()), None if zero is None else zero.reshape(()), None
    if scale.ndim != 1:
        raise node.fail("unsupported_attribute_value", f"scale of shape {list(scale.shape)}")
    return scale, zero, node.attr("axis", 1) % rank


def _out_type(node: Node) -> np.dtype:
    """QuantizeLinear's output type: the zero point's, else `output_dtype` (opset 21), else uint8."""
    if node.const(2) is not None:
        return node.const(2).dtype
    if node.out_dtypes and node.out_dtypes[0] is not None:
        return np.dtype(node.out_dtypes[0])
    return np.dtype(np.uint8)


@handles("QuantizeLinear", since="iOS17", check=_check_quantize)
def quantize_linear(node: Node):
    node.require("iOS17", "activation quantization (MIL quantize)")
    out = _out_type(node)
    if out not in _QUANTIZED:
        raise node.fail("unsupported_type", f"quantizing to {out}: MIL quantize has int8 and uint8 outputs only")
    scale, zero, axis = _params(node, node.rank(0), "y_scale")
    x, dtype = node.x(0), node.dtype(0)
    if dtype.kind != "f":
        x, dtype = _mb().cast(x=x, dtype="fp32"), np.dtype(np.float32)
    return _mb().quantize(input=x, scale=scale.astype(dtype),
                          zero_point=None if zero is None else zero.astype(out), axis=axis,
                          output_dtype=_QUANTIZED[out])


def _quantized(x: Any) -> Any:
    """The int8/uint8 Var behind x: x itself, or the input of the int32 cast the translator put after a
    QuantizeLinear (see the module docstring); None when x holds another integer type."""
    from coremltools.converters.mil.mil import types

    small = (types.int8, types.uint8)
    if x.dtype in small:
        return x
    if x.op is not None and x.op.op_type == "cast" and x.op.x.dtype in small:
        return x.op.x
    return None


@handles("DequantizeLinear", sees_constants=True)
def dequantize_linear(node: Node):
    """Weights (a constant input) compress; activations need iOS17's dequantize, but always come with a
    QuantizeLinear, which declares iOS17 for the compatibility check, so this handler declares iOS15."""
    if node.const(0) is not None:
        return _weights(node)
    scale, zero, axis = _params(node, node.rank(0), "x_scale")
    x = _quantized(node.values[0])
    if x is None:  # int32/int16 data (a graph input, a Cast): exact in float, on any target
        return _float_dequantize(node, scale, zero, axis)
    node.require("iOS17", "activation dequantization (MIL dequantize)")
    return _mb().dequantize(input=x, scale=scale, zero_point=zero, axis=axis)


def _float_dequantize(node: Node, scale: np.ndarray, zero: np.ndarray | None, axis: int | None):
    mb = _mb()
    shape = [-1 if a == axis else 1 for a in range(node.rank(0))] if axis is not None else []
    x = mb.cast(x=node.x(0), dtype="fp32")
    if zero is not None:
        x = mb.sub(x=x, y=zero.astype(np.float32).reshape(shape))
    return mb.mul(x=x, y=scale.reshape(shape))


def _weights(node: Node):
    """A constexpr op holding the quantized constant, or the dequantized constant where none holds it."""
    data = node.const(0)
    scale = node.need_const(1, "x_scale").astype(np.float32)
    zero = node.need_const(2, "x_zero_point").astype(data.dtype) if node.has(2) else None
    block = node.attr("block_size", 0)
    blockwise = target_at_least(node.target, "iOS18")
    if data.dtype not in _QUANTIZED or not target_at_least(node.target, "iOS16") or (block and not blockwise):
        return fold_node(node.proto, node.values, node.opset)
    axis = node.attr("axis", 1) % data.ndim
    if blockwise:
        return _blockwise(node, data, scale, zero, axis, block)
    if scale.size == 1:
        scale, zero, axis = scale.reshape(()), None if zero is None else zero.reshape(()), 0
    zero = np.zeros((), data.dtype) if zero is None else zero
    return _mb().constexpr_affine_dequantize(quantized_data=data, zero_point=zero, scale=scale, axis=axis)


def _blockwise(node: Node, data: np.ndarray, scale: np.ndarray, zero: np.ndarray | None, axis: int, block: int):
    """iOS18's constexpr_blockwise_shift_scale: scale and offset of data's rank, with a whole number of elements
    per scale along each axis (ONNX lets the last block be short: such a weight folds)."""
    if not block:
        scale = scale.reshape([-1 if a == axis and scale.size > 1 else 1 for a in range(data.ndim)])
    if scale.ndim != data.ndim or any(d % s for d, s in zip(data.shape, scale.shape)):
        return fold_node(node.proto, node.values, node.opset)
    offset = zero.reshape(scale.shape) if zero is not None and np.any(zero) else None
    return _mb().constexpr_blockwise_shift_scale(data=data, scale=scale, offset=offset)
