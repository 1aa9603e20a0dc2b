"""The op-handler registry of the TF emitter: one small function per ONNX op (converters/tf/ops/), looked up
by (domain, op type); the registry, node and narrowing rules are the shared ones of `converters.registry`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from accelopt.converters.registry import (INT32_MAX, INT32_MIN, NARROW, OnnxNode, OpRegistry, Unsupported,
                                          narrow_array, narrowed)

__all__ = ["CHANNELS_LAST", "INT32_MAX", "INT32_MIN", "NARROW", "Node", "REGISTRY", "Unsupported", "find_handler",
           "handles", "narrow_array", "narrowed", "supported_op_types"]


@dataclass
class Node(OnnxNode):
    """A node for a TF handler: inputs are tf.Tensors or numpy constants."""

    channels_last: bool = False  # an accelopt.nhwc op: input 0 and output 0 are (N, spatial..., C)

    def x(self, i: int = 0) -> Any:
        """Input i for a TF op: constants become numpy arrays of the narrowed dtype (TF takes them as is)."""
        value = self.values[i] if i < len(self.values) else None
        if isinstance(value, np.ndarray):
            return narrow_array(value)
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


REGISTRY = OpRegistry("TF")
# Layout-sensitive ops: their handlers take input 0 and give output 0 channels-last, always.
CHANNELS_LAST: set[str] = set()


def handles(*op_types: str, domain: str = "", channels_last: bool = False) -> Callable:
    """Register a handler for the ONNX op types given (default domain unless `domain`). A `channels_last`
    handler sees input 0 and writes output 0 as (N, spatial..., C): the emitter transposes around it unless
    the layout step already made the node an `accelopt.nhwc` op."""
    if channels_last:
        CHANNELS_LAST.update(op_types)
    return REGISTRY.handles(*op_types, domain=domain)


find_handler = REGISTRY.find
supported_op_types = REGISTRY.supported
