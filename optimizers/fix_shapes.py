"""`fix-shapes`: pin dynamic input dims to static values, then re-infer shapes so later steps see them.

Pins are applied per input dim rather than per dim_param (onnxruntime.tools' `make_dim_param_fixed`):
exporters such as Paddle2ONNX reuse one name ("?") for unrelated dims (height and width), and pinning that
name graph-wide would force them equal.
"""

from __future__ import annotations

import onnx
from pydantic import Field, PositiveInt

from accelopt.converters.onnx_io import copy_model
from accelopt.errors import ConversionError, RecipeError, first_line
from accelopt.isolation import symbolic_shape_inference
from accelopt.optimizers.base import Pass, PassConfig, PassContext, register

Shape = list[int | str | None]


class FixShapesConfig(PassConfig):
    shapes: dict[str, list[PositiveInt]] = Field(
        default_factory=dict, description="input name -> full static shape; wins over the recipe's input.shapes")
    dims: dict[str, PositiveInt] = Field(default_factory=dict, description="symbolic dim name -> size, e.g. {batch: 1}")
    default: PositiveInt | None = Field(None, description="size for any dim still dynamic; null makes such a dim an error")


def _is_static(dim: onnx.TensorShapeProto.Dimension) -> bool:
    """Paddle writes unknown dims as dim_value -1, so only positive values count as static."""
    return dim.HasField("dim_value") and dim.dim_value > 0


def _dims_of(value: onnx.ValueInfoProto) -> Shape:
    return [d.dim_value if _is_static(d) else (d.dim_param or None) for d in value.type.tensor_type.shape.dim]


def _graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """Real tensor inputs: initializers listed as inputs (IR < 4 style) are weights, not feeds."""
    weights = {t.name for t in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in weights and i.type.HasField("tensor_type")]


def _requested(inputs: list[onnx.ValueInfoProto], config: FixShapesConfig, ctx: PassContext) -> dict[str, Shape]:
    """Recipe input pins merged with the step's own (the step wins); symbolic entries mean 'not pinned here'."""
    requested: dict[str, Shape] = {n: [d if isinstance(d, int) and d > 0 else None for d in s]
                                   for n, s in ctx.input_shapes.items()}
    requested.update(config.shapes)
    names = [i.name for i in inputs]
    for name, shape in requested.items():
        if name not in names:
            raise RecipeError(f"fix-shapes: unknown input {name!r}; model inputs: {', '.join(names)}")
        rank = len(inputs[names.index(name)].type.tensor_type.shape.dim)
        if len(shape) != rank:
            raise RecipeError(f"fix-shapes: input {name!r} has rank {rank} but shape {shape} has {len(shape)} dims")
    return requested


def _check_dim_names(inputs: list[onnx.ValueInfoProto], dims: dict[str, int]) -> None:
    known = {d for i in inputs for d in _dims_of(i) if isinstance(d, str)}
    unknown = sorted(set(dims) - known)
    if unknown:
        raise RecipeError(f"fix-shapes: dims {unknown} name no dynamic input dim; "
                          f"known: {', '.join(sorted(known)) or 'none'}")


def _resolve(value: onnx.ValueInfoProto, requested: Shape | None, config: FixShapesConfig) -> tuple[Shape, list[str]]:
    """The pinned shape of one input, and a description of each dim left without a value."""
    current = _dims_of(value)
    pinned: Shape = []
    missing: list[str] = []
    for i, dim in enumerate(current):
        want = requested[i] if requested else None
        if isinstance(dim, int):
            if want is not None and want != dim:
                raise RecipeError(f"fix-shapes: input {value.name!r} dim {i} is static {dim}, cannot pin it to {want}")
            pinned.append(dim)
            continue
        if want is None:
            want = config.dims.get(dim, config.default) if dim else config.default
        if want is None:
            missing.append(f"{value.name!r} dim {i}" + (f" ({dim!r})" if dim else ""))
        pinned.append(want)
    return pinned, missing


def _write_shape(value: onnx.ValueInfoProto, shape: Shape) -> None:
    for dim, size in zip(value.type.tensor_type.shape.dim, shape):
        dim.Clear()
        dim.dim_value = size


def _clear_dynamic_outputs(model: onnx.ModelProto) -> None:
    """Drop stale intermediate shapes and symbolic output dims, which would otherwise block re-inference."""
    del model.graph.value_info[:]
    for out in model.graph.output:
        for dim in out.type.tensor_type.shape.dim:
            if not _is_static(dim):
                dim.Clear()


def _dynamic_outputs(model: onnx.ModelProto) -> list[str]:
    return [o.name for o in model.graph.output
            if not o.type.tensor_type.HasField("shape") or not all(map(_is_static, o.type.tensor_type.shape.dim))]


def _infer(model: onnx.ModelProto, ctx: PassContext) -> onnx.ModelProto:
    """onnx shape inference; ORT's symbolic inference when onnx cannot see through an op to the outputs."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception as e:  # onnx raises InferenceError and bare RuntimeErrors
        raise ConversionError(f"fix-shapes: shape inference failed after pinning ({first_line(e)})") from e
    if not _dynamic_outputs(inferred):
        return inferred
    try:
        inferred = symbolic_shape_inference(inferred)
    except Exception as e:  # the fallback is best effort: the model is still valid without output shapes
        ctx.log(f"fix-shapes: symbolic shape inference failed ({type(e).__name__}); output shapes left as inferred")
    still = _dynamic_outputs(inferred)
    if still:
        ctx.log(f"fix-shapes: output shapes still dynamic after pinning: {', '.join(still)}")
    return inferred


@register
class FixShapes(Pass):
    name = "fix-shapes"
    summary = "Pin dynamic input dimensions to static sizes and re-infer every shape."
    Config = FixShapesConfig

    def apply(self, model: onnx.ModelProto, config: FixShapesConfig, ctx: PassContext) -> onnx.ModelProto:
        inputs = _graph_inputs(model)
        requested = _requested(inputs, config, ctx)
        _check_dim_names(inputs, config.dims)
        resolved = {i.name: _resolve(i, requested.get(i.name), config) for i in inputs}
        missing = [m for _, miss in resolved.values() for m in miss]
        if missing:
            raise RecipeError(f"fix-shapes: no value for dynamic {'; '.join(missing)}; "
                              "give it in shapes, dims or default")
        out = copy_model(model)
        for value in _graph_inputs(out):
            _write_shape(value, resolved[value.name][0])
        _clear_dynamic_outputs(out)
        out = _infer(out, ctx)
        ctx.decide("input_shapes", {name: shape for name, (shape, _) in resolved.items()})
        ctx.decide("output_shapes", {o.name: _dims_of(o) for o in out.graph.output})
        return out
