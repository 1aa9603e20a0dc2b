"""The NHWC op domain: channels-last versions of ONNX's layout-sensitive ops, and wrapping ops into it.

An NHWC op `accelopt.nhwc::{Op}{rank-2}D` has the inputs and attributes of the ONNX op `Op`, but its data input
0 and output 0 are channels-last. Each one used is backed by a model-local FunctionProto
(Transpose -> Op -> Transpose), so every intermediate model still runs in onnxruntime and can be checked
against the original. Optional inputs need no per-arity functions: a call that leaves a trailing input out,
or passes "" for a middle one, binds that formal input to "absent" inside the body (checked with ORT 1.32).
"""

from __future__ import annotations

import re

import numpy as np
import onnx
from onnx import defs, helper

from accelopt.optimizers.transposes.graph import Graph
from accelopt.optimizers.transposes.perms import attr

NHWC_DOMAIN = "accelopt.nhwc"

# Layout-sensitive ops that can be wrapped (data input 0 / output 0 are N, C, spatial...).
WRAPPABLE = frozenset({
    "Conv", "ConvTranspose", "MaxPool", "AveragePool", "LpPool", "GlobalAveragePool", "GlobalMaxPool",
    "GlobalLpPool", "BatchNormalization", "InstanceNormalization", "LRN", "Resize", "DepthToSpace",
    "SpaceToDepth",
})
_RANK4_ONLY = frozenset({"Resize", "DepthToSpace", "SpaceToDepth"})
_NAME = re.compile(r"^([A-Za-z]+)([123])D$")


def to_last(rank: int) -> list[int]:
    return [0, *range(2, rank), 1]


def to_first(rank: int) -> list[int]:
    return [0, rank - 1, *range(1, rank - 1)]


def nhwc_op(node: onnx.NodeProto) -> tuple[str, int] | None:
    """For an NHWC-domain node, the ONNX op it stands for and its tensor rank, e.g. ("Conv", 4)."""
    if node.domain != NHWC_DOMAIN:
        return None
    m = _NAME.match(node.op_type)
    return (m.group(1), int(m.group(2)) + 2) if m else None


def nhwc_function(op: str, rank: int, opset: int) -> onnx.FunctionProto:
    """Transpose(to_first) -> op (every schema attribute by reference) -> Transpose(to_last)."""
    schema = defs.get_schema(op, opset, "")
    names = [i.name for i in schema.inputs]
    body = helper.make_node(op, ["X_nchw", *names[1:]], ["Y_nchw"])
    for name, a in sorted(schema.attributes.items()):
        body.attribute.append(helper.make_attribute_ref(name, a.type))
    nodes = [helper.make_node("Transpose", ["X"], ["X_nchw"], perm=to_first(rank)), body,
             helper.make_node("Transpose", ["Y_nchw"], ["Y"], perm=to_last(rank))]
    return helper.make_function(NHWC_DOMAIN, f"{op}{rank - 2}D", ["X", *names[1:]], ["Y"], nodes,
                                opset_imports=[helper.make_opsetid("", opset)],
                                attributes=sorted(schema.attributes))


def why_not(g: Graph, node: onnx.NodeProto, ops: set[str] | None) -> str | None:
    """Why this node is not wrapped (None: wrap it). Only called for standard-domain ops."""
    op = node.op_type
    if op not in WRAPPABLE or node.domain not in ("", "ai.onnx"):
        return "not layout-sensitive"
    if ops is not None and op not in ops:
        return "excluded by config"
    rank = g.rank(node.input[0])
    if rank is None or not 3 <= rank <= 5:
        return f"data rank {rank if rank is not None else 'unknown'}"
    if op in _RANK4_ONLY and rank != 4:
        return f"{op} is wrapped for 4D data only"
    outputs = [o for o in node.output if o]
    if op == "MaxPool" and len(outputs) > 1:
        return "MaxPool with Indices"
    if op == "BatchNormalization" and (len(outputs) != 1 or attr(node, "training_mode", 0)):
        return "training-mode BatchNormalization"
    if len(outputs) != 1 or node.output[0] != outputs[0]:
        return "more than one output"
    if op == "BatchNormalization" and g.opset < 9 and not attr(node, "spatial", 1):
        return "non-spatial BatchNormalization"
    if op == "Resize":
        return _resize_why_not(g, node)
    return None


def _resize_why_not(g: Graph, node: onnx.NodeProto) -> str | None:
    if g.opset < 11:
        return "Resize before opset 11"
    if attr(node, "axes") is not None:
        return "Resize with axes"
    inputs = list(node.input) + [""] * (4 - len(node.input))
    scales = g.const(inputs[2]) if inputs[2] else None
    sizes = g.const(inputs[3]) if inputs[3] else None
    in_shape = g.shape(node.input[0])
    if scales is not None and scales.size:
        return None if scales.size == 4 and np.all(scales[:2] == 1) else "Resize scales change N or C"
    if sizes is not None and sizes.size:
        ok = sizes.size == 4 and in_shape is not None and list(sizes[:2]) == list(in_shape[:2])
        return None if ok else "Resize sizes change N or C (or input shape unknown)"
    return "Resize scales/sizes not constant"


def wrap(g: Graph, ops: set[str] | None = None) -> tuple[dict[str, int], list[dict], set[tuple[str, int]]]:
    """Replace each wrappable op by Transpose(to_last) -> NHWC op -> Transpose(to_first).

    Returns (wrapped count by op type, skipped layout-sensitive nodes with the reason, (op, rank) used).
    """
    wrapped: dict[str, int] = {}
    skipped: list[dict] = []
    used: set[tuple[str, int]] = set()
    for node in list(g.nodes):
        if node.op_type not in WRAPPABLE or node.domain not in ("", "ai.onnx"):
            continue
        reason = why_not(g, node, ops)
        if reason is not None:
            skipped.append({"node": node.name, "op": node.op_type, "why": reason})
            continue
        rank = g.rank(node.input[0])
        x, y = node.input[0], node.output[0]
        t_in = g.add_transpose(x, to_last(rank), g.fresh(f"{x}_nhwc"))
        y_nhwc = g.fresh(f"{y}_nhwc")
        y_shape = g.shape(y)
        g.shapes[y_nhwc] = None if y_shape is None else tuple(y_shape[p] for p in to_last(rank))
        if y in g.dtypes:
            g.dtypes[y_nhwc] = g.dtypes[y]
        g.unlink(node)
        node.input[0] = t_in.output[0]
        del node.output[1:]
        node.output[0] = y_nhwc
        used.add((node.op_type, rank))
        wrapped[node.op_type] = wrapped.get(node.op_type, 0) + 1
        node.op_type = f"{node.op_type}{rank - 2}D"
        node.domain = NHWC_DOMAIN
        g.link(node)
        g.add_transpose(y_nhwc, to_first(rank), y)
    return wrapped, skipped, used


def add_functions(model: onnx.ModelProto, used: set[tuple[str, int]], opset: int) -> None:
    """Attach the functions for `used` (skipping ones already there) and import the NHWC domain."""
    if not used:
        return
    have = {(f.domain, f.name) for f in model.functions}
    for op, rank in sorted(used):
        if (NHWC_DOMAIN, f"{op}{rank - 2}D") not in have:
            model.functions.append(nhwc_function(op, rank, opset))
    if not any(o.domain == NHWC_DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(NHWC_DOMAIN, 1))
    if model.ir_version < 8:  # model-local functions need IR 8
        model.ir_version = 8
