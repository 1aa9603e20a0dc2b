"""A numpy evaluator of MIL programs: how accelopt checks a Core ML model's numerics where Core ML cannot
run (coremltools' `predict` needs macOS). It runs the program coremltools produced, after its pass pipeline,
fp16 casts and weight compression (constexpr ops are materialised), so it checks the ONNX -> MIL translation
and coremltools' rewrites; Apple's kernels and the Neural Engine's arithmetic are only checked on a Mac.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from accelopt.converters.mil.kernels import KERNELS, Args


class EvaluatorGap(Exception):
    """A MIL op the evaluator has no kernel for."""


def _np_type(var: Any) -> np.dtype | None:
    from coremltools.converters.mil.mil import types

    if var.dtype is None or not (types.is_tensor(var.sym_type) or types.is_scalar(var.sym_type)):
        return None
    try:
        return np.dtype(types.nptype_from_builtin(var.dtype))
    except (TypeError, KeyError):  # strings and other non-numeric consts
        return None


def _store(var: Any, value: Any) -> Any:
    """A computed value in the type the op declares (fp16 outputs are rounded to fp16 here)."""
    dtype = _np_type(var)
    if dtype is None or isinstance(value, str):
        return value
    value = np.asarray(value)
    if dtype.kind in "iu" and value.dtype.kind == "f":
        value = np.trunc(value)
    return value.astype(dtype, copy=False)


def evaluate_op(op: Any, env: dict[str, Any]) -> None:
    """Compute one op's outputs into `env` (by var name)."""
    if op.op_type == "const":
        env[op.outputs[0].name] = op.outputs[0].val
        return
    if op.op_type.startswith("constexpr_"):  # compressed weights: coremltools materialises them itself
        values = op.materialized_val_inference()
    else:
        kernel = KERNELS.get(op.op_type)
        if kernel is None:
            raise EvaluatorGap(f"the MIL evaluator has no kernel for {op.op_type} (op {op.name!r})")
        values = kernel(Args(op, env))
    values = values if isinstance(values, (list, tuple)) and len(op.outputs) > 1 else [values]
    for var, value in zip(op.outputs, values):
        env[var.name] = _store(var, value)


def run_program(program: Any, feeds: dict[str, np.ndarray], function: str = "main") -> dict[str, np.ndarray]:
    """The program's outputs (by MIL name) for `feeds` (by MIL input name)."""
    fn = program.functions[function]
    env: dict[str, Any] = {}
    for name, var in fn.inputs.items():
        if name not in feeds:
            raise KeyError(f"no value for input {name!r}")
        env[name] = np.asarray(feeds[name]).astype(_np_type(var), copy=False)
    for op in fn.operations:
        evaluate_op(op, env)
    return {var.name: env[var.name] for var in fn.outputs}
