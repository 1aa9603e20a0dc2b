"""What is inside a .tflite file, read from the FlatBuffer with the schema module LiteRT ships: the ops, the
element types they compute in, and every TRANSPOSE left with its neighbours, so the report can say where
layout changes remain and whether any sits between two convolutions."""

from __future__ import annotations

from collections import Counter
from functools import cache
from typing import Any

import numpy as np

CONVS = {"CONV_2D", "DEPTHWISE_CONV_2D", "TRANSPOSE_CONV", "CONV_3D", "CONV_3D_TRANSPOSE"}
# Ops that change what the axes mean: a transpose next to one of them is a real layout change (a detection
# head's NCHW flatten), not one left between two convolutions of one feature map.
BARRIERS = {"RESHAPE", "SQUEEZE", "EXPAND_DIMS", "FULLY_CONNECTED", "BATCH_MATMUL"}
_TYPES = {0: "float32", 1: "float16", 2: "int32", 3: "uint8", 4: "int64", 6: "bool", 7: "int16", 9: "int8",
          10: "float64"}


@cache
def _op_names() -> dict[int, str]:
    from ai_edge_litert import schema_py_generated as schema

    return {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}


def graph_facts(blob: bytes) -> dict[str, Any]:
    """ops (histogram), op_types (compute type per op kind), transposes (each with producer, consumers, perm and
    whether it lies between convolutions: a conv reaches it and it reaches a conv without crossing a reshape or
    a matmul)."""
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromPackedBuf(blob, 0)
    names = _op_names()
    codes = [names.get(max(c.builtinCode, c.deprecatedBuiltinCode), str(c.builtinCode)) for c in model.operatorCodes]
    graph = model.subgraphs[0]
    kinds = [codes[op.opcodeIndex] for op in graph.operators]
    producer = {t: i for i, op in enumerate(graph.operators) for t in (op.outputs if op.outputs is not None else [])}
    consumers: dict[int, list[int]] = {}
    for i, op in enumerate(graph.operators):
        for t in op.inputs if op.inputs is not None else []:
            consumers.setdefault(int(t), []).append(i)
    outputs = set(int(t) for t in graph.outputs)

    def upstream_conv(i: int, seen: set[int]) -> bool:
        for t in graph.operators[i].inputs[:1]:
            j = producer.get(int(t))
            if j is not None and j not in seen:
                seen.add(j)
                if kinds[j] in CONVS or (kinds[j] not in BARRIERS and upstream_conv(j, seen)):
                    return True
        return False

    def downstream_conv(i: int, seen: set[int]) -> bool:
        for t in graph.operators[i].outputs:
            for j in consumers.get(int(t), []):
                if j not in seen:
                    seen.add(j)
                    if kinds[j] in CONVS or (kinds[j] not in BARRIERS and downstream_conv(j, seen)):
                        return True
        return False

    transposes = []
    for i, op in enumerate(graph.operators):
        if kinds[i] != "TRANSPOSE":
            continue
        src, out = int(op.inputs[0]), int(op.outputs[0])
        perm_buf = model.buffers[graph.tensors[int(op.inputs[1])].buffer].data
        perm = np.frombuffer(bytes(perm_buf), np.int32).tolist() if perm_buf is not None else None
        transposes.append({
            "tensor": _name(graph.tensors[out]), "perm": perm,
            "after": kinds[producer[src]] if src in producer else "graph input",
            "before": [kinds[j] for j in consumers.get(out, [])] + (["graph output"] if out in outputs else []),
            "between_convs": upstream_conv(i, set()) and downstream_conv(i, set()),
        })
    compute = Counter()
    for i, op in enumerate(graph.operators):
        first = op.inputs[0] if op.inputs is not None and len(op.inputs) else None
        if first is not None and first >= 0:
            compute[f"{kinds[i]}:{_TYPES.get(graph.tensors[int(first)].type, '?')}"] += 1
    return {"ops": dict(Counter(kinds).most_common()), "op_types": dict(compute), "transposes": transposes}


# Ops with weights: where a model's "head" (the post-processing before its outputs) begins.
WEIGHTED = CONVS | {"FULLY_CONNECTED", "BATCH_MATMUL"}


def head_tensors(blob: bytes) -> list[str]:
    """Output tensor names of the ops that reach a graph output without passing through a weighted op."""
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromPackedBuf(blob, 0)
    names = _op_names()
    graph = model.subgraphs[0]
    kinds = [names.get(max(c.builtinCode, c.deprecatedBuiltinCode)) for c in model.operatorCodes]
    producer = {int(t): i for i, op in enumerate(graph.operators) for t in op.outputs}
    head: set[int] = set()
    todo = [producer[int(t)] for t in graph.outputs if int(t) in producer]
    while todo:
        i = todo.pop()
        if i in head or kinds[graph.operators[i].opcodeIndex] in WEIGHTED:
            continue
        head.add(i)
        todo += [producer[int(t)] for t in graph.operators[i].inputs if int(t) in producer]
    return [_name(graph.tensors[int(t)]) for i in sorted(head) for t in graph.operators[i].outputs]


def _name(tensor) -> str:
    name = tensor.name
    return name.decode() if isinstance(name, bytes) else str(name)
