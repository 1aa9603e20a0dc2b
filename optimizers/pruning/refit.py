"""Training-free recovery: ridge least-squares refit of the layers that read pruned channels (quantization notes
§9.3; He, Zhang, Sun, ICCV 2017, step ii).

Each consumer Conv/Gemm/MatMul is re-solved so that, fed with its input from the PRUNED model (already refit up to
it), it reproduces its own pre-activation output in the ORIGINAL model; where its own outputs were pruned too, the
target keeps only the surviving channels. Layers go in graph (topological) order, so each fit sees the errors that
earlier fits left, which the notes found essential (wrong order: 100 % -> 83.5 %).

Conv inputs become im2col rows with columns in (C, k...) order, honouring pads, auto_pad, strides and dilations;
only group-1 Convs are consumers (a depthwise Conv in a pruned group acts per channel, so slicing it is exact and
it needs no refit). Rows are summed into normal equations batch by batch and sub-sampled to a budget proportional to
the layer's fan-in, so the memory does not grow with the calibration set or the feature-map size.

The solver also does the masked refit for 2:4 / unstructured sparsity: with a keep-mask, each output row is
re-solved over its kept weights only, and the masked weights stay exactly zero.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np
import onnx
import onnx_ir as ir
from onnx_ir.passes.common import RemoveUnusedNodesPass

from accelopt.data import Dataset
from accelopt.optimizers.pruning.activations import capture
from accelopt.optimizers.pruning.groups import const, node_name
from accelopt.optimizers.pruning.rewrite import Writer

_ROWS_PER_UNKNOWN = 32  # rows kept per solved weight (fan-in + 1): a well-posed fit at a bounded cost
_MIN_ROWS = 16384  # ...but never fewer than this, when the data has them
_TINY = 1e-30


@dataclass
class NormalEquations:
    """Sums that fix the least-squares fit of y ~ a W^T + b: [a 1]^T [a 1], [a 1]^T y and sum(y^2) per output."""

    g: np.ndarray
    h: np.ndarray
    yy: np.ndarray
    intercept: bool
    rows: int = 0

    @classmethod
    def empty(cls, fan_in: int, outputs: int, intercept: bool = True) -> NormalEquations:
        n = fan_in + intercept
        return cls(np.zeros((n, n)), np.zeros((n, outputs)), np.zeros(outputs), intercept)

    def add(self, a: np.ndarray, y: np.ndarray) -> None:
        a = a.astype(np.float64)
        if self.intercept:
            a = np.hstack([a, np.ones((a.shape[0], 1))])
        y = y.astype(np.float64)
        self.g += a.T @ a
        self.h += a.T @ y
        self.yy += (y ** 2).sum(axis=0)
        self.rows += a.shape[0]

    def regularized(self, ridge: float) -> np.ndarray:
        """G + lam I with lam = ridge * trace(G) / n: `ridge` is relative to the mean input energy, so it means the
        same for every layer."""
        n = self.g.shape[0]
        return self.g + ridge * (np.trace(self.g) / n or 1.0) * np.eye(n)

    def sqnr_db(self, w: np.ndarray, b: np.ndarray | None) -> float:
        """10 log10(|y|^2 / |y - a W^T - b|^2) over the rows summed so far."""
        theta = np.vstack([w.T, b[None]]) if self.intercept else w.T
        residual = self.yy.sum() - 2 * (theta * self.h).sum() + (theta * (self.g @ theta)).sum()
        return float(10 * np.log10(max(self.yy.sum(), _TINY) / max(residual, _TINY)))


def solve(eq: NormalEquations, ridge: float, mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """(W [outputs, fan_in], b [outputs] or None) minimizing |y - a W^T - b|^2 + lam |[W b]|^2 (see `regularized`).

    With `mask` (outputs x fan_in, any shape that reshapes to it; True = keep), each output row is solved over its
    kept weights only and the others are exactly zero.
    """
    n = eq.g.shape[0]
    reg = eq.regularized(ridge)
    if mask is None:
        theta = np.linalg.solve(reg, eq.h)
    else:
        keep = np.hstack([mask.reshape(eq.h.shape[1], -1), np.ones((eq.h.shape[1], int(eq.intercept)), bool)])
        theta = np.zeros_like(eq.h)
        for o, row in enumerate(keep):
            idx = np.flatnonzero(row)
            theta[idx, o] = np.linalg.solve(reg[np.ix_(idx, idx)], eq.h[idx, o])
    fan_in = n - eq.intercept
    return theta[:fan_in].T, theta[fan_in] if eq.intercept else None


def lsq_refit(a: np.ndarray, y: np.ndarray, ridge: float = 1e-3, mask: np.ndarray | None = None,
              intercept: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """[a 1] [W^T; b] ~ y for rows `a` (rows, fan_in) and targets `y` (rows, outputs), in one call."""
    eq = NormalEquations.empty(a.shape[1], y.shape[1], intercept)
    eq.add(a, y)
    return solve(eq, ridge, mask)


# --- rows from activations -----------------------------------------------------------------------------------------


def _sample(total: int, quota: int, rng: np.random.Generator) -> np.ndarray:
    return np.arange(total) if total <= quota else np.sort(rng.choice(total, quota, replace=False))


def _conv_pads(node: ir.Node, kernel: tuple[int, ...], strides: list[int], dilations: list[int],
               in_size: tuple[int, ...], out_size: tuple[int, ...]) -> list[tuple[int, int]]:
    """(begin, end) padding per spatial dim, from `pads` or `auto_pad`."""
    auto = node.attributes.get_string("auto_pad", "NOTSET")
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        total = [max((o - 1) * s + (k - 1) * d + 1 - i, 0)
                 for o, s, k, d, i in zip(out_size, strides, kernel, dilations, in_size)]
        begin = [t // 2 if auto == "SAME_UPPER" else t - t // 2 for t in total]
        return [(b, t - b) for b, t in zip(begin, total)]
    pads = node.attributes.get_ints("pads") if auto == "NOTSET" else None
    pads = list(pads or [0] * 2 * len(kernel))
    return list(zip(pads[:len(kernel)], pads[len(kernel):]))


def conv_rows(node: ir.Node, x: np.ndarray, y: np.ndarray, pick: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """im2col rows (C, k... order) of a group-1 Conv for the output positions `pick` (flat indices into
    [N, out...]), and the matching output rows of `y`."""
    kernel = tuple(const(node.inputs[1]).shape[2:])
    d = len(kernel)
    strides = list(node.attributes.get_ints("strides") or [1] * d)
    dilations = list(node.attributes.get_ints("dilations") or [1] * d)
    pads = _conv_pads(node, kernel, strides, dilations, x.shape[2:], y.shape[2:])
    xp = np.pad(x, [(0, 0), (0, 0), *pads])
    n, *pos = np.unravel_index(pick, (y.shape[0], *y.shape[2:]))
    taps = np.array(list(np.ndindex(*kernel)))
    idx = [pos[j][:, None] * strides[j] + taps[None, :, j] * dilations[j] for j in range(d)]
    patches = xp[(n[:, None], slice(None), *idx)]  # (rows, taps, C): advanced indices first
    return patches.transpose(0, 2, 1).reshape(len(pick), -1), y[(n, slice(None), *pos)]


def _rows(node: ir.Node, x: np.ndarray, y: np.ndarray, quota: int,
          rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    if node.op_type == "Conv":
        return conv_rows(node, x, y, _sample(y.shape[0] * int(np.prod(y.shape[2:])), quota, rng))
    a, t = x.reshape(-1, x.shape[-1]), y.reshape(-1, y.shape[-1])  # Gemm (transA=0) and MatMul: features last
    pick = _sample(len(a), quota, rng)
    return a[pick], t[pick]


# --- layers as (W, b) ------------------------------------------------------------------------------------------------


def layer_weights(node: ir.Node) -> tuple[np.ndarray, np.ndarray | None]:
    """The layer's current weights as W [outputs, fan_in] and b [outputs] (None for a MatMul)."""
    w = const(node.inputs[1]).astype(np.float64)
    c = const(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] is not None else None
    if node.op_type == "Conv":
        return w.reshape(w.shape[0], -1), np.zeros(w.shape[0]) if c is None else c.astype(np.float64)
    if node.op_type == "MatMul":
        return w.T, None
    w = node.attributes.get_float("alpha", 1.0) * (w if node.attributes.get_int("transB", 0) else w.T)
    bias = np.zeros(w.shape[0]) if c is None else node.attributes.get_float("beta", 1.0) * c.astype(np.float64)
    return w, np.broadcast_to(bias.reshape(-1), (w.shape[0],)).copy()


def write_layer(node: ir.Node, w: np.ndarray, b: np.ndarray | None, writer: Writer, suffix: str = "refit") -> None:
    """Store W [outputs, fan_in] and b as `layer_weights` returns them, in the node's own layout."""
    old = const(node.inputs[1])
    if node.op_type == "Conv":
        writer.put(node, 1, w.reshape(old.shape).astype(old.dtype), suffix)
    elif node.op_type == "MatMul":
        writer.put(node, 1, w.T.astype(old.dtype), suffix)
    else:
        writer.put(node, 1, (w if node.attributes.get_int("transB", 0) else w.T).astype(old.dtype), suffix)
        writer.set_attribute(node, "alpha", 1.0)
        writer.set_attribute(node, "beta", 1.0)
    if b is not None:
        writer.put(node, 2, b.astype(old.dtype), suffix)


class LayerSystem:
    """The normal equations of one layer, filled from (input, output) batches within a row budget proportional to
    its fan-in; `kept` selects the output channels to fit when the layer's own outputs were pruned."""

    def __init__(self, node: ir.Node, samples: int, kept: np.ndarray | None = None):
        w, b = layer_weights(node)
        self.node, self.kept, self.samples = node, kept, samples
        self.eq = NormalEquations.empty(w.shape[1], w.shape[0], intercept=b is not None)
        self.cap = max(_MIN_ROWS, _ROWS_PER_UNKNOWN * (w.shape[1] + 1))
        self.rng = np.random.default_rng(0)

    def add(self, x: np.ndarray, y: np.ndarray) -> None:
        if self.kept is not None:
            y = np.take(y, self.kept, axis=1 if self.node.op_type == "Conv" else -1)
        self.eq.add(*_rows(self.node, x, y, -(-self.cap * len(x) // self.samples), self.rng))


# --- the driver ------------------------------------------------------------------------------------------------------


def _pairs(current: onnx.ModelProto, original: onnx.ModelProto, node: ir.Node,
           data: Dataset) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(input in the pruned model, output in the original model) per batch."""
    x, y = str(node.inputs[0].name), str(node.outputs[0].name)
    for pruned, reference in zip(capture(current, [x], data), capture(original, [y], data)):
        yield pruned[x], reference[y]


def refit_layers(model: ir.Model, original: onnx.ModelProto, layers: list[tuple[ir.Node, np.ndarray | None]],
                 data: Dataset, ridge: float, writer: Writer,
                 masks: dict[ir.Node, np.ndarray] | None = None) -> list[dict]:
    """Refit each (layer, kept output channels or None), in the given (graph) order; one record per layer.

    A layer in `masks` keeps its weights where the mask (layout of `layer_weights`) is True and the rest exactly 0.
    """
    records = []
    for node, kept in layers:
        system = LayerSystem(node, len(data), kept)
        for x, y in _pairs(ir.to_proto(RemoveUnusedNodesPass()(model).model), original, node, data):
            system.add(x, y)
        w0, b0 = layer_weights(node)
        w, b = solve(system.eq, ridge, (masks or {}).get(node))
        write_layer(node, w, b, writer)
        records.append({"layer": node_name(node), "rows": system.eq.rows, "fan_in": w0.shape[1],
                        "fit_sqnr_db_before": round(system.eq.sqnr_db(w0, b0), 2),
                        "fit_sqnr_db_after": round(system.eq.sqnr_db(w, b), 2)})
    return records
