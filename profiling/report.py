"""Where inference time goes (`accelopt profile`): a target profiler's kernel timings turned into per-node and
per-op-type rows with MACs, achieved GFLOP/s and GB/s and shares of the measured latency, plus bottlenecks.

Shares are of the end-to-end median latency measured without the profiler (what a user gets); `coverage` is
the sum of the kernels' times over that latency, and what it leaves is session overhead (input/output copies,
the executor between kernels). A kernel's time is its mean over the profiled runs, not its median: on a busy
machine the interference lands on a different kernel in each run, and per-kernel medians drop it all (measured
on YOLOv8n under load: medians summed to 70% of the median latency, means to 104%). MACs are counted on the
input model, so a fused kernel gets the sum of its parts.

JSON (`Profile.to_dict`), schema "accelopt.profile/1":
  schema, model, target, runtime, data, batch, threads, warmup, runs;
  latency_ms {median, p90, mean, min} without the profiler, profiled_median_ms with it;
  node_ms (sum of kernel times), coverage (node_ms / latency median), unattributed_ms, unattributed_share;
  macs (whole model, null when shapes stay unknown), macs_note;
  nodes: one per kernel, costliest first: kernel (runtime name), op_type (what ran), nodes and ops (the input
    model's nodes it computes, [] for kernels the runtime inserted), ms (mean per run), share, macs, gflops
    (2 * MACs / time), bytes (inputs + weights + outputs), gbps, precision, tags;
  op_types: op_type, kernels, ms, share, macs, gflops;
  bottlenecks: what, share, ms, kernels, top (costliest nodes), step (the recipe step that addresses it);
  unmapped (input-model nodes no kernel computes: folded or removed by the runtime), notes.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import onnx

from accelopt.analysis import node_macs
from accelopt.errors import BadInputError
from accelopt.profiling.bottlenecks import Bottleneck, find_bottlenecks
from accelopt.targets.base import KernelTiming, Target

PROFILE_SCHEMA = "accelopt.profile/1"
# Input-model ops a kernel absorbs that are not worth naming among its parts.
_SILENT_OPS = frozenset({"Constant", "Identity"})
# A kernel holding this share of the model's MACs at under this fraction of the best kernel's GFLOP/s is tagged
# "low_efficiency": compute the hardware does badly, which pruning removes.
_BIG_MACS, _SLOW = 0.05, 0.5


@dataclass
class NodeRow:
    kernel: str
    op_type: str
    nodes: list[str]
    ops: list[str]
    ms: float
    share: float
    macs: int | None
    gflops: float | None
    bytes: int | None
    gbps: float | None
    precision: str | None
    tags: list[str]

    @property
    def label(self) -> str:
        """The input model's node (the first, for a fused group), else the runtime's name for the kernel."""
        return self.nodes[0] if self.nodes else f"{self.kernel} (inserted)"


@dataclass
class OpTypeRow:
    op_type: str
    kernels: int
    ms: float
    share: float
    macs: int | None
    gflops: float | None


@dataclass
class Profile:
    model: str
    target: str
    runtime: str
    data: str
    batch: int
    threads: int
    warmup: int
    runs: int
    latency_ms: dict[str, float]
    profiled_median_ms: float
    node_ms: float
    coverage: float
    unattributed_ms: float
    unattributed_share: float
    macs: int | None
    macs_note: str | None
    nodes: list[NodeRow]
    op_types: list[OpTypeRow]
    bottlenecks: list[Bottleneck]
    unmapped: list[str]
    notes: list[str] = field(default_factory=list)
    schema: str = PROFILE_SCHEMA

    def to_dict(self) -> dict[str, Any]:
        return {"schema": self.schema, **{k: v for k, v in asdict(self).items() if k != "schema"}}


def profile_model(model: onnx.ModelProto, target: Target, feeds: dict[str, np.ndarray], *, path: str, data: str,
                  threads: int | None, warmup: int, runs: int) -> Profile:
    """Profile `model` on `target` with `feeds` (one batch) and attribute the time to its nodes."""
    measured = target.profile(model, feeds, threads=threads, warmup=warmup, runs=runs)
    if measured is None:
        raise BadInputError(f"target {target.name} has no profiler in this accelopt; profile with --target onnxruntime")
    shapes = {name: list(arr.shape) for name, arr in feeds.items()}
    macs, note = node_macs(model, shapes)
    total_ms = measured.latency.median_ms
    weights = {t.name: list(t.dims) for t in model.graph.initializer}
    rows = sorted((_row(k, model.graph, macs, weights, total_ms) for k in measured.kernels), key=lambda r: -r.ms)
    _tag_low_efficiency(rows)
    node_ms = sum(r.ms for r in rows)
    covered = {i for k in measured.kernels for i in k.sources}
    stats = measured.latency
    return Profile(
        model=path, target=target.name, runtime=measured.runtime, data=data, batch=stats.batch,
        threads=stats.threads, warmup=warmup, runs=runs,
        latency_ms={"median": stats.median_ms, "p90": stats.p90_ms, "mean": stats.mean_ms, "min": stats.min_ms},
        profiled_median_ms=statistics.median(measured.profiled_ms),
        node_ms=node_ms,
        coverage=node_ms / total_ms,
        unattributed_ms=total_ms - node_ms,
        unattributed_share=1 - node_ms / total_ms,
        macs=sum(macs.values()) if None not in macs.values() else None,  # type: ignore[arg-type]
        macs_note=note,
        nodes=rows,
        op_types=_by_op_type(rows, total_ms),
        bottlenecks=find_bottlenecks(rows, total_ms),
        unmapped=[_node_name(n, i) for i, n in enumerate(model.graph.node) if i not in covered],
        notes=measured.notes,
    )


def _row(kernel: KernelTiming, graph: onnx.GraphProto, macs: dict[str, int | None], weights: dict[str, list[int]],
         total_ms: float) -> NodeRow:
    ms = statistics.fmean(kernel.times_ms)
    # The node that names the row comes first: the one doing the MACs (a QLinearConv's Conv, not its Q/DQ).
    sources = sorted(kernel.sources, key=lambda i: not _counted(graph.node[i], macs))
    parts = [graph.node[i] for i in sources]
    counted = [macs[n.output[0]] for n in parts if _counted(n, macs)]
    total = sum(counted) if counted and None not in counted else None  # type: ignore[arg-type]
    tags = {"float"} if kernel.precision == "float" else set()
    if not kernel.sources:
        tags.add("inserted")
    if any(_winograd_shaped(n, weights) for n in parts):
        tags.add("conv3x3")
    return NodeRow(
        kernel=kernel.name,
        op_type=kernel.op_type,
        nodes=[_node_name(n, i) for n, i in zip(parts, sources) if n.op_type not in _SILENT_OPS],
        ops=list(dict.fromkeys(n.op_type for n in parts if n.op_type not in _SILENT_OPS)),
        ms=ms,
        share=ms / total_ms,
        macs=total,
        gflops=_rate(2 * total if total else None, ms),
        bytes=kernel.bytes_moved,
        gbps=_rate(kernel.bytes_moved, ms),
        precision=kernel.precision,
        tags=sorted(tags),
    )


def _counted(node: onnx.NodeProto, macs: dict[str, int | None]) -> bool:
    return bool(node.output) and node.output[0] in macs


def _rate(amount: int | None, ms: float) -> float | None:
    """Giga-units per second (amount / ms / 1e6)."""
    return amount / ms / 1e6 if amount and ms > 0 else None


def _node_name(node: onnx.NodeProto, index: int) -> str:
    return node.name or f"{node.op_type}_{index}"


def _winograd_shaped(node: onnx.NodeProto, weights: dict[str, list[int]]) -> bool:
    """A plain 3x3 convolution (stride 1, no dilation, one group): the shape Winograd kernels speed up."""
    if node.op_type != "Conv" or len(node.input) < 2:
        return False
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    kernel = attrs.get("kernel_shape") or weights.get(node.input[1], [])[2:]
    return (kernel == [3, 3] and attrs.get("group", 1) == 1 and all(s == 1 for s in attrs.get("strides", [1]))
            and all(d == 1 for d in attrs.get("dilations", [1])))


def _tag_low_efficiency(rows: list[NodeRow]) -> None:
    """Tag kernels with a big share of the MACs that run far below the best GFLOP/s any kernel reached."""
    total = sum(r.macs or 0 for r in rows)
    best = max((r.gflops for r in rows if r.gflops), default=None)
    for r in rows:
        if best and r.macs and r.gflops and r.macs >= _BIG_MACS * total and r.gflops < _SLOW * best:
            r.tags = sorted({*r.tags, "low_efficiency"})


def _by_op_type(rows: list[NodeRow], total_ms: float) -> list[OpTypeRow]:
    groups: dict[str, list[NodeRow]] = defaultdict(list)
    for r in rows:
        groups[r.op_type].append(r)
    out = []
    for op, members in groups.items():
        ms = sum(r.ms for r in members)
        macs = [r.macs for r in members if r.macs is not None]
        total = sum(macs) if macs else None
        out.append(OpTypeRow(op, len(members), ms, ms / total_ms, total, _rate(2 * total if total else None, ms)))
    return sorted(out, key=lambda r: -r.ms)
