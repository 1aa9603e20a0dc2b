"""ONNX -> a TensorFlow `tf.Module` with a serving signature, one registered handler per node.

The module's `__call__` walks the ONNX graph in order while TF traces it: each handler turns one node into TF
ops. Inputs whose values are all known fold on the spot (onnx's reference evaluator), so shape subgraphs
become constants instead of TFLite ops. Layout-sensitive ops are written channels-last; the `layout` step
(`accelopt.optimizers.transposes`) puts them in the `accelopt.nhwc` domain with transposes sunk and
cancelled, and any still in the standard domain get a transpose on each side here, so any ONNX model lowers.
The signature keeps the ONNX input/output names and types (int64/float64 cast at the boundary).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx

from accelopt.converters.tf import ops as _handlers  # noqa: F401  (importing registers the handlers)
from accelopt.errors import first_line
from accelopt.converters.tf import load_tf
from accelopt.converters.tf.patterns import fuse_gelu
from accelopt.converters.registry import elem_dtype as _elem_dtype, fold_node, foldable, safe_name, static_shape
from accelopt.converters.tf.registry import CHANNELS_LAST, Node, Unsupported, find_handler, narrowed
from accelopt.optimizers.transposes import nhwc_op


@dataclass
class IoSpec:
    name: str  # the ONNX name
    key: str  # the name in the TF/TFLite signature (ONNX names may hold '/', ':' ...)
    shape: list[int]  # as the signature takes it
    dtype: np.dtype  # the ONNX element type
    channels_last: bool = False  # an NCHW ONNX input the signature takes as NHWC

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "key": self.key, "shape": self.shape, "dtype": str(self.dtype),
                "channels_last": self.channels_last}


@dataclass
class Emitted:
    module: Any  # tf.Module
    function: Any  # its concrete function (what TFLiteConverter takes)
    inputs: list[IoSpec]
    outputs: list[IoSpec]
    ops: Counter = field(default_factory=Counter)  # ONNX op types lowered to TF ops
    folded: Counter = field(default_factory=Counter)  # ONNX op types folded to constants
    gelus: int = 0  # Erf-GELU subgraphs fused into one GELU


def _to_last(rank: int) -> list[int]:
    return [0, *range(2, rank), 1]


def _to_first(rank: int) -> list[int]:
    return [0, rank - 1, *range(1, rank - 1)]


class Emitter:
    """Lowers one ONNX graph; `emit` is the entry point."""

    def __init__(self, model: onnx.ModelProto, channels_last_inputs: bool = False):
        try:
            self.model = onnx.shape_inference.infer_shapes(model)
        except Exception:  # an uninferable model still lowers: handlers mostly use TF's own static shapes
            self.model = model
        self.model, self.gelus = fuse_gelu(self.model)  # after inference: the fused node's output keeps its type
        graph = self.model.graph
        self.opset = next((o.version for o in self.model.opset_import if o.domain in ("", "ai.onnx")), 1)
        self.constants = {t.name: onnx.numpy_helper.to_array(t) for t in graph.initializer}
        self.types = {v.name: _elem_dtype(v) for v in [*graph.value_info, *graph.input, *graph.output]}
        taken: set[str] = set()
        self.inputs = []
        for value in graph.input:
            if value.name in self.constants:
                continue
            shape, dtype = static_shape(value, "TFLite"), _elem_dtype(value)
            last = channels_last_inputs and len(shape) >= 3 and dtype is not None and dtype.kind == "f"
            shape = [shape[i] for i in _to_last(len(shape))] if last else shape
            self.inputs.append(IoSpec(value.name, safe_name(value.name, taken), shape, dtype, last))
        taken = set()
        self.outputs = [IoSpec(o.name, safe_name(o.name, taken), [], _elem_dtype(o)) for o in graph.output]
        self.ops: Counter = Counter()
        self.folded: Counter = Counter()

    def emit(self) -> Emitted:
        tf = load_tf()

        specs = [tf.TensorSpec(i.shape, tf.as_dtype(i.dtype), name=i.key) for i in self.inputs]
        emitter = self

        class OnnxModule(tf.Module):
            @tf.function(input_signature=specs, autograph=False)
            def __call__(self, *args):
                return emitter.trace(args)

        module = OnnxModule()
        function = module.__call__.get_concrete_function()
        for spec in self.outputs:
            spec.shape = function.structured_outputs[spec.key].shape.as_list()
        return Emitted(module, function, self.inputs, self.outputs, self.ops, self.folded, self.gelus)

    def trace(self, args: tuple) -> dict[str, Any]:
        """The graph as TF ops; runs once, under tf.function tracing."""
        tf = load_tf()

        self.ops.clear()
        self.folded.clear()
        env: dict[str, Any] = dict(self.constants)
        for spec, arg in zip(self.inputs, args):
            x = tf.transpose(arg, _to_first(len(spec.shape))) if spec.channels_last else arg
            target = narrowed(spec.dtype)
            env[spec.name] = tf.cast(x, target) if target != spec.dtype else x
        for proto in self.model.graph.node:
            self._lower(proto, env)
        outputs = {}
        for spec in self.outputs:
            value = env[spec.name]
            value = tf.constant(value) if isinstance(value, np.ndarray) else value
            if spec.dtype is not None and value.dtype != tf.as_dtype(spec.dtype):
                value = tf.cast(value, spec.dtype)
            outputs[spec.key] = tf.identity(value, name=spec.key)
        return outputs

    def _lower(self, proto: onnx.NodeProto, env: dict[str, Any]) -> None:
        tf = load_tf()

        values = [env[name] if name else None for name in proto.input]
        out_dtypes = [self.types.get(name) for name in proto.output]
        if foldable(proto, values):
            results = fold_node(proto, values, self.opset)
            self.folded[proto.op_type] += 1
        else:
            try:
                results = self._call(proto, values, out_dtypes)
            except Unsupported as e:
                raise Unsupported(e.reason, f"node {proto.name or proto.output[0]!r}: {e}") from None
            except Exception as e:  # TF rejecting what a handler built: a lowering bug or an odd attribute
                raise Unsupported("lowering_failed", f"node {proto.name or proto.output[0]!r} "
                                                     f"({proto.op_type}): {first_line(e, with_type=True)}") from e
            self.ops[proto.op_type] += 1
        results = list(results) if isinstance(results, (list, tuple)) else [results]
        for j, (name, value) in enumerate(zip(proto.output, results)):
            if not name or value is None:
                continue
            dtype = out_dtypes[j]
            if isinstance(value, np.ndarray):
                env[name] = value.astype(dtype) if dtype is not None and value.dtype != dtype else value
                continue
            want = narrowed(dtype) if dtype is not None else None
            env[name] = tf.cast(value, want) if want is not None and value.dtype != tf.as_dtype(want) else value

    def _call(self, proto: onnx.NodeProto, values: list[Any], out_dtypes: list) -> Any:
        tf = load_tf()

        nhwc = nhwc_op(proto)
        op_type = nhwc[0] if nhwc else proto.op_type
        handler = find_handler("" if nhwc else proto.domain, op_type)
        if handler is None:
            raise Unsupported("unsupported_op", f"no TFLite lowering for {proto.domain or 'ai.onnx'}::{op_type}")
        wrap = nhwc is None and op_type in CHANNELS_LAST and isinstance(values[0], tf.Tensor) \
            and len(values[0].shape) >= 3
        if wrap:  # a standard-domain NCHW op: channels-last around it
            rank = len(values[0].shape)
            values = [tf.transpose(values[0], _to_last(rank)), *values[1:]]
        node = Node(proto, op_type, values, self.opset, out_dtypes, channels_last=bool(nhwc) or wrap)
        result = handler(node)
        if wrap:
            result = list(result) if isinstance(result, (list, tuple)) else [result]
            result[0] = tf.transpose(result[0], _to_first(len(result[0].shape)))
        return result


def emit(model: onnx.ModelProto, *, channels_last_inputs: bool = False) -> Emitted:
    """The model as a traced tf.Module; raises `Unsupported` (with the node named) for what cannot lower."""
    return Emitter(model, channels_last_inputs).emit()
