"""What stops the TVM target, all at once: ops the Relax frontend lacks, unpinned dims, a missing toolchain."""

from __future__ import annotations

import onnx

from accelopt.errors import ConversionError
from accelopt.targets.base import Finding
from accelopt.targets.tvm.env import cxx_compiler, ffi_problem
from accelopt.targets.tvm.frontend import converters, graph_inputs

# What a user can do first, for the gaps that matter in practice (notes §9).
_ADVICE = {
    **dict.fromkeys(("QLinearConv", "QLinearMatMul", "ConvInteger", "QLinearAdd", "QLinearMul"),
                    "quantize to QDQ instead (quantize step, the default QDQ format), which TVM imports"),
    **dict.fromkeys(("If", "Loop", "Scan"),
                    "control flow is not supported; the simplify step folds it when the condition is constant"),
    **dict.fromkeys(("LSTM", "GRU", "RNN"), "recurrent layers are not supported; export them unrolled"),
    **dict.fromkeys(("Swish", "Celu"), "re-export with the elementwise form (x * Sigmoid(x), Elu)"),
}


def unsupported_ops(model: onnx.ModelProto, known: set[str]) -> list[Finding]:
    """One error per node whose op type has no Relax converter, named by node."""
    return [Finding("error", f"{n.op_type} has no TVM Relax converter: {_ADVICE.get(n.op_type, 'replace the node')}",
                    node=n.name or n.op_type)
            for n in model.graph.node if n.op_type not in known]


def unpinned_dims(model: onnx.ModelProto) -> list[Finding]:
    """One error per input with a dynamic dim: TVM tunes static shapes only (notes §8)."""
    findings = []
    for value in graph_inputs(model):
        dims = value.type.tensor_type.shape.dim
        if all(d.HasField("dim_value") and d.dim_value > 0 for d in dims):
            continue
        shown = [d.dim_value if d.dim_value > 0 else (d.dim_param or "?") for d in dims]
        example = [d.dim_value if d.dim_value > 0 else 1 for d in dims]
        findings.append(Finding(
            "error", f"input {value.name!r} has dynamic shape {shown}: TVM compiles static shapes; pin it in the "
                     f"recipe (input.shapes: {{{value.name}: {example}}} with a fix-shapes step, as tvm-cpu has)",
            node=value.name))
    return findings


def toolchain(tuning: bool) -> list[Finding]:
    """A compiler for export_library, and an ffi that can tune when tuning is asked for."""
    findings = []
    if cxx_compiler() is None:
        findings.append(Finding("error", "export_library needs a C++ compiler to write model.so: "
                                         "install g++ or clang++, or set CXX"))
    if tuning and (problem := ffi_problem()):
        findings.append(Finding("error", problem))
    return findings


def remote(tracker: tuple[str, str] | None) -> list[Finding]:
    """The tracker answers and has a server under the key (a request for an unknown key waits forever)."""
    if tracker is None:
        return []
    from accelopt.targets.tvm.remote import check_tracker

    try:
        check_tracker(*tracker)
    except ConversionError as e:
        return [Finding("error", str(e))]
    return []


def gpu(detect_arch: bool) -> list[Finding]:
    """A cuda target without an arch needs a GPU to read it from."""
    if not detect_arch:
        return []
    from accelopt.targets.tvm.env import cuda_arch

    try:
        cuda_arch()
    except ConversionError as e:
        return [Finding("error", str(e))]
    return []


def check(model: onnx.ModelProto, tuning: bool, tracker: tuple[str, str] | None = None,
          detect_arch: bool = False) -> list[Finding]:
    return [*unsupported_ops(model, converters()), *unpinned_dims(model), *toolchain(tuning), *remote(tracker),
            *gpu(detect_arch)]
