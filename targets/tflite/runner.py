"""Runs a .tflite file in the LiteRT interpreter with OrtRunner's interface: ONNX input/output names and
layouts in and out (the io.json next to the model maps them to the signature), int8/uint8 model I/O quantized
and dequantized here, `num_threads` always set."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Literal

import numpy as np

from accelopt.errors import BadInputError, ConversionError, MissingExtraError, first_line
from accelopt.isolation import quiet_native_stderr
from accelopt.targets.base import LatencyStats, TensorSpec, wall_clock_bench

IO_FILE = "io.json"
Resolver = Literal["auto", "builtin", "reference"]


def load_interpreter_class():
    try:
        from ai_edge_litert.interpreter import Interpreter, OpResolverType
    except ImportError as e:
        raise MissingExtraError("tflite", "running TFLite models (ai-edge-litert)") from e
    return Interpreter, OpResolverType


class LiteRtRunner:
    """One interpreter over one model. `resolver`: auto = optimized kernels + XNNPACK (what apps get),
    builtin = optimized kernels without delegates, reference = the spec's reference kernels (slow)."""

    def __init__(self, model: Path, threads: int | None = None, resolver: Resolver = "auto"):
        Interpreter, OpResolverType = load_interpreter_class()
        model = Path(model)
        io = json.loads((model.parent / IO_FILE).read_text())
        self._in, self._out = io["inputs"], io["outputs"]
        self.threads = threads or 1  # LiteRT's own default is 1 thread whatever the machine has
        kind = {"auto": OpResolverType.AUTO, "builtin": OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
                "reference": OpResolverType.BUILTIN_REF}[resolver]
        probe(model, kind.name)
        try:
            with quiet_native_stderr():  # "Created TensorFlow Lite XNNPACK delegate" on fd 2
                self._interpreter = Interpreter(model_path=str(model), num_threads=self.threads,
                                                experimental_op_resolver_type=kind)
                self._interpreter.allocate_tensors()  # applies XNNPACK now, while fd 2 is quiet
                self._signature = self._interpreter.get_signature_runner("serving_default")
        except Exception as e:
            raise ConversionError(f"LiteRT cannot load {model.name}: {first_line(e, 300)}") from e
        details = self._signature.get_input_details()
        self._quant_in = {k: details[k]["quantization"] if details[k]["dtype"] in (np.int8, np.uint8)
                          and np.dtype(spec["dtype"]).kind == "f" and details[k]["quantization"][0] else None
                          for spec in self._in for k in [spec["key"]]}
        self._in_dtype = {k: details[k]["dtype"] for k in details}
        out_details = self._signature.get_output_details()
        # Dequantize only what the ONNX model returns as float (io_type int8/uint8); an int8 ONNX output stays int8.
        self._quant_out = {spec["key"]: out_details[spec["key"]]["quantization"]
                           if out_details[spec["key"]]["dtype"] in (np.int8, np.uint8)
                           and np.dtype(spec["dtype"]).kind == "f" and out_details[spec["key"]]["quantization"][0]
                           else None for spec in self._out}
        self.inputs = [TensorSpec(s["name"], _onnx_shape(s), np.dtype(s["dtype"])) for s in self._in]
        self.outputs = [TensorSpec(s["name"], list(s["shape"]), np.dtype(s["dtype"])) for s in self._out]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Output name -> array, in the model's output order."""
        args = {}
        for spec in self._in:
            if spec["name"] not in feeds:
                raise BadInputError(f"tflite runner: missing input {spec['name']!r}")
            x = np.asarray(feeds[spec["name"]])
            if spec["channels_last"]:
                x = np.moveaxis(x, 1, -1)
            quant = self._quant_in[spec["key"]]
            if quant is not None:
                x = _quantize(x, quant, self._in_dtype[spec["key"]])
            args[spec["key"]] = np.require(x, dtype=self._in_dtype[spec["key"]], requirements="C")  # keeps 0-d
        try:
            out = self._signature(**args)
        except Exception as e:
            raise ConversionError(f"LiteRT failed running the model: {first_line(e, 300)}") from e
        result = {}
        for spec in self._out:
            y = out[spec["key"]]
            quant = self._quant_out[spec["key"]]
            if quant is not None:
                y = (y.astype(np.float32) - quant[1]) * quant[0]
            result[spec["name"]] = y.astype(spec["dtype"], copy=False)
        return result

    def bench(self, feeds: dict[str, np.ndarray], warmup: int = 5, runs: int = 50) -> LatencyStats:
        return wall_clock_bench(self, feeds, warmup, runs)


# Loads the model, prepares every kernel and runs it once on zeros.
_PROBE = """
import sys, numpy as np
from ai_edge_litert.interpreter import Interpreter, OpResolverType
it = Interpreter(model_path=sys.argv[1], num_threads=1, experimental_op_resolver_type=OpResolverType[sys.argv[2]])
it.allocate_tensors()
print("allocated", flush=True)
for d in it.get_input_details():
    it.set_tensor(d["index"], np.zeros(d["shape"], d["dtype"]))
it.invoke()
"""


def probe(model: Path, resolver: str) -> None:
    """LiteRT aborts the whole process (SIGABRT, no message) when a kernel rejects a model while preparing or
    running it; try the model once in a child process so that is a one-line error, not a crash. Failing to
    allocate is an error too; an ordinary error while running zeros is left to the real run."""
    try:
        done = subprocess.run([sys.executable, "-c", _PROBE, str(model), resolver], capture_output=True, text=True,
                              timeout=600)
    except subprocess.TimeoutExpired:
        raise ConversionError(f"LiteRT did not finish one run of {model.name} in 10 minutes") from None
    if done.returncode == 0 or (done.returncode > 0 and "allocated" in done.stdout):
        return  # a Python error running zeros (an integer division by zero) is about the data, not the model
    how = (f"killed by {signal.Signals(-done.returncode).name}" if done.returncode < 0
           else f"exit code {done.returncode}")
    said = [line for line in done.stderr.splitlines() if line.strip() and not line.startswith("INFO:")]
    raise ConversionError(f"LiteRT cannot run {model.name} ({how}{': ' + said[-1][:200] if said else ''}); "
                          "one of its kernels rejects the model")


def _onnx_shape(spec: dict) -> list[int]:
    """The input shape as the ONNX model has it (the signature may take it channels-last)."""
    shape = list(spec["shape"])
    return [shape[0], shape[-1], *shape[1:-1]] if spec["channels_last"] else shape


def _quantize(x: np.ndarray, quant: tuple[float, int], dtype: np.dtype) -> np.ndarray:
    scale, zero = quant
    info = np.iinfo(dtype)
    return np.clip(np.round(x / scale) + zero, info.min, info.max).astype(dtype)
