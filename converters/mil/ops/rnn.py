"""RNN, GRU and LSTM: forward, reverse and bidirectional, initial states, both layouts, sequence_lens, clip,
peepholes, any ONNX activation. Each direction is one pass over the static sequence; the directions' outputs
are stacked into ONNX's Y [seq, dirs, batch, H] and Y_h / Y_c [dirs, batch, H] (layout 1: batch first).

A pass is MIL's native recurrent op (what Core ML runs fast) where that computes ONNX's cell exactly:
* LSTM `lstm` with the default activations (Sigmoid, Tanh, Tanh) and no clip: MIL's `clip` bounds the cell
  state, ONNX's the gate inputs. Gates are reordered ONNX [i o f c] -> MIL [i f o g], peepholes [i o f] ->
  [i f o], the two biases summed.
* GRU `gru` with linear_before_reset=0, the default activations and no clip: MIL's gru applies the reset gate
  to h before the recurrent matmul (as Apple's op tests compute it), with the two biases summed (ONNX adds
  both outside the reset gate too). Gates are reordered ONNX [z r h] -> MIL [r o z]. linear_before_reset=1
  would be iOS18's `reset_after`, which coremltools' own parity test marks failing: it is unrolled.
* RNN `rnn` with Tanh, Sigmoid or Relu and no clip.
MIL's reverse pass returns its outputs in processing order (Apple's op tests): they are reversed back to ONNX's
time order. Everything else unrolls into matmul / elementwise ops per step (one matmul projects every step's
input at once): other activations with their alpha/beta, clip, linear_before_reset=1, and sequence_lens
shorter than the sequence, as per-step masks that freeze the states and zero Y past each batch entry's end
(which is ONNX's semantics for both directions). W, R, B and P must be constants.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from onnx import helper

from accelopt.converters.mil import target_at_least
from accelopt.converters.mil.registry import Node, handles, builder as _mb

_DEFAULTS = {"RNN": ["Tanh"], "GRU": ["Sigmoid", "Tanh"], "LSTM": ["Sigmoid", "Tanh", "Tanh"]}
_GATES = {"RNN": 1, "GRU": 3, "LSTM": 4}
# ONNX activations that take alpha (and beta), with their defaults; the others take none
_PARAMS = {"Affine": (1.0, 0.0), "LeakyRelu": (0.01, None), "ThresholdedRelu": (1.0, None),
           "ScaledTanh": (1.0, 1.0), "HardSigmoid": (0.2, 0.5), "Elu": (1.0, None)}
_NAMES = {n.lower(): n for n in ["Sigmoid", "Tanh", "Relu", "Softsign", "Softplus", *_PARAMS]}
_RNN_NATIVE = {"Tanh", "Sigmoid", "Relu"}  # MIL rnn activations with ONNX's parameters


def _wanted(proto, j: int) -> bool:
    """Whether optional output j is used."""
    return len(proto.output) > j and bool(proto.output[j])


# ---------------------------------------------------------------------------------------------- attributes
def _check(proto, opset: int) -> list[tuple[str, str]]:
    attrs = {a.name: helper.get_attribute_value(a) for a in proto.attribute}
    op, found = proto.op_type, []
    for name in attrs.get("activations") or []:
        if name.decode().lower() not in _NAMES:
            found.append(("unsupported_attribute_value", f"{op}: activations contains {name.decode()!r}"))
    direction = attrs.get("direction", b"forward").decode()
    if direction not in ("forward", "reverse", "bidirectional"):
        found.append(("unsupported_attribute_value", f"{op}: direction={direction!r}"))
    if attrs.get("input_forget", 0):
        found.append(("unsupported_attribute_value", f"{op}: input_forget=1 (coupled input and forget gates)"))
    if attrs.get("layout", 0) not in (0, 1):
        found.append(("unsupported_attribute_value", f"{op}: layout={attrs['layout']}"))
    return found


def _raise_check(node: Node) -> None:
    """Fail with the first finding of the static check (the message without its op-type prefix)."""
    for reason, message in _check(node.proto, node.opset):
        raise node.fail(reason, message.split(": ", 1)[1])


def _activations(node: Node, dirs: int) -> list[list[tuple[str, float | None, float | None]]]:
    """(name, alpha, beta) of each activation, per direction; alpha and beta are consumed in order by the
    activations that take them (as ONNX Runtime reads them), defaults where the lists run out."""
    per = len(_DEFAULTS[node.op_type])
    names = [_NAMES[n.lower()] for n in node.attr("activations") or _DEFAULTS[node.op_type] * dirs]
    names = names * dirs if len(names) == per else names
    alphas, betas = list(node.attr("activation_alpha") or []), list(node.attr("activation_beta") or [])
    acts = []
    for name in names:
        alpha, beta = _PARAMS.get(name, (None, None))
        alpha = alphas.pop(0) if alpha is not None and alphas else alpha
        beta = betas.pop(0) if beta is not None and betas else beta
        acts.append((name, alpha, beta))
    return [acts[d * per:(d + 1) * per] for d in range(dirs)]


def _function(act: tuple, dtype: np.dtype) -> Callable[[Any], Any]:
    """An ONNX activation as MIL ops."""
    mb = _mb()
    name, alpha, beta = act
    a, b = (None if v is None else np.array(v, dtype) for v in (alpha, beta))
    table = {
        "Sigmoid": lambda x: mb.sigmoid(x=x), "Tanh": lambda x: mb.tanh(x=x), "Relu": lambda x: mb.relu(x=x),
        "Softsign": lambda x: mb.softsign(x=x), "Softplus": lambda x: mb.softplus(x=x),
        "Affine": lambda x: mb.linear_activation(x=x, alpha=a, beta=b),
        "LeakyRelu": lambda x: mb.leaky_relu(x=x, alpha=a),
        "ThresholdedRelu": lambda x: mb.select(cond=mb.greater(x=x, y=a), a=x, b=np.zeros((), dtype)),  # strict
        "ScaledTanh": lambda x: mb.scaled_tanh(x=x, alpha=a, beta=b),
        "HardSigmoid": lambda x: mb.sigmoid_hard(x=x, alpha=a, beta=b),
        "Elu": lambda x: mb.elu(x=x, alpha=a),
    }
    return table[name]


# ---------------------------------------------------------------------------------------------- plumbing
@dataclass
class _Seq:
    """What every direction's pass shares: x as [seq, batch, input], the constant weights (ONNX gate order),
    and the per-step masks of sequence_lens (None when every entry runs the whole sequence)."""

    node: Node
    x: Any
    seq: int
    batch: int
    hidden: int
    dtype: np.dtype
    w: np.ndarray  # [dirs, gates * H, input]
    r: np.ndarray  # [dirs, gates * H, H]
    wb: np.ndarray  # [dirs, gates * H]
    rb: np.ndarray  # [dirs, gates * H]
    reverse: list[bool]  # per direction
    masks: list[Any] | None  # per time step: bool [batch, 1], True while t < sequence_lens
    clip: float | None
    acts: list[list[tuple]]  # per direction

    def const(self, value: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(value, dtype=self.dtype)

    def zeros(self) -> np.ndarray:
        return np.zeros((self.batch, self.hidden), self.dtype)

    def initial(self, i: int) -> list[Any]:
        """Initial state input i ([dirs, batch, H]; layout 1 [batch, dirs, H]) per direction, zeros if absent."""
        node = self.node
        if not node.has(i):
            return [self.zeros() for _ in self.reverse]
        axis = node.attr("layout", 0)
        v = node.x(i)
        if isinstance(v, np.ndarray):
            return [self.const(np.take(v, d, axis=axis)) for d in range(len(self.reverse))]
        return [_mb().gather(x=v, indices=np.int32(d), axis=axis) for d in range(len(self.reverse))]

    def native(self) -> bool:
        """Whether the native op may run at all: full sequences, no clip, and a type the op takes (fp16 from
        iOS17 on)."""
        fp = self.dtype == np.float32 or target_at_least(self.node.target, "iOS17")
        return self.masks is None and self.clip is None and fp


def _masks(node: Node, seq: int, batch: int) -> list[Any] | None:
    """Per time step, which batch entries are within their sequence_lens (constants when the lengths are)."""
    mb = _mb()
    if not node.has(4):
        return None
    lens = node.const(4)
    if lens is not None:
        lens = lens.reshape(-1)
        if np.all(lens >= seq):
            return None
        return [(t < lens).reshape(batch, 1) for t in range(seq)]
    lens = node.x(4)
    return [mb.expand_dims(x=mb.less(x=np.int32(t), y=lens), axes=[1]) for t in range(seq)]


def _prepare(node: Node) -> _Seq:
    gates = _GATES[node.op_type]
    if node.dtype(0).kind != "f":
        raise node.fail("unsupported_type", f"{node.dtype(0)} input (Core ML's recurrences are fp16/fp32)")
    layout = node.attr("layout", 0)
    dims = node.shape(0)
    seq, batch = (dims[1], dims[0]) if layout else dims[:2]
    x = _mb().transpose(x=node.x(0), perm=[1, 0, 2]) if layout else node.x(0)
    w = node.need_const(1, "W").astype(np.float64)
    r = node.need_const(2, "R").astype(np.float64)
    dirs, hidden = w.shape[0], r.shape[-1]
    direction = node.attr("direction", "forward")
    if dirs != (2 if direction == "bidirectional" else 1):
        raise node.fail("unsupported_attribute_value", f"direction={direction!r} with {dirs} weight sets")
    b = node.need_const(3, "B").astype(np.float64) if node.has(3) else np.zeros((dirs, 2 * gates * hidden))
    return _Seq(node, x, seq, batch, hidden, node.dtype(0), w, r, b[:, :gates * hidden], b[:, gates * hidden:],
                [direction == "reverse" or d == 1 for d in range(dirs)], _masks(node, seq, batch),
                node.attr("clip"), _activations(node, dirs))


def _unroll(s: _Seq, d: int, bias: np.ndarray, step: Callable, states: list[Any]) -> tuple[list[Any] | None, list]:
    """One direction stepped through the sequence: x_t W^T + bias for every step in one matmul, then `step`
    (projected input, *states) -> new states (h first). Returns Y's steps in time order (None unless Y is
    used) and the final states."""
    mb = _mb()
    proj = mb.add(x=mb.matmul(x=s.x, y=s.const(s.w[d].T)), y=s.const(bias))
    width = proj.shape[-1]
    want_y = _wanted(s.node.proto, 0)
    ys: list[Any] = [None] * s.seq
    for t in (reversed(range(s.seq)) if s.reverse[d] else range(s.seq)):
        xw = mb.slice_by_index(x=proj, begin=[t, 0, 0], end=[t + 1, s.batch, width],
                               squeeze_mask=[True, False, False])
        new = step(xw, *states)
        if s.masks is not None:  # past an entry's length: the states stay, Y is zero
            ys[t] = mb.select(cond=s.masks[t], a=new[0], b=s.zeros()) if want_y else None
            new = [mb.select(cond=s.masks[t], a=n, b=o) for n, o in zip(new, states)]
        else:
            ys[t] = new[0]
        states = list(new)
    return (ys if want_y else None), states


def _time_order(s: _Seq, d: int, y) -> Any:
    """A native op's output sequence in ONNX's time order (a reverse pass emits it in processing order), or
    None when Y is not used."""
    if not _wanted(s.node.proto, 0):
        return None
    return _mb().reverse(x=y, axes=[0]) if s.reverse[d] else y


def _outputs(s: _Seq, ys: list, finals: list[list[Any]]) -> tuple:
    """Y from each direction's [seq, batch, H] (a Var or a list of steps) and the final states stacked over the
    directions, in the node's layout; None for outputs the graph does not use."""
    mb = _mb()
    layout = s.node.attr("layout", 0)
    y = None
    if _wanted(s.node.proto, 0):
        per_dir = [mb.stack(values=v, axis=0) if isinstance(v, list) else v for v in ys]
        y = mb.stack(values=per_dir, axis=1)  # [seq, dirs, batch, H]
        y = mb.transpose(x=y, perm=[2, 0, 1, 3]) if layout else y
    states = [mb.stack(values=f, axis=1 if layout else 0) if _wanted(s.node.proto, j + 1) else None
              for j, f in enumerate(finals)]
    return (y, *states)


def _run(s: _Seq, direction: Callable[[int, list], tuple], initial: list[int]) -> tuple:
    """Every direction through `direction(d, its initial states)` -> (Y in time order, final states),
    then ONNX's outputs."""
    starts = [s.initial(i) for i in initial]
    ys, finals = [], [[] for _ in initial]
    for d in range(len(s.reverse)):
        y, states = direction(d, [st[d] for st in starts])
        ys.append(y)
        for f, state in zip(finals, states):
            f.append(state)
    return _outputs(s, ys, finals)


def _native_args(s: _Seq, d: int, order: list[int], bias: np.ndarray) -> dict:
    """The weight arguments of a native op: W, R and the bias with their gates in MIL's order."""
    n = _GATES[s.node.op_type]

    def gates(a: np.ndarray) -> np.ndarray:
        return s.const(np.concatenate([np.split(a, n)[k] for k in order]))

    return dict(x=s.x, weight_ih=gates(s.w[d]), weight_hh=gates(s.r[d]), bias=gates(bias),
                direction="reverse" if s.reverse[d] else "forward", output_sequence=_wanted(s.node.proto, 0))


def _clipped(s: _Seq, fn: Callable) -> Callable:
    """An activation applied after ONNX's clip of its input."""
    if s.clip is None:
        return fn
    mb = _mb()
    return lambda x: fn(mb.clip(x=x, alpha=s.const(-s.clip), beta=s.const(s.clip)))


# ---------------------------------------------------------------------------------------------- the ops
@handles("RNN", check=_check)
def rnn(node: Node):
    """h = f(x W^T + h R^T + Wb + Rb)."""
    mb = _mb()
    _raise_check(node)
    s = _prepare(node)
    native = s.native() and all(acts[0][0] in _RNN_NATIVE for acts in s.acts)

    def direction(d: int, states: list):
        bias = s.wb[d] + s.rb[d]
        if native:
            y, h = mb.rnn(initial_h=states[0], activation=s.acts[d][0][0].lower(),
                          **_native_args(s, d, [0], bias))
            return _time_order(s, d, y), [h]
        f = _clipped(s, _function(s.acts[d][0], s.dtype))
        rt = s.const(s.r[d].T)
        return _unroll(s, d, bias, lambda xw, h: [f(mb.add(x=xw, y=mb.matmul(x=h, y=rt)))], states)

    return _run(s, direction, [5])


@handles("GRU", check=_check)
def gru(node: Node):
    """z, r = f(x W^T + h R^T + b); h~ = g(x Wh^T + (r * h) Rh^T + Rbh + Wbh), or with linear_before_reset
    g(x Wh^T + r * (h Rh^T + Rbh) + Wbh); h = (1 - z) * h~ + z * h."""
    mb = _mb()
    _raise_check(node)
    s = _prepare(node)
    lbr = node.attr("linear_before_reset", 0)
    native = s.native() and not lbr and all([a[0] for a in acts] == _DEFAULTS["GRU"] for acts in s.acts)
    h_ = s.hidden

    def direction(d: int, states: list):
        if native:
            y, h = mb.gru(initial_h=states[0], **_native_args(s, d, [1, 2, 0], s.wb[d] + s.rb[d]))
            return _time_order(s, d, y), [h]
        f, g = (_clipped(s, _function(a, s.dtype)) for a in s.acts[d])
        # with linear_before_reset the recurrent bias of h~ is added inside the reset gate, not projected
        inside = np.where(np.arange(3 * h_) >= 2 * h_, s.rb[d], 0) if lbr else np.zeros(3 * h_)
        rt = s.const(s.r[d].T)  # [H, 3H]: z r h

        def step(xw, h):
            xz, xr, xh = mb.split(x=xw, num_splits=3, axis=1)
            if lbr:
                hz, hr, hh = mb.split(x=mb.add(x=mb.matmul(x=h, y=rt), y=s.const(inside)), num_splits=3, axis=1)
            else:
                hz, hr = mb.split(x=mb.matmul(x=h, y=s.const(rt[:, :2 * h_])), num_splits=2, axis=1)
            z, r = f(mb.add(x=xz, y=hz)), f(mb.add(x=xr, y=hr))
            if lbr:
                cand = g(mb.add(x=xh, y=mb.mul(x=r, y=hh)))
            else:
                cand = g(mb.add(x=xh, y=mb.matmul(x=mb.mul(x=r, y=h), y=s.const(rt[:, 2 * h_:]))))
            return [mb.add(x=cand, y=mb.mul(x=z, y=mb.sub(x=h, y=cand)))]  # (1 - z) h~ + z h

        return _unroll(s, d, s.wb[d] + s.rb[d] - inside, step, states)

    return _run(s, direction, [5])


@handles("LSTM", check=_check)
def lstm(node: Node):
    """i, f = f(x W^T + h R^T + P * c + b); c~ = g(...); c = f * c + i * c~; o = f(... + Po * c);
    h = o * h(c)."""
    mb = _mb()
    _raise_check(node)
    s = _prepare(node)
    p = node.need_const(7, "P").astype(np.float64) if node.has(7) else None
    native = s.native() and all([a[0] for a in acts] == _DEFAULTS["LSTM"] for acts in s.acts)

    def direction(d: int, states: list):
        peep = None if p is None else np.split(p[d], 3)  # i o f
        if native:
            y, h, c = mb.lstm(initial_h=states[0], initial_c=states[1],
                              peephole=None if p is None else s.const(np.concatenate([peep[0], peep[2], peep[1]])),
                              **_native_args(s, d, [0, 2, 1, 3], s.wb[d] + s.rb[d]))
            return _time_order(s, d, y), [h, c]
        f, g = (_clipped(s, _function(a, s.dtype)) for a in s.acts[d][:2])
        act_h = _function(s.acts[d][2], s.dtype)  # ONNX clips the gates' inputs, not the cell state
        rt = s.const(s.r[d].T)

        def peephole(gate, k: int, c):
            return gate if peep is None else mb.add(x=gate, y=mb.mul(x=c, y=s.const(peep[k])))

        def step(xw, h, c):
            i, o, fg, z = mb.split(x=mb.add(x=xw, y=mb.matmul(x=h, y=rt)), num_splits=4, axis=1)
            i, fg = f(peephole(i, 0, c)), f(peephole(fg, 2, c))
            c = mb.add(x=mb.mul(x=fg, y=c), y=mb.mul(x=i, y=g(z)))
            return [mb.mul(x=f(peephole(o, 1, c)), y=act_h(c)), c]

        return _unroll(s, d, s.wb[d] + s.rb[d], step, states)

    return _run(s, direction, [5, 6])

