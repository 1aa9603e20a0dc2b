"""The TFLite target: ONNX -> channels-last ONNX (the `layout` pass) -> TF ops (the emitter) -> TFLiteConverter
-> model.tflite, validated and timed in the LiteRT interpreter.

Importable without TensorFlow (the registry lists it, `check` reads the handler registry); lowering and
running need the [tflite] extra and say so in one line when it is missing.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx
from pydantic import Field, PositiveInt, model_validator

from accelopt.converters.tf import load_tf
from accelopt.converters.tf import ops as _handlers  # noqa: F401  (registers what `check` reads; no TF)
from accelopt.converters.tf.registry import CHANNELS_LAST, Unsupported, find_handler
from accelopt.errors import ConversionError, MissingExtraError
from accelopt.targets import register_target
from accelopt.targets.base import STEP_HINTS, Artifact, Finding, Target, TargetConfig, step_hint
from accelopt.targets.tflite.runner import IO_FILE, LiteRtRunner

MODEL_FILE = "model.tflite"
SAVED_MODEL_FILE = "saved_model.zip"
# What the target's precision means for the tolerances the artifact is checked with.
PRECISION = {"fp32": "fp32", "fp16": "fp16", "dynamic": "int8", "int8": "int8", "int16x8": "int8"}
# Ops another recipe step removes, by the step: the hint an unsupported op gets.
HINTS = {
    **STEP_HINTS,
    "QLinearConv": "quantize to QDQ (the quantize step's default) or let this target quantize: precision: int8",
    "QLinearMatMul": "quantize to QDQ (the quantize step's default) or let this target quantize: precision: int8",
}


class TfliteConfig(TargetConfig):
    precision: Literal["fp32", "fp16", "dynamic", "int8", "int16x8"] = Field(
        "fp32", description="fp32; fp16 weights; dynamic = int8 weights with float activations; int8 = full "
                            "integer, calibrated on the recipe's calibration data (required); int16x8 = integer "
                            "with int16 activations and int8 weights (TFLite's 16x8 mode: transformers; few "
                            "delegates run it, and XNNPACK does not)")
    io_type: Literal["float", "int8", "uint8"] = Field(
        "float", description="int8 precision only: the model's input/output type (float keeps float I/O with "
                             "QUANTIZE/DEQUANTIZE inside; int8/uint8 is what NPUs and the Edge TPU want)")
    channels_last_inputs: bool = Field(
        False, description="take image inputs as NHWC (what TFLite apps feed) instead of the ONNX model's NCHW")
    calibration_samples: PositiveInt = Field(256, description="int8: calibration samples the converter runs, at most")
    float_head: bool = Field(
        False, description="int8/int16x8: keep the ops between the last conv/matmul and each output in float "
                            "(detection heads that concatenate boxes and class scores: one int8 scale rounds the "
                            "scores away); not full-integer any more")
    saved_model: bool = Field(
        False, description="also write the TF SavedModel the .tflite is converted from, zipped (saved_model.zip): "
                           "same signature and names, for TF Serving or other TF tools")
    resolver: Literal["auto", "builtin", "reference"] = Field(
        "auto", description="LiteRT kernels for validation and timing: auto = optimized + XNNPACK (what apps get), "
                            "builtin = optimized without delegates, reference = the spec's reference kernels")

    @model_validator(mode="after")
    def _io_type_needs_int8(self):
        if self.io_type != "float" and self.precision != "int8":
            raise ValueError(f"io_type {self.io_type} needs precision int8 (got {self.precision})")
        if self.float_head and (self.precision not in ("int8", "int16x8") or self.io_type != "float"):
            raise ValueError("float_head needs precision int8 or int16x8 with io_type float")
        return self


@register_target
class TfliteTarget(Target):
    name = "tflite"
    summary = "TFLite for edge CPUs/NPUs: NHWC layout pass, TF emitter, TFLiteConverter fp32/fp16/int8, LiteRT (needs [tflite])"
    Config = TfliteConfig
    config: TfliteConfig

    def __init__(self, config: TfliteConfig | None = None):
        if importlib.util.find_spec("tensorflow") is None or importlib.util.find_spec("ai_edge_litert") is None:
            raise MissingExtraError("tflite", "target tflite")
        super().__init__(config)

    def needs(self) -> set[str]:
        return {"calibration"} if self.config.precision in ("int8", "int16x8") else set()

    def output_precision(self) -> str:
        return PRECISION[self.config.precision]

    def capabilities(self) -> dict[str, Any]:
        return {"layout": "NHWC", "int8": True, "precision": self.config.precision, "static_shapes": True}

    def check(self, model: onnx.ModelProto) -> list[Finding]:
        return check_model(model)

    def lower(self, model: onnx.ModelProto, out_dir: Path) -> Artifact:
        from accelopt.converters.tf.emitter import emit
        from accelopt.converters.masks import INT8_FLOOR, soften_masks
        from accelopt.optimizers.transposes import to_channels_last
        from accelopt.targets.tflite.convert import to_tflite
        from accelopt.targets.tflite.inspect import graph_facts

        meta: dict[str, Any] = {"precision": self.config.precision}
        if any(n.domain in ("", "ai.onnx") and n.op_type in CHANNELS_LAST for n in model.graph.node):
            self._stage(0, "layout NCHW -> NHWC")
            model, layout = to_channels_last(model)
            meta["layout"] = _layout_summary(layout)
        if self.config.precision in ("int8", "int16x8"):
            model, meta["masks_softened"] = soften_masks(model, INT8_FLOOR)
        self._stage(1, "emitting TF ops")
        try:
            emitted = emit(model, channels_last_inputs=self.config.channels_last_inputs)
        except Unsupported as e:
            raise ConversionError(f"tflite: {e}") from e
        self._stage(2, f"TFLiteConverter {self.config.precision}")
        blob = to_tflite(emitted, self.config.precision, samples=self._samples(emitted),
                         io_type=self.config.io_type, float_head=self.config.float_head)
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / MODEL_FILE
        path.write_bytes(blob)
        io_path = out_dir / IO_FILE
        io_path.write_text(json.dumps({"inputs": [s.to_dict() for s in emitted.inputs],
                                       "outputs": [s.to_dict() for s in emitted.outputs]}, indent=2))
        files = [path, io_path]
        if self.config.saved_model:
            files.append(write_saved_model(emitted, out_dir / SAVED_MODEL_FILE))
        facts = graph_facts(blob)
        tf = load_tf()
        meta.update({
            "converter": f"tensorflow {tf.__version__} TFLiteConverter",
            "onnx_ops_lowered": sum(emitted.ops.values()), "onnx_ops_folded": sum(emitted.folded.values()),
            "ops": [{"op": op, "count": n} for op, n in facts["ops"].items()],
            "compute_types": facts["op_types"],
            "transposes_left": len(facts["transposes"]),
            "transposes_between_convs": sum(t["between_convs"] for t in facts["transposes"]),
            "transposes": facts["transposes"],
            "float_ops_in_int8": _float_fallbacks(facts, self.config.precision),
            "channels_last_inputs": self.config.channels_last_inputs,
        })
        meta["log"] = _log_lines(meta, emitted)
        return Artifact(path=path, files=files, kind="tflite", meta=meta)

    def _stage(self, done: int, what: str) -> None:
        self.emit("target_progress", done=done, total=3, description=f"tflite: {what}")

    def runner(self, artifact: Artifact, threads: int | None = None) -> LiteRtRunner | None:
        return LiteRtRunner(artifact.path, threads=threads, resolver=self.config.resolver)

    def _samples(self, emitted) -> list[dict[str, np.ndarray]]:
        """Calibration feeds cut to the signature's static batch, at most `calibration_samples` of them."""
        if "calibration" not in self.needs():
            return []
        if self.calibration is None:
            raise ConversionError(f"tflite: precision {self.config.precision} needs calibration data "
                                  "(data.calibration or --data)")
        batch = emitted.inputs[0].shape[0] if emitted.inputs and emitted.inputs[0].shape else 1
        feeds = {k: v for k, v in self.calibration.feeds.items()}
        n = min(len(self.calibration), self.config.calibration_samples * batch)
        return [{k: v[i:i + batch] for k, v in feeds.items()} for i in range(0, n - batch + 1, batch)]


def write_saved_model(emitted, path: Path) -> Path:
    """The emitted module as a SavedModel (serving_default = the same signature), zipped into one file."""
    import shutil
    import tempfile

    from accelopt.isolation import quiet_native_stderr

    tf = load_tf()
    with tempfile.TemporaryDirectory(prefix="accelopt-savedmodel-") as tmp:
        with quiet_native_stderr():
            tf.saved_model.save(emitted.module, tmp, signatures={"serving_default": emitted.function})
        archive = shutil.make_archive(str(path.with_suffix("")), "zip", tmp)
    return Path(archive)


def check_model(model: onnx.ModelProto) -> list[Finding]:
    """Every node without a lowering (named, with the step that would remove it), dynamic input dims, and
    tensor types TFLite lacks; all at once, before any conversion starts."""
    from accelopt.optimizers.transposes import nhwc_op  # the optimizers import targets: import late

    findings: list[Finding] = []
    weights = {t.name for t in model.graph.initializer}
    for value in model.graph.input:
        if value.name in weights:
            continue
        dims = value.type.tensor_type.shape.dim
        if any(not d.HasField("dim_value") or d.dim_value <= 0 for d in dims):
            findings.append(Finding("error", f"input {value.name!r} has dynamic dims; TFLite needs static shapes: "
                                             "pin them with input.shapes (the fix-shapes step reads them)",
                                    value.name))
        if value.type.tensor_type.elem_type == onnx.TensorProto.STRING:
            findings.append(Finding("error", f"input {value.name!r} is a string tensor", value.name))
    for node in model.graph.node:
        nhwc = nhwc_op(node)
        op_type, domain = (nhwc[0], "") if nhwc else (node.op_type, node.domain)
        if find_handler(domain, op_type) is not None:
            continue
        findings.append(Finding("error", f"{domain or 'ai.onnx'}::{op_type} has no TFLite lowering"
                                         + step_hint(node, HINTS), node.name or node.output[0]))
    return findings


def _log_lines(meta: dict[str, Any], emitted) -> list[str]:
    """The lowering in a few greppable lines for the terminal and report.md."""
    lines = [f"{meta['converter']}, precision {meta['precision']}: {meta['onnx_ops_lowered']} ONNX ops lowered, "
             f"{meta['onnx_ops_folded']} folded to constants"
             + (f", {emitted.gelus} Erf-GELU(s) fused into GELU" if emitted.gelus else "")]
    layout = meta.get("layout")
    if layout:
        lines.append("layout (inside the target; add the layout step to check it on ORT): "
                     + ", ".join(f"{k} {v}" for k, v in layout.items() if not isinstance(v, (list, dict))))
    where = "; ".join(f"{t['after']} -> {', '.join(t['before'])}" for t in meta["transposes"][:5])
    lines.append(f"transposes left in the TFLite graph: {meta['transposes_left']} "
                 f"({meta['transposes_between_convs']} between convolutions)" + (f": {where}" if where else ""))
    if meta.get("masks_softened"):
        lines.append(f"int8: {meta['masks_softened']} attention-mask constant(s) of float32's minimum raised to -20 "
                     "(a 1e38 range cannot be quantized; masked weights stay ~0 after the Softmax)")
    if meta["float_ops_in_int8"]:
        lines.append(f"int8: ops still computing in float: {', '.join(meta['float_ops_in_int8'])}")
    return lines


def _layout_summary(decisions: dict[str, Any]) -> dict[str, Any]:
    """The layout pass's decisions, minus the per-transpose list (the TFLite graph's own list is reported)."""
    return {k: v for k, v in decisions.items() if k != "transposes_left"}


def _float_fallbacks(facts: dict[str, Any], precision: str) -> list[str]:
    """Ops still computing in float in an int8 model (a float island costs a QUANTIZE/DEQUANTIZE pair)."""
    if precision not in ("int8", "int16x8"):
        return []
    return sorted(k.split(":")[0] for k, n in facts["op_types"].items()
                  if k.endswith(":float32") and not k.startswith(("QUANTIZE", "DEQUANTIZE")))
