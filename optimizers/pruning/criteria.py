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
about one inverse per consumer. On the digits CNN, all three groups at 50 % with the refit, it kept 98.2 % accuracy
(11.4 dB logit SQNR) where l2 kept 94.2 % (8.9 dB) and activation 94.9 % (8.6 dB).
"""

from __future__ import annotations

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


def weight_scores(group: Group, norm: str) -> np.ndarray:
    """Normalized group norm (`norm` l1 or l2) per channel."""
    total = np.zeros(group.size)
    for m in group.members:
        if m.scored:
            total += _normalized(_per_channel(const(m.node.inputs[m.input]), m.axis, norm))
    return total


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


def reconstruction_scores(groups: list[Group], model: onnx.ModelProto, data: Dataset,
                          ridge: float) -> list[np.ndarray]:
    """Greedy least-squares ranking per group (one pass over `data` per group keeps memory to its consumers)."""
    scores = []
    for group in groups:
        systems = [LayerSystem(c, len(data)) for c in group.consumers]
        names = [str(v.name) for c in group.consumers for v in (c.inputs[0], c.outputs[0])]
        for batch in capture(model, names, data) if systems else []:
            for s in systems:
                s.add(batch[str(s.node.inputs[0].name)], batch[str(s.node.outputs[0].name)])
        scores.append(_greedy_order(group.size, [s.eq for s in systems], ridge))
    return scores


class _Downdated:
    """Inverse of one consumer's regularized Gram and its solution, over the columns of the channels still in."""

    def __init__(self, eq: NormalEquations, channels: int, ridge: float):
        self.inv = np.linalg.inv(eq.regularized(ridge))
        self.theta = self.inv @ eq.h
        self.taps = (len(self.inv) - eq.intercept) // channels  # columns per channel (Conv: kernel taps), channel-major
        self.energy = max(eq.yy.sum(), _EPS)

    def costs(self, alive: int) -> np.ndarray:
        """Error increase, relative to the output energy, of dropping each of the `alive` channels alone."""
        k, span = self.taps, alive * self.taps
        blocks = self.inv[:span, :span].reshape(alive, k, alive, k)[np.arange(alive), :, np.arange(alive), :]
        theta = self.theta[:span].reshape(alive, k, -1)
        return (theta * np.linalg.solve(blocks, theta)).sum(axis=(1, 2)) / self.energy

    def drop(self, j: int) -> None:
        b = np.arange(j * self.taps, (j + 1) * self.taps)
        k = np.setdiff1d(np.arange(len(self.inv)), b)
        step = np.linalg.solve(self.inv[np.ix_(b, b)], np.hstack([self.inv[np.ix_(b, k)], self.theta[b]]))
        self.theta = self.theta[k] - self.inv[np.ix_(k, b)] @ step[:, len(k):]
        self.inv = self.inv[np.ix_(k, k)] - self.inv[np.ix_(k, b)] @ step[:, :len(k)]


def _greedy_order(channels: int, systems: list[NormalEquations], ridge: float) -> np.ndarray:
    """Score per channel = the step at which greedy elimination drops it (the last one standing scores highest)."""
    state = [_Downdated(eq, channels, ridge) for eq in systems]
    alive = list(range(channels))
    score = np.zeros(channels)
    for step in range(channels - 1):
        j = int(np.argmin(sum((s.costs(len(alive)) for s in state), np.zeros(len(alive)))))
        for s in state:
            s.drop(j)
        score[alive.pop(j)] = step
    score[alive[0]] = channels
    return score
