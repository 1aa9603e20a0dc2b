"""Attention masks that break reduced precision, made safe before lowering.

HF exporters write additive masks as `(1 - mask) * float32.min`. In full-integer int8 (TFLite) a tensor
spanning 1e38 cannot be quantized (LiteRT aborts preparing the Add). In fp16 (Core ML) coremltools casts the
constant to -inf on purpose, and then the unmasked positions compute 0 * -inf = NaN: every output is NaN
(all-MiniLM-L6-v2 in coreml-fp16 before this). A large finite constant keeps the masked softmax weights at 0.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from accelopt.converters.onnx_args import scalar_constant

# int8: softmax weights of exp(-20) ~ 2e-9 are 0 at int8 resolution, and the Add's quantization range stays
# ~[-30, 10] (with -1e4 its step would be 40: every score would round to the same value).
INT8_FLOOR = -20.0
# fp16: exp(-1e4) is 0 in fp16 and fp32 alike; scores plus the mask stay finite (fp16's largest is 65504).
FP16_FLOOR = -1e4


def soften_masks(model: onnx.ModelProto, floor: float) -> tuple[onnx.ModelProto, int]:
    """A copy with the constant of each additive attention mask written as `(1 - mask) * float32.min` (HF
    exporters) raised to `floor` (INT8_FLOOR or FP16_FLOOR), and how many were. Only a Mul by a scalar <= -1e9
    whose result is added to what a Softmax reads counts as a mask."""
    graph = model.graph
    constants = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)

    def feeds_softmax(name: str) -> bool:
        return any(a.op_type == "Add" and all(c.op_type == "Softmax" for c in consumers.get(a.output[0], []))
                   and consumers.get(a.output[0]) for a in consumers.get(name, []))

    huge = {}
    for n in graph.node:
        if n.op_type != "Mul":
            continue
        for i in n.input:
            value = scalar_constant(constants, i)
            if value is not None and value <= -1e9 and feeds_softmax(n.output[0]):
                huge[i] = constants[i]
    if not huge:
        return model, 0
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for t in out.graph.initializer:
        if t.name in huge:
            t.CopyFrom(numpy_helper.from_array(np.full_like(huge[t.name], floor), t.name))
    return out, len(huge)
