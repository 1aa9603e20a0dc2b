"""Reductions and what is built on them: Reduce*, ArgMax/ArgMin, TopK, CumSum, Einsum.

Reductions take their axes from the attribute (older opsets) or a constant input (ReduceSum 13+, the rest 18+);
an empty or absent axes list reduces everything, unless noop_with_empty_axes makes it the identity. MIL has a
reduce op for each ONNX one; they compute fp16/fp32/int32, so bool (ReduceMax/Min) computes as int32.

Ties: ONNX's ArgMax/ArgMin/TopK take the lowest index first (select_last_index: the highest); MIL leaves ties
unspecified, so tied values may give other indices on a device (the evaluator follows ONNX's rule).
"""

from __future__ import annotations

import string

import numpy as np

from accelopt.converters.mil.ops.tensor import numeric, proto_attr
from accelopt.converters.mil.registry import Node, handles, builder as _mb
from accelopt.converters.onnx_args import reduce_axes


_REDUCE = {"ReduceSum": "reduce_sum", "ReduceMean": "reduce_mean", "ReduceMax": "reduce_max",
           "ReduceMin": "reduce_min", "ReduceProd": "reduce_prod", "ReduceL1": "reduce_l1_norm",
           "ReduceL2": "reduce_l2_norm", "ReduceLogSum": "reduce_log_sum", "ReduceLogSumExp": "reduce_log_sum_exp",
           "ReduceSumSquare": "reduce_sum_square"}


@handles(*_REDUCE)
def reduce(node: Node):
    shape = list(node.values[0].shape)  # may have a dynamic dim (NonZero's count) off the axes or on them
    axes = reduce_axes(node, len(shape))
    if axes == []:
        return node.x(0)
    if 0 in shape:
        raise node.fail("empty_tensor", f"a reduction of the zero-size input {shape} (Core ML has no empty tensors)")
    return getattr(_mb(), _REDUCE[node.op_type])(x=numeric(node.x(0)), axes=axes,
                                                 keep_dims=bool(node.attr("keepdims", 1)))


@handles("ArgMax", "ArgMin")
def arg_max(node: Node):
    """select_last_index: the first index in the reversed axis, counted from the end."""
    mb = _mb()
    shape = node.shape(0)
    axis = node.attr("axis", 0) % len(shape)
    fn = mb.reduce_argmax if node.op_type == "ArgMax" else mb.reduce_argmin
    x = numeric(node.x(0))
    keep = bool(node.attr("keepdims", 1))
    if not node.attr("select_last_index", 0):
        return fn(x=x, axis=axis, keep_dims=keep)
    return mb.sub(x=np.int32(shape[axis] - 1), y=fn(x=mb.reverse(x=x, axes=[axis]), axis=axis, keep_dims=keep))


@handles("TopK")
def top_k(node: Node):
    """Values and int32 indices, always sorted (also a valid answer for sorted=0)."""
    shape = node.shape(0)
    axis = node.attr("axis", -1) % len(shape)
    k = node.attr("k") if node.opset < 10 else int(node.need_const(1, "K").reshape(-1)[0])
    if not 0 < k <= shape[axis]:
        raise node.fail("unsupported_attribute_value", f"k={k} on an axis of {shape[axis]}")
    values, indices = _mb().topk(x=node.x(0), k=k, axis=axis, ascending=not node.attr("largest", 1))
    return [values, indices]


@handles("CumSum")
def cum_sum(node: Node):
    axis = int(node.need_const(1, "axis").reshape(-1)[0]) % node.rank(0)
    return _mb().cumsum(x=numeric(node.x(0)), axis=axis, exclusive=bool(node.attr("exclusive", 0)),
                        reverse=bool(node.attr("reverse", 0)))


# --- Einsum -----------------------------------------------------------------------------------------------------


def _check_einsum(proto, opset: int) -> list[tuple[str, str]]:
    equation = proto_attr(proto, "equation", "")
    why = _einsum_gap(equation.replace(" ", "").split("->")[0].split(","))
    return [("unsupported_attribute_value", f"Einsum {equation!r}: {why}")] if why else []


def _einsum_gap(terms: list[str]) -> str | None:
    """What the transpose/reshape/matmul lowering cannot do (None when it can)."""
    if len(terms) > 2:
        return f"{len(terms)} operands (at most 2)"
    for term in terms:
        labels = term.replace("...", "")
        if len(set(labels)) != len(labels):
            return "a repeated label within one operand (a diagonal)"
    return None


def einsum_equation(equation: str, ranks: list[int]) -> tuple[list[str], str]:
    """The operand terms and the output term with the ellipsis spelled out as spare labels (right-aligned, as
    ONNX broadcasts it) and an implicit output made explicit (the labels seen once, sorted)."""
    equation = equation.replace(" ", "")
    lhs, arrow, rhs = equation.partition("->")
    terms = lhs.split(",")
    spare = [c for c in string.ascii_letters if c not in equation]
    extra = [rank - (len(t) - 3) for t, rank in zip(terms, ranks) if "..." in t]
    dots = "".join(spare[:max(extra, default=0)])
    terms = [t.replace("...", dots[len(dots) - (rank - (len(t) - 3)):]) if "..." in t else t
             for t, rank in zip(terms, ranks)]
    if arrow:
        return terms, rhs.replace("...", dots)
    labels = "".join(terms)
    return terms, dots + "".join(sorted(c for c in set(labels) if labels.count(c) == 1 and c not in dots))


@handles("Einsum", check=_check_einsum)
def einsum(node: Node):
    count = len(node.values)
    terms, out = einsum_equation(node.attr("equation"), [node.rank(i) for i in range(count)])
    why = _einsum_gap(terms)
    if why:
        raise node.fail("unsupported_attribute_value", f"{node.attr('equation')!r}: {why}")
    operands = [_summed(node.x(i), terms[i], set(out).union(*(terms[j] for j in range(count) if j != i)))
                for i in range(count)]
    sizes = {c: d for i in range(count) for c, d in zip(terms[i], node.shape(i))}
    if count == 1:
        (x, term), = operands
        return _permute(x, term, out)
    return _contract(operands, sizes, out)


def _summed(x, term: str, keep: set[str]):
    """The operand with the labels no other term or the output has summed out."""
    drop = [a for a, c in enumerate(term) if c not in keep]
    if not drop:
        return x, term
    return _mb().reduce_sum(x=x, axes=drop, keep_dims=False), "".join(c for c in term if c in keep)


def _permute(x, term: str, want: str):
    return _mb().transpose(x=x, perm=[term.index(c) for c in want]) if term != want else x


def _contract(operands, sizes: dict[str, int], out: str):
    """Two operands as one batched matmul: [batch, free_a, contracted] @ [batch, contracted, free_b]."""
    mb = _mb()
    (a, ta), (b, tb) = operands
    batch = [c for c in ta if c in tb and c in out]
    summed = [c for c in ta if c in tb and c not in out]
    free_a, free_b = [c for c in ta if c not in tb], [c for c in tb if c not in ta]

    def dims(labels):
        return [sizes[c] for c in labels]

    def flat(labels):
        return int(np.prod(dims(labels)))

    a = mb.reshape(x=_permute(a, ta, "".join(batch + free_a + summed)), shape=[*dims(batch), flat(free_a),
                                                                               flat(summed)])
    b = mb.reshape(x=_permute(b, tb, "".join(batch + summed + free_b)), shape=[*dims(batch), flat(summed),
                                                                               flat(free_b)])
    y = mb.reshape(x=mb.matmul(x=a, y=b), shape=np.array(dims(batch + free_a + free_b), np.int32))
    return _permute(y, "".join(batch + free_a + free_b), out)
