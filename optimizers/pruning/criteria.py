"""Channel importance per group: which channels to keep (quantization notes §9.2).

`l1` / `l2`: group norm. Each member constant's per-channel norm is divided by that member's mean norm before the
members are summed, so a big tensor (a 3x3 Conv weight) does not drown a small one (a BN scale) and channels are
ranked by how much they matter everywhere they appear. BN running statistics say nothing about importance and are
left out; BN scales only carry signal while BN is unfolded.

`activation`: mean |x| per channel over the calibration data, read from the tensors the group's consumer layers
take as input (after BN and activation, i.e. what removing the channel actually takes away; a Conv output before
an unfolded BN would be on an arbitrary scale). Groups without a consumer use all their tensors.

`reconstruction`: greedy least-squares selection (ThiNet-like, fitted to what the refit can do). Starting from all
channels, repeatedly drop the channel whose removal raises the consumers' ridge least-squares reconstruction error
the least, each consumer's error relative to its output energy; channels dropped last rank highest. The normal
equations come from the original model on calibration data, and each drop is a block downdate of the inverse
(removing block B raises the error by theta_B^T (M_BB)^-1 theta_B, M the inverse Gram), so the whole ranking costs
about one inverse per consumer. A layer reading a composite (a Conv after a Concat) counts for each part: its
system spans the whole composite, and only the part's columns, at their offsets, are candidates to drop (the other
parts' channels stay in, so each part is ranked on its own, as it is pruned); the systems are built once per layer
and shared by its parts. A group no layer reads falls back to the l2 group norm. On the digits CNN, all three
groups at 50 % with the refit, it kept 98.2 % accuracy (11.4 dB logit SQNR) where l2 kept 94.2 % (8.9 dB) and
activation 94.9 % (8.6 dB).
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import onnx_ir as ir

from accelopt.data import Dataset
from accelopt.optimizers.pruning.activations import capture
from accelopt.optimizers.pruning.groups import Group, const
from accelopt.optimizers.pruning.refit import LayerSystem, NormalEquations

_EPS = 1e-12


def _normalized(per_channel: np.ndarray) -> np.ndarray:
    mean = per_channel.mean()
    return per_channel / mean if mean > _EPS else per_channel


def _per_channel(array: np.ndarray, axis: int, norm: str) -> np.ndarray:
    """The l1 or l2 norm of each slice along `axis`."""
    rows = np.moveaxis(array.astype(np.float64), axis, 0).reshape(array.shape[axis], -1)
    return np.linalg.norm(rows, ord=1 if norm == "l1" else 2, axis=1)


def weight_scores(group: Group, norm: str, everything: list[Group] = ()) -> np.ndarray:
    """Normalized group norm (`norm` l1 or l2) per channel, counting the members of every composite in `everything`
    that holds the group at their offsets (a Split half has no constant of its own: cv1's rows are the composite's)."""
    total = np.zeros(group.size)
    for whole, offsets in [(group, [0]), *_places(group, everything)]:
        for m in whole.members:
            if m.scored:
                per = _normalized(_per_channel(const(m.node.inputs[m.input]), m.axis, norm))
                total += sum(per[o:o + group.size] for o in offsets)
    return total


def _places(group: Group, everything: list[Group]) -> list[tuple[Group, list[int]]]:
    """(composite, offsets at which the group's channels sit in it) for each composite holding the group."""
    found = [(w, [o for leaf, o in w.leaves() if leaf is group]) for w in everything if w.parts and w is not group]
    return [(w, offsets) for w, offsets in found if offsets]


def activation_scores(groups: list[Group], model: onnx.ModelProto, data: Dataset) -> list[np.ndarray]:
    """Normalized mean |activation| per channel of each group, from one pass over `data` (sums of |x| suffice:
    the normalization removes the sample count)."""
    read = [[(str(v.name), g.axis[v]) for v in _measured(g)] for g in groups]
    sums: dict[tuple[str, int], np.ndarray] = {}
    for batch in capture(model, sorted({name for pairs in read for name, _ in pairs}), data):
        for pairs in read:
            for name, axis in pairs:
                sums[name, axis] = sums.get((name, axis), 0) + _per_channel(batch[name], axis, "l1")
    return [sum((_normalized(sums[key]) for key in pairs), np.zeros(g.size)) for g, pairs in zip(groups, read)]


def _measured(group: Group) -> list[ir.Value]:
    inputs = list(dict.fromkeys(c.inputs[0] for c in group.consumers))
    return inputs or group.values


def _readers(group: Group, everything: list[Group]) -> list[tuple[ir.Node, np.ndarray]]:
    """(layer reading the group's channels, [channels, copies] index of each channel in that layer's input): its
    consumers, and those of every composite it is a part of (a part may occur more than once: SPPF's Concat)."""
    found = [(c, np.arange(group.size)[:, None]) for c in group.consumers]
    for whole, offsets in _places(group, everything):
        found += [(c, np.arange(group.size)[:, None] + np.array(offsets)) for c in whole.consumers]
    return found


def reconstruction_scores(groups: list[Group], model: onnx.ModelProto, data: Dataset, ridge: float,
                          everything: list[Group] | None = None) -> list[np.ndarray]:
    """Greedy least-squares ranking per group; `everything` (all groups, default `groups`) supplies the composites
    through which layers read a group. One pass over `data` per group, for the layers no earlier group needed; a
    layer's normal equations are dropped once the last group reading it is ranked."""
    reads = [_readers(g, everything or groups) for g in groups]
    left = Counter(node for read in reads for node, _ in read)
    cache: dict[ir.Node, NormalEquations] = {}
    scores = []
    for group, read in zip(groups, reads):
        systems = [LayerSystem(node, len(data)) for node in dict.fromkeys(n for n, _ in read) if node not in cache]
        names = [str(v.name) for s in systems for v in (s.node.inputs[0], s.node.outputs[0])]
        for batch in capture(model, names, data) if systems else []:
            for s in systems:
                s.add(batch[str(s.node.inputs[0].name)], batch[str(s.node.outputs[0].name)])
        cache.update((s.node, s.eq) for s in systems)
        if read:
            scores.append(_greedy_order(group.size, [(cache[n], _columns(n, at)) for n, at in read], ridge))
        else:
            scores.append(weight_scores(group, "l2", everything or groups))
        for node, _ in read:
            left[node] -= 1
            if not left[node]:
                cache.pop(node, None)
    return scores


def _columns(node: ir.Node, at: np.ndarray) -> np.ndarray:
    """[channels, copies x taps] columns of `layer_weights`' W (Conv: (C, k...) order) that the channels at input
    indices `at` [channels, copies] occupy."""
    w = const(node.inputs[1])
    taps = int(np.prod(w.shape[2:])) if node.op_type == "Conv" else 1
    return (at[:, :, None] * taps + np.arange(taps)).reshape(len(at), -1)


class _Downdated:
    """Inverse of one consumer's regularized Gram and its solution; `cols` [alive, k] are the columns of each
    candidate channel still in (the other columns stay)."""

    def __init__(self, eq: NormalEquations, cols: np.ndarray, ridge: float):
        self.inv = np.linalg.inv(eq.regularized(ridge))
        self.theta = self.inv @ eq.h
        self.cols = cols
        self.energy = max(eq.yy.sum(), _EPS)

    def costs(self) -> np.ndarray:
        """Error increase, relative to the output energy, of dropping each candidate channel alone."""
        c = self.cols
        blocks = self.inv[c[:, :, None], c[:, None, :]]
        theta = self.theta[c]
        return (theta * np.linalg.solve(blocks, theta)).sum(axis=(1, 2)) / self.energy

    def drop(self, j: int) -> None:
        b = self.cols[j]
        k = np.setdiff1d(np.arange(len(self.inv)), b)
        step = np.linalg.solve(self.inv[np.ix_(b, b)], np.hstack([self.inv[np.ix_(b, k)], self.theta[b]]))
        self.theta = self.theta[k] - self.inv[np.ix_(k, b)] @ step[:, len(k):]
        self.inv = self.inv[np.ix_(k, k)] - self.inv[np.ix_(k, b)] @ step[:, :len(k)]
        position = np.full(len(b) + len(k), -1)
        position[k] = np.arange(len(k))
        self.cols = position[np.delete(self.cols, j, axis=0)]


def _greedy_order(channels: int, systems: list[tuple[NormalEquations, np.ndarray]], ridge: float) -> np.ndarray:
    """Score per channel = the step at which greedy elimination drops it (the last one standing scores highest);
    each system comes with its candidate columns per channel (`_columns`)."""
    state = [_Downdated(eq, cols, ridge) for eq, cols in systems]
    alive = list(range(channels))
    score = np.zeros(channels)
    for step in range(channels - 1):
        j = int(np.argmin(sum((s.costs() for s in state), np.zeros(len(alive)))))
        for s in state:
            s.drop(j)
        score[alive.pop(j)] = step
    score[alive[0]] = channels
    return score
