"""INT8 kernels for QDQ models: the Relax ONNX frontend turns DequantizeLinear -> Conv/MatMul/Gemm into
R.dequantize -> float conv2d/matmul, so the convolution runs in float32 and MetaSchedule's x86 "vnni" rules
(u8 x s8 -> s32 dot products, `dot_16x4_vnni`) never see an int8 reduction. `integer_ops` computes those
ops on the quantized tensors instead, and `vnni_applies` says whether the tuner's design spaces use VNNI.

Layout: the VNNI intrinsic reads 4 consecutive input channels of the data and a compact 16 (output) x 4 (input)
block of weights, so a plain NCHW/OIHW or NHWC/OHWI int8 conv2d never matches it (in NCHW the innermost
reduction is the kernel width; in OHWI the 16 output-channel rows are not contiguous). So the data goes through
a pad (with the zero point) + NHWC transpose kernel, the weights are packed as [O/16, KH, KW, I/4, 16o, 4i]
(matmul: [N/16, K/4, 16n, 4k], channels zero-padded to the grid), and the int32 result is scaled back to float32
NCHW inside the kernel: it replaces the float op one for one, so the rest of the graph stays as imported.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from accelopt.targets.tvm.env import import_tvm

_O, _I = 16, 4  # output rows x reduction lanes of one VNNI dot_16x4 step
_VNNI_INTRINSICS = ("dot_16x4_vnni",)  # names the design-space trace annotates (tvm/s_tir/tensor_intrin/x86.py)
_VNNI_CALL = "llvm.x86.avx512.vpdpbusd.512"  # in the TIR once the postprocessors tensorized it
_TILED = "meta_schedule.tiling_structure"  # a block MultiLevelTiling took: a reduction VNNI could serve
_VNNI_PROBE = {"kind": "llvm", "mcpu": "znver4"}  # any AVX-512 VNNI CPU: compiling for it runs nothing


@dataclass
class IntegerOps:
    """What `integer_ops` did: QDQ convs/matmuls lowered to int8, and those left in float with the reason."""

    lowered: dict[str, int] = field(default_factory=dict)  # op -> count
    kept_float: dict[str, int] = field(default_factory=dict)  # reason -> count

    @property
    def total(self) -> int:
        return sum(self.lowered.values()) + sum(self.kept_float.values())

    def summary(self) -> str:
        done = sum(self.lowered.values())
        why = "; ".join(f"{n} {reason}" for reason, n in self.kept_float.items())
        return f"{done} of {self.total} QDQ conv/matmul ops lowered to int8" + (f" (float: {why})" if why else "")


class _Skip(Exception):
    """An op with dequantized inputs that cannot be lowered exactly; the message is the reason."""


def integer_ops(mod: Any) -> tuple[Any, IntegerOps]:
    """Lower dequantize(x u8/s8) * dequantize(w s8 constant, zero point 0) conv2d/matmul to int8 kernels.

    Value: (sum(x_q * w_q) - x_zp * sum(w_q)) * x_scale * w_scale[o] in float32, which equals the float op on
    the dequantized tensors up to float rounding. Other ops, and QDQ ops that are not of this form (per-channel
    activations, asymmetric or uint8 or non-constant weights, grouped convs), are left as they are and counted.
    """
    tvm = import_tvm()
    from tvm import relax

    @relax.expr_functor.mutator
    class Lower(relax.PyExprMutator):
        def __init__(self, module):
            super().__init__(module)
            self.module = module
            self.stats = IntegerOps()

        def visit_call_(self, call):
            call = super().visit_call_(call)
            name = getattr(call.op, "name", "")
            if name not in ("relax.nn.conv2d", "relax.matmul"):
                return call
            data = self._dequantized(call.args[0])
            if data is None:
                return call
            kind = name.rsplit(".", 1)[1]
            try:
                new = self._conv2d(call, data) if kind == "conv2d" else self._matmul(call, data)
            except _Skip as e:
                self.stats.kept_float[str(e)] = self.stats.kept_float.get(str(e), 0) + 1
                return call
            self.stats.lowered[kind] = self.stats.lowered.get(kind, 0) + 1
            return new

        def _dequantized(self, expr):
            """The dequantize call bound to `expr`, if any."""
            if isinstance(expr, relax.Var):
                expr = self.lookup_binding(expr)
            if isinstance(expr, relax.Call) and getattr(expr.op, "name", "") == "relax.dequantize":
                return expr
            return None

        def _weight(self, expr, out_axis: int):
            """(w_q as int32, scale per output channel) for dequantize(constant s8, zero point 0)."""
            deq = self._dequantized(expr)
            if deq is None or not all(isinstance(a, tvm.ir.expr.Constant) for a in deq.args):
                raise _Skip("weight is not a dequantized constant")
            w, scale, zp = (a.value.numpy() for a in deq.args)
            if w.dtype != np.int8:
                raise _Skip(f"weight is {w.dtype}, not int8")
            if np.any(zp):
                raise _Skip("weight zero point is not 0")
            if scale.size > 1 and int(deq.attrs.axis) % w.ndim != out_axis:
                raise _Skip("weight scale is not per output channel")
            return w.astype(np.int32), np.broadcast_to(scale.astype(np.float64).ravel(), (w.shape[out_axis],))

        def _activation(self, deq):
            """(x_q, scale, zero point) of a per-tensor quantized 8-bit activation."""
            x, scale, zp = deq.args
            if str(x.ty.dtype) not in ("uint8", "int8"):
                raise _Skip(f"activation is {x.ty.dtype}")
            if not (isinstance(scale, tvm.ir.expr.Constant) and isinstance(zp, tvm.ir.expr.Constant)) or \
                    scale.value.numpy().size != 1 or zp.value.numpy().size != 1:
                raise _Skip("activation is not quantized per tensor with constant parameters")
            return x, float(scale.value.numpy().ravel()[0]), int(zp.value.numpy().ravel()[0])

        def _conv2d(self, call, deq):
            a = call.attrs
            if (a.data_layout, a.kernel_layout, a.out_layout) != ("NCHW", "OIHW", "NCHW") or int(a.groups) != 1:
                raise _Skip("conv is grouped or not NCHW/OIHW")
            x, x_scale, x_zp = self._activation(deq)
            w, w_scale = self._weight(call.args[1], out_axis=0)
            o, c = w.shape[:2]
            packed = np.zeros((_round(o, _O), _round(c, _I), *w.shape[2:]), np.int8)
            packed[:o, :c] = w
            kh, kw = w.shape[2:]
            packed = packed.reshape(-1, _O, packed.shape[1] // _I, _I, kh, kw).transpose(0, 4, 5, 2, 1, 3)
            top, left, bottom, right = (int(p) for p in a.padding)
            # Padded with the zero point, so the correction x_zp * sum(w) holds at the borders too. A separate
            # kernel: inside the conv's PrimFunc the tuner may inline it, bringing back NCHW reads VNNI cannot use.
            x = self._pad(x, [0, 0, 0, packed.shape[3] * _I - c, top, bottom, left, right], x_zp)
            x = self.builder_.emit(relax.op.permute_dims(x, [0, 2, 3, 1]))
            return self.builder_.call_te(
                _conv2d_nhwc_int8, x, *_constants(packed, w, x_zp, x_scale, w_scale),
                strides=[int(s) for s in a.strides], dilation=[int(d) for d in a.dilation], out_channels=o,
                primfunc_name_hint="conv2d_int8")

        def _pad(self, x, widths, value):
            if not any(widths):
                return x
            return self.builder_.emit(relax.op.nn.pad(x, widths, pad_value=float(value)))

        def _matmul(self, call, deq):
            x, x_scale, x_zp = self._activation(deq)
            weight, transposed = call.args[1], False
            bound = self.lookup_binding(weight) if isinstance(weight, relax.Var) else weight
            if isinstance(bound, relax.Call) and getattr(bound.op, "name", "") == "relax.permute_dims" and \
                    [int(a) for a in bound.attrs.axes] == [1, 0]:  # Gemm: x @ permute_dims(dequantize(w[N, K]))
                weight, transposed = bound.args[0], True
            w, w_scale = self._weight(weight, out_axis=0 if transposed else 1)
            if w.ndim != 2 or len(x.ty.shape) < 2:
                raise _Skip("matmul is not activation[..., K] x weight[K, N]")
            w = w if transposed else w.T  # [N, K]
            n, k = w.shape
            packed = np.zeros((_round(n, _O), _round(k, _I)), np.int8)
            packed[:n, :k] = w
            packed = packed.reshape(-1, _O, packed.shape[1] // _I, _I).transpose(0, 2, 1, 3)
            x = self._pad(x, [0, 0] * (len(x.ty.shape) - 1) + [0, packed.shape[1] * _I - k], x_zp)
            return self.builder_.call_te(_matmul_int8, x, *_constants(packed, w, x_zp, x_scale, w_scale),
                                         out_features=n, primfunc_name_hint="matmul_int8")

        def run(self):
            for gvar, func in self.module.functions_items():
                if isinstance(func, relax.Function):
                    self.builder_.update_func(gvar, self.visit_expr(func))
            return self.builder_.get()

    mutator = Lower(mod)
    out = relax.transform.DeadCodeElimination()(mutator.run())  # the weights' dequantize is now unused
    return out, mutator.stats


def _round(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def _constants(packed: np.ndarray, w: np.ndarray, x_zp: int, x_scale: float, w_scale: np.ndarray) -> list[Any]:
    """Packed weights, the zero-point correction x_zp * sum(w) and the output scale, per output channel (w's
    first axis)."""
    from tvm import relax

    correction = (x_zp * w.reshape(len(w), -1).sum(axis=1)).astype(np.int32)
    return [relax.const(packed), relax.const(correction), relax.const((x_scale * w_scale).astype(np.float32))]


def _conv2d_nhwc_int8(x, packed, correction, scale, *, strides, dilation, out_channels):
    """Padded NHWC u8/s8 data x packed weights -> int32 -> float32 NCHW."""
    from tvm import te

    n, hp, wp, cp = x.shape  # symbolic batch or spatial sizes stay expressions
    _, kh, kw, _, _, _ = (int(d) for d in packed.shape)
    oh = (hp - dilation[0] * (kh - 1) - 1) // strides[0] + 1
    ow = (wp - dilation[1] * (kw - 1) - 1) // strides[1] + 1
    ry, rx, rc = te.reduce_axis((0, kh), "ry"), te.reduce_axis((0, kw), "rx"), te.reduce_axis((0, cp), "rc")
    acc = te.compute(
        (n, oh, ow, int(packed.shape[0]) * _O),
        lambda b, y, xx, o: te.sum(
            x[b, y * strides[0] + ry * dilation[0], xx * strides[1] + rx * dilation[1], rc].astype("int32")
            * packed[o // _O, ry, rx, rc // _I, o % _O, rc % _I].astype("int32"), axis=[ry, rx, rc]),
        name="conv2d_nhwc_int8")
    return te.compute((n, out_channels, oh, ow),
                      lambda b, o, y, xx: (acc[b, y, xx, o] - correction[o]).astype("float32") * scale[o],
                      name="dequantize_nchw")


def _matmul_int8(x, packed, correction, scale, *, out_features):
    """x[..., K] u8/s8 x packed weights -> int32 -> float32 [..., N]."""
    from tvm import te

    k = te.reduce_axis((0, int(x.shape[-1])), "k")
    acc = te.compute(
        (*x.shape[:-1], int(packed.shape[0]) * _O),
        lambda *i: te.sum(x[(*i[:-1], k)].astype("int32")
                          * packed[i[-1] // _O, k // _I, i[-1] % _O, k % _I].astype("int32"), axis=k),
        name="matmul_int8")
    return te.compute((*x.shape[:-1], out_features),
                      lambda *i: (acc[i] - correction[i[-1]]).astype("float32") * scale[i[-1]], name="dequantize")


def has_vnni(target: Any) -> bool:
    """Whether LLVM gives the target an int8 dot-product instruction, which selects MetaSchedule's "vnni" rules."""
    from tvm.target.codegen import target_has_features

    return any(bool(target_has_features(f, target)) for f in ("avx512vnni", "avxvnni"))


def has_avx512_vnni(target: Any) -> bool:
    """The targets the 512-bit VNNI intrinsic compiles for (AVX-VNNI alone selects the same rules, then crashes)."""
    from tvm.target.codegen import target_has_features

    return bool(target_has_features("avx512vnni", target))


@functools.cache
def fix_vnni_intrinsic() -> bool:
    """Make `dot_16x4_vnni` compile with the LLVM bundled with TVM; True when it had to be replaced.

    LLVM 22 declares llvm.x86.avx512.vpdpbusd.512 on <64 x i8> operands (llvm/llvm-project#155194), but TVM 0.27
    still passes <16 x i32>, so LLVM's verifier rejects every VNNI-tensorized kernel: on a VNNI CPU each such
    tuning candidate fails to build. The replacement passes the same bytes as byte vectors. The tensorize
    postprocessor copies the body at search time, so call this in the process that tunes or applies a database.
    """
    tvm = import_tvm()
    import tvm.s_tir.tensor_intrin  # noqa: F401  (registers the x86 intrinsics)
    from tvm.s_tir import TensorIntrin
    from tvm.script import tirx as T

    stock = TensorIntrin.get(_VNNI_INTRINSICS[0])
    try:
        tvm.compile(tvm.IRModule({"main": stock.impl.with_attr("global_symbol", "main")}), target=_VNNI_PROBE)
        return False
    except tvm.error.InternalError:
        pass

    a_type, b_type, c_type = (T.Buffer(shape, dtype, offset_factor=1) for shape, dtype in
                              (((4,), "uint8"), ((16, 4), "int8"), ((16,), "int32")))  # pyflakes reads str annotations

    @T.prim_func(s_tir=True)
    def vnni_bytes(A: a_type, B: b_type, C: c_type) -> None:
        with T.sblock("root"):
            T.reads(C[0:16], A[0:4], B[0:16, 0:4])
            T.writes(C[0:16])
            C[T.ramp(T.int32(0), 1, 16)] = T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id("llvm.x86.avx512.vpdpbusd.512"), C.vload([0], dtype="int32x16"),
                T.reinterpret(T.broadcast(T.reinterpret(A.vload([0], "uint8x4"), dtype="int32"), 16),
                              dtype="uint8x64"),
                B.vload([0, 0], dtype="int8x64"), dtype="int32x16")

    TensorIntrin.register(_VNNI_INTRINSICS[0], stock.desc, vnni_bytes, override=True)
    return True


def vnni_applies(mod: Any, target: Any) -> dict[str, Any]:
    """For each tuning task of a fused module (after relax.get_pipeline("zero")): whether it reads int8 data,
    whether MetaSchedule's default design spaces for `target` tensorize it with VNNI, and how many vpdpbusd
    instructions LLVM emits for the first tensorized space (AVX-512 VNNI targets only).

    Compile-only: it generates the design spaces the tuner starts from, runs the postprocessors on them
    (RewriteTensorize swaps in the intrinsic there) and compiles, so it answers for a znver4 target on an AVX2 host.
    """
    tvm = import_tvm()
    from tvm.s_tir import meta_schedule as ms

    target = tvm.target.Target(target) if not isinstance(target, tvm.target.Target) else target
    replaced = fix_vnni_intrinsic()
    avx512 = has_avx512_vnni(target)  # AVX-VNNI alone also selects the "vnni" rules
    int8_kernels = _int8_kernels(mod)
    tasks = []
    for task in ms.relax_integration.extract_tasks(mod, target):
        entry = {"name": task.task_name, "int8": task.task_name in int8_kernels, "tiled": False, "vnni": False,
                 "vpdpbusd": 0}
        if entry["int8"]:
            context = ms.TuneContext(mod=task.dispatched[0], target=target, space_generator="post-order-apply",
                                     task_name=task.task_name, num_threads=1, rand_state=1)
            for space in context.generate_design_space():
                trace = str(space.trace)
                entry["tiled"] = entry["tiled"] or _TILED in trace
                if not any(name in trace for name in _VNNI_INTRINSICS):
                    continue
                sch = space.copy()  # RewriteTensorize logs and skips a block it cannot tensorize: look at the TIR
                if all(p.apply(sch) for p in context.space_generator.postprocs) and _VNNI_CALL in sch.mod.script():
                    entry["vnni"] = True
                    if avx512:  # else LLVM aborts the process ("Do not know how to split"): the intrinsic is 512-bit
                        entry["vpdpbusd"] = tvm.compile(sch.mod, target=target).mod.inspect_source("asm").count(
                            "vpdpbusd")
                    break
        tasks.append(entry)
    return {"target_has_vnni": has_vnni(target), "intrinsic_replaced": replaced, "tasks": tasks,
            "int8_tiled_tasks": sum(t["int8"] and t["tiled"] for t in tasks),
            "vnni_tasks": sum(t["vnni"] for t in tasks)}


def _int8_kernels(mod: Any) -> set[str]:
    """Names of the PrimFuncs that some Relax function calls with an 8-bit integer argument."""
    from tvm import relax

    names: set[str] = set()

    def visit(expr):
        if isinstance(expr, relax.Call) and getattr(expr.op, "name", "") == "relax.call_tir":
            args = expr.args[1].fields if isinstance(expr.args[1], relax.Tuple) else [expr.args[1]]
            if any(str(getattr(a.ty, "dtype", "")) in ("int8", "uint8") for a in args):
                names.add(expr.args[0].name_hint)

    for _, func in mod.functions_items():
        if isinstance(func, relax.Function):
            relax.analysis.post_order_visit(func, visit)
    return names
