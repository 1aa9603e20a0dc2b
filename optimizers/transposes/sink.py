"""Sinking: push Transposes down through layout-agnostic ops until inverse pairs meet and cancel.

Greedy and local, in the style of ONNX Runtime's transpose optimizer: a Transpose is pushed below one of its
consumers, or below all of them at once (so `x * sigmoid(x)` moves as a unit), only when the exact change in
the number of Transpose nodes is negative, or zero for a pure move (no transpose added on another input) that
heads towards an inverse Transpose. Every accepted step is checked against the real count after cleanup and
rolled back if it went up, so the count never increases and the loop ends (each step lowers the count or
moves a transpose strictly downstream).

When no greedy move is left, a bounded lookahead (`_try_look_ahead`) tries a move that adds transposes and
follows it with at most LOOKAHEAD_STEPS greedy moves of the transposes it created; the sequence is kept only if
the count ends strictly lower (Paddle's HardSwish `x * clip(x + 3, 0, 6) / 6` and other x * f(x) diamonds).
"""

from __future__ import annotations

import numpy as np
import onnx

from accelopt.optimizers.transposes.cleanup import cleanup
from accelopt.optimizers.transposes.cleanup import perm_of_in as _perm
from accelopt.optimizers.transposes.graph import Graph
from accelopt.optimizers.transposes.handlers import Plan, plan_for
from accelopt.optimizers.transposes.perms import compose, inverse, is_identity
from accelopt.optimizers.transposes.perms import is_transpose as _is_transpose


def _positions(node: onnx.NodeProto, name: str) -> set[int]:
    return {i for i, x in enumerate(node.input) if x == name}


# --- cost ------------------------------------------------------------------------------------------------------


def _cost(g: Graph, t: onnx.NodeProto, group: list[onnx.NodeProto], plans: list[Plan]) -> tuple[int, bool]:
    """(change in Transpose count, pure move) if Transpose `t` is pushed below every node of `group`."""
    p = _perm(g, t)
    pinv = inverse(p)
    out = t.output[0]
    ids = {id(n) for n in group}
    delta, pure = 0, True
    if out not in g.output_set and all(id(c) in ids for c in g.consumers(out)):
        delta -= 1
    new_out = {n.output[i]: q for n, plan in zip(group, plans) for i, q in plan.outs if not is_identity(q)}
    absorbed: dict[str, set[int]] = {}  # group outputs read (already in the right frame) by group members
    seen: set[str] = set()
    for n, plan in zip(group, plans):
        for i in plan.layout:
            name = n.input[i]
            if name == out or name in seen or g.const(name) is not None:
                continue
            seen.add(name)
            if name in new_out and new_out[name] == p:
                absorbed.setdefault(name, set()).add(id(n))
                continue
            prod = g.producer(name)
            if _is_transpose(prod) and is_identity(compose(_perm(g, prod), pinv)):
                if name not in g.output_set and all(id(c) in ids for c in g.consumers(name)):
                    delta -= 1
                continue
            if g.transpose_of(name, pinv) is None:
                delta += 1
                pure = False
    for name, q in new_out.items():
        cancel, needed = 0, name in g.output_set
        for c in g.consumers(name):
            if _is_transpose(c) and is_identity(compose(q, _perm(g, c))):
                cancel += 1
            elif id(c) in absorbed.get(name, set()) and all(
                    i in plans[group.index(c)].layout for i in _positions(c, name)):
                continue
            elif not _is_transpose(c):
                needed = True
        delta += int(needed) - cancel
    return delta, pure


def _promising(g: Graph, name: str, q: list[int], seen: set[str], depth: int = 0) -> bool:
    """Whether a path of handled ops leads from `name` (to be transposed by q) to an inverse Transpose."""
    if depth > 64 or name in seen:
        return False
    seen.add(name)
    for c in g.consumers(name):
        if _is_transpose(c):
            if is_identity(compose(q, _perm(g, c))):
                return True
            continue
        plan = plan_for(g, c, q, _positions(c, name))
        if plan is not None and any(_promising(g, c.output[i], q2, seen, depth + 1)
                                    for i, q2 in plan.outs if not is_identity(q2)):
            return True
    return False


# --- apply -----------------------------------------------------------------------------------------------------


def _apply(g: Graph, t: onnx.NodeProto, node: onnx.NodeProto, plan: Plan) -> list[onnx.NodeProto]:
    """Push Transpose `t` below `node` per `plan`; returns the nodes to look at in cleanup."""
    p = _perm(g, t)
    pinv = inverse(p)
    r = len(p)
    src, out = t.input[0], t.output[0]
    g.save(node)  # attribute edits below are direct
    touched = [t, node]
    for i in plan.layout:
        name = node.input[i]
        if name == out:
            g.set_input(node, i, src)
            continue
        c = g.const(name)
        if c is not None:
            if plan.pad and c.ndim < r:
                c = c.reshape((1,) * (r - c.ndim) + c.shape)
            touched.append(g.producer(name))  # a Constant node may now be dead
            g.set_input(node, i, g.add_const(f"{name}_T", np.transpose(c, pinv)))
            continue
        prod = g.producer(name)
        if _is_transpose(prod) and is_identity(compose(_perm(g, prod), pinv)):
            touched.append(prod)
            g.set_input(node, i, prod.input[0])
            continue
        new = g.transpose_of(name, pinv) or g.add_transpose(name, pinv)
        touched.append(new)
        g.set_input(node, i, new.output[0])
    for i, value in plan.consts.items():
        if i < len(node.input):
            touched.append(g.producer(node.input[i]))
        g.set_input(node, i, g.add_const(f"{node.name or node.op_type}_{i}", value))
    if plan.attrs:
        for key, value in plan.attrs.items():
            for k, a in enumerate(node.attribute):
                if a.name == key:
                    del node.attribute[k]
                    break
            node.attribute.append(onnx.helper.make_attribute(key, value))
    for i, q in plan.outs:
        o = node.output[i]
        if is_identity(q):  # e.g. ReduceMean over H, W with keepdims=0: [N, C] either way
            continue
        pre = g.fresh(f"{o}_pre")
        s = g.shape(o)
        if s is not None:
            g.shapes[pre] = tuple(s[k] for k in inverse(q))
        if o in g.dtypes:
            g.dtypes[pre] = g.dtypes[o]
        g.set_output(node, i, pre)
        touched.append(g.add_transpose(pre, q, o))
        touched += g.consumers(o)
    return [n for n in touched if n is not None]


# --- driver ----------------------------------------------------------------------------------------------------


def _candidates(g: Graph, t: onnx.NodeProto):
    """(group, plans) to try for `t`: all consumers at once first, then each consumer alone."""
    p = _perm(g, t)
    out = t.output[0]
    if p is None or g.rank(t.input[0]) not in (None, len(p)):
        return
    consumers = [c for c in g.consumers(out) if not _is_transpose(c)]
    plans = [plan_for(g, c, p, _positions(c, out)) for c in consumers]
    if len(consumers) > 1 and all(pl is not None for pl in plans):
        yield consumers, plans
    for c, pl in zip(consumers, plans):
        if pl is not None:
            yield [c], [pl]


def _dependency_order(group: list[onnx.NodeProto], plans: list[Plan]) -> list[tuple[onnx.NodeProto, Plan]]:
    """Group members, each after any member whose output it reads (x * sigmoid(x): Sigmoid first)."""
    pending, done = list(zip(group, plans)), []
    while pending:
        outs = {o for n, _ in pending for o in n.output}
        ready = [item for item in pending if not outs & set(item[0].input)] or pending[:1]
        done += ready
        pending = [item for item in pending if all(item is not r for r in ready)]
    return done


def _key(g: Graph, t: onnx.NodeProto, group: list[onnx.NodeProto]) -> tuple:
    return (t.input[0], tuple(_perm(g, t)), tuple(tuple(n.output) for n in group))


def _wanted(g: Graph, delta: int, pure: bool, group: list[onnx.NodeProto], plans: list[Plan]) -> bool:
    """A move the greedy loop takes: it lowers the count, or is a pure move towards an inverse Transpose
    (`pure=True` also for the follow-ups of a lookahead, which may put an inverse on another input)."""
    return delta < 0 or (delta == 0 and pure and any(
        _promising(g, n.output[i], q, set()) for n, pl in zip(group, plans) for i, q in pl.outs))


def _push(g: Graph, t: onnx.NodeProto, group: list[onnx.NodeProto], plans: list[Plan]) -> None:
    touched: list[onnx.NodeProto] = []
    for n, plan in _dependency_order(group, plans):
        touched += _apply(g, t, n, plan)
    cleanup(g, touched)


def _try_push(g: Graph, t: onnx.NodeProto, blocked: set) -> str | None:
    """"pushed", "undone" (a move was tried and rolled back: node objects changed) or None (nothing to do)."""
    for group, plans in _candidates(g, t):
        key = _key(g, t, group)
        if key in blocked:
            continue
        delta, pure = _cost(g, t, group, plans)
        if not _wanted(g, delta, pure, group, plans):
            continue
        before = g.count()
        g.begin()
        _push(g, t, group, plans)
        after = g.count()
        if after > before or (after == before and delta < 0):
            g.rollback()  # the estimate was wrong: undo and never try this move again
            blocked.add(key)
            return "undone"
        g.commit()
        return "pushed"
    return None


# --- lookahead -------------------------------------------------------------------------------------------------

LOOKAHEAD_MAX_DELTA = 3  # candidate moves that add more transposes than this are not explored
LOOKAHEAD_STEPS = 8  # follow-up moves after the candidate


def _follow_up(g: Graph, blocked: set) -> bool:
    """Take the best move, not adding transposes, of a Transpose added or edited since `begin`; False if none."""
    best = None
    for f in g.journal_nodes():
        if not _is_transpose(f):
            continue
        for group, plans in _candidates(g, f):
            if _key(g, f, group) in blocked:
                continue
            delta, pure = _cost(g, f, group, plans)
            if (best is None or delta < best[0]) and _wanted(g, delta, True, group, plans):
                best = (delta, f, group, plans)
    if best is None:
        return False
    _, f, group, plans = best
    before = g.count()
    _push(g, f, group, plans)
    return g.count() <= before


def _try_look_ahead(g: Graph, t: onnx.NodeProto, blocked: set, tried: dict) -> bool:
    """Take a move that adds transposes when a few greedy follow-ups on what it created end lower.

    The x * f(x) diamonds (Paddle's HardSwish `x * clip(x + 3, 0, 6) / 6`, SE blocks, residual Adds): pushing
    the Transpose on x below both consumers puts one after each and an inverse on the other input of the join
    (1 -> 3); pushing the first one down to the join cancels it with that inverse, and the second one can then
    go on to the next conv. The candidate and its follow-ups share one journal entry: kept only if the count
    ends strictly lower, else all undone. `tried` remembers failures with the count they were tried at, so a
    candidate is tried again only once the graph has lost transposes since.
    """
    for group, plans in _candidates(g, t):
        key = _key(g, t, group)
        before = g.count()
        if key in blocked or tried.get(key, before + 1) <= before:
            continue
        delta, pure = _cost(g, t, group, plans)
        if _wanted(g, delta, pure, group, plans) or delta > LOOKAHEAD_MAX_DELTA:
            continue
        g.begin()
        _push(g, t, group, plans)
        for _ in range(LOOKAHEAD_STEPS):
            if g.count() < before or not _follow_up(g, blocked):
                break
        if g.count() < before:
            g.commit()
            return True
        g.rollback()  # restores the same node objects: the caller's list of transposes stays valid
        tried[key] = before
    return False


def sink_transposes(g: Graph, max_steps: int | None = None) -> int:
    """Push transposes down until no step helps; returns the number of steps taken.

    Greedy moves first; once none is left, one bounded lookahead (see `_try_look_ahead`), then greedy again.
    """
    cleanup(g)
    steps, limit = 0, max_steps or 20 * len(g.nodes) + 100
    blocked: set = set()
    tried: dict = {}
    progressed = True
    while progressed and steps < limit:
        progressed = False
        g.topo_sort()
        for t in [n for n in g.nodes if _is_transpose(n)]:
            if not g.alive(t) or not _is_transpose(t):
                continue
            result = _try_push(g, t, blocked)
            if result:
                progressed = True
                steps += result == "pushed"
            if result == "undone" or steps >= limit:
                break
        if progressed or steps >= limit:
            continue
        for t in [n for n in g.nodes if _is_transpose(n)]:
            if g.alive(t) and _is_transpose(t) and _try_look_ahead(g, t, blocked, tried):
                progressed = True
                steps += 1
                break
    return steps
