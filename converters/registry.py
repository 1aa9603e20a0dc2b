"""What every ONNX lowering (the TF emitter, the MIL translator) shares: an op-handler registry, the node a
handler sees, narrowing of the types edge runtimes lack, constant folding and tensor-name sanitising.

A handler receives a node (the ONNX node, its attributes, its input values) and returns its outputs as
backend values or, when it can compute them without data, as numpy arrays: numpy values stay constants for
the handlers after it, which is how shape subgraphs fold. Handlers raise `Unsupported` with a reason code
(the same codes a target's `check` reports) for what the backend cannot express.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import helper

# Neither TFLite nor Core ML computes in float64, and both have few (Core ML: no) int64 kernels: such tensors
# are computed narrowed, and graph inputs and outputs are cast at the boundary.
NARROW = {np.dtype(np.int64): np.dtype(np.int32), np.dtype(np.float64): np.dtype(np.float32),
          np.dtype(np.uint64): np.dtype(np.uint32)}
INT32_MAX = np.iinfo(np.int32).max
INT32_MIN = np.iinfo(np.int32).min
# Ops whose value is not a function of their inputs: never folded.
NONDETERMINISTIC = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial",
                    "Bernoulli"}


def narrowed(dtype: np.dtype) -> np.dtype:
    return NARROW.get(np.dtype(dtype), np.dtype(dtype))


def narrow_array(value: np.ndarray) -> np.ndarray:
    """A constant in the type the backend computes it in; int64 values out of int32 range are clamped (they
    only occur as 'to the end' markers such as Slice's INT64_MAX ends)."""
    target = narrowed(value.dtype)
    if target == value.dtype:
        return value
    if value.dtype.kind == "i":
        value = np.clip(value, INT32_MIN, INT32_MAX)
    return value.astype(target)


class Unsupported(Exception):
    """A node a lowering cannot express; `reason` is a stable code, the message says what to do."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


@dataclass
class OnnxNode:
    """One ONNX node being lowered: attributes decoded, inputs resolved to backend values or numpy constants.
    Each backend subclasses it with the accessors its handlers need (static shapes, narrowed inputs)."""

    proto: onnx.NodeProto
    op_type: str  # the ONNX op this node computes (an accelopt.nhwc "Conv" node computes "Conv")
    values: list[Any]  # per input: a backend value, np.ndarray (a constant) or None (absent optional input)
    opset: int
    out_dtypes: list[np.dtype | None]  # ONNX element type of each output (before narrowing), when known

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

    def out_dtype(self, j: int = 0) -> np.dtype | None:
        """The narrowed element type output j must have, when ONNX shape inference knows it."""
        dtype = self.out_dtypes[j] if j < len(self.out_dtypes) else None
        return narrowed(dtype) if dtype is not None else None

    def fail(self, reason: str, message: str) -> Unsupported:
        return Unsupported(reason, f"{self.op_type}: {message}")


Handler = Callable[[Any], Any]


class OpRegistry:
    """ONNX (domain, op type) -> handler, with per-handler facts (`info`) the backend's checks read."""

    def __init__(self, backend: str):
        self.backend = backend
        self.handlers: dict[tuple[str, str], Handler] = {}
        self.info: dict[tuple[str, str], dict[str, Any]] = {}

    def handles(self, *op_types: str, domain: str = "", **info: Any) -> Callable[[Handler], Handler]:
        def register(fn: Handler) -> Handler:
            for op_type in op_types:
                key = (domain, op_type)
                if key in self.handlers:
                    raise RuntimeError(f"{self.backend} handler for {domain or 'ai.onnx'}::{op_type} registered twice")
                self.handlers[key] = fn
                self.info[key] = info
            return fn

        return register

    def find(self, domain: str, op_type: str) -> Handler | None:
        return self.handlers.get(("" if domain == "ai.onnx" else domain, op_type))

    def facts(self, domain: str, op_type: str) -> dict[str, Any]:
        return self.info.get(("" if domain == "ai.onnx" else domain, op_type), {})

    def supported(self, domain: str = "") -> list[str]:
        """The op types the lowering claims, for `accelopt recipes`, the docs and the coverage scripts."""
        return sorted(op for d, op in self.handlers if d == domain)


def fold_node(proto: onnx.NodeProto, values: list[Any], opset: int) -> list[np.ndarray]:
    """The outputs of a node whose inputs are all constants, by onnx's reference evaluator."""
    from onnx.reference import ReferenceEvaluator

    evaluator = ReferenceEvaluator(proto, opsets={"": opset})
    feeds = {name: value for name, value in zip(proto.input, values) if name}
    return evaluator.run(None, feeds)


def foldable(proto: onnx.NodeProto, values: list[Any]) -> bool:
    """A standard-domain, deterministic node whose inputs are all known."""
    return proto.domain in ("", "ai.onnx") and proto.op_type not in NONDETERMINISTIC and bool(values) \
        and all(v is None or isinstance(v, np.ndarray) for v in values)


def safe_name(name: str, taken: set[str]) -> str:
    """An identifier-safe name for an ONNX tensor name (which may hold '/', ':', '.'), unique within `taken`."""
    key = re.sub(r"\W", "_", name)
    key = key if key and key[0].isalpha() else f"t_{key}"
    base, n = key, 1
    while key in taken:
        n += 1
        key = f"{base}_{n}"
    taken.add(key)
    return key


def static_shape(value: onnx.ValueInfoProto, lowering: str) -> list[int]:
    """A graph input's dims, which must all be pinned: the lowerings work on static shapes."""
    dims = value.type.tensor_type.shape.dim
    if any(not d.HasField("dim_value") or d.dim_value <= 0 for d in dims):
        shown = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else (d.dim_param or "?") for d in dims]
        raise Unsupported("dynamic_shape", f"input {value.name!r} has dynamic shape {shown}; {lowering} needs static "
                                           "shapes: pin it with input.shapes or the fix-shapes step")
    return [d.dim_value for d in dims]


def elem_dtype(value: onnx.ValueInfoProto) -> np.dtype | None:
    elem = value.type.tensor_type.elem_type
    return np.dtype(helper.tensor_dtype_to_np_dtype(elem)) if elem else None
