"""Intermediate tensors on calibration data, batch by batch: what the criteria and the refit read.

The wanted tensors become the outputs of a copy of the model cut down to the nodes they need (a refit of an early
layer does not run the rest of the network), run with ONNX Runtime on all cores (this is fitting, not a latency
measurement); batches keep the memory of the exposed activations bounded.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import onnx
import onnx_ir as ir
from onnx_ir.passes.common import RemoveUnusedNodesPass

from accelopt.data import Dataset
from accelopt.errors import BadInputError, RecipeError
from accelopt.optimizers.base import PassContext
from accelopt.targets.base import run_all
from accelopt.targets.onnxruntime import OrtRunner

BATCH = 16  # samples per ORT call
MIN_SAMPLES = 8  # below this a refit or an activation ranking fits noise


def calibration_for(step: str, needs: list[str], ctx: PassContext, samples: int, instead: str) -> Dataset | None:
    """The calibration samples that `needs` (what asks for them: "refit", "criterion activation"...) call for;
    None when nothing does. Refused when missing or too few, flagged when random; `instead` says how to do
    without them."""
    if not needs:
        return None
    what = " and ".join(needs)
    if ctx.calibration is None:
        raise RecipeError(f"{step}: {what} need{'s' if len(needs) == 1 else ''} calibration data: declare "
                          f"data.calibration in the recipe (or pass --data), or {instead}")
    data = ctx.calibration.take(samples)
    if len(data) < MIN_SAMPLES:
        raise BadInputError(f"{step}: {len(data)} calibration sample(s) are too few for {what} (at least "
                            f"{MIN_SAMPLES}, better 100+); add samples to data.calibration or {instead}")
    if data.random:
        ctx.log(f"WARNING: {step}: the calibration data is random; a fit on it will not hold on real inputs")
    return data


def _exposing(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    """A copy whose only outputs are `names`, without the nodes they do not depend on."""
    m = ir.from_proto(model)
    values = {str(v.name): v for n in m.graph for v in n.outputs}
    m.graph.outputs.clear()
    m.graph.outputs.extend(values[n] for n in names)
    return ir.to_proto(RemoveUnusedNodesPass()(m).model)


def capture(model: onnx.ModelProto, names: list[str], data: Dataset) -> Iterator[dict[str, np.ndarray]]:
    """`names` -> arrays for each batch of `data`, in order; graph inputs come straight from the feeds."""
    inputs = {i.name for i in model.graph.input}
    computed = [n for n in dict.fromkeys(names) if n not in inputs]
    runner = OrtRunner(_exposing(model, computed)) if computed else None
    for feeds in data.batches(BATCH):
        outputs = {**(run_all(runner, feeds) if runner else {}), **{k: v for k, v in feeds.items() if k in inputs}}
        yield {n: outputs[n] for n in names}
