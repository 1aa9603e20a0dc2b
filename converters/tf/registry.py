"""The op-handler registry of the TF emitter: one small function per ONNX op, looked up by (domain, op type).

A handler receives a `Node` (the ONNX node, its attributes, its input values) and returns its outputs as TF
tensors or, when it can compute them without data (shapes, folded constants), as numpy arrays: numpy values
stay constants for the handlers after it, which is how shape subgraphs fold. Handlers raise `Unsupported`
with a reason code (the same codes `check` reports) for what TFLite cannot express.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import helper

# TFLite has no float64 arithmetic and few int64 kernels: such tensors are computed narrowed, and graph inputs
# and outputs are cast at the boundary so the signature keeps the ONNX types.
NARROW = {np.dtype(np.int64): np.dtype(np.int32), np.dtype(np.float64): np.dtype(np.float32),
          np.dtype(np.uint64): np.dtype(np.uint32)}
INT32_MAX = np.iinfo(np.int32).max
INT32_MIN = np.iinfo(np.int32).min


def narrowed(dtype: np.dtype) -> np.dtype:
    return NARROW.get(np.dtype(dtype), np.dtype(dtype))


class Unsupported(Exception):
    """A node the emitter cannot lower; `reason` is a stable code, the message says what to do."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


@dataclass
class Node:
    """One ONNX node being lowered: attributes decoded, inputs resolved to TF tensors or numpy constants."""

    proto: onnx.NodeProto
    op_type: str  # the ONNX op this node computes (an accelopt.nhwc "Conv2D" node computes "Conv")
    values: list[Any]  # per input: tf.Tensor, np.ndarray (a constant) or None (absent optional input)
    opset: int
    out_dtypes: list[np.dtype | None]  # ONNX element type of each output (before narrowing), when known
    channels_last: bool = False  # an accelopt.nhwc op: input 0 and output 0 are (N, spatial..., C)

    @property
    def name(self) -> str:
        return self.proto.name or (self.proto.output[0] if self.proto.output else self.proto.op_type)

    def attr(self, name: str, default: Any = None) -> Any:
        for a in self.proto.attribute:
            if a.name == name:
                value = helper.get_attribute_value(a)
                if isinstance(value, bytes):
                    return value.decode()
                if isinstance(value, list) and value and isinstance(value[0], bytes):
                    return [v.decode() for v in value]
                return value
        return default

    def has(self, i: int) -> bool:
        return i < len(self.values) and self.values[i] is not None

    def x(self, i: int = 0) -> Any:
        """Input i for a TF op: constants become numpy arrays of the narrowed dtype (TF takes them as is)."""
        value = self.values[i] if i < len(self.values) else None
        if isinstance(value, np.ndarray):
            return narrow_array(value)
        return value

    def const(self, i: int) -> np.ndarray | None:
        """Input i when it is a constant (initializer or folded), else None."""
        value = self.values[i] if i < len(self.values) else None
        return value if isinstance(value, np.ndarray) else None

    def need_const(self, i: int, what: str) -> np.ndarray:
        value = self.const(i)
        if value is None:
            raise Unsupported("requires_constant_input",
                              f"{self.op_type} needs a constant {what} (input {i}); run the simplify and "
                              "fix-shapes steps first so it folds")
        return value

    def shape(self, i: int = 0) -> list[int]:
        """The static shape of input i; dynamic dims are an error (TFLite here is static-shape)."""
        value = self.values[i]
        dims = list(value.shape) if isinstance(value, np.ndarray) else value.shape.as_list()
        if any(d is None for d in dims):
            raise Unsupported("dynamic_shape", f"{self.op_type} input {i} has a dynamic shape {dims}; "
                                               "pin it with fix-shapes")
        return [int(d) for d in dims]

    def rank(self, i: int = 0) -> int:
        return len(self.shape(i))

    def out_dtype(self, j: int = 0) -> np.dtype | None:
        """The narrowed element type output j must have, when ONNX shape inference knows it."""
        dtype = self.out_dtypes[j] if j < len(self.out_dtypes) else None
        return narrowed(dtype) if dtype is not None else None

    def fail(self, reason: str, message: str) -> Unsupported:
        return Unsupported(reason, f"{self.op_type}: {message}")


def narrow_array(value: np.ndarray) -> np.ndarray:
    """A constant in the type TF computes it in; int64 values out of int32 range are clamped (they only occur
    as 'to the end' markers such as Slice's INT64_MAX ends)."""
    target = narrowed(value.dtype)
    if target == value.dtype:
        return value
    if value.dtype.kind == "i":
        value = np.clip(value, INT32_MIN, INT32_MAX)
    return value.astype(target)


Handler = Callable[[Node], Any]
HANDLERS: dict[tuple[str, str], Handler] = {}
# Layout-sensitive ops: their handlers take input 0 and give output 0 channels-last, always.
CHANNELS_LAST: set[str] = set()


def handles(*op_types: str, domain: str = "", channels_last: bool = False) -> Callable[[Handler], Handler]:
    """Register a handler for the ONNX op types given (default domain unless `domain`). A `channels_last`
    handler sees input 0 and writes output 0 as (N, spatial..., C): the emitter transposes around it unless
    the layout step already made the node an `accelopt.nhwc` op."""

    def register(fn: Handler) -> Handler:
        if channels_last:
            CHANNELS_LAST.update(op_types)
        for op_type in op_types:
            key = (domain, op_type)
            if key in HANDLERS:
                raise RuntimeError(f"TF handler for {domain or 'ai.onnx'}::{op_type} registered twice")
            HANDLERS[key] = fn
        return fn

    return register


def find_handler(domain: str, op_type: str) -> Handler | None:
    return HANDLERS.get(("" if domain == "ai.onnx" else domain, op_type))


def supported_op_types(domain: str = "") -> list[str]:
    """The op types the emitter claims, for `accelopt recipes`, the docs and the coverage script."""
    return sorted(op for d, op in HANDLERS if d == domain)
