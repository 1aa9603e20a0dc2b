"""Kernels of MIL's activation quantization ops (iOS17 quantize / dequantize). Scale and zero point are scalars
or vectors along `axis`. Compressed weights (constexpr_*) need no kernel: the evaluator materialises them."""

from __future__ import annotations

import numpy as np

from accelopt.converters.mil.kernels import Args, kernel


def _along(a: Args, name: str, rank: int) -> np.ndarray:
    """Scale or zero point shaped to broadcast against a rank-`rank` input."""
    value = np.asarray(a(name, 0), dtype=np.float32)
    if value.ndim == 0:
        return value
    axis = int(a("axis")) % rank
    return value.reshape([-1 if i == axis else 1 for i in range(rank)])


@kernel("quantize")
def quantize(a: Args):
    """clip(round_half_even(x / scale) + zero_point) into the output type's range."""
    x = np.asarray(a("input"), dtype=np.float32)
    info = np.iinfo(a.out_dtype)
    q = np.round(x / _along(a, "scale", x.ndim)) + _along(a, "zero_point", x.ndim)
    return np.clip(q, info.min, info.max)


@kernel("dequantize")
def dequantize(a: Args):
    """scale * (x - zero_point)."""
    x = np.asarray(a("input"), dtype=np.float32)
    return (x - _along(a, "zero_point", x.ndim)) * _along(a, "scale", x.ndim)
