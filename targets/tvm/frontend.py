"""The ONNX -> Relax import, shared by lowering and the tuning child process."""

from __future__ import annotations

import onnx

from accelopt.targets.tvm.env import import_tvm


def graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """Tensors fed at run time: initializers listed as inputs (IR < 4) are weights."""
    weights = {t.name for t in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in weights]


def static_shapes(model: onnx.ModelProto) -> dict[str, list[int]]:
    """Input name -> shape; every dim must be pinned (`check` reports the ones that are not)."""
    return {i.name: [d.dim_value for d in i.type.tensor_type.shape.dim] for i in graph_inputs(model)}


def converters() -> set[str]:
    """ONNX op types the Relax frontend converts (a private map; `check` uses it to list gaps up front)."""
    import_tvm()
    from tvm.relax.frontend.onnx import onnx_frontend

    return set(onnx_frontend._get_convert_map())


def import_onnx(model: onnx.ModelProto):
    """The Relax module with static shapes and the weights bound as constants (folded into one .so)."""
    import_tvm()
    from tvm.relax.frontend.onnx import from_onnx

    return from_onnx(model, shape_dict=static_shapes(model))


def prepare(model: onnx.ModelProto, conv_algorithms: dict[str, str] | None = None, integer: bool = False):
    """The Relax module that tuning, the database check and the build all start from (they must agree, or no
    tuning record matches: notes §3 #9): imported, QDQ convs/matmuls as int8 kernels when `integer`
    (integer.integer_ops), BatchNorm decomposed so it fuses into the conv before it, and convs legalized with
    their chosen algorithm (winograd.legalizer)."""
    import_tvm()
    from tvm import relax

    mod = import_onnx(model)
    if integer:
        from accelopt.targets.tvm.integer import integer_ops

        mod, _ = integer_ops(mod)
    mod = relax.transform.DecomposeOpsForInference()(mod)
    if conv_algorithms:
        from accelopt.targets.tvm.winograd import legalizer

        mod = relax.transform.LegalizeOps(customize_legalize_map={"relax.nn.conv2d": legalizer(conv_algorithms)})(mod)
    return mod


def fused(mod, target):
    """Legalized and fused (relax's "zero" pipeline): tuning tasks exist only after it (notes §3 #4); with a
    database current it also applies the database to every fused kernel."""
    from tvm import relax

    with target:
        return relax.get_pipeline("zero")(mod)
