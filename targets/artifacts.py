"""A runner for any artifact, picked by its kind, so `accelopt compare` checks a .tflite, an .mlpackage or a
TVM library against the ONNX model the same way it checks two ONNX models."""

from __future__ import annotations

from pathlib import Path

from accelopt.converters.onnx_io import load_model
from accelopt.errors import BadInputError
from accelopt.targets.base import Runner
from accelopt.targets.onnxruntime import OrtRunner


def open_runner(path: Path, threads: int | None = None) -> Runner:
    """.tflite: LiteRT (with the io.json accelopt writes next to it); .mlpackage: Core ML on macOS, the MIL
    evaluator elsewhere; .so: TVM's VM; anything else: ONNX Runtime."""
    path = Path(path)
    if path.suffix == ".tflite":
        from accelopt.targets.tflite.runner import IO_FILE, LiteRtRunner

        if not (path.parent / IO_FILE).is_file():
            raise BadInputError(f"{path}: no {IO_FILE} next to it (accelopt writes one with every model.tflite; "
                                "it maps the ONNX input and output names and layouts)")
        return LiteRtRunner(path, threads=threads)
    if path.suffix == ".mlpackage":
        from accelopt.targets.coreml.runner import open_coreml_runner

        return open_coreml_runner(path, threads=threads)
    if path.suffix == ".so":
        from accelopt.targets.tvm.runner import TvmRunner

        return TvmRunner(path, threads=threads)
    return OrtRunner(load_model(path, check=False), threads=threads)
