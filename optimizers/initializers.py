"""New constants in an onnx-ir graph under fresh names: a weight may be shared with nodes a pass leaves alone, so
passes never overwrite an initializer in place; the old one is dropped by RemoveUnusedNodesPass when unused."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir


class InitializerWriter:
    """Hands out names no value of the graph has yet, and registers arrays as initializers under them."""

    def __init__(self, graph: ir.Graph):
        self.graph = graph
        self.taken = ({str(v.name) for v in graph.initializers.values()} | {str(v.name) for v in graph.inputs}
                      | {str(v.name) for n in graph for v in n.outputs})

    def name(self, base: str) -> str:
        """`base`, or `base` with underscores appended until no value in the graph has that name."""
        name = base
        while name in self.taken:
            name += "_"
        self.taken.add(name)
        return name

    def value(self, base: str, array: np.ndarray) -> ir.Value:
        name = self.name(base)
        value = ir.Value(name=name, const_value=ir.tensor(np.ascontiguousarray(array), name=name))
        self.graph.register_initializer(value)
        return value

    def put(self, node: ir.Node, index: int, array: np.ndarray, suffix: str) -> None:
        """Make `array` the node's input `index` (added when the optional input is missing)."""
        old = node.inputs[index] if len(node.inputs) > index else None
        value = self.value(f"{old.name if old is not None else node.name or node.op_type}_{suffix}", array)
        if len(node.inputs) <= index:
            node.resize_inputs(index + 1)
        node.replace_input_with(index, value)
