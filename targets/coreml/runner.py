"""Runners for a Core ML ML Program with OrtRunner's interface (ONNX input/output names and types in and out).

Core ML itself runs only on Apple platforms: there `CoreMLRunner` calls `MLModel.predict`. Elsewhere
`MilRunner` evaluates the program with accelopt's numpy MIL evaluator, which checks numerics (the ONNX -> MIL
translation, coremltools' rewrites, fp16 rounding, compressed weights) but says nothing about speed, so the
pipeline does not time it (`timed = False`). Each says which it is in `description`; the report repeats it.
"""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Any

import numpy as np

from accelopt.converters.mil import load_ct
from accelopt.errors import BadInputError, ConversionError, first_line
from accelopt.isolation import quiet_native_stderr
from accelopt.targets.base import LatencyStats, TensorSpec, wall_clock_bench

IO_KEY = "accelopt.io"  # user-defined metadata in the .mlpackage: the ONNX <-> Core ML name and type map
PRECISION_KEY = "accelopt.precision"  # what the package computes in (fp32, fp16, int8): compare's tolerances
_NP = {"fp32": np.float32, "fp16": np.float16, "int32": np.int32}


def io_metadata(inputs: list[dict[str, Any]], outputs: list[dict[str, Any]]) -> str:
    return json.dumps({"inputs": inputs, "outputs": outputs})


def _read_io(model: Any, path: Path) -> dict[str, Any]:
    meta = model.user_defined_metadata
    if IO_KEY not in meta:
        raise BadInputError(f"{path}: no {IO_KEY} metadata (accelopt writes it into every .mlpackage it makes; "
                            "it maps the ONNX input and output names and types)")
    return {**json.loads(meta[IO_KEY]), "precision": meta.get(PRECISION_KEY)}


class _IoMapped:
    """ONNX names and types at the boundary, Core ML feature names and array types inside."""

    timed = True
    description = ""

    def _init_io(self, io: dict[str, Any], threads: int | None) -> None:
        self._in, self._out = io["inputs"], io["outputs"]
        self.precision: str | None = io.get("precision")  # recorded by accelopt; None for an in-memory program
        self.threads = threads or 1
        self.inputs = [TensorSpec(s["name"], list(s["shape"]), np.dtype(s["dtype"])) for s in self._in]
        self.outputs = [TensorSpec(s["name"], list(s.get("shape") or []), np.dtype(s["dtype"])) for s in self._out]

    def _features(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        args = {}
        for spec in self._in:
            if spec["name"] not in feeds:
                raise BadInputError(f"coreml runner: missing input {spec['name']!r}")
            value = np.asarray(feeds[spec["name"]]).astype(_NP[spec["mil"]], copy=False)
            args[spec["key"]] = value if value.ndim else value.reshape(1)  # scalars cross as shape [1]
        return args

    def _results(self, out: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {s["name"]: np.asarray(out[s["key"]]).astype(s["dtype"], copy=False).reshape(s["shape"])
                for s in self._out}

    def bench(self, feeds: dict[str, np.ndarray], warmup: int = 5, runs: int = 50) -> LatencyStats:
        return wall_clock_bench(self, feeds, warmup, runs)


class MilRunner(_IoMapped):
    """The numpy MIL evaluator over a program (in memory, or loaded from a saved .mlpackage)."""

    timed = False
    description = "numpy MIL evaluator (Core ML's predict needs macOS): checks numerics, not speed"

    def __init__(self, program: Any, io: dict[str, Any], threads: int | None = None):
        self.program = program
        self._init_io(io, threads)

    @classmethod
    def from_package(cls, path: Path, threads: int | None = None) -> MilRunner:
        """Loads the saved model's MIL (the protobuf program and its weight file) back into a Program."""
        ct = load_ct()
        from coremltools.converters.mil.frontend.milproto.load import load as load_milproto

        path = Path(path)
        try:
            with quiet_native_stderr():
                model = ct.models.MLModel(str(path), skip_model_load=True)
                spec = model.get_spec()
                program = load_milproto(spec, specification_version=spec.specificationVersion,
                                        file_weights_dir=model.weights_dir)
        except Exception as e:
            raise ConversionError(f"cannot read {path.name} as an ML Program: {first_line(e, 300)}") from e
        return cls(program, _read_io(model, path), threads)

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from accelopt.converters.mil.evaluate import run_program

        return self._results(run_program(self.program, self._features(feeds)))


class CoreMLRunner(_IoMapped):
    """Core ML itself (`MLModel.predict`), on macOS. Not exercised by CI (Linux); see docs/coreml.md."""

    def __init__(self, path: Path, threads: int | None = None, compute_units: str = "ALL"):
        ct = load_ct()
        path = Path(path)
        self.model = ct.models.MLModel(str(path), compute_units=getattr(ct.ComputeUnit, compute_units))
        self.description = f"Core ML {platform.mac_ver()[0] or ''} predict, compute units {compute_units}".strip()
        self._init_io(_read_io(self.model, path), threads)

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self._results(self.model.predict(self._features(feeds)))


def open_coreml_runner(path: Path, threads: int | None = None, compute_units: str = "ALL") -> MilRunner | CoreMLRunner:
    """Core ML on macOS, the MIL evaluator everywhere else."""
    if platform.system() == "Darwin":
        return CoreMLRunner(path, threads, compute_units)
    return MilRunner.from_package(path, threads)
