"""Before quantizing: refuse what cannot be quantized, check the data, pre-process and name the nodes."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import version_converter
from onnxruntime.quantization import quant_pre_process

from accelopt.converters.onnx_io import is_large, save_model
from accelopt.data import Dataset
from accelopt.errors import BadInputError, ConversionError, RecipeError, first_line
from accelopt.isolation import isolated_cwd
from accelopt.optimizers.base import PassContext
from accelopt.optimizers.quantization.config import QuantizeConfig
from accelopt.optimizers.quantization.settings import Settings
from accelopt.targets.onnxruntime import with_runtime_types

# Ops that only appear in a model that is already quantized.
QUANTIZED_OPS = frozenset({"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "MatMulNBits",
                           "ConvInteger", "MatMulInteger", "DynamicQuantizeMatMul", "MatMulIntegerToFloat",
                           "QGemm", "QAttention", "QOrderedMatMul"})
CONVERTERS = frozenset({"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"})
MIN_SAMPLES = 8
PER_CHANNEL_OPSET = 13


def quant_ops(model: onnx.ModelProto) -> Counter:
    return Counter(n.op_type for n in model.graph.node if n.op_type in QUANTIZED_OPS or n.op_type.startswith("QLinear"))


def refuse_quantized(model: onnx.ModelProto) -> None:
    """Quantizing Q/DQ or integer kernels again would stack scales on scales."""
    found = quant_ops(model)
    if found:
        listed = ", ".join(f"{n} {op}" for op, n in found.most_common(3))
        raise BadInputError(f"model is already quantized ({listed} nodes); quantize the float model")


def calibration_set(config: QuantizeConfig, ctx: PassContext) -> Dataset:
    """The calibration samples, refused when missing or non-finite, flagged when random or few."""
    data = ctx.calibration
    if data is None:
        raise RecipeError("quantize mode static needs calibration data: declare data.calibration or pass --data")
    if data.random:
        ctx.log("WARNING: calibrating on RANDOM data: the int8 ranges fit noise, not real inputs, and accuracy "
                "will not hold on real data; declare data.calibration")
    data = data.take(config.samples)
    if len(data) < MIN_SAMPLES:
        ctx.log(f"WARNING: only {len(data)} calibration sample(s): ranges from fewer than {MIN_SAMPLES} rarely "
                "cover real inputs")
    for name, arr in data.feeds.items():
        if np.issubdtype(arr.dtype, np.floating) and not np.all(np.isfinite(arr)):
            bad = int(np.size(arr) - np.count_nonzero(np.isfinite(arr)))
            raise BadInputError(f"calibration data for input {name!r} holds {bad} NaN/Inf value(s); clean the data")
    return data


def name_nodes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Exclusions and the accuracy search address nodes by name: give unnamed or duplicate ones a unique name."""
    taken: set[str] = set()
    for i, node in enumerate(model.graph.node):
        name = node.name or f"{node.op_type}_{i}"
        while name in taken:
            name += "_"
        node.name = name
        taken.add(name)
    return model


def pre_process(model: onnx.ModelProto, ctx: PassContext) -> Path:
    """quant_pre_process (ORT optimizer + shape inference); symbolic shape inference is retried without when
    it fails (it does on some custom and contrib ops). Returns the file of the named, pre-processed model."""
    src = save_model(model, ctx.tmp_dir.resolve() / "float.onnx")
    dst = ctx.tmp_dir.resolve() / "pre.onnx"
    external = {"save_as_external_data": is_large(model), "external_data_location": dst.name + ".data"}
    try:
        with isolated_cwd():  # its symbolic shape inference drops temp files into the working directory
            quant_pre_process(str(src), str(dst), **external)
    except Exception as e:
        ctx.log(f"quant_pre_process failed with symbolic shape inference ({first_line(e, with_type=True)}); retried without it")
        try:
            with isolated_cwd():
                quant_pre_process(str(src), str(dst), skip_symbolic_shape=True, **external)
        except Exception as e2:
            raise ConversionError(f"quantize: quant_pre_process failed ({first_line(e2, with_type=True)})") from e2
    # Contrib ops (after `fuse`) stop ONNX shape inference; without types downstream, the calibrator skips
    # those tensors and quantize_static fails on the first bias it cannot scale.
    return save_model(with_runtime_types(name_nodes(onnx.load(str(dst)))), dst)


def per_channel_ready(model: onnx.ModelProto, settings: Settings,
                      ctx: PassContext) -> tuple[onnx.ModelProto, Settings]:
    """Per-channel Q/DQ needs DequantizeLinear's `axis` attribute (opset 13); ORT's quantizer writes it anyway and
    the result does not load (PP-OCR's opset-10 classifier). Older models are converted with the ONNX version
    converter, or quantized per tensor, said so, when it cannot convert them."""
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), PER_CHANNEL_OPSET)
    if not settings.per_channel or opset >= PER_CHANNEL_OPSET:
        return model, settings
    try:
        converted = version_converter.convert_version(model, PER_CHANNEL_OPSET)
        onnx.checker.check_model(converted)
    except Exception as e:  # the converter raises plain RuntimeErrors from C++, and checker errors
        ctx.log(f"quantize: per-channel weights need opset {PER_CHANNEL_OPSET}, the model is opset {opset} and the "
                f"ONNX version converter failed ({first_line(e, 200)}); weights are quantized per tensor")
        return model, replace(settings, per_channel=False)
    ctx.log(f"quantize: converted the model from opset {opset} to {PER_CHANNEL_OPSET} for per-channel weights")
    ctx.decide("opset", {"from": opset, "to": PER_CHANNEL_OPSET, "why": "per-channel DequantizeLinear axis"})
    return converted, settings


def has_external_data(path: Path) -> bool:
    """Whether the model at `path` keeps its weights in external data (save_model's layout for > 2 GB)."""
    return path.with_name(path.name + ".data").exists()


def extra_options(settings: Settings, model: onnx.ModelProto) -> dict[str, Any]:
    """Profile options, plus DefaultTensorType when contrib ops (after `fuse`) hide tensor types from ONNX
    shape inference: the quantizer otherwise fails on the tensors it cannot type."""
    extra = dict(settings.extra)
    if any(n.domain == "com.microsoft" for n in model.graph.node):
        extra["DefaultTensorType"] = onnx.TensorProto.FLOAT
    return extra
