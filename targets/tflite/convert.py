"""The emitted TF module -> TFLite FlatBuffer with `tf.lite.TFLiteConverter`: fp32, fp16 weights,
dynamic-range int8 weights, or full-integer int8 calibrated on the recipe's data. Builtin ops only: the
LiteRT interpreter cannot run Flex (TF) ops."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

import numpy as np

from accelopt.converters.tf import load_tf
from accelopt.converters.tf.emitter import Emitted
from accelopt.errors import ConversionError, first_line
from accelopt.isolation import quiet_native_stderr

Precision = Literal["fp32", "fp16", "dynamic", "int8", "int16x8"]
IoType = Literal["float", "int8", "uint8"]


def signature_feeds(emitted: Emitted, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """ONNX-named, ONNX-layout feeds as the signature takes them: by its keys, in its layout and types. Keyed,
    not positional: the converter orders a model's inputs by name, so a list would feed MiniLM's input_ids
    to its attention mask during calibration."""
    out = {}
    for spec in emitted.inputs:
        x = np.asarray(feeds[spec.name])
        if spec.channels_last:
            x = np.moveaxis(x, 1, -1)
        out[spec.key] = np.require(x, dtype=spec.dtype, requirements="C")
    return out


def to_tflite(emitted: Emitted, precision: Precision = "fp32", *, samples: Iterable[dict[str, np.ndarray]] = (),
              io_type: IoType = "float", float_head: bool = False) -> bytes:
    """The FlatBuffer bytes. `samples` (single-sample ONNX feeds) calibrate full-integer int8 (int8 activations)
    and int16x8 (int16 activations, int8 weights: TFLite's 16x8 mode, for models int8 activations break).
    `float_head` keeps the ops after the last conv/matmul before each output in float (see `_selective`)."""
    tf = load_tf()
    converter = tf.lite.TFLiteConverter.from_concrete_functions([emitted.function], emitted.module)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if precision != "fp32":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if precision == "fp16":
        converter.target_spec.supported_types = [tf.float16]
    if precision in ("int8", "int16x8"):
        batches = [signature_feeds(emitted, s) for s in samples]
        if not batches:
            raise ConversionError(f"tflite: full-integer {precision} needs calibration samples")
        converter.representative_dataset = lambda: iter(batches)
        # 16x8 has no kernel for some ops (CAST): TF's documented way is to let those stay float.
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8] if precision == "int8" else [
            tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8, tf.lite.OpsSet.TFLITE_BUILTINS]
        if io_type != "float":
            converter.inference_input_type = tf.int8 if io_type == "int8" else tf.uint8
            converter.inference_output_type = converter.inference_input_type
    try:
        with quiet_native_stderr():
            if float_head and precision in ("int8", "int16x8"):
                return _selective(converter, emitted, to_tflite(emitted, "fp32"), batches)
            return converter.convert()
    except ConversionError:
        raise
    except Exception as e:  # ConverterError carries MLIR diagnostics over many lines
        raise ConversionError(f"TFLiteConverter failed ({precision}): {_converter_message(e)}") from e


def _selective(converter, emitted: Emitted, float_blob: bytes, batches: list[dict[str, np.ndarray]]) -> bytes:
    """Integer everywhere but the head: the ops between the last conv/matmul and each output stay float, through
    TF's selective quantization (QuantizationDebugger's denylist). A detection head that concatenates boxes
    (0..320) and class scores (0..1) needs it: the int8 spec gives CONCATENATION one scale, which rounds the
    scores away (the tiny YOLO-like test head: scores cosine 0.50 in int8, 0.99998 with a float head)."""
    from ai_edge_litert.interpreter import Interpreter

    from accelopt.targets.tflite.inspect import head_tensors

    tf = load_tf()
    converter.target_spec.supported_ops = [*converter.target_spec.supported_ops, tf.lite.OpsSet.TFLITE_BUILTINS]
    # The debugger feeds its samples positionally, in the order of the converted model's inputs.
    order = [d["name"] for d in Interpreter(model_content=float_blob).get_input_details()]
    keys = sorted((s.key for s in emitted.inputs), key=lambda k: order.index(f"serving_default_{k}:0")
                  if f"serving_default_{k}:0" in order else len(order))
    options = tf.lite.experimental.QuantizationDebugOptions(denylisted_nodes=head_tensors(float_blob))
    debugger = tf.lite.experimental.QuantizationDebugger(
        converter=converter, debug_dataset=lambda: ([b[k] for k in keys] for b in batches[:1]), debug_options=options)
    return debugger.get_nondebug_quantized_model()


def _converter_message(error: Exception) -> str:
    """The first diagnostic that says something (MLIR prefixes locations and 'error:')."""
    for line in str(error).splitlines():
        if "error:" in line:
            return line.split("error:", 1)[1].strip()[:300]
    return first_line(error, 300)
