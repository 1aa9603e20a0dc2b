"""ONNX -> a MIL Program (coremltools' Builder), one registered handler per node.

MIL is NCHW like ONNX, so there is no layout pass: each handler translates attributes (pad order, auto_pad,
resize modes, axes) and computes in the types Core ML has (int64 -> int32, float64 -> fp32). Inputs whose
values are all known fold on the spot (onnx's reference evaluator), so shape subgraphs become constants. The
last MIL op of each node is named after the node's ONNX output (made identifier-safe), so a Core ML error or
an evaluator mismatch names the ONNX tensor. Inputs and outputs keep their ONNX names where those are
identifiers; `inputs`/`outputs` map the two (they go to the artifact's io.json).
"""

from __future__ import annotations

import itertools
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx

from accelopt.converters.mil import load_ct
from accelopt.converters.mil import ops as _handlers  # noqa: F401  (importing registers the handlers)
from accelopt.converters.mil.registry import (Node, as_compute, compute_dtype, find_handler, folds, mil_dtype,
                                              var_dtype)
from accelopt.converters.registry import Unsupported, elem_dtype, fold_node, safe_name, static_shape
from accelopt.errors import first_line

MAX_RANK = 5  # Core ML's limit for runtime tensors
# Core ML model inputs/outputs are fp32, fp16 (iOS16+) or int32 arrays: other ONNX types cross as these.
_IO = {"float32": "fp32", "float16": "fp16", "float64": "fp32"}


@dataclass
class IoSpec:
    name: str  # the ONNX name
    key: str  # the Core ML feature name (an identifier)
    shape: list[int]
    dtype: np.dtype  # the ONNX element type
    mil: str  # the Core ML array type it crosses as: fp32, fp16 or int32

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "key": self.key, "shape": self.shape, "dtype": str(self.dtype), "mil": self.mil}


@dataclass
class Translated:
    program: Any  # coremltools.converters.mil.Program
    target: str  # the deployment target its opsets are
    inputs: list[IoSpec]
    outputs: list[IoSpec]
    ops: Counter = field(default_factory=Counter)  # ONNX op types translated to MIL ops
    folded: Counter = field(default_factory=Counter)  # ONNX op types folded to constants


def io_type(dtype: np.dtype, target: str) -> str:
    from accelopt.converters.mil import target_at_least

    mil = _IO.get(np.dtype(dtype).name, "int32")
    return "fp32" if mil == "fp16" and not target_at_least(target, "iOS16") else mil


class Translator:
    """Translates one ONNX graph; `translate` is the entry point."""

    def __init__(self, model: onnx.ModelProto, target: str):
        try:
            self.model = onnx.shape_inference.infer_shapes(model)
        except Exception:  # an uninferable model still translates: handlers use MIL's own static shapes
            self.model = model
        graph = self.model.graph
        self.target = target
        self.opset = next((o.version for o in self.model.opset_import if o.domain in ("", "ai.onnx")), 1)
        self.constants = {t.name: onnx.numpy_helper.to_array(t) for t in graph.initializer}
        self.types = {v.name: elem_dtype(v) for v in [*graph.value_info, *graph.input, *graph.output]}
        self.taken: set[str] = set()
        self.inputs = []
        for value in graph.input:
            if value.name in self.constants:
                continue
            dtype = elem_dtype(value)
            if dtype is None or dtype.kind not in "fiub":
                raise Unsupported("unsupported_type", f"input {value.name!r} is a {dtype or 'non-tensor'} input; "
                                                      "Core ML takes numeric arrays")
            self.inputs.append(IoSpec(value.name, safe_name(value.name, self.taken), static_shape(value, "the Core ML lowering"), dtype,
                                      io_type(dtype, target)))
        self.outputs = [IoSpec(o.name, safe_name(o.name, self.taken), [], elem_dtype(o) or np.dtype(np.float32),
                               "") for o in graph.output]
        self.ops: Counter = Counter()
        self.folded: Counter = Counter()

    def translate(self) -> Translated:
        ct = load_ct()
        from coremltools.converters.mil import Builder as mb
        from coremltools.converters.mil.mil import Function, Program, types

        # Core ML has no rank-0 model inputs or outputs: scalars cross as shape [1] (the runners reshape).
        placeholders = {s.key: mb.placeholder(shape=s.shape or [1], dtype=types.string_to_builtin(s.mil))
                        for s in self.inputs}
        with Function(placeholders, opset_version=getattr(ct.target, self.target)) as fn:
            env: dict[str, Any] = dict(self.constants)
            for spec in self.inputs:
                value = fn.inputs[spec.key] if spec.shape else mb.squeeze(x=fn.inputs[spec.key])
                want = mil_dtype(compute_dtype(spec.dtype)) if spec.dtype.kind != "f" else spec.mil
                env[spec.name] = mb.cast(x=value, dtype=want) if want != spec.mil else value
            for proto in self.model.graph.node:
                self._lower(fn, proto, env)
            fn.set_outputs([self._output(fn, spec, env[spec.name], {s.name for s in self.inputs})
                            for spec in self.outputs])
        program = Program()
        program.add_function("main", fn)
        return Translated(program, self.target, self.inputs, self.outputs, self.ops, self.folded)

    def _output(self, fn, spec: IoSpec, value: Any, graph_inputs: set[str]) -> Any:
        """The Var a graph output becomes: in a Core ML array type, named after the ONNX output."""
        from coremltools.converters.mil import Builder as mb

        if isinstance(value, np.ndarray):
            value = mb.identity(x=as_compute(value))
        spec.mil = io_type(spec.dtype, self.target)
        if any(not isinstance(d, (int, np.integer)) for d in value.shape):
            raise Unsupported("dynamic_shape", f"output {spec.name!r} has a data-dependent shape {value.shape}; "
                                               "Core ML outputs need static shapes here")
        spec.shape = [int(d) for d in value.shape]
        if not spec.shape:
            value = mb.reshape(x=value, shape=[1])
        have = mil_dtype(var_dtype(value))
        if have != spec.mil:
            return mb.cast(x=value, dtype=spec.mil, name=spec.key)
        if spec.name in graph_inputs or value.op is None or any(value is v for v in fn.outputs):
            return mb.identity(x=value, name=spec.key)
        value.op.name = spec.key  # the node's last op already carries the ONNX name: make it the exact key
        value.name = spec.key
        return value

    def _lower(self, fn, proto: onnx.NodeProto, env: dict[str, Any]) -> None:
        from coremltools.converters.mil import Builder as mb

        values = [env[name] if name else None for name in proto.input]
        out_dtypes = [self.types.get(name) for name in proto.output]
        if folds(proto, values):
            results = fold_node(proto, values, self.opset)
            self.folded[proto.op_type] += 1
        else:
            before = len(fn.operations)
            try:
                results = self._call(proto, values, out_dtypes)
                results = list(results) if isinstance(results, (list, tuple)) else [results]
                for j, value in enumerate(results):
                    if value is not None and not isinstance(value, np.ndarray):
                        results[j] = self._conform(value, out_dtypes[j] if j < len(out_dtypes) else None, mb)
            except Unsupported as e:
                raise Unsupported(e.reason, f"node {proto.name or proto.output[0]!r}: {e}") from None
            except Exception as e:  # MIL rejecting what a handler built: a lowering bug or an odd attribute
                raise Unsupported("lowering_failed", f"node {proto.name or proto.output[0]!r} "
                                                     f"({proto.op_type}): {first_line(e, with_type=True)}") from e
            new_ops = {id(op) for op in itertools.islice(reversed(fn.operations), len(fn.operations) - before)}
            for name, value in zip(proto.output, results):
                if name and value is not None and not isinstance(value, np.ndarray) and id(value.op) in new_ops:
                    value.op.name = value.name = safe_name(name, self.taken)
            self.ops[proto.op_type] += 1
        results = list(results) if isinstance(results, (list, tuple)) else [results]
        for j, (name, value) in enumerate(zip(proto.output, results)):
            if name and value is not None:
                dtype = out_dtypes[j]
                if isinstance(value, np.ndarray) and dtype is not None and value.dtype != dtype:
                    value = value.astype(dtype)
                env[name] = value

    def _conform(self, value: Any, onnx_dtype: np.dtype | None, mb) -> Any:
        """A handler's result in the type MIL computes the ONNX output's type in, and within Core ML's rank."""
        if len(value.shape) > MAX_RANK:
            raise Unsupported("rank", f"result has rank {len(value.shape)}; Core ML tensors have rank <= {MAX_RANK}")
        if onnx_dtype is None:
            return value
        want = mil_dtype(compute_dtype(onnx_dtype))
        return mb.cast(x=value, dtype=want) if mil_dtype(var_dtype(value)) != want else value

    def _call(self, proto: onnx.NodeProto, values: list[Any], out_dtypes: list) -> Any:
        handler = find_handler(proto.domain, proto.op_type)
        if handler is None:
            raise Unsupported("unsupported_op", f"no Core ML lowering for {proto.domain or 'ai.onnx'}::{proto.op_type}")
        return handler(Node(proto, proto.op_type, values, self.opset, out_dtypes, target=self.target))


def translate(model: onnx.ModelProto, target: str = "iOS17") -> Translated:
    """The model as a MIL Program for `target`; raises `Unsupported` (with the node named) for what cannot
    lower."""
    return Translator(model, target).translate()
