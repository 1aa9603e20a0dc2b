"""The op-handler registry of the MIL translator: one small function per ONNX op (converters/mil/ops/), each
building MIL ops with coremltools' Builder (`mb`).

A handler declares the oldest Core ML deployment target it needs (`since`, iOS15 unless said) and may add a
`check(proto, opset)` that returns what stops it (an attribute value Core ML lacks) without building
anything: the target's compatibility check reads both, for every node, before any conversion.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from accelopt.converters.mil import DEPLOYMENT_TARGETS, target_at_least
from accelopt.converters.registry import OnnxNode, OpRegistry, Unsupported, foldable, narrow_array

# MIL computes in fp32/fp16/int32/bool: other integer types are computed as int32 (Q/DQ handlers alone see int8)
_MIL_DTYPES = {"float32": "fp32", "float16": "fp16", "int32": "int32", "bool": "bool", "int8": "int8",
               "uint8": "uint8", "int16": "int16", "uint16": "uint16"}
COMPUTE = {np.dtype(t): np.dtype(np.int32) for t in (np.int8, np.uint8, np.int16, np.uint16, np.uint32, np.int64,
                                                     np.uint64)}
COMPUTE[np.dtype(np.float64)] = np.dtype(np.float32)


def compute_dtype(dtype: np.dtype) -> np.dtype:
    """The type MIL computes a tensor of this ONNX type in."""
    return COMPUTE.get(np.dtype(dtype), np.dtype(dtype))


def builder():
    """coremltools' MIL Builder (`mb`), imported on first use: the registry must import without coremltools."""
    from coremltools.converters.mil import Builder

    return Builder


def var_dtype(var: Any) -> np.dtype:
    """The numpy type of a MIL Var's elements."""
    from coremltools.converters.mil.mil import types

    return np.dtype(types.nptype_from_builtin(var.dtype))


def mil_dtype(dtype: np.dtype) -> str:
    """MIL's name of a numpy type ("fp32", "int32", ...), for `mb.cast` and placeholders."""
    name = np.dtype(dtype).name
    if name not in _MIL_DTYPES:
        raise Unsupported("unsupported_type", f"Core ML has no {name} tensors")
    return _MIL_DTYPES[name]


def as_compute(value: np.ndarray) -> np.ndarray:
    """A constant in the type MIL computes it in (int64 clamped to int32: INT64_MAX 'to the end' markers)."""
    value = narrow_array(value)
    want = compute_dtype(value.dtype)
    return value if value.dtype == want else value.astype(want)


@dataclass
class Node(OnnxNode):
    """A node for a MIL handler: inputs are MIL Vars or numpy constants; `target` is the deployment target."""

    target: str = DEPLOYMENT_TARGETS[0]

    def x(self, i: int = 0) -> Any:
        """Input i for a MIL op: constants become numpy arrays of the type MIL computes them in."""
        value = self.values[i] if i < len(self.values) else None
        if isinstance(value, np.ndarray):
            return as_compute(value)
        return value

    def shape(self, i: int = 0) -> list[int]:
        """The static shape of input i; symbolic dims are an error (the translator works on pinned shapes)."""
        value = self.values[i]
        dims = list(value.shape)
        if any(not isinstance(d, (int, np.integer)) for d in dims):
            raise Unsupported("dynamic_shape", f"{self.op_type} input {i} has a dynamic shape {dims}; "
                                               "pin it with fix-shapes")
        return [int(d) for d in dims]

    def rank(self, i: int = 0) -> int:
        return len(self.values[i].shape)

    def dtype(self, i: int = 0) -> np.dtype:
        """The numpy type input i is computed in."""
        value = self.values[i]
        return compute_dtype(value.dtype) if isinstance(value, np.ndarray) else var_dtype(value)

    def require(self, target: str, why: str) -> None:
        """Fail unless the deployment target is at least `target` (an op or attribute newer Core ML added)."""
        if not target_at_least(self.target, target):
            raise Unsupported("deployment_target", f"{self.op_type}: {why} needs deployment target {target} or "
                                                   f"newer (have {self.target})")


Check = Callable[[Any, int], list[tuple[str, str]]]  # (NodeProto, opset) -> [(reason, message)]
REGISTRY = OpRegistry("MIL")


def handles(*op_types: str, domain: str = "", since: str = "iOS15", check: Check | None = None,
            sees_constants: bool = False) -> Callable:
    """Register a MIL handler for the ONNX op types given; `since` is the oldest deployment target that has
    what it builds, `check` a static test of the node's attributes (see the module docstring).
    `sees_constants`: the handler is called even when all inputs are constants, instead of the translator
    folding the node (DequantizeLinear keeps int8 weights compressed; it returns numpy arrays to fold)."""
    return REGISTRY.handles(*op_types, domain=domain, since=since, check=check, sees_constants=sees_constants)


def folds(proto: Any, values: list[Any]) -> bool:
    """Whether the translator folds the node to constants rather than calling its handler."""
    return foldable(proto, values) and not REGISTRY.facts(proto.domain, proto.op_type).get("sees_constants")


find_handler = REGISTRY.find
supported_op_types = REGISTRY.supported
