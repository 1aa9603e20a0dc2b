"""Cutting channels out of the graph: slice every member constant, update depthwise `group` attributes and the
recorded shapes of the tensors that shrink. New constants get fresh names, since the old ones may be shared with
nodes that stay as they are; the unused ones are dropped when the pass finishes."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import onnx_ir as ir

from accelopt.optimizers.initializers import InitializerWriter
from accelopt.optimizers.pruning.groups import Group, const


class Writer(InitializerWriter):
    """Puts new constants and attributes into an onnx_ir graph."""

    @staticmethod
    def set_attribute(node: ir.Node, name: str, value: int | float) -> None:
        node.attributes[name] = ir.AttrInt64(name, value) if isinstance(value, int) else ir.AttrFloat32(name, value)


def slice_groups(kept: list[tuple[Group, np.ndarray]], writer: Writer) -> None:
    """Keep only the `kept` channel indices (sorted) of each group, in every constant, attribute and shape.

    A constant indexed by two groups (a Conv weight: outputs in one, inputs in another) is sliced along both axes
    before it is written once.
    """
    cuts: dict[tuple[ir.Node, int], list[tuple[int, np.ndarray]]] = defaultdict(list)
    for group, keep in kept:
        for m in group.members:
            cuts[m.node, m.input].append((m.axis, keep))
        for node in group.depthwise:
            writer.set_attribute(node, "group", len(keep))
        for value in group.values:
            _shrink(value, group.axis[value], len(keep))
    for (node, index), axes in cuts.items():
        array = const(node.inputs[index])
        for axis, keep in axes:
            array = np.take(array, keep, axis=axis)
        writer.put(node, index, array, "pruned")


def _shrink(value: ir.Value, axis: int, channels: int) -> None:
    """Record the new channel count where the model declares the tensor's shape."""
    if value.shape is not None and axis < len(value.shape):
        dims = list(value.shape.dims)
        dims[axis] = channels
        value.shape = ir.Shape(dims)
