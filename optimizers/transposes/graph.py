"""A small mutable view of an ONNX graph for the layout rewrite: nodes, constants, static shapes, use lists.

Plain protos rather than onnx-ir: the rewrite only rewires inputs and adds/removes Transpose nodes. It needs
producer/consumer maps kept current through thousands of small edits, and a cheap undo of one sinking step
(a journal of the nodes it touched) so a step that turned out worse than estimated can be rolled back. Node
order is restored by a topological sort when the graph is written back.
"""

from __future__ import annotations

import itertools

import numpy as np
import onnx
from onnx import helper, numpy_helper

from accelopt.optimizers.transposes.perms import perm_of

Shape = tuple[int | None, ...] | None  # None: unknown rank; a None dim: dynamic


def _dims(vi: onnx.ValueInfoProto) -> Shape:
    t = vi.type.tensor_type
    if not vi.type.HasField("tensor_type") or not t.HasField("shape"):
        return None
    return tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in t.shape.dim)


def _subgraph_reads(graph: onnx.GraphProto) -> set[str]:
    names: set[str] = set()
    for n in graph.node:
        for a in n.attribute:
            for sub in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
                names.update(i for m in sub.node for i in m.input)
                names |= _subgraph_reads(sub)
    return names


class Graph:
    """The model's main graph as Python lists and dicts; `to_model` writes it back.

    Producer/consumer maps are kept up to date by the edit methods (`add_node`, `remove`, `set_input`,
    `set_output`); code that edits node protos directly calls `touch()` to rebuild them.
    """

    def __init__(self, model: onnx.ModelProto):
        self.model = onnx.ModelProto()
        self.model.CopyFrom(model)
        g = self.model.graph
        self.inits: dict[str, onnx.TensorProto] = {t.name: t for t in g.initializer}
        self.inputs = [i.name for i in g.input]
        self.input_set = set(self.inputs)
        self.outputs = [o.name for o in g.output]
        self.output_set = set(self.outputs)
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)
        self.shapes: dict[str, Shape] = {}
        self.dtypes: dict[str, int] = {}
        try:
            inferred = onnx.shape_inference.infer_shapes(model)
        except Exception:  # shape inference is best effort: without shapes nothing gets wrapped
            inferred = model
        for vi in itertools.chain(inferred.graph.input, inferred.graph.value_info, inferred.graph.output):
            self.shapes[vi.name] = _dims(vi)
            self.dtypes[vi.name] = vi.type.tensor_type.elem_type
        for t in g.initializer:
            self.shapes[t.name] = tuple(t.dims)
            self.dtypes[t.name] = t.data_type
        self.implicit = _subgraph_reads(g)  # outer values read inside If/Loop bodies: never dead
        self._journal = None
        self.nodes = list(g.node)
        self.originally_unused = set(self.inits) - set(self._consumers) - self.output_set
        self._names = set(self.shapes) | {n for node in self.nodes for n in itertools.chain(node.input, node.output)}
        self._node_names = {n.name for n in self.nodes}

    # --- nodes and maps -----------------------------------------------------------------------------------

    @property
    def nodes(self) -> list[onnx.NodeProto]:
        return list(self._nodes.values())

    @nodes.setter
    def nodes(self, nodes: list[onnx.NodeProto]) -> None:
        self._nodes = {id(n): n for n in nodes}
        self.touch()

    def alive(self, node: onnx.NodeProto) -> bool:
        return self._nodes.get(id(node)) is node

    def touch(self) -> None:
        """Rebuild the maps after direct edits of node protos."""
        self._producer: dict[str, onnx.NodeProto] = {}
        self._consumers: dict[str, list[onnx.NodeProto]] = {}
        self.transposes = 0
        for n in self._nodes.values():
            self.link(n)

    def link(self, n: onnx.NodeProto) -> None:
        """Add a node's edges to the maps (after `unlink` and a direct edit)."""
        for o in n.output:
            if o:
                self._producer[o] = n
        for i in dict.fromkeys(n.input):
            if i:
                self._consumers.setdefault(i, []).append(n)
        self.transposes += n.op_type == "Transpose" and n.domain in ("", "ai.onnx")

    def unlink(self, n: onnx.NodeProto) -> None:
        """Take a node's edges out of the maps before editing it directly (the edit is journaled)."""
        self.save(n)
        for o in n.output:
            if o and self._producer.get(o) is n:
                del self._producer[o]
        for i in dict.fromkeys(n.input):
            users = self._consumers.get(i)
            if users:
                users[:] = [u for u in users if u is not n]
                if not users:
                    del self._consumers[i]
        self.transposes -= n.op_type == "Transpose" and n.domain in ("", "ai.onnx")

    # --- journal: cheap rollback of one sinking step ------------------------------------------------------

    def begin(self) -> None:
        self._journal = {"saved": {}, "added": [], "inits": []}

    def commit(self) -> None:
        self._journal = None

    def save(self, n: onnx.NodeProto) -> None:
        """Remember a node's state before its first edit in the current step."""
        j = getattr(self, "_journal", None)
        if j is not None and id(n) not in j["saved"] and not any(a is n for a in j["added"]):
            copy = onnx.NodeProto()
            copy.CopyFrom(n)
            j["saved"][id(n)] = (n, copy)

    def journal_nodes(self) -> list[onnx.NodeProto]:
        """Live nodes added or edited since `begin` (empty outside a step)."""
        j = self._journal
        if j is None:
            return []
        nodes = [n for n in j["added"] if self.alive(n)] + [n for n, _ in j["saved"].values() if self.alive(n)]
        return list({id(n): n for n in nodes}.values())

    def rollback(self) -> None:
        j, self._journal = self._journal, None
        for n in j["added"]:
            self._nodes.pop(id(n), None)
        for key, (n, copy) in j["saved"].items():
            n.CopyFrom(copy)
            self._nodes.setdefault(key, n)
        for name in j["inits"]:
            self.inits.pop(name, None)
        self.touch()

    def add_node(self, node: onnx.NodeProto) -> onnx.NodeProto:
        if getattr(self, "_journal", None) is not None:
            self._journal["added"].append(node)
        self._nodes[id(node)] = node
        self.link(node)
        return node

    def remove(self, node: onnx.NodeProto) -> None:
        if self.alive(node):
            self.unlink(node)
            del self._nodes[id(node)]

    def set_input(self, node: onnx.NodeProto, i: int, name: str) -> None:
        self.unlink(node)
        while len(node.input) <= i:
            node.input.append("")
        node.input[i] = name
        self.link(node)

    def set_output(self, node: onnx.NodeProto, i: int, name: str) -> None:
        self.unlink(node)
        node.output[i] = name
        self.link(node)

    def producer(self, name: str) -> onnx.NodeProto | None:
        return self._producer.get(name)

    def consumers(self, name: str) -> list[onnx.NodeProto]:
        return list(self._consumers.get(name, ()))

    def used(self, name: str) -> bool:
        return name in self.output_set or name in self._consumers or name in self.implicit

    def fresh(self, base: str) -> str:
        name, i = base, 0
        while name in self._names:
            i += 1
            name = f"{base}_{i}"
        self._names.add(name)
        return name

    def fresh_node(self, base: str) -> str:
        name, i = base, 0
        while name in self._node_names:
            i += 1
            name = f"{base}_{i}"
        self._node_names.add(name)
        return name

    # --- constants and shapes -----------------------------------------------------------------------------

    def const(self, name: str) -> np.ndarray | None:
        if not name or name in self.input_set:
            return None
        if name in self.inits:
            return numpy_helper.to_array(self.inits[name])
        node = self.producer(name)
        if node is not None and node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            for a in node.attribute:
                if a.name == "value":
                    return numpy_helper.to_array(a.t)
                if a.name in ("value_float", "value_int", "value_floats", "value_ints"):
                    return np.array(helper.get_attribute_value(a),
                                    np.float32 if "float" in a.name else np.int64)
        return None

    def add_const(self, base: str, value: np.ndarray) -> str:
        name = self.fresh(base)
        self.inits[name] = numpy_helper.from_array(np.ascontiguousarray(value), name)
        if getattr(self, "_journal", None) is not None:
            self._journal["inits"].append(name)
        self.shapes[name] = tuple(value.shape)
        return name

    def shape(self, name: str) -> Shape:
        if name in self.shapes:
            return self.shapes[name]
        c = self.const(name)
        return None if c is None else tuple(c.shape)

    def rank(self, name: str) -> int | None:
        s = self.shape(name)
        return None if s is None else len(s)

    def numel_one(self, name: str) -> bool:
        s = self.shape(name)
        return s is not None and None not in s and int(np.prod(s, dtype=np.int64)) == 1

    # --- edits --------------------------------------------------------------------------------------------

    def add_transpose(self, src: str, perm: list[int], out: str | None = None) -> onnx.NodeProto:
        out = out or self.fresh(f"{src}_T")
        node = helper.make_node("Transpose", [src], [out], name=self.fresh_node(f"layout/Transpose_{out}"),
                                perm=list(perm))
        s = self.shape(src)
        if self.shapes.get(out) is None:
            self.shapes[out] = None if s is None else tuple(s[p] for p in perm)
        if src in self.dtypes:
            self.dtypes.setdefault(out, self.dtypes[src])
        return self.add_node(node)

    def transpose_of(self, src: str, perm: list[int]) -> onnx.NodeProto | None:
        """An existing Transpose(src, perm), to reuse instead of adding a duplicate."""
        for c in self._consumers.get(src, ()):
            if c.op_type == "Transpose" and c.domain in ("", "ai.onnx") and perm_of(c, len(perm)) == list(perm):
                return c
        return None

    def replace_uses(self, old: str, new: str) -> None:
        """Point every consumer of `old` at `new` (graph outputs are left to the caller)."""
        for n in self.consumers(old):
            for i, name in enumerate(n.input):
                if name == old:
                    self.set_input(n, i, new)

    def bypass(self, node: onnx.NodeProto) -> None:
        """Remove a node whose output equals its input (identity Transpose), keeping graph output names."""
        src, out = node.input[0], node.output[0]
        if out not in self.output_set:
            self.replace_uses(out, src)
            self.remove(node)
            return
        prod = self.producer(src)
        if src in self.input_set or src in self.output_set or prod is None:
            self.unlink(node)
            node.op_type = "Identity"
            del node.attribute[:]
            self.link(node)
            return
        # src is an interior value: give it the graph output's name
        self.remove(node)
        self.replace_uses(src, out)
        for i, o in enumerate(prod.output):
            if o == src:
                self.set_output(prod, i, out)

    def count(self) -> int:
        """Transpose nodes in the graph."""
        return self.transposes

    # --- write back ---------------------------------------------------------------------------------------

    def remove_dead_inits(self) -> None:
        used = set(self._consumers) | self.output_set | self.input_set | self.originally_unused | self.implicit
        for name in [k for k in self.inits if k not in used]:
            del self.inits[name]

    def topo_sort(self) -> None:
        """Kahn's algorithm, preferring the current order (original nodes keep their relative order)."""
        import heapq

        pos = {id(n): k for k, n in enumerate(self._nodes.values())}
        indeg = {k: sum(1 for i in dict.fromkeys(n.input) if i in self._producer) for k, n in self._nodes.items()}
        heap = [(pos[k], k) for k, d in indeg.items() if d == 0]
        heapq.heapify(heap)
        ordered: list[onnx.NodeProto] = []
        while heap:
            _, k = heapq.heappop(heap)
            n = self._nodes[k]
            ordered.append(n)
            for o in n.output:
                for c in self._consumers.get(o, ()) if o else ():
                    indeg[id(c)] -= 1
                    if indeg[id(c)] == 0:
                        heapq.heappush(heap, (pos[id(c)], id(c)))
        if len(ordered) < len(self._nodes):  # a cycle (should not happen): keep the rest as is
            seen = {id(n) for n in ordered}
            ordered += [n for k, n in self._nodes.items() if k not in seen]
        self._nodes = {id(n): n for n in ordered}  # same nodes, maps unchanged

    def to_model(self) -> onnx.ModelProto:
        self.remove_dead_inits()
        self.topo_sort()
        g = self.model.graph
        del g.node[:]
        g.node.extend(self.nodes)
        del g.initializer[:]
        g.initializer.extend(self.inits.values())
        del g.value_info[:]
        return self.model
