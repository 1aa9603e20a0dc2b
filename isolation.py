"""Guards around third-party tools' side effects, so that accelopt never writes where the user did not ask:
native code printing straight to file descriptor 2 (onnxsim's C++ core), Python libraries logging to the root
logger (onnxruntime.quantization, onnxruntime.transformers), and files dropped into the current
directory (ORT's symbolic shape inference saves `sym_shape_infer_temp.onnx` plus a uuid-named `.data` file
there whenever it gives up, including inside `quant_pre_process`)."""

from __future__ import annotations

import functools
import importlib.util
import logging
import os
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import onnx


@contextmanager
def library_logs(log: Callable[[str], None]) -> Iterator[None]:
    """Route `logging` warnings to `log` (a step's notes), once each, and drop the rest, while a step runs:
    steps never print, and onnxruntime.quantization.matmul_nbits_quantizer even calls basicConfig at INFO on
    import."""
    seen: set[str] = set()

    class Forward(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines = record.getMessage().strip().splitlines()
            if lines and lines[0] not in seen:
                seen.add(lines[0])
                log(f"{record.module if record.name == 'root' else record.name}: {lines[0][:300]}")

    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    root.handlers, root.level = [Forward(logging.WARNING)], logging.WARNING
    try:
        yield
    finally:
        root.handlers, root.level = handlers, level


@contextmanager
def quiet_native_stderr() -> Iterator[None]:
    """Point fd 2 at /dev/null for the duration; Python-level errors still propagate as exceptions."""
    fd = 2  # where native code writes, whatever Python's sys.stderr is
    sys.stderr.flush()
    saved = os.dup(fd)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
        yield
    finally:
        os.dup2(saved, fd)
        os.close(saved)
        os.close(devnull)


@contextmanager
def isolated_cwd() -> Iterator[None]:
    """Run with a throw-away working directory: whatever a library drops there is deleted afterwards.
    Callers pass absolute paths. (The CLI is single-threaded; the working directory is per process.)"""
    previous = os.getcwd()
    with tempfile.TemporaryDirectory(prefix="accelopt-cwd-") as scratch:
        os.chdir(scratch)
        try:
            yield
        finally:
            os.chdir(previous)


def symbolic_shape_inference(model: onnx.ModelProto) -> onnx.ModelProto | None:
    """ORT's symbolic shape inference (auto_merge), without its files in the working directory.
    Raises what it raises when it cannot infer every shape."""
    with isolated_cwd():
        return _symbolic_class().infer_shapes(model, auto_merge=True)


@functools.cache
def _symbolic_class() -> Any:
    """ORT's `SymbolicShapeInference`, loaded from its file: importing it as
    `onnxruntime.tools.symbolic_shape_infer` runs `onnxruntime/tools/__init__.py`, which imports torch whenever
    torch is installed (2-3 s) for an unrelated helper; the module itself needs only numpy, onnx and sympy."""
    import onnxruntime

    name = "onnxruntime.tools.symbolic_shape_infer"
    spec = importlib.util.spec_from_file_location(
        name, Path(onnxruntime.__file__).parent / "tools" / "symbolic_shape_infer.py")
    if spec is None or spec.loader is None:
        raise ImportError(f"{name} not found")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.SymbolicShapeInference
