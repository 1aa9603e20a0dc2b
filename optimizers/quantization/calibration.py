"""Calibrate once, cache the ranges by content, and find the nodes one int8 scale would break."""

from __future__ import annotations

import hashlib
import io
import json
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, create_calibrator
from onnxruntime.quantization.calibrate import TensorsData, load_tensors_data, save_tensors_data

from accelopt.data import Dataset
from accelopt.errors import BadInputError, first_line
from accelopt.optimizers.base import PassContext
from accelopt.optimizers.quantization.config import QuantizeConfig
from accelopt.optimizers.quantization.prepare import has_external_data

METHODS = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
           "percentile": CalibrationMethod.Percentile}
RANGE_GUARDED = frozenset({"Concat", "Add", "Sum", "Sub"})


class _Reader(CalibrationDataReader):
    """Feeds calibration batches once (ORT's readers are single-use)."""

    def __init__(self, batches: list[dict[str, np.ndarray]]):
        self._it = iter(batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)


def static_batch(model: onnx.ModelProto) -> int:
    """The first input's static batch size, or 1 when it is dynamic."""
    dims = model.graph.input[0].type.tensor_type.shape.dim if model.graph.input else []
    return dims[0].dim_value if dims and dims[0].dim_value > 0 else 1


# ORT's entropy calibrator defaults to 128 histogram bins for 128 quantized bins: one candidate threshold, the
# full range, so it silently equals minmax (all 243 ranges of a YOLOv8n came out identical). 512 bins give it
# thresholds to choose from (the quantization notes' setting).
ENTROPY_BINS = {"num_bins": 512, "num_quantized_bins": 128}


def calibration_options(config: QuantizeConfig) -> dict[str, Any]:
    if config.calibration == "percentile":
        return {"percentile": config.percentile}
    return dict(ENTROPY_BINS) if config.calibration == "entropy" else {}


def calibrate(pre_path: Path, batch: int, config: QuantizeConfig, data: Dataset,
              ctx: PassContext) -> tuple[Path, TensorsData, bool]:
    """Tensor ranges of every float activation of the pre-processed model, from the cache when the same model,
    method, options and data were calibrated before (a damaged entry counts as a miss).
    Returns (ranges JSON, the ranges, reused from cache)."""
    options = calibration_options(config)
    key = hashlib.sha256(pre_path.read_bytes())
    key.update(json.dumps([config.calibration, options, data.fingerprint()]).encode())
    folder = ctx.cache_dir / "quantize-ranges" if ctx.cache_dir is not None else ctx.tmp_dir
    path = folder / f"{key.hexdigest()[:40]}.json"
    if path.is_file():
        try:
            return path, load_tensors_data(path), True
        except (ValueError, KeyError, TypeError) as e:
            ctx.log(f"quantize: damaged calibration cache entry {path.name} ({first_line(e, with_type=True)}); calibrating again")
    calibrator = create_calibrator(pre_path, None, augmented_model_path=str(ctx.tmp_dir / "augmented.onnx"),
                                   calibrate_method=METHODS[config.calibration],
                                   use_external_data_format=has_external_data(pre_path), extra_options=options)
    usable = data.take(max(len(data) // batch, 1) * batch)
    try:
        with redirect_stdout(io.StringIO()):  # the histogram calibrators print() progress: stdout is for --json
            calibrator.collect_data(_Reader(list(usable.batches(batch))))
    except Exception as e:
        raise BadInputError(f"calibration data does not fit the model ({first_line(e, with_type=True)})") from e
    with redirect_stdout(io.StringIO()):
        ranges = calibrator.compute_data()
    save_tensors_data(ranges, path)
    return path, ranges, False


def range_mismatches(model: onnx.ModelProto, ranges: TensorsData, ratio: float) -> list[dict[str, Any]]:
    """Concat/Add/Sum/Sub nodes whose calibrated input ranges (max - min) differ by more than `ratio`: one
    scale for all of them would crush the narrow inputs."""
    found = []
    for node in model.graph.node:
        if node.op_type not in RANGE_GUARDED:
            continue
        spans = {name: [float(np.min(ranges[name].range_value[0])), float(np.max(ranges[name].range_value[1]))]
                 for name in node.input if name in ranges}
        widths = [hi - lo for lo, hi in spans.values()]
        if len(widths) > 1 and max(widths) > ratio * max(min(widths), 1e-12):
            found.append({"node": node.name, "op": node.op_type, "input_ranges": spans,
                          "ratio": round(max(widths) / max(min(widths), 1e-12), 1)})
    return found
