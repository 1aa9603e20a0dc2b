"""Perm arithmetic and attribute reading shared by the layout modules.

Convention: Transpose(perm) gives out.shape[i] = in.shape[perm[i]], so axis `a` after it is axis `perm[a]`
before it.
"""

from __future__ import annotations

import onnx
from onnx import helper


def inverse(perm: list[int]) -> list[int]:
    inv = [0] * len(perm)
    for i, p in enumerate(perm):
        inv[p] = i
    return inv


def compose(first: list[int], second: list[int]) -> list[int]:
    """The perm of Transpose(second) applied after Transpose(first)."""
    return [first[i] for i in second]


def is_identity(perm: list[int]) -> bool:
    return all(i == p for i, p in enumerate(perm))


def perm_of(node: onnx.NodeProto, rank: int | None = None) -> list[int] | None:
    for a in node.attribute:
        if a.name == "perm":
            return list(a.ints)
    return list(range(rank))[::-1] if rank is not None else None


def attr(node: onnx.NodeProto, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def is_transpose(n: onnx.NodeProto | None) -> bool:
    return n is not None and n.op_type == "Transpose" and n.domain in ("", "ai.onnx")
