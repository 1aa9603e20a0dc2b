"""`quantize`: INT8 (static QDQ or dynamic) and INT4 weight-only quantization with onnxruntime.quantization,
guarded so that it never ships a broken or slower model silently.

Why each part is there (measurements: the project's quantization notes, sections 1-8):

- Profiles pick the types per target. ORT CPU: QDQ, uint8 activations / int8 weights, per-channel (3.6x over
  FP32 on a conv stack; QOperator S8S8 was 5x slower); `reduce_range` only on x86 without VNNI, where it
  avoids VPMADDUBSW saturation (on VNNI it costs 6 dB and buys nothing). TensorRT: symmetric int8, float bias
  (its parser rejects an int32 bias DequantizeLinear), explicit Q/DQ around weighted ops.
- `quant_pre_process` first: Conv+BN fusion and the shape inference the quantizer needs.
- Calibration runs once; its ranges are cached by content (pre-processed model, method, options, data) and
  every re-quantization (exclusions, the speed-aware variant, the accuracy search) reads them back.
- Range guard: a Concat/Add/Sum/Sub gives its inputs and output one scale; when their calibrated ranges differ
  by more than `range_ratio` the narrow input is crushed (a YOLOv8 head's scores, 0..1 next to box
  coordinates 0..320, all became 0 while the output's cosine stayed 0.999), so such a node stays float.
- Speed guard: int8 is measured against the float model side by side; when it is not faster, the report says
  why (float "islands" between DequantizeLinear and QuantizeLinear that ORT could not fuse), one speed-aware
  variant without the island op types is tried, and `on_slower` decides what ships. A CPU without VNNI /
  dot-product instructions (the target's `int8` capability) is reported but not skipped: the guard measures on
  that very CPU, and int8 can still win there (a 64-channel conv stack at 56x56: 1.8x on an AVX2-only EPYC).
- Accuracy search (`accuracy:`): quantizer groups fall back to float greedily, ranked by "quantize only this
  group", until the metric meets its target (optimizers/quantization/).
"""

from __future__ import annotations

from typing import Any

import onnx
from onnxruntime.quantization.calibrate import TensorsData

from accelopt.converters.onnx_io import copy_model
from accelopt.errors import ConversionError
from accelopt.optimizers.base import Pass, PassContext, register
from accelopt.optimizers.fuse import ORT_FUSED
from accelopt.optimizers.quantization.accuracy import make_scorer, quantizer_groups_for
from accelopt.optimizers.quantization.calibration import calibrate, calibration_options, range_mismatches, static_batch
from accelopt.optimizers.quantization.config import QuantizeConfig
from accelopt.optimizers.quantization.fallback import accuracy_fallback
from accelopt.optimizers.quantization.prepare import (calibration_set, name_nodes, per_channel_ready, pre_process,
                                                       refuse_quantized)
from accelopt.optimizers.quantization.quantizers import (Job, dynamic_quantizer, quantized_nodes,
                                                          resolve_exclusions, static_quantizer,
                                                          weight_only_quantizer)
from accelopt.optimizers.quantization.settings import DYNAMIC_OPS, REMOVABLE, STATIC_OPS, Settings, resolve_settings, target_of
from accelopt.optimizers.quantization.speed import medians, why_slower


@register
class Quantize(Pass):
    name = "quantize"
    summary = "INT8 static/dynamic or INT4 weight-only quantization, guarded for range mismatches, speed and accuracy."
    Config = QuantizeConfig
    precision = "int8"
    uses = frozenset({"calibration", "evaluation", "task", "threads"})

    def output_precision(self, config: QuantizeConfig) -> str:
        return "int4" if config.mode == "weight-only" else "int8"

    def apply(self, model: onnx.ModelProto, config: QuantizeConfig, ctx: PassContext) -> onnx.ModelProto:
        refuse_quantized(model)
        settings = resolve_settings(config, ctx)
        if config.mode == "static":
            model, settings = per_channel_ready(model, settings, ctx)
        self._decide_settings(config, settings, ctx)
        self._note_int8_kernels(config, settings, ctx)
        job = self._prepare(model, config, settings, ctx)
        out = self._search(model, job, config, ctx)
        if config.speed_guard and settings.profile == "ort-cpu":
            out = self._speed_guard(model, out, job, config, ctx)
        else:
            ctx.decide("speed", "not measured: " + ("speed_guard is off" if not config.speed_guard else
                                                    f"int8 speed of the {settings.profile} profile is measured on its "
                                                    "device, not on ONNX Runtime"))
        ctx.decide("excluded", job.excluded)
        if job.wide:
            ctx.decide("int16", job.wide)
        ctx.decide("quantized_nodes", dict(sorted(quantized_nodes(out, job.excluded).items())))
        return out

    # -- steps of apply ------------------------------------------------------------------------------------------

    def _decide_settings(self, config: QuantizeConfig, s: Settings, ctx: PassContext) -> None:
        ctx.decide("mode", config.mode)
        ctx.decide("profile", s.profile)
        if config.mode == "weight-only":
            ctx.decide("weights", {"bits": 4, "block_size": config.block_size, "symmetric": config.symmetric,
                                   "accuracy_level": config.accuracy_level})
            return
        ctx.decide("activation_type", "dynamic uint8" if config.mode == "dynamic" else s.activation_type.name)
        ctx.decide("weight_type", s.weight_type.name)
        ctx.decide("per_channel", s.per_channel)
        ctx.decide("reduce_range", {"value": s.reduce_range, "why": s.reduce_range_why})
        ctx.decide("op_types", s.op_types or (DYNAMIC_OPS if config.mode == "dynamic" else "library default"))

    def _note_int8_kernels(self, config: QuantizeConfig, s: Settings, ctx: PassContext) -> None:
        """Say so when the CPU lacks dot-product int8 instructions. It does not skip quantizing: the speed guard
        measures on this very CPU, and int8 can still win without them (a 64-channel conv stack at 56x56: 1.8x
        on an AVX2-only EPYC), so the measurement and on_slower decide, not the flag."""
        if s.profile != "ort-cpu" or target_of(ctx).capabilities().get("int8", True):
            return
        then = "the speed guard measures it" if config.speed_guard else "speed_guard is off: it ships unmeasured"
        ctx.log(f"quantize: this CPU has no VNNI / dot-product int8 instructions, so int8 may not beat float; {then}")

    def _prepare(self, model: onnx.ModelProto, config: QuantizeConfig, s: Settings, ctx: PassContext) -> Job:
        """The model the quantizer reads, its quantizer, and the recipe's and the range guard's exclusions."""
        if config.mode == "static":
            job = self._prepare_static(model, config, s, ctx)
        elif config.mode == "dynamic":
            pre_path = pre_process(model, ctx)
            base = onnx.load(str(pre_path))
            job = Job(base, dynamic_quantizer(pre_path, base, s, ctx), {}, None, frozenset(s.op_types or DYNAMIC_OPS))
        else:
            base = name_nodes(copy_model(model))
            job = Job(base, weight_only_quantizer(base, config), {}, None, frozenset(config.op_types or ["MatMul"]))
        job.excluded.update(resolve_exclusions(job.base, config))
        job.only = set(config.include_nodes) if config.include_nodes is not None else None
        job.wide.update({n: "int16_nodes" for n in config.int16_nodes if n not in job.excluded})
        return job

    def _prepare_static(self, model: onnx.ModelProto, config: QuantizeConfig, s: Settings, ctx: PassContext) -> Job:
        """Check the data, pre-process, calibrate once (or reuse cached ranges), apply the range guard."""
        data = calibration_set(config, ctx)
        fused = [n.name for n in model.graph.node if n.domain == "com.microsoft" and n.op_type in ORT_FUSED]
        if fused:
            ctx.log(f"quantize: {len(fused)} ONNX Runtime fused layer(s) (FusedConv/FusedGemm/FusedMatMul) stay float: "
                    "ORT's quantizer has no int8 form for them; quantize before ORT graph optimization "
                    "(fuse: {ort: off})")
        pre_path = pre_process(model, ctx)
        base = onnx.load(str(pre_path))
        ranges_path, ranges, cached = calibrate(pre_path, static_batch(base), config, data, ctx)
        ctx.decide("calibration", {"method": config.calibration, "samples": len(data), "cached": cached,
                                   **calibration_options(config)})
        guarded = self._range_guard(base, ranges, config, ctx) if config.range_guard else {}
        removable = frozenset() if s.extra.get("QDQKeepRemovableActivations") else REMOVABLE
        return Job(base, static_quantizer(pre_path, base, ranges_path, s, config, ctx), guarded, None,
                   frozenset(s.op_types or STATIC_OPS) - removable)

    def _range_guard(self, base: onnx.ModelProto, ranges: TensorsData, config: QuantizeConfig,
                     ctx: PassContext) -> dict[str, str]:
        found = range_mismatches(base, ranges, config.range_ratio)
        ctx.decide("range_guard", found)
        for f in found:
            ctx.log(f"quantize: range guard keeps {f['op']} {f['node']!r} in float: its inputs' ranges differ "
                    f"{f['ratio']}x ({f['input_ranges']}); one int8 scale would crush the narrow ones")
        return {f["node"]: f"range_guard: input ranges differ {f['ratio']}x" for f in found}

    def _search(self, model: onnx.ModelProto, job: Job, config: QuantizeConfig, ctx: PassContext) -> onnx.ModelProto:
        """Full quantization, or the accuracy search's best model (its fallbacks join job.excluded, or job.wide
        with `fallback: int16`)."""
        if config.accuracy is None:
            return job.quantize()
        job.scorer, job.target = make_scorer(model, config.accuracy, ctx)
        wide = config.accuracy.fallback == "int16"
        fall_back = (lambda nodes: job.quantize(wide=nodes)) if wide else job.quantize
        # Pinned nodes keep their recipe precision; float ones stay float even in an int16 search.
        pinned = frozenset(job.excluded) | (frozenset(job.wide) if wide else frozenset())
        result = accuracy_fallback(quantizer_groups_for(job, config.mode), fall_back,
                                   lambda nodes: job.quantize(only=nodes), job.scorer, job.target,
                                   budget_s=config.accuracy.budget_s, pinned=pinned)
        job.score = result.score
        fallbacks = [n for n in result.excluded if n not in pinned]
        (job.wide if wide else job.excluded).update({n: "accuracy search" for n in fallbacks})
        ctx.decide("accuracy_search", {
            "metric": config.accuracy.metric, "target": job.target, "score": result.score, "met": result.met,
            "fallback": config.accuracy.fallback, "fallbacks": fallbacks, "pin_with": "int16_nodes" if wide
            else "exclude_nodes", "ranking": result.ranking, "history": result.history,
            "seconds": round(result.seconds, 3)})
        if not result.met:
            ctx.log(f"WARNING: quantize accuracy search did not reach {config.accuracy.metric} >= {job.target:.4g} "
                    f"(best {result.score:.4g} with {len(fallbacks)} node(s) in {config.accuracy.fallback}); "
                    f"the best model is kept")
        return result.model

    def _speed_guard(self, model: onnx.ModelProto, out: onnx.ModelProto, job: Job, config: QuantizeConfig,
                     ctx: PassContext) -> onnx.ModelProto:
        """Ship the quantized model only when it is faster than float; else explain why, try the speed-aware
        variant once, keep the fastest candidate, and let on_slower decide if even that is not faster."""
        candidates = {"quantized": (out, dict(job.excluded))}
        timed = medians({"float": model, "quantized": out}, ctx, config.speed_runs)
        speed: dict[str, Any] = {"threads": ctx.threads, "batch": static_batch(model)}
        if timed["quantized"] > timed["float"]:
            label = self.output_precision(config)
            speed["why_slower"] = why_slower(out, label, ctx)
            ctx.log(f"quantize: {label} is slower than float ({timed['float'] / timed['quantized']:.2f}x): "
                    f"{speed['why_slower']['reason']}")
            variant = self._speed_aware(job, speed["why_slower"], config, ctx)
            if variant is not None:
                candidates["speed-aware"] = variant
                timed = medians({"float": model, "quantized": out, "speed-aware": variant[0]}, ctx, config.speed_runs)
        best = min(candidates, key=timed.__getitem__)
        out, job.excluded = candidates[best]
        job.wide = {n: why for n, why in job.wide.items() if n not in job.excluded}
        ratio = timed["float"] / timed[best]
        speed.update({f"{name}_ms": round(ms, 4) for name, ms in timed.items()}, fastest=best, speedup=round(ratio, 3))
        ctx.decide("speed", speed)
        return out if ratio >= 1.0 else self._on_slower(model, out, speed, config, ctx)

    def _speed_aware(self, job: Job, why: dict[str, Any], config: QuantizeConfig,
                     ctx: PassContext) -> tuple[onnx.ModelProto, dict[str, str]] | None:
        """The model re-quantized (from the cached ranges) with the island op types, and any 16-bit nodes, left
        in float. None when there is nothing to leave out (a Tanh between two quantized convs sits between
        their Q/DQ whatever its own setting), or when the variant would break the accuracy target."""
        if config.mode != "static":
            return None
        extra = {n.name: f"speed-aware: {n.op_type} ran as a float Q/DQ island" for n in job.base.graph.node
                 if n.op_type in why["islands"] and n.op_type in job.op_types and n.name not in job.excluded
                 and n.name not in job.wide}
        if why.get("int16_islands"):
            extra.update({n: "speed-aware: 16-bit ran as DequantizeLinear + float op" for n in job.wide})
        if not extra:
            if why["islands"]:
                ctx.log("quantize: no speed-aware variant: the island ops are not quantized themselves, their "
                        "neighbours' Q/DQ surround them")
            return None
        excluded = {**job.excluded, **extra}
        variant = job.quantize(excluded)
        if job.scorer is not None and job.scorer(variant) < min(job.target, job.score):
            ctx.log("quantize: the speed-aware variant misses the accuracy target; not used")
            return None
        return variant, excluded

    def _on_slower(self, model: onnx.ModelProto, out: onnx.ModelProto, speed: dict[str, Any],
                   config: QuantizeConfig, ctx: PassContext) -> onnx.ModelProto:
        """Not faster even after the speed-aware retry: stop, ship float, or ship it with a loud warning."""
        summary = (f"{self.output_precision(config)} is not faster than float ({speed['speedup']:.2f}x: "
                   f"{speed[speed['fastest'] + '_ms']:.3f} ms vs {speed['float_ms']:.3f} ms at {ctx.threads} "
                   f"thread(s)); {speed['why_slower']['reason']}")
        if config.on_slower == "fail":
            raise ConversionError(f"quantize: {summary}; set on_slower: keep-float or warn")
        if config.on_slower == "warn":
            ctx.log(f"WARNING: quantize: shipping the SLOWER {self.output_precision(config)} model (on_slower: warn): "
                    f"{summary}")
            return out
        ctx.decide("kept_float", summary)
        ctx.log(f"quantize: kept the float model: {summary}")
        return copy_model(model)
