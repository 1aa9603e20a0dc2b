"""numpy kernels of MIL ops for the evaluator, one module per family; importing this package registers them.

A kernel takes the op's inputs through `Args` (constants and computed values alike, fp16 widened to fp32)
and returns its output(s); the evaluator rounds each output to the type the op declares, so an fp16 program
is emulated as fp16 storage with fp32 arithmetic. The kernels follow the MIL op definitions in coremltools
(`coremltools.converters.mil.mil.ops.defs`), not ONNX: they check the translation and coremltools' rewrites.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from typing import Any

import numpy as np

Kernel = Callable[["Args"], Any]
KERNELS: dict[str, Kernel] = {}


def kernel(*op_types: str) -> Callable[[Kernel], Kernel]:
    """Register a kernel for the MIL op types given."""

    def register(fn: Kernel) -> Kernel:
        for op_type in op_types:
            if op_type in KERNELS:
                raise RuntimeError(f"MIL kernel for {op_type} registered twice")
            KERNELS[op_type] = fn
        return fn

    return register


class Args:
    """One op's inputs by name: `a("x")` is the value (None when absent); `a.op` is the MIL operation."""

    def __init__(self, op: Any, env: dict[str, Any]):
        self.op = op
        self.env = env

    def _value(self, var: Any) -> Any:
        value = self.env[var.name] if var.name in self.env else var.val
        if isinstance(value, np.ndarray) and value.dtype == np.float16:
            return value.astype(np.float32)
        if isinstance(value, np.float16):
            return np.float32(value)
        return value

    def __call__(self, name: str, default: Any = None) -> Any:
        var = self.op.inputs.get(name)
        if var is None:
            return default
        if isinstance(var, (list, tuple)):
            return [self._value(v) for v in var]
        return self._value(var)

    def has(self, name: str) -> bool:
        return self.op.inputs.get(name) is not None

    @property
    def out_dtype(self) -> np.dtype:
        """The numpy type of output 0 (integer kernels compute in it)."""
        from coremltools.converters.mil.mil import types

        return np.dtype(types.nptype_from_builtin(self.op.outputs[0].dtype))


for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
