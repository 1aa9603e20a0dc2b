"""Per-op rules for moving a Transpose from an op's input to its outputs (ONNX Runtime's handler table).

A handler gets the consumer node, the perm `p` of the Transpose feeding it and which inputs that Transpose
feeds. It answers with a `Plan` (which inputs must be brought into the pre-transpose frame with p^-1, the new
attributes and constant inputs, the perm of the Transpose to put after each output), or None when the op
cannot take the transpose. The axis in the transposed frame `a` is axis `p[a]` of the untransposed one.
Anything without a handler is a barrier (Reshape, Flatten, MatMul, Gemm, Shape, ...).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import onnx

from accelopt.optimizers.transposes.graph import Graph
from accelopt.optimizers.transposes.perms import attr


@dataclass
class Plan:
    layout: list[int]  # inputs that must be in the untransposed frame (get p^-1 unless they come from the T)
    outs: list[tuple[int, list[int]]]  # (output index, perm of the Transpose to add after it)
    attrs: dict[str, Any] = field(default_factory=dict)
    consts: dict[int, np.ndarray] = field(default_factory=dict)  # input index -> new constant
    pad: bool = False  # broadcasting: left-pad lower-rank constants to full rank before permuting


Handler = Callable[[Graph, onnx.NodeProto, list[int], set[int]], "Plan | None"]

UNARY = frozenset({
    "Relu", "LeakyRelu", "Sigmoid", "Tanh", "Exp", "Log", "Erf", "Abs", "Neg", "Sqrt", "Reciprocal", "HardSwish",
    "HardSigmoid", "Elu", "Selu", "Softplus", "Softsign", "Mish", "Gelu", "Celu", "ThresholdedRelu", "Cast",
    "Floor", "Ceil", "Round", "Sign", "Not", "IsNaN", "IsInf", "Identity", "Sin", "Cos", "Tan", "Asin", "Acos",
    "Atan", "Sinh", "Cosh", "Asinh", "Acosh", "Atanh", "Shrink", "BitwiseNot",
})
FIRST_INPUT = frozenset({"Clip", "CastLike", "Dropout"})  # input 0 is data; the others are scalars / a type
BROADCAST = frozenset({
    "Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean", "PRelu", "Where", "Equal", "Less", "Greater",
    "LessOrEqual", "GreaterOrEqual", "And", "Or", "Xor", "BitShift", "Mod", "BitwiseAnd", "BitwiseOr",
    "BitwiseXor",
})
REDUCE = frozenset({
    "ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2", "ReduceLogSum",
    "ReduceLogSumExp", "ReduceSumSquare",
})
# Ops whose axes moved from an attribute to input 1 at this opset.
_AXES_INPUT_SINCE = {"ReduceSum": 13, "Squeeze": 13, "Unsqueeze": 13}


def _norm(a: int, rank: int) -> int:
    return a + rank if a < 0 else a


def _kept_perm(p: list[int], removed: list[int]) -> list[int]:
    """Output perm after dropping transposed-frame axes `removed` (keepdims=0, Squeeze, scalar Gather)."""
    kept_t = [i for i in range(len(p)) if i not in removed]
    kept_x = sorted(p[i] for i in kept_t)
    return [kept_x.index(p[i]) for i in kept_t]


def _unary(g, node, p, pos):
    if pos != {0} or len([o for o in node.output if o]) != 1:
        return None
    return Plan([0], [(0, p)])


def _first_input(g, node, p, pos):
    if pos != {0} or len([o for o in node.output if o]) != 1:
        return None
    return Plan([0], [(0, p)])


def _broadcast(g, node, p, pos):
    r = len(p)
    layout = []
    for i, name in enumerate(node.input):
        if i in pos:
            layout.append(i)
            continue
        rank = g.rank(name)
        if rank is None or rank > r:
            return None
        if g.numel_one(name):
            continue  # broadcasts the same in any frame
        if rank == r or g.const(name) is not None:
            layout.append(i)
        else:
            return None  # a lower-rank computed input would need an Unsqueeze first
    if len(node.output) != 1:
        return None
    return Plan(layout, [(0, p)], pad=True)


def _concat(g, node, p, pos):
    r = len(p)
    if any(g.rank(n) != r for n in node.input):
        return None
    return Plan(list(range(len(node.input))), [(0, p)], attrs={"axis": p[_norm(attr(node, "axis"), r)]})


def _split(g, node, p, pos):
    if pos != {0}:
        return None
    a = _norm(attr(node, "axis", 0), len(p))
    return Plan([0], [(i, p) for i, o in enumerate(node.output) if o], attrs={"axis": p[a]})


def _softmax(g, node, p, pos):
    if pos != {0} or g.opset < 13:
        return None
    return Plan([0], [(0, p)], attrs={"axis": p[_norm(attr(node, "axis", -1), len(p))]})


def _axes(g: Graph, node: onnx.NodeProto, since: int) -> tuple[list[int] | None, bool]:
    """(axes, given as input) of a Reduce/Squeeze/Unsqueeze; axes None = not given; raises on dynamic axes."""
    if g.opset < since:
        a = attr(node, "axes")
        return (None if a is None else list(a)), False
    if len(node.input) > 1 and node.input[1]:
        c = g.const(node.input[1])
        if c is None:
            raise ValueError("dynamic axes")
        return [int(v) for v in c.reshape(-1)], True
    return None, True


def _reduce(g, node, p, pos):
    if pos != {0}:
        return None
    r = len(p)
    try:
        axes, as_input = _axes(g, node, _AXES_INPUT_SINCE.get(node.op_type, 18))
    except ValueError:
        return None
    keep = attr(node, "keepdims", 1)
    if axes is None or not axes:
        if attr(node, "noop_with_empty_axes", 0):
            return Plan([0], [(0, p)])
        return Plan([0], [(0, p)] if keep else [])  # reduce all: keepdims=0 gives a scalar
    axes = [_norm(a, r) for a in axes]
    new = [p[a] for a in axes]
    plan = Plan([0], [(0, p if keep else _kept_perm(p, axes))])
    if as_input:
        plan.consts[1] = np.array(new, np.int64)
    else:
        plan.attrs["axes"] = new
    return plan


def _argminmax(g, node, p, pos):
    if pos != {0}:
        return None
    a = _norm(attr(node, "axis", 0), len(p))
    keep = attr(node, "keepdims", 1)
    return Plan([0], [(0, p if keep else _kept_perm(p, [a]))], attrs={"axis": p[a]})


def _gather(g, node, p, pos):
    if pos != {0}:
        return None
    a = _norm(attr(node, "axis", 0), len(p))
    irank = g.rank(node.input[1])
    if irank == 0:
        return Plan([0], [(0, _kept_perm(p, [a]))], attrs={"axis": p[a]})
    if irank == 1:
        return Plan([0], [(0, p)], attrs={"axis": p[a]})
    return None


def _slice(g, node, p, pos):
    if pos != {0} or g.opset < 10:
        return None
    r = len(p)
    starts = g.const(node.input[1])
    if starts is None:
        return None
    if len(node.input) > 3 and node.input[3]:
        axes = g.const(node.input[3])
        if axes is None:
            return None
        axes = [int(a) for a in axes.reshape(-1)]
    else:
        axes = list(range(starts.size))
    return Plan([0], [(0, p)], consts={3: np.array([p[_norm(a, r)] for a in axes], np.int64)})


def _pad(g, node, p, pos):
    if pos != {0}:
        return None
    r, inv = len(p), [p.index(k) for k in range(len(p))]
    if g.opset < 11:
        pads = attr(node, "pads")
        return Plan([0], [(0, p)], attrs={"pads": [pads[inv[k] + h * r] for h in (0, 1) for k in range(r)]})
    if len(node.input) > 3 and node.input[3]:
        axes = g.const(node.input[3])
        if axes is None:
            return None
        return Plan([0], [(0, p)], consts={3: np.array([p[_norm(int(a), r)] for a in axes.reshape(-1)], np.int64)})
    pads = g.const(node.input[1])
    if pads is None or pads.size != 2 * r:
        return None
    new = np.array([pads[inv[k] + h * r] for h in (0, 1) for k in range(r)], pads.dtype)
    return Plan([0], [(0, p)], consts={1: new})


def _tile(g, node, p, pos):
    if pos != {0}:
        return None
    reps = g.const(node.input[1])
    if reps is None or reps.size != len(p):
        return None
    inv = [p.index(k) for k in range(len(p))]
    return Plan([0], [(0, p)], consts={1: np.array([reps[inv[k]] for k in range(len(p))], reps.dtype)})


def _squeeze(g, node, p, pos):
    if pos != {0}:
        return None
    try:
        axes, as_input = _axes(g, node, 13)
    except ValueError:
        return None
    if not axes:
        return None  # "squeeze every 1": would need the shape; left as a barrier
    r = len(p)
    axes = [_norm(a, r) for a in axes]
    new = [p[a] for a in axes]
    plan = Plan([0], [(0, _kept_perm(p, axes))])
    if as_input:
        plan.consts[1] = np.array(new, np.int64)
    else:
        plan.attrs["axes"] = new
    return plan


def _unsqueeze(g, node, p, pos):
    if pos != {0}:
        return None
    try:
        axes, _ = _axes(g, node, 13)
    except ValueError:
        return None
    if not axes:
        return None
    out_rank = len(p) + len(axes)
    axes = sorted(_norm(a, out_rank) for a in axes)
    other = [i for i in range(out_rank) if i not in axes]
    q = list(range(out_rank))
    for j, o in enumerate(other):
        q[o] = other[p[j]]
    return Plan([0], [(0, q)])  # same axes in the untransposed frame, then one Transpose


def _qdq(g, node, p, pos):
    if pos != {0} or attr(node, "block_size", 0):
        return None
    plan = Plan([0], [(0, p)])
    if not g.numel_one(node.input[1]):
        if g.rank(node.input[1]) != 1:
            return None
        plan.attrs["axis"] = p[_norm(attr(node, "axis", 1), len(p))]
    return plan


HANDLERS: dict[str, Handler] = {
    **{op: _unary for op in UNARY},
    **{op: _first_input for op in FIRST_INPUT},
    **{op: _broadcast for op in BROADCAST},
    **{op: _reduce for op in REDUCE},
    "Concat": _concat, "Split": _split, "Softmax": _softmax, "LogSoftmax": _softmax, "Hardmax": _softmax,
    "ArgMax": _argminmax, "ArgMin": _argminmax, "Gather": _gather, "Slice": _slice, "Pad": _pad, "Tile": _tile,
    "Squeeze": _squeeze, "Unsqueeze": _unsqueeze, "QuantizeLinear": _qdq, "DequantizeLinear": _qdq,
}


def plan_for(g: Graph, node: onnx.NodeProto, p: list[int], positions: set[int]) -> Plan | None:
    """The handler's plan for pushing Transpose(p), which feeds `positions`, below `node`; None = barrier."""
    if node.domain not in ("", "ai.onnx") or any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
                                                  for a in node.attribute):
        return None
    handler = HANDLERS.get(node.op_type)
    if handler is None:
        return None
    plan = handler(g, node, p, positions)
    if plan is None or not positions <= set(plan.layout):
        return None
    return plan
