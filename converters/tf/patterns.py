"""ONNX subgraphs that TFLite has one builtin for, fused into one node before emission.

GELU exported with Erf (PyTorch's form: x * 0.5 * (1 + erf(x / sqrt 2)), in any association) becomes one
`Gelu` node, which the emitter lowers to `tf.nn.gelu`, i.e. TFLite's GELU builtin: TFLite has no ERF kernel.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import helper, numpy_helper

from accelopt.converters.onnx_args import scalar_constant as _scalar


def _near(value: float | None, want: float) -> bool:
    return value is not None and abs(value - want) < 1e-4 * abs(want)


def fuse_gelu(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """A copy with each Erf-GELU replaced by a Gelu node (its dead nodes left for the converter to drop), and
    how many were fused."""
    graph = model.graph
    constants = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)

    def sole(name: str, op_type: str) -> onnx.NodeProto | None:
        users = consumers.get(name, [])
        return users[0] if len(users) == 1 and users[0].op_type == op_type else None

    def other(node: onnx.NodeProto, name: str) -> str:
        return node.input[1] if node.input[0] == name else node.input[0]

    def half_of(name: str, x: str) -> bool:  # name is Mul(x, 0.5)
        node = producer.get(name)
        return node is not None and node.op_type == "Mul" and x in node.input and _near(
            _scalar(constants, other(node, x)), 0.5)

    replace: dict[int, onnx.NodeProto] = {}
    for erf in graph.node:
        if erf.op_type != "Erf" or erf.input[0] not in producer:
            continue
        scale = producer[erf.input[0]]
        if scale.op_type == "Div" and _near(_scalar(constants, scale.input[1]), math.sqrt(2)):
            x = scale.input[0]
        elif scale.op_type == "Mul" and _near(_scalar(constants, other(scale, scale.input[0])), 1 / math.sqrt(2)):
            x = scale.input[0] if scale.input[0] not in constants else scale.input[1]
        else:
            continue
        add = sole(erf.output[0], "Add")
        if add is None or not _near(_scalar(constants, other(add, erf.output[0])), 1.0):
            continue
        m1 = sole(add.output[0], "Mul")
        if m1 is None:
            continue
        factor = other(m1, add.output[0])
        if half_of(factor, x):
            last = m1
        else:
            m2 = sole(m1.output[0], "Mul")
            if m2 is None:
                continue
            rest = other(m2, m1.output[0])
            if not ((factor == x and _near(_scalar(constants, rest), 0.5))
                    or (rest == x and _near(_scalar(constants, factor), 0.5))):
                continue
            last = m2
        replace[id(last)] = helper.make_node("Gelu", [x], [last.output[0]], name=f"{last.name or x}_gelu")
    if not replace:
        return model, 0
    out = onnx.ModelProto()
    out.CopyFrom(model)
    del out.graph.node[:]
    out.graph.node.extend(replace.get(id(n), n) for n in graph.node)
    return out, len(replace)
