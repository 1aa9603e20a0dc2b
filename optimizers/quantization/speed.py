"""The speed guard's measurements: int8 against float side by side, and why int8 lost when it did."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from accelopt.converters.onnx_io import is_large, save_model
from accelopt.data import random_feeds
from accelopt.latency import batch_feeds, side_by_side
from accelopt.optimizers.base import PassContext
from accelopt.optimizers.quantization.calibration import static_batch
from accelopt.optimizers.quantization.prepare import CONVERTERS
from accelopt.targets.onnxruntime import OrtRunner

SPEED_ROUNDS, SPEED_WARMUP = 3, 3
_SIXTEEN_BIT = frozenset({onnx.TensorProto.INT16, onnx.TensorProto.UINT16})


def _timing_feeds(runner: OrtRunner, model: onnx.ModelProto, ctx: PassContext) -> dict[str, np.ndarray]:
    """One batch (the model's static batch, else 1) of calibration or evaluation data, else seeded random."""
    data = ctx.calibration if ctx.calibration is not None else ctx.evaluation
    batch = static_batch(model)
    feeds = data.feeds if data is not None else random_feeds(runner.inputs, batch, input_shapes=ctx.input_shapes)
    return batch_feeds(feeds, batch)


def medians(models: dict[str, onnx.ModelProto], ctx: PassContext, runs: int) -> dict[str, float]:
    """Median ms per model, timed side by side in interleaved rounds (best round kept) at ctx.threads."""
    runners = {name: OrtRunner(m, threads=ctx.threads) for name, m in models.items()}
    first = next(iter(models))
    feeds = _timing_feeds(runners[first], models[first], ctx)
    stats = side_by_side(runners, feeds, rounds=SPEED_ROUNDS, warmup=SPEED_WARMUP, runs=runs)
    return {name: s.median_ms for name, s in stats.items()}


def islands(model: onnx.ModelProto, tmp_dir: Path) -> tuple[Counter, Counter, int]:
    """(float-only ops sandwiched between DequantizeLinear and QuantizeLinear after ORT's own QDQ fusions,
    every op ORT runs, how many sandwiched nodes touch a 16-bit Q/DQ), read from ORT's 'extended'-optimized
    graph (portable, unlike 'all'). A 16-bit tensor stops int8 kernels on both sides of it, so its
    neighbours count as 16-bit too: leaving them in float would not remove the cause."""
    path = save_model(model, tmp_dir / "speed-check.onnx")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(tmp_dir / "speed-check-ort.onnx")
    options.log_severity_level = 3
    if is_large(model):
        options.add_session_config_entry("session.optimized_model_external_initializers_file_name",
                                         "speed-check-ort.onnx.data")
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    graph = onnx.load(options.optimized_model_filepath, load_external_data=False).graph
    zero_points = {t.name: t.data_type for t in graph.initializer}
    sixteen_bit = {n.name for n in graph.node if n.op_type in CONVERTERS and len(n.input) > 2
                   and zero_points.get(n.input[2]) in _SIXTEEN_BIT}
    producers = {out: n for n in graph.node for out in n.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in graph.node:
        for name in n.input:
            consumers.setdefault(name, []).append(n)
    found: Counter = Counter()
    wide = 0
    for n in graph.node:
        dqs = [producers[i] for i in n.input if i in producers and producers[i].op_type == "DequantizeLinear"]
        qs = [c for o in n.output for c in consumers.get(o, []) if c.op_type == "QuantizeLinear"]
        if n.op_type in CONVERTERS or not dqs or not qs:
            continue
        if any(q.name in sixteen_bit for q in dqs + qs):
            wide += 1
        else:
            found[n.op_type] += 1
    return found, Counter(n.op_type for n in graph.node), wide


def why_slower(model: onnx.ModelProto, label: str, ctx: PassContext) -> dict[str, Any]:
    found, ops, sixteen = islands(model, ctx.tmp_dir)
    reasons = []
    if found:
        reasons.append(f"{sum(found.values())} Q/DQ island(s): float-only ops between DequantizeLinear and "
                       f"QuantizeLinear ({', '.join(f'{op} x{n}' for op, n in found.most_common(5))}) pay a "
                       f"dequantize + quantize each")
    if sixteen:
        reasons.append(f"{sixteen} node(s) at 16-bit Q/DQ run as DequantizeLinear + float op + QuantizeLinear on "
                       f"this runtime (no 16-bit kernels)")
    text = "; ".join(reasons) or f"no Q/DQ islands: the {label} kernels themselves are not faster than float for " \
                                 f"these layers here"
    return {"reason": text, "islands": dict(found.most_common()), "int16_islands": sixteen,
            "top_ops": dict(ops.most_common(8))}
