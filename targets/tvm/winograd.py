"""Per-layer Winograd selection (notes §6): which convs may use F(2x2,3x3) or F(4x4,3x3), a Relax legalizer
that gives each conv shape its algorithm, the choice by tuned latency from the database, and each candidate's
numerical error.

Relax always legalizes conv2d to direct convolution; TOPI's Winograd compute carries MetaSchedule's schedule
rules, so one custom legalizer makes it a tuning candidate. Convs are keyed by shape (batch, channels, size,
padding): layers of the same shape share a fused kernel and therefore a choice. Each chosen conv's kernel name
carries its algorithm and key (`conv2d_f4_n1c64h56w56o64p1111`), which is how tuning tasks map back to layers.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper
from pydantic import BaseModel, ConfigDict, Field

ALGORITHMS = {"direct": None, "f2": 2, "f4": 4}  # name -> Winograd output tile m of F(m x m, 3x3)
_KERNEL = re.compile(r"conv2d_(direct|f2|f4)_(n\d+c\d+h\d+w\d+o\d+p\d+)")
_ERROR_SEED = 0


class WinogradConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tiles: list[int] | None = Field(
        None, description="Winograd tiles m to try besides direct: [2, 4] for fp32, [2] by default for fp16 or "
                          "quantized models (F(4x4) error is ~8x F(2x2)'s)")
    min_channels: int = Field(16, ge=1, description="eligible when input and output channels are at least this")
    min_size: int = Field(8, ge=1, description="eligible when the output height and width are at least this")
    tolerance: float = Field(1e-3, gt=0, description="largest max-abs error / max-abs output vs a float64 "
                                                     "reference that a Winograd choice may have")


@dataclass
class Layer:
    """One conv shape; `nodes` are the ONNX convs that have it, `weight` the first one's (for the error)."""
    key: str
    nodes: list[str]
    x_shape: tuple[int, ...]
    pads: tuple[int, ...]
    weight: np.ndarray
    latency_ms: dict[str, float] = field(default_factory=dict)
    error: dict[str, float] = field(default_factory=dict)
    choice: str = "direct"


def shape_key(x_shape: Iterable[int], w_shape: Iterable[int], pads: Iterable[int]) -> str:
    n, c, h, w = (int(d) for d in x_shape)
    o = int(next(iter(w_shape)))
    return f"n{n}c{c}h{h}w{w}o{o}p{''.join(str(int(p)) for p in pads)}"


def eligible(model: onnx.ModelProto, config: WinogradConfig) -> list[Layer]:
    """3x3, stride 1, dilation 1, one group, constant weight, enough channels and size (notes §6.3)."""
    inferred = onnx.shape_inference.infer_shapes(model)
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]}
    weights = {t.name: t for t in model.graph.initializer}
    layers: dict[str, Layer] = {}
    for node in model.graph.node:
        if node.op_type != "Conv" or len(node.input) < 2 or node.input[1] not in weights:
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        x_shape = shapes.get(node.input[0], [])
        w = numpy_helper.to_array(weights[node.input[1]])
        pads = tuple(attrs.get("pads", [0, 0, 0, 0]))
        if (w.ndim != 4 or w.shape[2:] != (3, 3) or len(x_shape) != 4 or 0 in x_shape
                or attrs.get("group", 1) != 1 or any(s != 1 for s in attrs.get("strides", [1, 1]))
                or any(d != 1 for d in attrs.get("dilations", [1, 1]))
                or attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET")):
            continue
        out_h, out_w = x_shape[2] + pads[0] + pads[2] - 2, x_shape[3] + pads[1] + pads[3] - 2
        if min(w.shape[0], w.shape[1]) < config.min_channels or min(out_h, out_w) < config.min_size:
            continue
        key = shape_key(x_shape, w.shape, pads)
        if key in layers:
            layers[key].nodes.append(node.name or node.output[0])
        else:
            layers[key] = Layer(key, [node.name or node.output[0]], tuple(x_shape), pads, w)
    return list(layers.values())


def default_tiles(model: onnx.ModelProto, config: WinogradConfig) -> list[int]:
    """F(2x2) only for fp16 and quantized models, where F(4x4)'s larger error matters (notes §6.3)."""
    if config.tiles is not None:
        return sorted(set(config.tiles))
    low_precision = any(t.data_type == onnx.TensorProto.FLOAT16 for t in model.graph.initializer) or any(
        n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node)
    return [2] if low_precision else [2, 4]


def legalizer(choices: dict[str, str]):
    """relax.nn.conv2d legalization: the chosen algorithm for keyed shapes, TVM's stock direct conv otherwise."""
    from tvm import topi
    from tvm.relax.transform.legalize_ops.nn import _nn_conv2d
    from tvm.topi.nn.conv2d import _conv2d_winograd_nchw_impl

    def legalize(bb, call):
        attrs, (x, w) = call.attrs, call.args
        if not (attrs.data_layout == attrs.out_layout == "NCHW" and attrs.kernel_layout == "OIHW"):
            return _nn_conv2d(bb, call)
        key = shape_key(x.ty.shape, w.ty.shape, attrs.padding)
        algorithm = choices.get(key)
        if algorithm is None:
            return _nn_conv2d(bb, call)
        out_dtype = str(attrs.out_dtype) if str(attrs.out_dtype) not in ("", "void", "None") else str(x.ty.dtype)
        name = f"conv2d_{algorithm}_{key}"
        tile = ALGORITHMS[algorithm]
        if tile is None:
            return bb.call_te(topi.nn.conv, inp=x, filt=w, stride=attrs.strides, padding=attrs.padding,
                              dilation=attrs.dilation, groups=attrs.groups, data_layout="NCHW",
                              kernel_layout="OIHW", out_dtype=out_dtype, primfunc_name_hint=name)
        packed = bb.emit(bb.call_te(_pack_weight(tile), w, primfunc_name_hint=f"winograd_weight_f{tile}"))
        return bb.call_te(_conv2d_winograd_nchw_impl, x, packed, attrs.strides, attrs.padding, attrs.dilation,
                          out_dtype, tile, pre_computed=True, write_cache_level=2, primfunc_name_hint=name)
    return legalize


def _pack_weight(tile: int):
    """G g G^T laid out (alpha, alpha, C_in, C_out); a constant weight folds away at build time. Written here
    because topi's conv2d_winograd_weight_transform fails on Relax dtypes (notes §3 #6)."""
    from tvm import te
    from tvm.topi.nn.winograd_util import winograd_transform_matrices

    def pack(kernel):
        c_out, c_in, kh, kw = (int(s) for s in kernel.shape)
        alpha = tile + kh - 1
        _, _, g = winograd_transform_matrices(tile, kh, str(kernel.dtype))
        rh, rw = te.reduce_axis((0, kh), "rh"), te.reduce_axis((0, kw), "rw")
        return te.compute((alpha, alpha, c_in, c_out),
                          lambda e, n, ci, co: te.sum(kernel[co, ci, rh, rw] * g[e, rh] * g[n, rw], axis=[rh, rw]),
                          name="kernel_pack")
    return pack


def kernel_of(task_name: str) -> tuple[str, str] | None:
    """(algorithm, key) of the keyed conv inside a fused kernel's name, or None."""
    match = _KERNEL.search(task_name)
    return (match.group(1), match.group(2)) if match else None


def choose(layers: list[Layer], algorithms: list[str], tolerance: float) -> None:
    """The fastest measured algorithm within tolerance; direct when nothing else was measured."""
    for layer in layers:
        usable = [a for a in algorithms if a in layer.latency_ms
                  and (a == "direct" or layer.error.get(a, float("inf")) <= tolerance)]
        layer.choice = min(usable, key=lambda a: layer.latency_ms[a]) if usable else "direct"


def layer_error(layer: Layer, algorithm: str, target) -> float:
    """Max-abs error over max-abs output of an untuned build of this conv vs float64, on a normal input."""
    import tvm
    from tvm import relax

    from accelopt.targets.tvm.frontend import import_onnx

    weight = layer.weight.astype(np.float32)
    n, _, h, w = layer.x_shape
    out_shape = [n, weight.shape[0], h + layer.pads[0] + layer.pads[2] - 2, w + layer.pads[1] + layer.pads[3] - 2]
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Conv", ["x", "w"], ["y"], pads=list(layer.pads))], "conv",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, list(layer.x_shape))],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, out_shape)],
        [numpy_helper.from_array(weight, "w")])
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)], ir_version=8)
    mod = relax.transform.LegalizeOps(customize_legalize_map={"relax.nn.conv2d": legalizer({layer.key: algorithm})})(
        import_onnx(model))
    vm = relax.VirtualMachine(tvm.compile(mod, target=tvm.target.Target(target)), tvm.cpu(0))
    x = np.random.default_rng(_ERROR_SEED).standard_normal(layer.x_shape).astype(np.float32)
    out = vm["main"](tvm.runtime.tensor(x))
    got = (out[0] if type(out).__name__ == "Array" else out).numpy()
    ref = _conv_f64(x, weight, layer.pads)
    return float(np.abs(got - ref).max() / max(np.abs(ref).max(), 1e-30))


def _conv_f64(x: np.ndarray, w: np.ndarray, pads: tuple[int, ...]) -> np.ndarray:
    padded = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    windows = np.lib.stride_tricks.sliding_window_view(padded, w.shape[2:], axis=(2, 3))  # n c h w kh kw
    return np.einsum("nchwij,ocij->nohw", windows, w.astype(np.float64))


def measure(layers: list[Layer], groups: list[list], database, target) -> None:
    """Each layer's tuned latency per algorithm (ms, summed over the fused kernels holding its shape, weighted
    by how often each runs); an algorithm with an unmeasured kernel is left out."""
    by_key = {layer.key: layer for layer in layers}
    totals: dict[tuple[str, str], float | None] = {}
    for task in (t for group in groups for t in group):
        kernel = kernel_of(task.task_name)
        if kernel is None or kernel[1] not in by_key:
            continue
        record = database.query_tuning_record(task.dispatched[0], target, task.task_name)
        secs = [float(s) for s in record.run_secs] if record is not None and record.run_secs else []
        ok = bool(secs) and max(secs) < 1e9  # failed builds and runs are recorded as 1e10 s
        previous = totals.get(kernel, 0.0)
        totals[kernel] = None if previous is None or not ok else previous + sum(secs) / len(secs) * task.weight
    for (algorithm, key), total in totals.items():
        if total is not None:
            by_key[key].latency_ms[algorithm] = total * 1000


def row(layer: Layer, algorithms: list[str]) -> dict:
    """The report's line for one conv shape."""
    return {"shape": layer.key, "nodes": layer.nodes, "choice": layer.choice,
            **{f"{a}_ms": layer.latency_ms.get(a) for a in algorithms},
            **{f"{a}_error": layer.error.get(a) for a in algorithms}}
