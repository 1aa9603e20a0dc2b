"""The Core ML target: ONNX -> MIL (the translator, converters/mil) -> `ct.convert` to an ML Program (fp16 or
fp32 compute) -> optional weight compression -> model.mlpackage.

Core ML runs only on Apple platforms: on macOS the artifact is checked with `MLModel.predict`; elsewhere with
accelopt's numpy MIL evaluator, which checks numerics but not speed (the report says which ran). Importable
without coremltools (the registry lists it, `check` reads the handler registry); lowering and running need
the [coreml] extra and say so in one line when it is missing.
"""

from __future__ import annotations

import importlib.util
from collections import Counter
from pathlib import Path
from typing import Any, Literal

import onnx
from pydantic import Field

from accelopt import __version__
from accelopt.converters.mil import DEPLOYMENT_TARGETS, MACOS, canonical_target, target_at_least
from accelopt.converters.mil import ops as _handlers  # noqa: F401  (registers what `check` reads)
from accelopt.converters.mil.registry import REGISTRY
from accelopt.converters.mil.translator import MAX_RANK
from accelopt.converters.registry import Unsupported
from accelopt.errors import ConversionError, MissingExtraError
from accelopt.targets import register_target
from accelopt.targets.base import Artifact, Finding, Target, TargetConfig, step_hint
from accelopt.targets.coreml.compress import CompressionConfig, check_compression

PACKAGE = "model.mlpackage"
DeploymentTarget = Literal["iOS15", "iOS16", "iOS17", "iOS18", "iOS26", "macOS12", "macOS13", "macOS14", "macOS15",
                           "macOS26"]


class CoremlConfig(TargetConfig):
    precision: Literal["fp16", "fp32"] = Field(
        "fp16", description="compute precision: fp16 (what the Neural Engine runs; ops in fp32_ops stay fp32) or "
                            "fp32 (CPU/GPU only, for parity checks)")
    deployment_target: DeploymentTarget = Field(
        "iOS17", description="oldest OS the model must run on (iOS or the macOS with the same Core ML): decides "
                             "which ops exist. iOS15 = first ML Program; iOS16 = compressed weights, fp16 I/O; "
                             "iOS17 = quantize/dequantize (W8A8), resize; iOS18 = int4 per-block, grouped LUTs")
    fp32_ops: list[str] = Field(
        default_factory=list,
        description="fp16 precision: MIL op types (e.g. softmax, reduce_sum) or ONNX output names kept in fp32, for "
                    "ops whose values overflow or lose too much in fp16")
    compression: CompressionConfig = Field(
        default_factory=CompressionConfig,
        description="weight compression after conversion (coremltools.optimize.coreml): linear int8/int4, "
                    "palettization or pruning")
    compute_units: Literal["ALL", "CPU_ONLY", "CPU_AND_GPU", "CPU_AND_NE"] = Field(
        "ALL", description="macOS: the compute units Core ML may use when accelopt runs the model (recorded in the "
                           "report; the MIL evaluator used on Linux ignores it)")


@register_target
class CoremlTarget(Target):
    name = "coreml"
    summary = "Core ML (Apple CPU/GPU/Neural Engine): ONNX -> MIL -> .mlpackage, fp16/fp32, weight compression (needs [coreml])"
    Config = CoremlConfig
    config: CoremlConfig

    def __init__(self, config: CoremlConfig | None = None):
        if importlib.util.find_spec("coremltools") is None:
            raise MissingExtraError("coreml", "target coreml")
        super().__init__(config)

    @property
    def deployment_target(self) -> str:
        return canonical_target(self.config.deployment_target)

    def check(self, model: onnx.ModelProto) -> list[Finding]:
        findings = check_model(model, self.deployment_target)
        findings += [Finding("error", problem) for problem in check_compression(self.config.compression,
                                                                               self.deployment_target)]
        return findings

    def output_precision(self) -> str:
        return "int8" if self.config.compression.mode != "none" else self.config.precision

    def capabilities(self) -> dict[str, Any]:
        return {"deployment_target": self.config.deployment_target, "layout": "NCHW"}

    def lower(self, model: onnx.ModelProto, out_dir: Path) -> Artifact:
        from accelopt.converters.mil import load_ct
        from accelopt.converters.mil.translator import translate
        from accelopt.isolation import quiet_native_stderr
        from accelopt.targets.coreml.compress import compress
        from accelopt.targets.coreml.convert import to_mlmodel
        from accelopt.targets.coreml.runner import IO_KEY, PRECISION_KEY, io_metadata

        ct = load_ct()
        softened = 0
        if self.config.precision == "fp16":
            from accelopt.converters.masks import FP16_FLOOR, soften_masks

            model, softened = soften_masks(model, FP16_FLOOR)
        self._stage(0, "translating ONNX to MIL")
        try:
            translated = translate(model, self.deployment_target)
        except Unsupported as e:
            raise ConversionError(f"coreml: {e}") from e
        self._stage(1, f"ct.convert to an ML Program, {self.config.precision}")
        mlmodel = to_mlmodel(translated, self.config.precision, self.config.fp32_ops)
        compression: dict[str, Any] = {}
        if self.config.compression.mode != "none":
            self._stage(2, f"compressing weights ({self.config.compression.mode})")
            mlmodel, compression = compress(mlmodel, self.config.compression, self.deployment_target)
        mlmodel.user_defined_metadata[IO_KEY] = io_metadata([s.to_dict() for s in translated.inputs],
                                                            [s.to_dict() for s in translated.outputs])
        mlmodel.user_defined_metadata[PRECISION_KEY] = self.output_precision()
        mlmodel.user_defined_metadata["accelopt.version"] = __version__
        mlmodel.short_description = f"{model.graph.name or 'model'} converted from ONNX by accelopt {__version__}"
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / PACKAGE
        with quiet_native_stderr():
            mlmodel.save(str(path))
        facts = program_facts(mlmodel._mil_program)
        meta: dict[str, Any] = {
            "converter": f"coremltools {ct.__version__} (ONNX -> MIL by accelopt)",
            "deployment_target": self.config.deployment_target, "precision": self.config.precision,
            "onnx_ops_lowered": sum(translated.ops.values()), "onnx_ops_folded": sum(translated.folded.values()),
            "ops": [{"op": op, "count": n} for op, n in facts["ops"].most_common()],
            "fp32_ops_in_fp16": facts["fp32_compute"] if self.config.precision == "fp16" else [],
            "compressed_weights": facts["constexpr"],
            "compression": compression,
            "compute_units": self.config.compute_units,
            "masks_softened": softened,
            # What an app feeds and reads: Core ML feature names and array types next to the ONNX ones.
            "features": [{"io": io, "onnx": s.name, "core_ml": s.key, "shape": s.shape, "onnx_type": str(s.dtype),
                          "core_ml_type": s.mil} for io, specs in (("input", translated.inputs),
                                                                   ("output", translated.outputs)) for s in specs],
        }
        meta["log"] = _log_lines(meta)
        self._stage(3, "saved")
        return Artifact(path=path, files=[path], kind="mlpackage", meta=meta)

    def _stage(self, done: int, what: str) -> None:
        self.emit("target_progress", done=done, total=3, description=f"coreml: {what}")

    def runner(self, artifact: Artifact, threads: int | None = None):
        from accelopt.targets.coreml.runner import open_coreml_runner

        return open_coreml_runner(artifact.path, threads, self.config.compute_units)


def check_model(model: onnx.ModelProto, target: str) -> list[Finding]:
    """Everything that stops the lowering for this deployment target, all at once and before any conversion:
    ops without a translation (with the step that removes them), ops and attributes newer than the target,
    dynamic or non-numeric inputs, and tensors above Core ML's rank limit; each names its node."""
    findings: list[Finding] = []
    weights = {t.name for t in model.graph.initializer}
    for value in model.graph.input:
        if value.name in weights:
            continue
        tensor = value.type.tensor_type
        dims = tensor.shape.dim
        if any(not d.HasField("dim_value") or d.dim_value <= 0 for d in dims):
            findings.append(Finding("error", f"input {value.name!r} has dynamic dims; the Core ML lowering needs "
                                             "static shapes: pin them with input.shapes (the fix-shapes step reads "
                                             "them)", value.name))
        if tensor.elem_type in (onnx.TensorProto.STRING, onnx.TensorProto.COMPLEX64, onnx.TensorProto.COMPLEX128):
            findings.append(Finding("error", f"input {value.name!r} is a "
                                             f"{onnx.TensorProto.DataType.Name(tensor.elem_type).lower()} tensor; "
                                             "Core ML takes numeric arrays", value.name))
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)
    for node in model.graph.node:
        where = node.name or node.output[0]
        if REGISTRY.find(node.domain, node.op_type) is None:
            findings.append(Finding("error", f"{node.domain or 'ai.onnx'}::{node.op_type} has no Core ML lowering"
                                             + step_hint(node), where))
            continue
        facts = REGISTRY.facts(node.domain, node.op_type)
        since = facts.get("since", DEPLOYMENT_TARGETS[0])
        if not target_at_least(target, since):
            findings.append(Finding("error", f"{node.op_type} needs deployment target {since} or newer "
                                             f"(have {target})", where))
        for reason, message in (facts.get("check") or (lambda *_: []))(node, opset):
            findings.append(Finding("error", f"{node.op_type}: {message} [{reason}]", where))
    findings += _rank_findings(model)
    return findings


def _rank_findings(model: onnx.ModelProto) -> list[Finding]:
    """Tensors whose inferred rank exceeds Core ML's limit, named with the node that makes them."""
    try:
        graph = onnx.shape_inference.infer_shapes(model).graph
    except Exception:  # an uninferable model: the translator checks each result's rank itself
        return []
    producer = {out: node.name or node.output[0] for node in graph.node for out in node.output}
    weights = {t.name for t in graph.initializer}
    return [Finding("error", f"tensor {v.name!r} has rank {len(v.type.tensor_type.shape.dim)}; Core ML tensors have "
                             f"rank <= {MAX_RANK}", producer.get(v.name, v.name))
            for v in [*graph.value_info, *graph.output]
            if v.name not in weights and v.type.tensor_type.HasField("shape")
            and len(v.type.tensor_type.shape.dim) > MAX_RANK]


def program_facts(program: Any) -> dict[str, Any]:
    """What the converted program computes with: MIL op counts, ops left computing in fp32 in an fp16 model,
    and compressed-weight ops by kind."""
    from coremltools.converters.mil.mil import types

    ops: Counter = Counter()
    fp32: Counter = Counter()
    constexpr: Counter = Counter()
    for op in program.functions["main"].operations:
        if op.op_type == "const":
            continue
        if op.op_type.startswith("constexpr_"):
            constexpr[op.op_type] += 1
            continue
        ops[op.op_type] += 1
        out = op.outputs[0]
        if op.op_type != "cast" and out.dtype == types.fp32:
            fp32[op.op_type] += 1
    return {"ops": ops, "fp32_compute": [f"{op} x{n}" for op, n in fp32.most_common()],
            "constexpr": dict(constexpr)}


def _log_lines(meta: dict[str, Any]) -> list[str]:
    """The lowering in a few greppable lines for the terminal and report.md."""
    lines = [f"{meta['converter']}: deployment target {meta['deployment_target']}, {meta['precision']} compute, "
             f"{meta['onnx_ops_lowered']} ONNX ops lowered, {meta['onnx_ops_folded']} folded to constants, "
             f"{sum(o['count'] for o in meta['ops'])} MIL ops"]
    if meta["masks_softened"]:
        lines.append(f"fp16: {meta['masks_softened']} attention-mask constant(s) of float32's minimum raised to -1e4 "
                     "(coremltools makes them -inf in fp16, and 0 * -inf is NaN at every unmasked position)")
    if meta["fp32_ops_in_fp16"]:
        lines.append(f"fp16 model: ops computing in fp32: {', '.join(meta['fp32_ops_in_fp16'])}")
    if meta["compressed_weights"]:
        lines.append("compressed weights: " + ", ".join(f"{k} x{n}" for k, n in meta["compressed_weights"].items()))
    c = meta["compression"]
    if c.get("mode", "none") != "none":
        unused = {"block_size": "per_block", "group_size": "per_grouped_channel"}
        options = ", ".join(f"{k} {v}" for k, v in c.items() if k not in _COUNTS and k != "mode"
                            and unused.get(k, c.get("granularity")) == c.get("granularity"))
        lines.append(f"compression {c['mode']} ({options}): {c['weights_compressed']} weight(s) "
                     f"{_kb(c['bytes_before'])} -> {_kb(c['bytes_after'])}; {c['weights_skipped']} left uncompressed "
                     f"({_kb(c['bytes_skipped'])}: under weight_threshold or not fitting the granularity)")
    return lines


_COUNTS = {"weights_compressed", "weights_skipped", "bytes_before", "bytes_after", "bytes_skipped"}


def _kb(n: int) -> str:
    return f"{n / 1024:.1f} kB"


__all__ = ["CoremlTarget", "DEPLOYMENT_TARGETS", "MACOS", "check_model"]
