"""Sparsity keep-masks for a layer's weights W [outputs, fan_in], the layout `refit.layer_weights` returns (Conv
columns in (C, k...) order), so a mask feeds the masked least-squares refit unchanged (quantization notes §10.1).

Both masks keep an exact count even among tied magnitudes (stable sorts), so reruns are bit-identical and the
achieved sparsity is exactly the asked one.
"""

from __future__ import annotations

import numpy as np


def mask_2of4(w: np.ndarray, taps: int = 1) -> np.ndarray:
    """NVIDIA ASP `m4n2_1d`: of every 4 consecutive input channels, per output and kernel tap, keep the 2 largest |w|.

    `taps` is the kernel size (kh*kw for a 2-D Conv, 1 for Gemm/MatMul); the input channel count fan_in / taps must
    be a multiple of 4. Groups run along the GEMM reduction dimension, which is what sparse tensor cores need.
    """
    outputs, fan_in = w.shape
    channels = fan_in // taps
    if channels * taps != fan_in or channels % 4:
        raise ValueError(f"2:4 needs input channels in multiples of 4, got {fan_in} = {channels} x {taps} taps")
    groups = np.abs(w).reshape(outputs, channels // 4, 4, taps)
    keep = np.zeros(groups.shape, dtype=bool)
    np.put_along_axis(keep, np.argsort(-groups, axis=2, kind="stable")[:, :, :2], True, axis=2)
    return keep.reshape(w.shape)


def mask_magnitude(w: np.ndarray, ratio: float) -> np.ndarray:
    """Unstructured: zero the round(ratio * size) smallest |w| of the layer, keep the rest."""
    drop = np.argsort(np.abs(w).ravel(), kind="stable")[:round(ratio * w.size)]
    keep = np.ones(w.size, dtype=bool)
    keep[drop] = False
    return keep.reshape(w.shape)
