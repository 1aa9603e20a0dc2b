"""NCHW -> NHWC for channels-last targets (TFLite): wrap layout-sensitive ops, then sink the transposes.

The `layout` pass (optimizers/layout.py) is a thin registered wrapper around `to_channels_last`; the TFLite
target calls the helpers here directly. This package registers no pass.
"""

from __future__ import annotations

import onnx

from accelopt.optimizers.transposes.cleanup import memory_preserving_to_reshape
from accelopt.optimizers.transposes.graph import Graph
from accelopt.optimizers.transposes.handlers import plan_for
from accelopt.optimizers.transposes.nhwc import (NHWC_DOMAIN, WRAPPABLE, add_functions, nhwc_function, nhwc_op,
                                                 to_first, to_last, wrap)
from accelopt.optimizers.transposes.perms import inverse, perm_of
from accelopt.optimizers.transposes.sink import sink_transposes

__all__ = ["NHWC_DOMAIN", "WRAPPABLE", "nhwc_function", "nhwc_op", "to_channels_last", "to_first", "to_last",
           "transposes_left"]


def _why(g: Graph, node: onnx.NodeProto) -> str:
    src, out = node.input[0], node.output[0]
    if src in g.input_set:
        return "graph input"
    if out in g.output_set:
        return "graph output"
    perm = perm_of(node, g.rank(src))
    for c in g.consumers(out):
        if nhwc_op(c) is None and c.op_type != "Transpose":
            positions = {i for i, x in enumerate(c.input) if x == out}
            if perm is None or plan_for(g, c, perm, positions) is None:
                return f"before {c.op_type} (barrier)"
    prod = g.producer(src)
    if prod is not None and nhwc_op(prod) is None and perm is not None \
            and plan_for(g, prod, inverse(perm), {0}) is None:
        return f"after {prod.op_type} (barrier)"
    if any(c.output[0] in g.output_set for c in g.consumers(out)):
        return "graph output"
    return "pushing it further would add transposes"


def _left(g: Graph) -> list[dict]:
    return [{"name": n.name, "perm": perm_of(n, g.rank(n.input[0])), "why": _why(g, n)}
            for n in g.nodes if n.op_type == "Transpose" and n.domain in ("", "ai.onnx")]


def transposes_left(model: onnx.ModelProto) -> list[dict]:
    """Every Transpose in the model: {name, perm, why it is still there}."""
    return _left(Graph(model))


def to_channels_last(model: onnx.ModelProto, *, sink: bool = True,
                     ops: set[str] | None = None) -> tuple[onnx.ModelProto, dict]:
    """Wrap layout-sensitive ops in the NHWC domain and (sink=True) push the transposes out of the way.

    Returns the new model (the input is not touched) and the decisions the `layout` pass records.
    """
    g = Graph(model)
    before = g.count()
    wrapped, skipped, used = wrap(g, set(ops) if ops is not None else None)
    after_wrap = g.count()
    steps = reshapes = 0
    if sink and wrapped:
        steps = sink_transposes(g)
        reshapes = memory_preserving_to_reshape(g)
    g.topo_sort()
    left = _left(g)
    out = g.to_model()
    add_functions(out, used, g.opset)
    try:  # shapes for the emitter; best effort (value_info was cleared as stale)
        out = onnx.shape_inference.infer_shapes(out)
    except Exception:
        pass
    decisions = {
        "wrapped": dict(sorted(wrapped.items())),
        "not_wrapped": skipped,
        "transposes": {"before": before, "after_wrap": after_wrap, "after_sink": g.count()},
        "sink_steps": steps,
        "transposes_to_reshape": reshapes,
        "transposes_left": left,
    }
    return out, decisions
