"""Accuracy-aware INT8 fallback: find the few nodes whose quantization costs the most accuracy and leave them
in float, instead of giving up on INT8 for the whole model.

Two measured facts (notes/quantization-and-pruning.md §8) shape it:

* ONNX Runtime keeps a tensor's Q/DQ unless *all* its quantizable producers and consumers are excluded, so
  nodes leave quantization in groups: the nodes around one activation tensor, merged when groups share a node.
* Ranking groups by "revert only this group" picks the wrong culprits (excluding one op removes error
  cancellation and made the outlier model worse); ranking by "quantize only this group" finds the right ones,
  and a greedy fallback in that order needed 2 exclusions where the other order needed 7.

A helper for the `quantize` step, not a pass: quantizing and scoring come in as callables, so the search runs
the same for any quantizer configuration and is testable without ONNX Runtime.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from time import monotonic
from typing import Callable

import onnx

Quantize = Callable[[set[str]], onnx.ModelProto]
Score = Callable[[onnx.ModelProto], float]


@dataclass
class Group:
    name: str  # the activation tensor the group is built around
    nodes: list[str]  # ONNX node names that must leave quantization together


@dataclass
class FallbackResult:
    model: onnx.ModelProto
    excluded: list[str]  # node names left in float, in the order they were excluded (pinned first)
    score: float
    met: bool
    ranking: list[dict]  # {"group", "nodes", "score"[, "error"]}: worst culprit first, unranked last
    history: list[dict]  # {"group", "nodes", "score", "kept", "seconds"[, "error"]} per greedy attempt
    seconds: float


# --- groups ----------------------------------------------------------------------------------------------------


def quantizer_groups(model: onnx.ModelProto, quantized_ops: set[str]) -> list[Group]:
    """Nodes that must be excluded together for a tensor to lose its Q/DQ, in graph order.

    Per activation tensor: its producer and consumers whose op_type is in `quantized_ops`; tensors that share a
    node merge (union-find). Weights (initializers, Constant outputs) are skipped: a weight shared by two convs
    does not tie their activations together. Each group is named after the first output of its first node.
    """
    nodes = list(model.graph.node)
    quantizable = {i for i, node in enumerate(nodes) if node.op_type in quantized_ops}
    _check_names(nodes, quantizable)
    parent = {i: i for i in quantizable}
    for members in _tensor_members(model.graph, quantizable).values():
        for i in members[1:]:
            parent[_find(parent, i)] = _find(parent, members[0])
    by_root: dict[int, list[int]] = {}
    for i in sorted(quantizable):
        by_root.setdefault(_find(parent, i), []).append(i)
    return [Group(nodes[idx[0]].output[0], [nodes[i].name for i in idx]) for idx in by_root.values()]


def _check_names(nodes: list[onnx.NodeProto], quantizable: set[int]) -> None:
    """Exclusions are passed to the quantizer by node name, so every quantizable node needs a unique one."""
    seen: set[str] = set()
    for i in sorted(quantizable):
        name = nodes[i].name
        if not name or name in seen:
            problem = "has no name" if not name else f"shares the name {name!r}"
            raise ValueError(f"node #{i} ({nodes[i].op_type}) {problem}: give every node a unique name before "
                             f"building quantizer groups (the quantize step names them)")
        seen.add(name)


def _tensor_members(graph: onnx.GraphProto, quantizable: set[int]) -> dict[str, list[int]]:
    """Indices of the quantizable producer and consumers of every activation tensor (graph inputs and node
    outputs; initializers and Constant outputs are weights, not activations)."""
    weights = {t.name for t in graph.initializer}
    weights |= {out for node in graph.node if node.op_type == "Constant" for out in node.output}
    members: dict[str, list[int]] = {t.name: [] for t in graph.input if t.name not in weights}
    for i, node in enumerate(graph.node):
        if i in quantizable:
            for name in node.input:
                if name in members and i not in members[name]:
                    members[name].append(i)
        members.update({out: [i] if i in quantizable else [] for out in node.output if out and out not in weights})
    return members


def _find(parent: dict[int, int], i: int) -> int:
    while parent[i] != i:
        parent[i] = parent[parent[i]]
        i = parent[i]
    return i


# --- search ----------------------------------------------------------------------------------------------------


def accuracy_fallback(groups: list[Group], quantize: Quantize, quantize_only: Quantize, score: Score, target: float,
                      *, budget_s: float = 300.0, pinned: frozenset[str] = frozenset()) -> FallbackResult:
    """Exclude the fewest quantizer groups that bring `score` to `target`; always return the best model seen.

    quantize(excluded) quantizes everything but `excluded`; quantize_only(nodes) quantizes just `nodes`; score is
    higher-is-better (NaN counts as -inf). Groups are ranked by "quantize only this group" (lowest score = worst
    culprit), then excluded greedily in that order, keeping an exclusion only if it raised the score. Pinned
    nodes stay in float throughout. Stops at the target, when groups run out, or when `budget_s` has elapsed.
    """
    start = monotonic()
    deadline = start + budget_s
    excluded = sorted(pinned)
    model = quantize(set(excluded))
    result = FallbackResult(model, excluded, _safe_score(score, model), False, [], [], 0.0)
    candidates = [g for g in groups if not set(g.nodes) <= pinned]
    if result.score < target and candidates:
        result.ranking = _rank(candidates, quantize_only, score, pinned, deadline)
        _greedy(result, quantize, score, target, deadline)
    result.met = result.score >= target
    result.seconds = monotonic() - start
    return result


def _rank(groups: list[Group], quantize_only: Quantize, score: Score, pinned: frozenset[str],
          deadline: float) -> list[dict]:
    """One "quantize only this group" run per group, worst first; groups the budget or an error left unscored
    keep graph order at the end, where the greedy search still tries them."""
    ranking = []
    for group in groups:
        entry: dict = {"group": group.name, "nodes": list(group.nodes), "score": None}
        if monotonic() < deadline:
            _, value, error = _attempt(quantize_only, {n for n in group.nodes if n not in pinned}, score)
            entry.update({"error": error} if error else {"score": value})
        ranking.append(entry)
    return sorted(ranking, key=lambda e: (e["score"] is None, e["score"] or 0.0))


def _greedy(result: FallbackResult, quantize: Quantize, score: Score, target: float, deadline: float) -> None:
    """Exclude groups in ranking order on top of what is already excluded; undo any that did not help.

    A culprit that did not help alone stays pending: when the next group does not help alone either, the two
    are tried together. An outlier spans a producer and its consumer, and floating only one of them can
    score worse than floating neither (measured: conv4 alone 27.8 -> 22.8 dB, conv3 + conv4 39 dB). Only
    improvements are kept, so `result` always holds the best model seen."""
    pending: dict | None = None
    for entry in result.ranking:
        if result.score >= target or monotonic() >= deadline:
            return
        kept, failed = _try(result, [entry], quantize, score)
        if kept or failed:
            pending = None if kept else pending
            continue
        if pending is not None and monotonic() < deadline and _try(result, [pending, entry], quantize, score)[0]:
            pending = None
        else:
            pending = entry


def _new_nodes(result: FallbackResult, entries: list[dict]) -> list[str]:
    return [n for e in entries for n in e["nodes"] if n not in result.excluded]


def _try(result: FallbackResult, entries: list[dict], quantize: Quantize, score: Score) -> tuple[bool, bool]:
    """Exclude `entries` on top of the current exclusions; keep them only if the score rises.
    Returns (kept, failed): failed when there was nothing new to try or the candidate raised."""
    new = _new_nodes(result, entries)
    if not new:
        return False, True
    began = monotonic()
    model, value, error = _attempt(quantize, set(result.excluded) | set(new), score)
    kept = error is None and value > result.score
    record = {"group": "+".join(e["group"] for e in entries), "nodes": new, "score": value, "kept": kept,
              "seconds": monotonic() - began}
    result.history.append(record | ({"error": error} if error else {}))
    if kept:
        result.model, result.score = model, value
        result.excluded.extend(new)
    return kept, error is not None


def _attempt(make: Quantize, nodes: set[str], score: Score) -> tuple[onnx.ModelProto | None, float, str | None]:
    """Quantize and score one candidate; a failure costs that candidate only, not the whole search."""
    try:
        model = make(nodes)
        return model, _safe_score(score, model), None
    except Exception as exc:  # quantizer and runtime errors come as many classes (ORT's are pybind ones)
        return None, -math.inf, f"{type(exc).__name__}: {exc}"


def _safe_score(score: Score, model: onnx.ModelProto) -> float:
    """NaN would compare False against everything and freeze the search; it means broken outputs: -inf."""
    value = float(score(model))
    return -math.inf if math.isnan(value) else value
