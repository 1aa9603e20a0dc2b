"""Channel dependency groups: the channel indices that must be removed together (quantization notes §9.1).

Every activation tensor with a channel axis is a channel space. Ops that tie channel i of one tensor to channel i of
another join their spaces in a union-find, as DepGraph (Torch-Pruning) does on torch modules: BatchNormalization,
element-wise ops, pools, channel-preserving reduces/reshapes and Resize join input and output; Add/Mul/... join all
their activation inputs (which couples residual branches); a depthwise Conv joins its input and output. A group-1
Conv, Gemm or MatMul with a constant weight decouples its input space from its output space. Anything not modelled
(Reshape, Transpose, Slice, Softmax, LayerNormalization, grouped Conv, Q/DQ, Shape, graph inputs and outputs,
tensors read inside control-flow subgraphs, unknown ops) fixes the spaces it touches: they keep every channel.
Channel axes come from the op (1 for Conv-style tensors, the last one for MatMul), and broadcasting is checked on
inferred shapes: a constant with the channel count on the channel axis is sliced with the group, one with 1 there
broadcasts, anything else fixes the group.

Concat and Split along the channels are an offset map instead of a union: the Concat output, and the Split input,
is a composite space whose channels are its parts' channels one after another (a C2f block: cv1's outputs are the
two Split halves; the Concat feeding cv2 is both halves and the bottleneck outputs). Each part stays its own group,
ranked and pruned on its own; a composite is never ranked: it keeps its parts' kept channels at their offsets, and
its members (cv1's output rows, cv2's input columns) and the Split sizes are sliced with that map. A composite that
must stay whole (a graph output, a Reshape, a protected writer) keeps its parts whole; two ops that cut one space
differently (a Concat and a Split of the same tensor at other offsets) fix it. Slice along the channels stays
fixed.

A group lists the constants indexed by its channels (weights, biases, BN parameters, per-channel scales) with the
axis to slice, the layers writing its channels (producers), the layers reading them (consumers, the ones a refit
re-solves), the depthwise Convs whose `group` attribute is its channel count and, for a composite, its parts and the
Splits whose sizes follow them.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import onnx
import onnx_ir as ir

from accelopt.errors import BadInputError

Dims = list[int | str | None]
Shapes = dict[str, Dims | None]  # tensor name -> dims after shape inference; None where even the rank is unknown

# Element-wise ops, unary or broadcasting: activation inputs with the output's channels join the output's group,
# constants with the channel count along the channel axis become members, other constants must broadcast over it.
_ELEMENTWISE = frozenset({
    "Relu", "LeakyRelu", "PRelu", "Clip", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Elu", "Selu", "Celu",
    "Gelu", "Softplus", "Softsign", "Mish", "Erf", "ThresholdedRelu", "Exp", "Log", "Abs", "Neg", "Sqrt",
    "Reciprocal", "Floor", "Ceil", "Round", "Sign", "Identity", "Dropout",
    "Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean"})
_POOLS = frozenset({"MaxPool", "AveragePool", "LpPool", "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool"})
_REDUCES = frozenset({"ReduceMean", "ReduceMax", "ReduceMin", "ReduceSum", "ReduceL1", "ReduceL2", "ReduceProd",
                      "ReduceSumSquare", "ReduceLogSum", "ReduceLogSumExp"})
_UNIT_RESHAPES = frozenset({"Flatten", "Squeeze", "Unsqueeze"})  # channel-preserving when only size-1 dims move
# Per-channel normalizations: input index -> whether it counts in the weight-norm criteria (running stats do not).
_NORM_PARAMS = {"BatchNormalization": {1: True, 2: True, 3: False, 4: False},
                "InstanceNormalization": {1: True, 2: True}}
_LAYERS = frozenset({"Conv", "Gemm", "MatMul"})


@dataclass(frozen=True)
class Member:
    """A constant input of `node` whose `axis` runs over the group's channels."""

    node: ir.Node
    input: int
    axis: int
    scored: bool = True  # counts in the l1/l2 criteria


@dataclass(eq=False)  # identity: groups key dicts and link to each other
class Group:
    values: list[ir.Value]
    size: int | None
    members: list[Member]
    producers: list[ir.Node]  # layers whose output channels these are
    consumers: list[ir.Node]  # group-1 Conv, Gemm, MatMul reading these channels: what a refit re-solves
    depthwise: list[ir.Node]  # depthwise Convs (in and out in this group): `group` attribute = channel count
    axis: dict[ir.Value, int]  # channel axis of each value
    fixed: list[str] = field(default_factory=list)  # why every channel must stay; empty = prunable
    parts: list[Group] = field(default_factory=list)  # a composite: these groups' channels one after another
    splits: list[ir.Node] = field(default_factory=list)  # Splits of a composite: their sizes = the parts' counts
    part_of: list[tuple[Group, int]] = field(default_factory=list, repr=False)  # (composite, index in its parts)

    @property
    def name(self) -> str:
        """The first layer writing the channels: how reports and `per_layer` name a group. A Split part that no layer
        writes is named after its composite and its index: "cv1[0]"."""
        writers = self.producers + self.depthwise
        if writers:
            return node_name(writers[0])
        return f"{self.part_of[0][0].name}[{self.part_of[0][1]}]" if self.part_of else str(self.values[0].name)

    @property
    def written(self) -> bool:
        """Some layer writes these channels: its own, or, for a Split part, the composite's."""
        return bool(self.producers or self.depthwise) or any(whole.written for whole, _ in self.part_of)

    def leaves(self, offset: int = 0) -> list[tuple[Group, int]]:
        """(non-composite group, channel offset) for each stretch of a composite's channels; [(self, 0)] otherwise."""
        out, at = [], offset
        for part in self.parts:
            out += part.leaves(at)
            at += part.size
        return out or [(self, offset)]

    @property
    def nodes(self) -> set[ir.Node]:
        """Every node whose constants or attributes change when the group is pruned."""
        return {m.node for m in self.members} | set(self.producers + self.consumers + self.depthwise)


def node_name(node: ir.Node) -> str:
    return node.name or f"{node.op_type}({node.outputs[0].name})"


def const(value: ir.Value | None) -> np.ndarray | None:
    """A tensor fixed in the file (initializer or Constant node), not one a caller could feed."""
    if value is None or value.is_graph_input():
        return None
    tensor = ir.convenience.get_const_tensor(value)
    return None if tensor is None else tensor.numpy()


def _is_layer(node: ir.Node) -> bool:
    """A Conv/Gemm/MatMul with a constant weight: where channel spaces decouple."""
    return node.op_type in _LAYERS and node.domain in ("", "ai.onnx") and len(node.inputs) > 1 \
        and const(node.inputs[1]) is not None


# --- shapes ------------------------------------------------------------------------------------------------------


def infer_shapes(model: onnx.ModelProto, pins: dict[str, list[int | str]]) -> Shapes:
    """Tensor dims from onnx shape inference, on a copy whose inputs carry the recipe's shape pins."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    for value in copy.graph.input:
        if value.name in pins and value.type.HasField("tensor_type"):
            _pin(value.type.tensor_type.shape, pins[value.name])
    try:
        copy = onnx.shape_inference.infer_shapes(copy, data_prop=True)
    except Exception:  # custom ops or odd models: the declared shapes still help
        pass
    graph = copy.graph
    shapes: Shapes = {t.name: list(t.dims) for t in graph.initializer}
    for value in [*graph.input, *graph.value_info, *graph.output]:
        tensor = value.type.tensor_type
        has_shape = value.type.HasField("tensor_type") and tensor.HasField("shape")
        shapes[value.name] = [d.dim_value if d.dim_value > 0 else (d.dim_param or None)
                              for d in tensor.shape.dim] if has_shape else None
    return shapes


def _pin(shape: onnx.TensorShapeProto, given: list[int | str]) -> None:
    """Static dims from `given` (symbolic entries keep what the model declares)."""
    old = [d.dim_value if d.dim_value > 0 else d.dim_param for d in shape.dim]
    new = [g if isinstance(g, int) and g > 0 else (old[i] if i < len(old) else str(g)) for i, g in enumerate(given)]
    del shape.dim[:]
    for d in new:
        if isinstance(d, int):
            shape.dim.add().dim_value = d
        else:
            shape.dim.add().dim_param = d


# --- union-find over channel spaces --------------------------------------------------------------------------------


class _Spaces:
    """The union-find, with what each space carries until the components become groups."""

    def __init__(self, shapes: Shapes):
        self.shapes = shapes
        self.parent: dict[ir.Value, ir.Value] = {}
        self.axis: dict[ir.Value, int] = {}
        self.fixed: dict[ir.Value, list[str]] = defaultdict(list)
        self.members: dict[ir.Value, list[Member]] = defaultdict(list)
        self.producers: dict[ir.Value, list[ir.Node]] = defaultdict(list)
        self.consumers: dict[ir.Value, list[ir.Node]] = defaultdict(list)
        self.depthwise: dict[ir.Value, list[ir.Node]] = defaultdict(list)
        self.parts: dict[ir.Value, list[list[ir.Value]]] = defaultdict(list)  # composite -> the cuts ops make of it
        self.splits: dict[ir.Value, list[ir.Node]] = defaultdict(list)

    def find(self, v: ir.Value) -> ir.Value:
        self.parent.setdefault(v, v)
        while self.parent[v] is not v:
            self.parent[v] = self.parent[self.parent[v]]
            v = self.parent[v]
        return v

    def union(self, a: ir.Value, b: ir.Value) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra is not rb:
            self.parent[rb] = ra

    def space(self, v: ir.Value, axis: int) -> None:
        """Register `v` with its channel axis; two ops that disagree on the axis fix it."""
        self.find(v)
        if self.axis.setdefault(v, axis) != axis:
            self.fix(v, f"{v.name}: ops disagree on its channel axis")

    def axis_of(self, v: ir.Value) -> int:
        return self.axis.get(v, 1)

    def fix(self, v: ir.Value, reason: str) -> None:
        self.find(v)
        self.fixed[v].append(reason)

    def dims(self, v: ir.Value) -> Dims | None:
        return self.shapes.get(str(v.name))

    def channels(self, v: ir.Value) -> int | None:
        dims = self.dims(v)
        axis = self.axis_of(v)
        if dims is None or axis >= len(dims) or not isinstance(dims[axis], int):
            return None
        return dims[axis]

    def activations(self, node: ir.Node) -> list[ir.Value]:
        return [v for v in node.inputs if v is not None and const(v) is None]

    def fix_node(self, node: ir.Node, reason: str) -> None:
        for v in self.activations(node) + list(node.outputs):
            self.fix(v, reason)


Handler = Callable[[ir.Node, _Spaces], None]


def _conv(node: ir.Node, s: _Spaces) -> None:
    x, y, w = node.inputs[0], node.outputs[0], const(node.inputs[1])
    b = node.inputs[2] if len(node.inputs) > 2 else None
    if x is None or const(x) is not None or w is None or (b is not None and const(b) is None):
        return s.fix_node(node, f"{node_name(node)}: Conv without constant weights")
    s.space(x, 1)
    s.space(y, 1)
    g = node.attributes.get_int("group", 1)
    out = [Member(node, 1, 0)] + ([Member(node, 2, 0)] if b is not None else [])
    if g == 1:
        s.members[x].append(Member(node, 1, 1))
        s.consumers[x].append(node)
        s.members[y] += out
        s.producers[y].append(node)
    elif w.shape[1] == 1 and w.shape[0] == g:  # depthwise: channel i in, channel i out
        s.union(x, y)
        s.members[y] += out
        s.depthwise[y].append(node)
    else:
        s.fix_node(node, f"{node_name(node)}: grouped Conv (group={g}) is not pruned in v1")


def _gemm(node: ir.Node, s: _Spaces) -> None:
    a, y, w = node.inputs[0], node.outputs[0], const(node.inputs[1])
    if a is None or const(a) is not None or w is None or w.ndim != 2:
        return s.fix_node(node, f"{node_name(node)}: Gemm without a constant 2-D weight")
    trans_b = node.attributes.get_int("transB", 0)
    s.space(a, 1)
    s.space(y, 1)
    c = const(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] is not None else None
    if node.attributes.get_int("transA", 0) or (c is not None and c.ndim == 2 and c.shape[0] > 1):
        s.fix(a, f"{node_name(node)}: Gemm with transA=1 or a per-row C (not refit in v1)")
    else:
        s.members[a].append(Member(node, 1, 1 if trans_b else 0))
        s.consumers[a].append(node)
    s.members[y].append(Member(node, 1, 0 if trans_b else 1))
    s.producers[y].append(node)
    if len(node.inputs) > 2 and node.inputs[2] is not None:
        if c is None:
            s.fix(y, f"{node_name(node)}: Gemm with a computed C")
        elif c.ndim and c.shape[-1] == w.shape[0 if trans_b else 1] and c.size > 1:
            s.members[y].append(Member(node, 2, c.ndim - 1))
        elif c.ndim and c.shape[-1] != 1:
            s.fix(y, f"{node_name(node)}: Gemm C does not broadcast over the outputs")


def _matmul(node: ir.Node, s: _Spaces) -> None:
    a, y, w = node.inputs[0], node.outputs[0], const(node.inputs[1])
    dims = s.dims(a)
    if w is None or w.ndim != 2 or const(a) is not None:
        return s.fix_node(node, f"{node_name(node)}: MatMul without a constant 2-D weight")
    if dims is not None and len(dims) < 2:
        return s.fix_node(node, f"{node_name(node)}: MatMul on a 1-D input")
    axis = len(dims) - 1 if dims else 1
    s.space(a, axis)
    s.space(y, axis)
    s.members[a].append(Member(node, 1, 0))
    s.consumers[a].append(node)
    s.members[y].append(Member(node, 1, 1))
    s.producers[y].append(node)


def _norm(node: ir.Node, s: _Spaces) -> None:
    x, y = node.inputs[0], node.outputs[0]
    params = _NORM_PARAMS[node.op_type]
    if const(x) is not None or any(const(node.inputs[i]) is None for i in params if i < len(node.inputs)):
        return s.fix_node(node, f"{node_name(node)}: normalization with computed parameters")
    s.space(x, 1)
    s.space(y, 1)
    s.union(x, y)
    s.members[y] += [Member(node, i, 0, scored) for i, scored in params.items() if i < len(node.inputs)]


def _elementwise(node: ir.Node, s: _Spaces) -> None:
    """Join activation inputs with the output's channels; constants become members or must broadcast."""
    y = node.outputs[0]
    acts = s.activations(node)
    axis = s.axis_of(acts[0]) if acts else 1
    s.space(y, axis)
    out_dims, channels = s.dims(y), s.channels(y)
    for i, v in enumerate(node.inputs):
        if v is None:
            continue
        c = const(v)
        dims = list(c.shape) if c is not None else s.dims(v)
        if channels is None or dims is None:  # unknown shapes: find_groups raises unless the group is fixed anyway
            if c is None and dims != []:
                s.union(v, y)
            continue
        k = axis - (len(out_dims) - len(dims))
        if len(dims) > len(out_dims):
            s.fix(y, f"{node_name(node)}: input {i} has a higher rank than the output")
        elif k < 0 or (dims[k] == 1 and channels != 1):
            continue  # broadcast over the channels: unaffected by pruning
        elif not isinstance(dims[k], int) and c is None:
            s.union(v, y)  # unknown channel count: as above
        elif dims[k] != channels:
            s.fix(y, f"{node_name(node)}: input {i} does not match the output's channels")
        elif c is not None:
            s.members[y].append(Member(node, i, k))
        else:
            s.space(v, k)
            s.union(v, y)


def _pool(node: ir.Node, s: _Spaces) -> None:
    x, y = node.inputs[0], node.outputs[0]
    s.space(x, 1)
    s.space(y, 1)
    s.union(x, y)


def _reduce(node: ir.Node, s: _Spaces) -> None:
    """Channel-preserving when the channel axis is not reduced (global pooling written as ReduceMean)."""
    x, y = node.inputs[0], node.outputs[0]
    dims = s.dims(x)
    axes = node.attributes.get_ints("axes")
    if axes is None and len(node.inputs) > 1 and (given := const(node.inputs[1])) is not None:
        axes = given.tolist()
    axis = s.axis_of(x)
    if dims is None:
        return s.fix_node(node, f"{node_name(node)}: reduce over an input of unknown rank")
    axes = sorted(a % len(dims) for a in axes or [])
    if not axes or axis in axes:
        return s.fix_node(node, f"{node_name(node)}: {node.op_type} reduces over the channels")
    s.space(x, axis)
    s.space(y, axis if node.attributes.get_int("keepdims", 1) else axis - sum(a < axis for a in axes))
    s.union(x, y)


def _unit_reshape(node: ir.Node, s: _Spaces) -> None:
    """Flatten/Squeeze/Unsqueeze that keep [N, C] and only add or drop trailing size-1 dims (GAP then Flatten)."""
    x, y = node.inputs[0], node.outputs[0]
    dx, dy = s.dims(x), s.dims(y)
    if dx is None or dy is None:  # unknown shapes: find_groups raises unless the group is fixed anyway
        s.union(x, y)
        return
    if s.axis_of(x) == 1 and len(dx) >= 2 and len(dy) >= 2 and dx[1] == dy[1] and all(d == 1 for d in dx[2:] + dy[2:]):
        s.space(y, 1)
        s.union(x, y)
    else:
        s.fix_node(node, f"{node_name(node)}: {node.op_type} moves the channels")


def _resize(node: ir.Node, s: _Spaces) -> None:
    x, y = node.inputs[0], node.outputs[0]
    sizes = node.inputs[3] if len(node.inputs) > 3 else None
    dx, dy = s.dims(x), s.dims(y)
    if sizes is not None and (c := const(sizes)) is not None and c.size:
        return s.fix_node(node, f"{node_name(node)}: Resize with `sizes` (they hold the channel count)")
    if dx is None or dy is None or len(dx) < 2 or dx[1] != dy[1]:
        return s.fix_node(node, f"{node_name(node)}: Resize that may scale the channels")
    s.space(x, 1)
    s.space(y, 1)
    s.union(x, y)


def _pad(node: ir.Node, s: _Spaces) -> None:
    x, y = node.inputs[0], node.outputs[0]
    pads = node.attributes.get_ints("pads")
    if pads is None and len(node.inputs) > 1 and (given := const(node.inputs[1])) is not None:
        pads = given.tolist()
    rank = len(pads) // 2 if pads else 0
    axes_given = len(node.inputs) > 3 and node.inputs[3] is not None
    if not pads or axes_given or pads[0] or pads[1] or pads[rank] or pads[rank + 1]:
        return s.fix_node(node, f"{node_name(node)}: Pad over the batch or channel axis, or with computed pads")
    s.space(x, 1)
    s.space(y, 1)
    s.union(x, y)


def _concat(node: ir.Node, s: _Spaces) -> None:
    """Along the channels: the output is a composite of the inputs; along another axis: element-wise."""
    y = node.outputs[0]
    dims = s.dims(y)
    acts = s.activations(node)
    axis = s.axis_of(acts[0]) if acts else 1
    if dims is None:
        return s.fix_node(node, f"{node_name(node)}: Concat of unknown rank")
    if node.attributes.get_int("axis", 0) % len(dims) != axis:
        return _elementwise(node, s)
    if len(acts) != len(node.inputs):
        return s.fix_node(node, f"{node_name(node)}: Concat of a constant along the channels")
    for v in [*acts, y]:
        s.space(v, axis)
    if len(acts) == 1:
        s.union(acts[0], y)
    else:
        s.parts[y].append(acts)


def _split(node: ir.Node, s: _Spaces) -> None:
    """Along the channels: the input is a composite of the outputs; along another axis: every output keeps them."""
    x, outs = node.inputs[0], list(node.outputs)
    dims = s.dims(x)
    axis = s.axis_of(x)
    if dims is None or const(x) is not None:
        return s.fix_node(node, f"{node_name(node)}: Split of unknown rank or of a constant")
    for v in [x, *outs]:
        s.space(v, axis)
    if node.attributes.get_int("axis", 0) % len(dims) != axis or len(outs) == 1:
        for y in outs:
            s.union(x, y)
    elif len(node.inputs) > 1 and node.inputs[1] is not None and const(node.inputs[1]) is None:
        s.fix_node(node, f"{node_name(node)}: Split with computed sizes")
    else:
        s.parts[x].append(outs)
        s.splits[x].append(node)


_HANDLERS: dict[str, Handler] = {
    "Conv": _conv, "Gemm": _gemm, "MatMul": _matmul, "Resize": _resize, "Upsample": _resize, "Pad": _pad,
    "Concat": _concat, "Split": _split,
    **{op: _norm for op in _NORM_PARAMS}, **{op: _elementwise for op in _ELEMENTWISE},
    **{op: _pool for op in _POOLS}, **{op: _reduce for op in _REDUCES}, **{op: _unit_reshape for op in _UNIT_RESHAPES},
}


def _visit(node: ir.Node, s: _Spaces) -> None:
    handler = _HANDLERS.get(node.op_type) if node.domain in ("", "ai.onnx") else None
    extra_used = node.op_type != "Split" and any(out.uses() or out.is_graph_output() for out in node.outputs[1:])
    if handler is None or extra_used or not node.inputs or node.inputs[0] is None:
        return s.fix_node(node, f"{node_name(node)}: {node.op_type} is not modelled")
    handler(node, s)


# --- groups ------------------------------------------------------------------------------------------------------


def find_groups(graph: ir.Graph, shapes: Shapes) -> list[Group]:
    """Every channel group of the main graph, in graph order; fixed ones say why.

    Raises BadInputError when a group that could be pruned has a tensor whose rank or channel count shape inference
    left unknown: pinning the dynamic input dims is what fixes that.
    """
    s = _Spaces(shapes)
    for v in graph.inputs:
        s.fix(v, f"{v.name}: graph input")
    for v in graph.outputs:
        s.fix(v, f"{v.name}: graph output")
    for node in graph.all_nodes():
        if node.graph is not graph:  # a subgraph (If, Loop body) may read any outer tensor by name
            for v in node.inputs:
                if v is not None and v.graph is graph:
                    s.fix(v, f"{v.name}: read inside the subgraph of a control-flow op")
        elif node.op_type != "Constant":
            _visit(node, s)
    _align_cuts(s)
    components: dict[ir.Value, list[ir.Value]] = defaultdict(list)
    for v in list(s.parent):
        components[s.find(v)].append(v)
    groups, of = [], {}
    for root, values in components.items():
        of[root] = group = Group(values, None, _gather(s.members, values), _gather(s.producers, values),
                                 _gather(s.consumers, values), _gather(s.depthwise, values),
                                 {v: s.axis_of(v) for v in values}, _gather(s.fixed, values),
                                 splits=_gather(s.splits, values))
        unknown = [v for v in values if s.channels(v) is None]
        if unknown and not group.fixed:
            _raise_unknown(unknown[0], graph)
        group.size = next(iter(sizes)) if len(sizes := {s.channels(v) for v in values} - {None}) == 1 else None
        groups.append(group)
    for group in groups:
        cut = next((c for v in group.values for c in s.parts.get(v, [])), [])
        group.parts = [of[s.find(v)] for v in cut]
    for group in groups:  # only with unknown sizes: keep the composites a tree for the walks below
        if _contains(group, group, set()):
            for g in [group, *group.parts]:
                g.fixed.append(f"{group.values[0].name}: a composite that contains itself")
            group.parts = []
    for group in groups:
        for i, part in enumerate(group.parts):
            part.part_of.append((group, i))
    for group in groups:
        _check_channels(group)
    spread_fixed(groups)
    return groups


def _align_cuts(s: _Spaces) -> None:
    """Two ops cutting one composite (a Concat output split again, two Concats joined by an Add) at the same offsets
    join their parts pairwise; at other offsets they fix it."""
    changed = True
    while changed:
        changed = False
        cuts: dict[ir.Value, list[list[ir.Value]]] = defaultdict(list)
        for v, found in s.parts.items():
            cuts[s.find(v)] += found
        for root, (first, *others) in cuts.items():
            for other in others:
                if [s.channels(v) for v in other] != [s.channels(v) for v in first] or None in map(s.channels, first):
                    if not s.fixed[root]:
                        s.fix(root, f"{root.name}: ops cut its channels at different offsets")
                    continue
                for a, b in zip(first, other):
                    if s.find(a) is not s.find(b):
                        s.union(a, b)
                        changed = True


def spread_fixed(groups: list[Group]) -> None:
    """A composite that keeps every channel keeps every channel of its parts (after `protect` too)."""
    todo = [g for g in groups if g.fixed and g.parts]
    while todo:
        whole = todo.pop()
        for part in whole.parts:
            if not part.fixed:
                part.fixed.append(f"part of {whole.name}, kept whole: {whole.fixed[0]}")
                todo.append(part)


def _gather(table: dict[ir.Value, list], values: list[ir.Value]) -> list:
    return [x for v in values for x in table.get(v, [])]


def _check_channels(group: Group) -> None:
    """Fix the group where its tensors or constants disagree on its channel count, where no layer writes its
    channels, or, for a composite, where its parts do not add up to it or contain it."""
    if group.size is None:
        group.fixed.append("tensors disagree on the channel count")
    if group.parts:
        if any(p.size is None for p in group.parts) or sum(p.size for p in group.parts) != group.size:
            group.fixed.append("its parts do not add up to its channel count")
    elif not group.written:
        group.fixed.append("no layer writes these channels")
    for m in group.members:
        c = const(m.node.inputs[m.input])
        if c is None or c.shape[m.axis] != group.size:
            group.fixed.append(f"{m.node.inputs[m.input].name}: shape {None if c is None else list(c.shape)} has "
                               f"no {group.size} channels on axis {m.axis}")


def _contains(whole: Group, target: Group, seen: set[int]) -> bool:
    for part in whole.parts:
        if part is target or (id(part) not in seen and not seen.add(id(part)) and _contains(part, target, seen)):
            return True
    return False


def _raise_unknown(value: ir.Value, graph: ir.Graph) -> None:
    inputs = ", ".join(f"{v.name}: [...]" for v in graph.inputs)
    raise BadInputError(f"prune: the shape of tensor {value.name!r} is unknown after shape inference (dynamic input "
                        f"dims), so its channels cannot be pruned; pin the inputs with the recipe's input shapes, "
                        f"e.g. input: {{shapes: {{{inputs}}}}}")


def boundary_layers(graph: ir.Graph) -> set[ir.Node]:
    """The first layers (reached from a graph input) and last layers (reaching a graph output) with no other
    Conv/Gemm/MatMul in between: what `protect_first_last` keeps whole."""
    found: set[ir.Node] = set()

    def walk(start: list[ir.Value], step: Callable[[ir.Value], list[ir.Node]],
             onward: Callable[[ir.Node], list[ir.Value]]) -> None:
        seen: set[ir.Value] = set()
        todo = list(start)
        while todo:
            value = todo.pop()
            if value in seen:
                continue
            seen.add(value)
            for node in step(value):
                if _is_layer(node):
                    found.add(node)
                else:
                    todo += [v for v in onward(node) if v is not None]

    walk(list(graph.inputs), lambda v: [n for n, _ in v.uses()], lambda n: list(n.outputs))
    walk(list(graph.outputs), lambda v: [v.producer()] if v.producer() is not None else [], lambda n: list(n.inputs))
    return found
