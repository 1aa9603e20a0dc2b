"""Cutting channels out of the graph: slice every member constant, update depthwise `group` attributes and the
recorded shapes of the tensors that shrink. New constants get fresh names, since the old ones may be shared with
nodes that stay as they are; the unused ones are dropped when the pass finishes."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import onnx_ir as ir

from accelopt.optimizers.pruning.groups import Group, const


class Writer:
    """Puts new constants and attributes into an onnx_ir graph."""

    def __init__(self, graph: ir.Graph):
        self.graph = graph
        self.taken = ({str(v.name) for v in graph.initializers.values()} | {str(v.name) for v in graph.inputs}
                      | {str(v.name) for n in graph for v in n.outputs})

    def _name(self, base: str) -> str:
        name = base
        while name in self.taken:
            name += "_"
        self.taken.add(name)
        return name

    def put(self, node: ir.Node, index: int, array: np.ndarray, suffix: str) -> None:
        """Make `array` the node's input `index` (added when the optional input is missing)."""
        old = node.inputs[index] if len(node.inputs) > index else None
        name = self._name(f"{old.name if old is not None else node.name or node.op_type}_{suffix}")
        value = ir.Value(name=name, const_value=ir.tensor(np.ascontiguousarray(array), name=name))
        self.graph.register_initializer(value)
        if len(node.inputs) <= index:
            node.resize_inputs(index + 1)
        node.replace_input_with(index, value)

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
