"""Kernels of MIL's recurrent ops: rnn, gru and lstm (iOS15, fp16 from iOS17).

They follow the MIL definitions as coremltools' op tests compute them (the references its tests compare Core ML
with on a Mac): gates in MIL's order (lstm [i f o g], peepholes [i f o]; gru [r o z]); gru applies the reset
gate to h before the recurrent matmul and keeps (1 - z) of the candidate; lstm's `clip` bounds the cell state;
a "reverse" pass returns its outputs in processing order, while lstm's "bidirectional" returns the backward
half in time order. Without output_sequence the output is the last processed step.
"""

from __future__ import annotations

import numpy as np

from accelopt.converters.mil.kernels import Args, kernel


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-x))


# MIL's activation names, at their default parameters (scaled_tanh alpha = beta = 1, hard_sigmoid 0.2 x + 0.5)
_ACT = {"sigmoid": _sigmoid, "tanh": np.tanh, "scaled_tanh": np.tanh, "relu": lambda x: np.maximum(x, 0),
        "hard_sigmoid": lambda x: np.clip(0.2 * x + 0.5, 0, 1), "sigmoid_hard": lambda x: np.clip(0.2 * x + 0.5, 0, 1),
        "linear": lambda x: x}


def _act(a: Args, name: str, default: str):
    return _ACT[str(a(name, default)).lower()]


def _scan(x: np.ndarray, reverse: bool, step, states: list[np.ndarray]) -> tuple[list[np.ndarray], list]:
    """`step(x_t, *states) -> new states (h first)` over x [seq, batch, input]; the h of each step in
    processing order, and the final states."""
    outs = []
    for xt in (x[::-1] if reverse else x):
        states = step(xt, *states)
        outs.append(states[0])
    return outs, states


def _sequence(a: Args, outs: list[np.ndarray]) -> np.ndarray:
    return np.stack(outs) if a("output_sequence", False) else outs[-1][None]


def _bias(a: Args, name: str, rows: int) -> np.ndarray:
    bias = a(name)
    return np.zeros(rows, np.float32) if bias is None else bias


@kernel("rnn")
def rnn(a: Args):
    w, r = a("weight_ih"), a("weight_hh")
    b, f = _bias(a, "bias", w.shape[0]), _act(a, "activation", "tanh")
    outs, (h,) = _scan(a("x"), a("direction", "forward") == "reverse",
                       lambda xt, h: [f(xt @ w.T + h @ r.T + b)], [a("initial_h")])
    return _sequence(a, outs), h


@kernel("gru")
def gru(a: Args):
    if a("reset_after", False) or a.has("input_bias"):
        raise NotImplementedError("gru with iOS18's reset_after / input_bias (semantics unconfirmed)")
    w, r = a("weight_ih"), a("weight_hh")
    b = _bias(a, "bias", w.shape[0])
    f, g = _act(a, "recurrent_activation", "sigmoid"), _act(a, "activation", "tanh")
    (wr, wo, wz), (rr, ro, rz), (br, bo, bz) = (np.split(v, 3) for v in (w, r, b))

    def step(xt, h):
        reset = f(xt @ wr.T + h @ rr.T + br)
        z = f(xt @ wz.T + h @ rz.T + bz)
        o = g(xt @ wo.T + (reset * h) @ ro.T + bo)
        return [(1 - z) * o + z * h]

    outs, (h,) = _scan(a("x"), a("direction", "forward") == "reverse", step, [a("initial_h")])
    return _sequence(a, outs), h


def _lstm_pass(a: Args, suffix: str, x, h, c, reverse: bool):
    """One direction of lstm (weights `weight_ih{suffix}` ...): its outputs in processing order, final h, c."""
    w, r = a("weight_ih" + suffix), a("weight_hh" + suffix)
    hidden = r.shape[1]
    b = _bias(a, "bias" + suffix, 4 * hidden)
    pi, pf, po = np.split(_bias(a, "peephole" + suffix, 3 * hidden), 3)
    f, g, act = (_act(a, n, d) for n, d in (("recurrent_activation", "sigmoid"), ("cell_activation", "tanh"),
                                            ("activation", "tanh")))
    clip = a("clip")

    def step(xt, h, c):
        i, fg, o, z = np.split(xt @ w.T + h @ r.T + b, 4, axis=1)
        c = f(fg + pf * c) * c + f(i + pi * c) * g(z)
        c = c if clip is None else np.clip(c, -clip, clip)
        return [f(o + po * c) * act(c), c]

    outs, (h, c) = _scan(x, reverse, step, [h, c])
    return outs, h, c


@kernel("lstm")
def lstm(a: Args):
    x, h0, c0 = a("x"), a("initial_h"), a("initial_c")
    direction = a("direction", "forward")
    if direction != "bidirectional":
        outs, h, c = _lstm_pass(a, "", x, h0, c0, direction == "reverse")
        return _sequence(a, outs), h, c
    hidden = a("weight_hh").shape[1]
    fwd, hf, cf = _lstm_pass(a, "", x, h0[:, :hidden], c0[:, :hidden], False)
    bwd, hb, cb = _lstm_pass(a, "_back", x, h0[:, hidden:], c0[:, hidden:], True)
    bwd = bwd[::-1]  # time order
    if a("output_sequence", False):
        y = np.concatenate([np.stack(fwd), np.stack(bwd)], axis=2)
    else:  # each direction's last processed step
        y = np.concatenate([fwd[-1], bwd[0]], axis=1)[None]
    return y, np.concatenate([hf, hb], axis=1), np.concatenate([cf, cb], axis=1)
