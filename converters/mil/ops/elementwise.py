"""Elementwise ops: math, activations, comparisons and logic. ONNX and MIL broadcast alike (numpy rules)."""

from __future__ import annotations

from accelopt.converters.mil.registry import Node, handles


def _mb():
    from coremltools.converters.mil import Builder as mb

    return mb


_BINARY = {"Add": "add", "Sub": "sub", "Mul": "mul"}


@handles(*_BINARY)
def binary(node: Node):
    return getattr(_mb(), _BINARY[node.op_type])(x=node.x(0), y=node.x(1))


@handles("Relu")
def relu(node: Node):
    return _mb().relu(x=node.x(0))
