"""The onnxruntime target's `profile` capability: per-kernel times from ORT's own profiler, mapped back to the
input model's nodes.

ORT times every kernel when `SessionOptions.enable_profiling` is set and writes a Chrome-trace JSON: one
`cat: "Node"` event per kernel per run, named `<node>_kernel_time`, with `dur` in microseconds, `args.op_name`
and the byte sizes of its activations, parameters and outputs; one `cat: "Session"`, `name: "model_run"`
event per run frames them, so the warm-up runs can be dropped. The graph it runs is ORT's optimized one:
fusions and layout passes rename nodes (`conv1_token_4` for a QDQ group turned QLinearConv, `r1_nchwc` for an
NCHWc conv named after its output tensor, `silu_mul/QuickGeluFusion/`) and drop others (BatchNormalization
folded into the conv). Kernels are mapped back by those names, then by output tensors that keep an original
name, then each one grows backwards over the original nodes no other kernel claims: the parts fused into it.
"""

from __future__ import annotations

import json
import re
import tempfile
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from accelopt.converters.onnx_io import copy_model
from accelopt.targets.base import KernelProfile, KernelTiming, LatencyStats
from accelopt.targets.onnxruntime import PROFILED_GRAPH, OrtRunner

# Kernels ORT adds around ops for its layouts (NCHWc blocks, NHWC int8 kernels) or devices: they compute no
# original node, even where their output takes an original tensor's name.
INSERTED_OPS = frozenset({"ReorderInput", "ReorderOutput", "Transpose", "MemcpyToHost", "MemcpyFromHost"})
# How ORT derives new node names from old ones; stripped one at a time to find the original.
_DERIVED_NAME = tuple(re.compile(p) for p in (r"_token_\d+$", r"/\w+Fusion/?$", r"_nchwc$", r"/duplicated$"))
_KERNEL_SUFFIX = "_kernel_time"


def profile_ort(model: onnx.ModelProto, feeds: dict[str, np.ndarray], *, threads: int | None, warmup: int,
                runs: int, optimization_level: str = "all") -> KernelProfile:
    """Time `model` with and without the profiler, one run each in turn so that machine noise lands on both: the
    latency without it is what the kernel shares are of. Kernels come back in the order ORT ran them, with the
    `model` node indices they compute."""
    named = _uniquely_named(model)
    plain = OrtRunner(named, threads=threads, optimization_level=optimization_level)
    with tempfile.TemporaryDirectory(prefix="accelopt-profile-") as folder:
        profiled = OrtRunner(named, threads=threads, optimization_level=optimization_level, profile_dir=Path(folder))
        for _ in range(warmup):
            plain.run(feeds)
            profiled.run(feeds)
        plain_ms, profiled_ms = [], []
        for _ in range(runs):
            plain_ms.append(plain.timed(feeds))
            profiled_ms.append(profiled.timed(feeds))
        trace = json.loads(profiled.end_profiling().read_text())
        optimized = onnx.load(str(Path(folder) / PROFILED_GRAPH), load_external_data=False).graph
    sources = map_to_original(named.graph, optimized)
    events = _kernel_events(trace, skip_runs=warmup)
    nodes = {node.name: node for node in optimized.node}  # a name ORT gave twice is one kernel in the trace
    kernels = [_timing(node, sources.get(name, []), events.get(name, []), runs) for name, node in nodes.items()]
    first = {name: min(e["ts"] for run in per_run for e in run) for name, per_run in events.items()}
    kernels.sort(key=lambda k: first.get(k.name, float("inf")))
    notes = [] if named is model else ["unnamed or duplicate node names were numbered (Op_index) to map kernels"]
    latency = LatencyStats.from_times(plain_ms, batch=plain.batch_of(feeds), threads=plain.threads, warmup=warmup)
    return KernelProfile(kernels=kernels, latency=latency, profiled_ms=profiled_ms,
                         runtime=f"onnxruntime {ort.__version__} CPU, graph optimization {optimization_level}",
                         notes=notes)


def map_to_original(original: onnx.GraphProto, optimized: onnx.GraphProto) -> dict[str, list[int]]:
    """Kernel name -> indices of the `original` nodes it computes, the one its name or output derives from first;
    kernels ORT inserted map to nothing."""
    index = {n.name: i for i, n in enumerate(original.node)}
    producer = {t: i for i, n in enumerate(original.node) for t in n.output if t}
    claimed: dict[int, str] = {}
    parts: dict[str, list[int]] = defaultdict(list)

    def claim(i: int | None, kernel: str) -> None:
        if i is not None and i not in claimed:
            claimed[i] = kernel
            parts[kernel].append(i)

    for node in optimized.node:
        claim(_named_after(node.name, index, producer), node.name)
    for node in optimized.node:  # ORT-named fusions (SkipLayerNormalization, BiasGelu) keep their last output
        for out in node.output:
            i = producer.get(out)
            if i is not None and (node.op_type not in INSERTED_OPS or node.op_type == original.node[i].op_type):
                claim(i, node.name)
    for kernel, found in list(parts.items()):  # grow over the unclaimed nodes that feed it: its fused parts
        stack = list(found)
        while stack:
            for tensor in original.node[stack.pop()].input:
                i = producer.get(tensor)
                if i is not None and i not in claimed:
                    claim(i, kernel)
                    stack.append(i)
    return dict(parts)


def _named_after(name: str, index: dict[str, int], producer: dict[str, int]) -> int | None:
    """The original node an ORT node name derives from: the name itself, or with ORT's suffixes stripped,
    as a node name or as the name of the tensor that node produces."""
    while name:
        if name in index:
            return index[name]
        if name in producer:
            return producer[name]
        stripped = next((p.sub("", name) for p in _DERIVED_NAME if p.search(name)), name)
        if stripped == name:
            return None
        name = stripped
    return None


def _uniquely_named(model: onnx.ModelProto) -> onnx.ModelProto:
    """`model` itself when its nodes have unique names (the trace identifies kernels by name), else a copy
    whose unnamed or duplicate nodes are named Op_index."""
    counts = Counter(n.name for n in model.graph.node)
    if "" not in counts and all(c == 1 for c in counts.values()):
        return model
    named = copy_model(model)
    taken = set(counts)
    for i, node in enumerate(named.graph.node):
        if not node.name or counts[node.name] > 1:
            node.name = f"{node.op_type}_{i}"
            while node.name in taken:
                node.name += "_"
            taken.add(node.name)
    return named


def _kernel_events(trace: list[dict[str, Any]], skip_runs: int) -> dict[str, list[list[dict[str, Any]]]]:
    """Kernel name -> its Node events per measured run (one list per run), warm-up runs dropped."""
    runs = sorted((e for e in trace if e.get("cat") == "Session" and e.get("name") == "model_run"),
                  key=lambda e: e["ts"])[skip_runs:]
    starts = [r["ts"] for r in runs]
    by_kernel: dict[str, list[list[dict[str, Any]]]] = defaultdict(lambda: [[] for _ in runs])
    for event in trace:
        if event.get("cat") != "Node" or not event.get("name", "").endswith(_KERNEL_SUFFIX):
            continue
        run = int(np.searchsorted(starts, event["ts"], side="right")) - 1
        if run >= 0 and event["ts"] <= runs[run]["ts"] + runs[run]["dur"]:
            by_kernel[event["name"][:-len(_KERNEL_SUFFIX)]][run].append(event)
    return dict(by_kernel)


def _timing(node: onnx.NodeProto, sources: list[int], per_run: list[list[dict[str, Any]]],
            runs: int) -> KernelTiming:
    """A kernel's time per run, its bytes and input precision from its last event; 0 ms where it never ran."""
    times = [sum(e["dur"] for e in events) / 1000 for events in per_run] or [0.0] * runs
    last = next((events[-1]["args"] for events in reversed(per_run) if events), {})
    sizes = [last.get(key) for key in ("activation_size", "parameter_size", "output_size")]
    inputs = last.get("input_type_shape") or [{}]
    return KernelTiming(
        name=node.name,
        op_type=last.get("op_name", node.op_type),
        times_ms=times,
        sources=sources,
        bytes_moved=sum(int(s) for s in sizes) if all(s is not None for s in sizes) else None,
        precision=next(iter(inputs[0]), None),
    )
