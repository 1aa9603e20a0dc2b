"""Cleanup between and after sinking steps: the local rewrites that actually remove Transpose nodes.

Constant-fold Transpose(initializer), compose Transpose chains, drop identity perms, merge duplicate
transposes of one value, remove dead nodes; and, once sinking is over, turn a Transpose that only moves
size-1 dims (NHWC [N,1,1,C] -> [N,C,1,1]) into a Reshape, which is free for the emitters. Done at the end
only, because Reshape is a barrier to sinking.
"""

from __future__ import annotations

import numpy as np
import onnx

from accelopt.optimizers.transposes.graph import Graph
from accelopt.optimizers.transposes.perms import compose, is_identity, is_transpose, perm_of


def perm_of_in(g: Graph, n: onnx.NodeProto) -> list[int] | None:
    """A Transpose node's perm (the default one reverses the axes of its input)."""
    return perm_of(n, g.rank(n.input[0]))


def _dead(g: Graph, n: onnx.NodeProto) -> bool:
    return n.op_type in ("Transpose", "Constant") and n.domain in ("", "ai.onnx") \
        and not any(g.used(o) for o in n.output)


def _simplify(g: Graph, n: onnx.NodeProto) -> list[onnx.NodeProto] | None:
    """One local rewrite of node `n` if one applies: the nodes to look at next; None = nothing to do."""
    if _dead(g, n):
        around = [g.producer(i) for i in n.input]
        g.remove(n)
        return around
    if not is_transpose(n):
        return None
    p = perm_of_in(g, n)
    if p is None:
        return None
    src, out = n.input[0], n.output[0]
    if is_identity(p):
        around = [g.producer(src), *g.consumers(out)]
        g.bypass(n)
        return around
    c = g.const(src)
    if c is not None and out not in g.output_set:
        around = [g.producer(src), *g.consumers(out)]
        g.replace_uses(out, g.add_const(f"{src}_T", np.transpose(c, p)))
        g.remove(n)
        return around
    prod = g.producer(src)
    if is_transpose(prod):
        g.unlink(n)
        n.input[0] = prod.input[0]
        n.ClearField("attribute")
        n.attribute.append(onnx.helper.make_attribute("perm", compose(perm_of_in(g, prod), p)))
        g.link(n)
        return [n, prod]
    dup = g.transpose_of(src, p)
    if dup is not None and dup is not n and out not in g.output_set:
        around = g.consumers(out)
        g.replace_uses(out, dup.output[0])
        g.remove(n)
        return [dup, *around]
    return None


def cleanup(g: Graph, seeds: list[onnx.NodeProto] | None = None) -> None:
    """Fold constant transposes, compose chains, drop identities, merge duplicates, remove dead nodes.

    Works from `seeds` (every node when None) and the neighbours of whatever it changes."""
    todo = list(reversed(g.nodes if seeds is None else seeds))
    while todo:
        n = todo.pop()
        if n is None or not g.alive(n):
            continue
        more = _simplify(g, n)
        if more is not None:
            todo.extend(m for m in more if m is not None)
            if g.alive(n):
                todo.append(n)


def memory_preserving_to_reshape(g: Graph) -> int:
    """Turn each Transpose that only moves size-1 dims (same bytes) into a Reshape; returns how many."""
    done = 0
    for n in g.nodes:
        if not is_transpose(n):
            continue
        s = g.shape(n.input[0])
        p = perm_of_in(g, n)
        if s is None or p is None:
            continue
        moved = [d for d in p if s[d] != 1]  # a dynamic dim counts as not 1
        if moved != sorted(moved) or any(s[d] is None and d != i for i, d in enumerate(p)):
            continue
        # Reshape's 0 copies the input dim at the same position: how a dynamic batch dim that stays put is kept
        shape = g.add_const(f"{n.output[0]}_shape", np.array([0 if s[d] is None else s[d] for d in p], np.int64))
        g.unlink(n)
        n.op_type = "Reshape"
        n.ClearField("attribute")
        n.input.append(shape)
        g.link(n)
        done += 1
    return done
