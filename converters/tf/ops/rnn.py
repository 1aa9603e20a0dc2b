"""RNN, GRU and LSTM, unrolled over the static sequence with TF ops (one FULLY_CONNECTED for the input
projection of every step, then one per step for the recurrence): forward, reverse and bidirectional, initial
states, peepholes, clip, both layouts. Weights must be constants. Gate orders follow ONNX: LSTM W is [i o f c],
GRU [z r h] (with linear_before_reset), peepholes [i o f]. Variable sequence_lens are not supported (a constant
sequence_lens equal to the sequence length everywhere is)."""

from __future__ import annotations

import numpy as np

from accelopt.converters.tf import load_tf as _tf
from accelopt.converters.tf.registry import Node, handles

_DEFAULTS = {"RNN": ["Tanh", "Tanh"], "GRU": ["Sigmoid", "Tanh"], "LSTM": ["Sigmoid", "Tanh", "Tanh"]}
_NEEDS_ALPHA = {"Affine": (1.0, 0.0), "LeakyRelu": (0.01, None), "ThresholdedRelu": (1.0, None),
                "ScaledTanh": (1.0, 1.0), "HardSigmoid": (0.2, 0.5), "Elu": (1.0, None)}


def _activations(node: Node, per_direction: int, directions: int):
    tf = _tf()
    names = node.attr("activations") or _DEFAULTS[node.op_type] * directions
    names = list(names)
    if len(names) == per_direction and directions == 2:
        names = names * 2
    alphas = list(node.attr("activation_alpha") or [])
    betas = list(node.attr("activation_beta") or [])
    fns = []
    for name in names:
        alpha = beta = None
        if name in _NEEDS_ALPHA:
            da, db = _NEEDS_ALPHA[name]
            alpha = alphas.pop(0) if alphas else da
            beta = (betas.pop(0) if betas else db) if db is not None else None
        fns.append(_activation(node, tf, name, alpha, beta))
    return fns


def _activation(node: Node, tf, name: str, alpha, beta):
    table = {
        "Sigmoid": tf.sigmoid, "Tanh": tf.tanh, "Relu": tf.nn.relu, "Softsign": tf.nn.softsign,
        "Softplus": tf.nn.softplus,
        "Affine": lambda x: alpha * x + beta,
        "LeakyRelu": lambda x: tf.nn.leaky_relu(x, alpha),
        "ThresholdedRelu": lambda x: tf.where(x > alpha, x, tf.zeros_like(x)),
        "ScaledTanh": lambda x: alpha * tf.tanh(beta * x),
        "HardSigmoid": lambda x: tf.clip_by_value(alpha * x + beta, 0.0, 1.0),
        "Elu": lambda x: tf.where(x > 0, x, alpha * (tf.exp(x) - 1)),
    }
    name = {k.lower(): k for k in table}.get(name.lower(), name)
    if name not in table:
        raise node.fail("unsupported_attribute_value", f"activation {name!r}")
    return table[name]


def _prepare(node: Node, gates: int):
    """x as [seq, batch, input] (list of steps), the constant weights, initial states per direction."""
    tf = _tf()
    layout = node.attr("layout", 0)
    x = node.x(0)
    if layout:
        x = tf.transpose(x, [1, 0, 2])
    dims = node.shape(0)
    seq, batch, size = (dims[1], dims[0], dims[2]) if layout else dims
    w = node.need_const(1, "W").astype(np.float32)
    r = node.need_const(2, "R").astype(np.float32)
    directions = w.shape[0]
    hidden = r.shape[-1]
    b = node.const(3) if node.has(3) else None
    if node.has(3) and b is None:
        raise node.fail("requires_constant_input", "a constant B")
    b = np.zeros((directions, 2 * gates * hidden), np.float32) if b is None else b.astype(np.float32)
    if node.has(4):
        lens = node.const(4)
        if lens is None or not np.all(lens == seq):
            raise node.fail("unsupported_attribute_value", "sequence_lens other than the full sequence everywhere")
    direction = node.attr("direction", "forward")
    if (directions == 2) != (direction == "bidirectional"):
        raise node.fail("unsupported_attribute_value", f"direction {direction!r} with {directions} weight sets")

    def initial(i: int):
        if not node.has(i):
            return [tf.zeros([batch, hidden], tf.float32)] * directions
        v = node.x(i)
        if layout:
            v = tf.transpose(v, [1, 0, 2])
        return [v[d] for d in range(directions)]

    steps = tf.unstack(x, seq, axis=0) if seq > 1 else [tf.reshape(x, [batch, size])]
    return steps, w, r, b, directions, direction, hidden, initial, layout


def _outputs(node: Node, per_dir_outputs: list[list], finals: list[list], layout: int):
    """Y [seq, dirs, batch, H] (layout 1: [batch, seq, dirs, H]) and the final states [dirs, batch, H]."""
    tf = _tf()
    y = tf.stack([tf.stack(outs, 0) for outs in per_dir_outputs], 1)  # seq, dirs, batch, H
    states = [tf.stack(f, 0) for f in finals]
    if layout:
        y = tf.transpose(y, [2, 0, 1, 3])
        states = [tf.transpose(s, [1, 0, 2]) for s in states]
    return [y, *states]


def _clip(tf, x, clip):
    return tf.clip_by_value(x, -clip, clip) if clip is not None else x


def _project(steps, w):
    """Each step times W^T (one matmul over the stacked steps)."""
    tf = _tf()
    stacked = tf.concat(steps, 0) if len(steps) > 1 else steps[0]
    proj = tf.linalg.matmul(stacked, np.ascontiguousarray(w.T))
    return tf.split(proj, len(steps), 0) if len(steps) > 1 else [proj]


@handles("RNN")
def rnn(node: Node):
    tf = _tf()
    steps, w, r, b, dirs, direction, hidden, initial, layout = _prepare(node, 1)
    acts = _activations(node, 1, dirs)
    clip = node.attr("clip")
    h0 = initial(5)
    outs, finals = [], []
    for d in range(dirs):
        reverse = direction == "reverse" or d == 1
        xs = _project(steps[::-1] if reverse else steps, w[d])
        bias = b[d, :hidden] + b[d, hidden:]
        h = h0[d]
        seq_out = []
        for xw in xs:
            h = acts[d](_clip(tf, xw + tf.linalg.matmul(h, np.ascontiguousarray(r[d].T)) + bias, clip))
            seq_out.append(h)
        outs.append(seq_out[::-1] if reverse else seq_out)
        finals.append(h)
    y, yh = _outputs(node, outs, [finals], layout)
    return [y, yh]


@handles("GRU")
def gru(node: Node):
    tf = _tf()
    steps, w, r, b, dirs, direction, hidden, initial, layout = _prepare(node, 3)
    acts = _activations(node, 2, dirs)
    clip = node.attr("clip")
    lbr = node.attr("linear_before_reset", 0)
    h0 = initial(5)
    outs, finals = [], []
    H = hidden
    for d in range(dirs):
        f, g = acts[2 * d], acts[2 * d + 1]
        reverse = direction == "reverse" or d == 1
        xs = _project(steps[::-1] if reverse else steps, w[d])
        wb, rb = b[d, :3 * H], b[d, 3 * H:]
        rz_r = np.ascontiguousarray(r[d, :2 * H].T)  # [H, 2H]: z, r
        rh = np.ascontiguousarray(r[d, 2 * H:].T)
        h = h0[d]
        seq_out = []
        for xw in xs:
            xw = xw + wb
            hr = tf.linalg.matmul(h, rz_r) + rb[:2 * H]
            zr = f(_clip(tf, xw[:, :2 * H] + hr, clip))
            z, rr = zr[:, :H], zr[:, H:]
            if lbr:
                cand = xw[:, 2 * H:] + rr * (tf.linalg.matmul(h, rh) + rb[2 * H:])
            else:
                cand = xw[:, 2 * H:] + tf.linalg.matmul(rr * h, rh) + rb[2 * H:]
            hh = g(_clip(tf, cand, clip))
            h = (1.0 - z) * hh + z * h
            seq_out.append(h)
        outs.append(seq_out[::-1] if reverse else seq_out)
        finals.append(h)
    y, yh = _outputs(node, outs, [finals], layout)
    return [y, yh]


@handles("LSTM")
def lstm(node: Node):
    tf = _tf()
    steps, w, r, b, dirs, direction, hidden, initial, layout = _prepare(node, 4)
    if node.attr("input_forget", 0):
        raise node.fail("unsupported_attribute_value", "input_forget=1")
    acts = _activations(node, 3, dirs)
    clip = node.attr("clip")
    h0, c0 = initial(5), initial(6)
    p = node.const(7) if node.has(7) else None
    if node.has(7) and p is None:
        raise node.fail("requires_constant_input", "constant peepholes P")
    H = hidden
    outs, finals_h, finals_c = [], [], []
    for d in range(dirs):
        f, g, hf = acts[3 * d], acts[3 * d + 1], acts[3 * d + 2]
        reverse = direction == "reverse" or d == 1
        xs = _project(steps[::-1] if reverse else steps, w[d])
        bias = b[d, :4 * H] + b[d, 4 * H:]
        rt = np.ascontiguousarray(r[d].T)
        pi, po, pf = (p[d, :H], p[d, H:2 * H], p[d, 2 * H:]) if p is not None else (None, None, None)
        h, c = h0[d], c0[d]
        seq_out = []
        for xw in xs:
            gates = xw + tf.linalg.matmul(h, rt) + bias
            i_, o_, f_, c_ = gates[:, :H], gates[:, H:2 * H], gates[:, 2 * H:3 * H], gates[:, 3 * H:]
            if pi is not None:
                i_, f_ = i_ + pi * c, f_ + pf * c
            i_, f_, cc = f(_clip(tf, i_, clip)), f(_clip(tf, f_, clip)), g(_clip(tf, c_, clip))
            c = f_ * c + i_ * cc
            if po is not None:
                o_ = o_ + po * c
            o_ = f(_clip(tf, o_, clip))
            h = o_ * hf(c)
            seq_out.append(h)
        outs.append(seq_out[::-1] if reverse else seq_out)
        finals_h.append(h)
        finals_c.append(c)
    return _outputs(node, outs, [finals_h, finals_c], layout)
