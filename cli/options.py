"""Option parsing shared by several verbs (shape pins, data for ad-hoc runs)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from accelopt.data import load_npz, random_feeds
from accelopt.errors import BadInputError
from accelopt.targets.base import TensorSpec

SHAPE_HELP = "Pin an input shape, e.g. `--shape input:1,3,224,224` (repeatable); needed for dynamic dims with random data."


def parse_shapes(items: list[str]) -> dict[str, list[int]]:
    shapes: dict[str, list[int]] = {}
    for item in items:
        name, sep, dims = item.rpartition(":")
        try:
            if not sep or not name:
                raise ValueError
            shapes[name] = [int(d) for d in dims.replace("x", ",").split(",") if d.strip()]
        except ValueError:
            raise BadInputError(f"--shape {item!r}: expected NAME:D1,D2,... e.g. input:1,3,224,224") from None
    return shapes


def feeds_for(inputs: list[TensorSpec], data: Path | None, shapes: dict[str, list[int]],
              samples: int, seed: int = 0) -> tuple[dict[str, np.ndarray], str]:
    """Real data when given, seeded random otherwise; returns the feeds and a description."""
    if data is not None:
        ds = load_npz(data, inputs)
        return ds.take(min(samples, len(ds))).feeds, ds.source
    feeds = random_feeds(inputs, samples, seed=seed, input_shapes=shapes)
    return feeds, f"random (seed {seed}, {samples} samples)"
