"""ONNX Runtime on CPU: the default target, and the reference runner every other target is compared to."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.capi.onnxruntime_pybind11_state import InvalidArgument

from accelopt.converters.onnx_io import is_large, model_files, save_model
from accelopt.errors import BadInputError, ConversionError, first_line
from accelopt.targets import register_target
from accelopt.targets.base import Artifact, Finding, KernelProfile, LatencyStats, Target, TargetConfig, TensorSpec

OPT_LEVELS = {"disabled", "basic", "extended", "all"}
_ORT_LEVELS = {
    "disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}
# Operator domains the CPU build of ORT implements; anything else is a custom op it cannot run.
KNOWN_DOMAINS = {"", "ai.onnx", "ai.onnx.ml", "com.microsoft", "com.microsoft.nchwc", "ai.onnx.preview.training",
                 "ai.onnx.training", "com.microsoft.experimental"}
# CPU features that decide which ORT kernels are fast; reported so passes and reports can cite them.
RELEVANT_FLAGS = {"avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16",
                  "avx512_fp16", "amx_tile", "amx_int8", "amx_bf16", "asimd", "asimddp", "asimdhp", "i8mm", "sve"}
# Dot-product int8 instructions: without them ORT's QDQ int8 kernels rarely beat FP32.
INT8_FLAGS = {"avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "i8mm"}
# The graph ORT runs, written next to its profiler trace by an OrtRunner with a profile_dir.
PROFILED_GRAPH = "optimized.onnx"


def _session(model: onnx.ModelProto | str | Path, options: ort.SessionOptions) -> ort.InferenceSession:
    """An ORT CPU session; models too big for one protobuf go through a file with external data."""
    if isinstance(model, onnx.ModelProto) and is_large(model):
        with tempfile.TemporaryDirectory(prefix="accelopt-ort-") as d:
            return _session(save_model(model, Path(d) / "model.onnx"), options)
    if isinstance(model, onnx.ModelProto):
        source: str | bytes = model.SerializeToString()
    elif Path(model).is_file():
        source = str(model)
    else:
        raise BadInputError(f"model not found: {model}")
    try:
        return ort.InferenceSession(source, sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as e:  # ORT raises its own pybind classes (Fail, InvalidGraph, NotImplemented...)
        raise ConversionError(f"onnxruntime cannot load the model: {first_line(e, 300)}") from e


def _spec(arg: Any) -> TensorSpec:
    """TensorSpec of an ORT NodeArg; its type reads like 'tensor(float)'."""
    name = arg.type.removeprefix("tensor(").removesuffix(")").upper()
    elem = onnx.TensorProto.DataType.Value(name) if name in onnx.TensorProto.DataType.keys() else None
    dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem)) if elem else np.dtype(object)
    return TensorSpec(arg.name, list(arg.shape), dtype)


def with_runtime_types(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy with a value_info for every node output ONNX shape inference left untyped, as ORT's own graph
    resolution types it (it knows the contrib ops' schemas: FusedConv, Attention, SkipLayerNormalization...).
    ORT accepts graph outputs with no type and reports the type and shape it inferred for them, so this needs
    no data run. Tools that read value_info, such as ORT's calibrator, otherwise skip every tensor downstream
    of a contrib op."""
    typed = onnx.shape_inference.infer_shapes(model) if not is_large(model) else model
    known = {v.name for v in [*typed.graph.value_info, *typed.graph.input, *typed.graph.output]}
    known |= {t.name for t in typed.graph.initializer}
    missing = [o for n in typed.graph.node for o in n.output if o and o not in known]
    if not missing:
        return typed
    probe = onnx.ModelProto()
    probe.CopyFrom(typed)
    probe.graph.output.extend(onnx.ValueInfoProto(name=name) for name in missing)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    outputs = {arg.name: _spec(arg) for arg in _session(probe, options).get_outputs()}
    for name in missing:
        spec = outputs[name]
        if spec.dtype != np.dtype(object):
            typed.graph.value_info.append(onnx.helper.make_tensor_value_info(
                name, onnx.helper.np_dtype_to_tensor_dtype(spec.dtype), spec.shape))
    return typed


class OrtRunner:
    """Runs a model with ORT on the CPU, sequentially, at a known thread count."""

    def __init__(self, model: onnx.ModelProto | str | Path, threads: int | None = None,
                 optimization_level: str = "all", profile_dir: Path | None = None):
        """`profile_dir`: record ORT's profiler trace and write the graph it runs there (see `end_profiling`)."""
        if optimization_level not in OPT_LEVELS:
            raise ValueError(f"optimization_level must be one of {sorted(OPT_LEVELS)}, got {optimization_level!r}")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or 0
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = _ORT_LEVELS[optimization_level]
        if profile_dir is not None:
            _record_profile(options, Path(profile_dir), isinstance(model, onnx.ModelProto) and is_large(model))
        self._session = _session(model, options)
        # ORT picks its own default when given 0; the report still needs a number next to latencies.
        self.threads = threads or os.cpu_count() or 1
        self.inputs = [_spec(a) for a in self._session.get_inputs()]
        self.outputs = [_spec(a) for a in self._session.get_outputs()]
        self._names = [o.name for o in self.outputs]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Output name -> array, in the model's output order."""
        try:
            values = self._session.run(self._names, feeds)
        except InvalidArgument as e:
            raise BadInputError(f"onnxruntime rejected the inputs: {first_line(e, 300)}") from e
        except Exception as e:
            raise ConversionError(f"onnxruntime failed running the model: {first_line(e, 300)}") from e
        return dict(zip(self._names, values))

    def end_profiling(self) -> Path:
        """Stop ORT's profiler and return its JSON trace (in the `profile_dir` given, never the working directory)."""
        return Path(self._session.end_profiling())

    def timed(self, feeds: dict[str, np.ndarray]) -> float:
        """One run; its wall time in ms."""
        start = time.perf_counter()
        self.run(feeds)
        return (time.perf_counter() - start) * 1000

    def batch_of(self, feeds: dict[str, np.ndarray]) -> int:
        """The batch size these feeds make: dim 0 of the first input."""
        first = feeds[self.inputs[0].name] if self.inputs else None
        return int(first.shape[0]) if first is not None and first.ndim else 1

    def bench(self, feeds: dict[str, np.ndarray], warmup: int = 5, runs: int = 50) -> LatencyStats:
        """Latency per batch over `runs` timed runs after `warmup` untimed ones."""
        if runs < 1:
            raise ValueError(f"runs must be >= 1, got {runs}")
        peak_reset = _reset_peak_rss()
        rss_before = _status_kb("VmRSS")
        for _ in range(warmup):
            self.run(feeds)
        times = [self.timed(feeds) for _ in range(runs)]
        peak = _status_kb("VmHWM")
        return LatencyStats.from_times(
            times, batch=self.batch_of(feeds), threads=self.threads, warmup=warmup,
            peak_memory_mb=max(peak - rss_before, 0) / 1024 if peak_reset and peak and rss_before else None)


def _record_profile(options: ort.SessionOptions, folder: Path, large: bool) -> None:
    """Profile into `folder` (ORT's default is the working directory) and save the optimized graph the trace's
    node names refer to, as PROFILED_GRAPH."""
    options.enable_profiling = True
    options.profile_file_prefix = str(folder / "ort-profile")
    options.optimized_model_filepath = str(folder / PROFILED_GRAPH)
    options.log_severity_level = 3  # saving at level "all" warns that NCHWc layouts are CPU-specific
    if large:
        options.add_session_config_entry("session.optimized_model_external_initializers_file_name",
                                         PROFILED_GRAPH + ".data")


def _reset_peak_rss() -> bool:
    """Reset this process's peak RSS (Linux: VmHWM) so the next reading covers only what follows."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _status_kb(key: str) -> int | None:
    """A kB field of /proc/self/status (VmRSS, VmHWM), or None off Linux."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _cpu_flags() -> set[str]:
    """CPU feature flags from /proc/cpuinfo ('flags' on x86, 'Features' on ARM); empty elsewhere."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split())
    return set()


def _custom_op_findings(graph: onnx.GraphProto, local: set[tuple[str, str]]) -> list[Finding]:
    """Error findings for nodes (subgraphs included) in domains ORT has no kernels for."""
    findings = []
    for node in graph.node:
        if node.domain not in KNOWN_DOMAINS and (node.domain, node.op_type) not in local:
            findings.append(Finding("error", f"custom op {node.domain}:{node.op_type} has no onnxruntime kernel "
                                             f"(register a custom-op library or replace the node)",
                                    node=node.name or node.op_type))
        for attr in node.attribute:
            for sub in [attr.g] if attr.type == onnx.AttributeProto.GRAPH else attr.graphs:
                findings += _custom_op_findings(sub, local)
    return findings


class OrtTargetConfig(TargetConfig):
    threads: int | None = None
    graph_optimization_level: Literal["disabled", "basic", "extended", "all"] = "all"
    # Also write ORT's offline-optimized model. It uses level 'extended': 'all' adds layouts specific
    # to this machine's CPU, which would not be portable.
    save_optimized: bool = False


@register_target
class OnnxRuntimeTarget(Target):
    name = "onnxruntime"
    summary = "ONNX Runtime on CPU: the default target, nothing to install beyond the core dependencies"
    Config = OrtTargetConfig
    config: OrtTargetConfig

    def check(self, model: onnx.ModelProto) -> list[Finding]:
        local = {(f.domain, f.name) for f in model.functions}
        findings = _custom_op_findings(model.graph, local)
        if not findings:  # ORT would only repeat the custom-op error
            try:
                OrtRunner(model, threads=1, optimization_level=self.config.graph_optimization_level)
            except ConversionError as e:
                findings.append(Finding("error", str(e)))
        return findings

    def lower(self, model: onnx.ModelProto, out_dir: Path) -> Artifact:
        path = save_model(model, Path(out_dir) / "model.onnx")
        files = model_files(path)
        meta: dict[str, Any] = {"graph_optimization_level": self.config.graph_optimization_level}
        if self.config.save_optimized:
            optimized = _write_optimized(path, is_large(model))
            files += model_files(optimized)
            meta["optimized"] = optimized.name
        return Artifact(path=path, files=files, kind="onnx", meta=meta)

    def runner(self, artifact: Artifact, threads: int | None = None) -> OrtRunner:
        return OrtRunner(artifact.path, threads=threads if threads is not None else self.config.threads,
                         optimization_level=self.config.graph_optimization_level)

    def profile(self, model: onnx.ModelProto, feeds: dict[str, np.ndarray], *, threads: int | None = None,
                warmup: int = 5, runs: int = 20) -> KernelProfile:
        from accelopt.targets.onnxruntime_profile import profile_ort  # it builds on OrtRunner

        return profile_ort(model, feeds, threads=threads if threads is not None else self.config.threads,
                           warmup=warmup, runs=runs, optimization_level=self.config.graph_optimization_level)

    def capabilities(self) -> dict[str, Any]:
        flags = _cpu_flags()
        return {
            "int8": bool(flags & INT8_FLAGS),
            "layout": "NCHW",
            "alignment": 1,
            "cpu_flags": sorted(flags & RELEVANT_FLAGS),
        }


def _write_optimized(path: Path, external: bool) -> Path:
    """Have ORT write its 'extended'-optimized graph as model.ort.onnx next to `path`."""
    out = path.with_name("model.ort.onnx")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(out)
    if external:
        options.add_session_config_entry("session.optimized_model_external_initializers_file_name",
                                         out.name + ".data")
    _session(path, options)
    return out
