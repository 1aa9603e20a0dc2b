"""Cutting channels out of the graph: slice every member constant, update depthwise `group` attributes, Split sizes
and the recorded shapes of the tensors that shrink. A composite group (Concat output, Split input) keeps its parts'
kept channels at their offsets: `with_composites` derives those index maps before anything is sliced. New constants
get fresh names, since the old ones may be shared with nodes that stay as they are; the unused ones are dropped when
the pass finishes."""

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


def with_composites(groups: list[Group], kept: list[tuple[Group, np.ndarray]]) -> list[tuple[Group, np.ndarray]]:
    """`kept` and, after it, every composite with a pruned part: the parts' kept indices shifted to their offsets
    (a part that is not pruned keeps all of its channels)."""
    keep = {g: k for g, k in kept}

    def of(group: Group) -> np.ndarray:
        if group not in keep:
            if not group.parts:
                return np.arange(group.size)
            keep[group] = np.concatenate([offset + of(leaf) for leaf, offset in group.leaves()])
        return keep[group]

    composites = [(g, of(g)) for g in groups if g.parts and not g.fixed]
    return kept + [(g, k) for g, k in composites if len(k) < g.size]


def slice_groups(kept: list[tuple[Group, np.ndarray]], writer: Writer) -> None:
    """Keep only the `kept` channel indices (sorted) of each group, in every constant, attribute and shape;
    composites must be in `kept` too (`with_composites`).

    A constant indexed by two groups (a Conv weight: outputs in one, inputs in another) is sliced along both axes
    before it is written once.
    """
    count = {g: len(keep) for g, keep in kept}
    cuts: dict[tuple[ir.Node, int], list[tuple[int, np.ndarray]]] = defaultdict(list)
    for group, keep in kept:
        for m in group.members:
            cuts[m.node, m.input].append((m.axis, keep))
        for node in group.depthwise:
            writer.set_attribute(node, "group", len(keep))
        for node in group.splits:
            _split_sizes(node, [count.get(p, p.size) for p in group.parts], writer)
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


def _split_sizes(node: ir.Node, sizes: list[int], writer: Writer) -> None:
    """Make the Split's sizes explicit: the `split` input (opset 13+, replacing `num_outputs`) or attribute."""
    if "split" in node.attributes or writer.graph.opset_imports.get("", 13) < 13:
        node.attributes["split"] = ir.AttrInt64s("split", sizes)
    else:
        node.attributes.pop("num_outputs", None)
        writer.put(node, 1, np.array(sizes, np.int64), "pruned")
