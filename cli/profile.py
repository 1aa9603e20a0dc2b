"""`accelopt profile`: where the time goes, node by node and op by op, and which recipe step addresses it."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import List, Optional

import typer
from rich.markup import escape

from accelopt.cli.console import out, print_json, table, warn
from accelopt.cli.options import SHAPE_HELP, feeds_for, parse_shapes
from accelopt.converters.onnx_io import load_model
from accelopt.errors import BadInputError
from accelopt.latency import batch_feeds
from accelopt.profiling.report import Profile, profile_model
from accelopt.report import fmt
from accelopt.targets import get_target
from accelopt.targets.onnxruntime import OrtRunner

# Kernel times that stray further than this from the measured latency are not a trustworthy breakdown.
_COVERAGE_TOLERANCE = 0.10


def profile(
    model: Path = typer.Argument(..., help="The model to profile (.onnx)."),
    target: str = typer.Option("onnxruntime", "--target", help="The target whose own profiler times the kernels (onnxruntime has one)."),
    data: Optional[Path] = typer.Option(None, "--data", help="An .npz with arrays named after the inputs; seeded random data otherwise."),
    shapes: List[str] = typer.Option([], "--shape", help=SHAPE_HELP),
    threads: int = typer.Option(1, "--threads", min=1, help="Intra-op threads."),
    batch: int = typer.Option(1, "--batch", min=1, help="Samples per run (needs a dynamic batch dim beyond the model's own)."),
    warmup: int = typer.Option(5, "--warmup", min=0, help="Untimed runs first."),
    runs: int = typer.Option(20, "--runs", min=1, help="Profiled runs (and as many without the profiler, in turn); a kernel's time is its mean over them."),
    top: int = typer.Option(15, "--top", min=1, help="Nodes shown in the table and the chart."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output (schema accelopt.profile/1)."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Also draw the shares per op type and the top nodes, e.g. profile.png."),
) -> None:
    """Per-node and per-op-type time from the target's own profiler, with MACs, GFLOP/s, GB/s and shares of the
    measured latency, and the ranked bottlenecks with the recipe step that addresses each.

    Kernels are what the runtime ran after its own fusions (Conv+BN+Relu as one conv, Q/DQ groups as QLinearConv);
    each is mapped back to the input model's nodes, whose MACs it sums.
    """
    m = load_model(model, check=False)
    if plot is not None:
        _image_format(plot)
    chosen = get_target(target)
    probe = OrtRunner(m, threads=1, optimization_level="disabled")  # the input specs, to build feeds
    feeds, source = feeds_for(probe.inputs, data, parse_shapes(shapes), batch)
    result = profile_model(m, chosen, batch_feeds(feeds, batch), path=str(model), data=source,
                           threads=threads, warmup=warmup, runs=runs)
    if plot is not None:
        _plot(result, plot, top)
    if abs(result.coverage - 1) > _COVERAGE_TOLERANCE:
        warn(f"kernel times add up to {result.coverage:.0%} of the measured latency, outside 100% ± "
             f"{_COVERAGE_TOLERANCE:.0%}: the shares are approximate (a busy machine, or a model so fast that the "
             "profiler's own cost per kernel shows; more --runs help against the first)")
    if as_json:
        print_json(result.to_dict())
        return
    _render(result, top, model.name)
    if plot is not None:
        out.print(f"plot: {escape(str(plot))}", soft_wrap=True)


def _render(p: Profile, top: int, name: str) -> None:
    rows = [(i, r.label, r.op_type, "+".join(r.ops) if r.ops != [r.op_type] else "", f"{r.ms:.3f}", f"{r.share:.1%}",
             fmt(r.macs and f"{r.macs:,}"), fmt(r.gflops, ".1f"), fmt(r.gbps, ".1f"))
            for i, r in enumerate(p.nodes[:top], start=1)]
    out.print(table(f"{name} on {p.runtime}, {p.threads} thread(s), batch {p.batch}, mean of {p.runs} runs "
                    f"after {p.warmup} warm-up, data: {p.data}: top {len(rows)} of {len(p.nodes)} kernels",
                    ["#", "node", "kernel", "fused from", "ms", "share", "MACs", "GFLOP/s", "GB/s"], rows,
                    numeric={0, 4, 5, 6, 7, 8}))
    ops = [(o.op_type, o.kernels, f"{o.ms:.3f}", f"{o.share:.1%}", fmt(o.macs and f"{o.macs:,}"), fmt(o.gflops, ".1f"))
           for o in p.op_types]
    ops.append(("(unattributed: session overhead)", "", f"{p.unattributed_ms:.3f}", f"{p.unattributed_share:.1%}", "", ""))
    out.print(table("time per kernel op type", ["op", "kernels", "ms", "share", "MACs", "GFLOP/s"], ops,
                    numeric={1, 2, 3, 4, 5}))
    inserted = sum(1 for r in p.nodes if not r.nodes)
    lines = [
        f"latency: median {p.latency_ms['median']:.3f} ms without the profiler (p90 {p.latency_ms['p90']:.3f}), "
        f"{p.profiled_median_ms:.3f} ms with it; {p.threads} thread(s), batch {p.batch}",
        f"coverage: kernels {p.node_ms:.3f} ms = {p.coverage:.1%} of the median; unattributed (session overhead) "
        f"{p.unattributed_ms:.3f} ms = {p.unattributed_share:.1%}"
        + ("; below zero: the profiler's own cost per kernel outweighs it" if p.unattributed_ms < 0 else ""),
        f"mapping: {len(p.nodes)} kernels ({inserted} inserted by the runtime); "
        f"{len(p.unmapped)} input-model node(s) in no kernel (folded or removed)",
        f"compute: {fmt(p.macs and f'{p.macs:,}')} MACs" + (f" ({p.macs_note})" if p.macs_note else ""),
    ]
    lines += [f"bottleneck {i}: {b.what}: {b.share:.1%} ({b.ms:.3f} ms, {b.kernels} kernel(s), e.g. "
              f"{', '.join(b.top)}) -> {b.step}" for i, b in enumerate(p.bottlenecks, start=1)]
    if not p.bottlenecks:
        lines.append("bottlenecks: none above their thresholds")
    lines += [f"note: {n}" for n in p.notes]
    for line in lines:
        out.print(escape(line), soft_wrap=True)


def _plot(p: Profile, path: Path, top: int) -> None:
    """Two bar charts, shares of the measured latency in %: per kernel op type (with the unattributed rest, so
    the bars add up to 100%) and the top nodes. Written atomically next to `path`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ops = [(o.op_type, o.share, o.ms) for o in p.op_types[:top]]
    if len(p.op_types) > top:
        rest = p.op_types[top:]
        ops.append((f"({len(rest)} other op types)", sum(o.share for o in rest), sum(o.ms for o in rest)))
    ops.append(("(unattributed)", p.unattributed_share, p.unattributed_ms))
    nodes = [(_short(f"{r.label} [{r.op_type}]"), r.share, r.ms) for r in p.nodes[:top]]
    height = 1.6 + 0.32 * (len(ops) + len(nodes))
    fig, (ax_ops, ax_nodes) = plt.subplots(2, 1, figsize=(11, height),
                                           gridspec_kw={"height_ratios": [len(ops), len(nodes)]})
    fig.suptitle(f"{Path(p.model).name}: median {p.latency_ms['median']:.2f} ms ({p.runtime}, {p.threads} thread(s), "
                 f"batch {p.batch}); kernels cover {p.coverage:.0%}", fontsize=11)
    _bars(ax_ops, ops, "share of the measured latency per kernel op type", "tab:blue")
    _bars(ax_nodes, nodes, f"top {len(nodes)} nodes (kernel op in brackets)", "tab:orange")
    ax_nodes.set_xlabel("share of the measured latency (%)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        fig.savefig(tmp, format=_image_format(path), dpi=110)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        Path(tmp).unlink(missing_ok=True)


def _image_format(path: Path) -> str:
    """The image type matplotlib writes for `path`'s suffix; checked before profiling, not after."""
    from matplotlib.backend_bases import FigureCanvasBase

    kind = path.suffix.lower().lstrip(".")
    supported = FigureCanvasBase.get_supported_filetypes()
    if kind not in supported:
        raise BadInputError(f"--plot {path}: unknown image type {path.suffix or '(none)'}; use one of "
                            f"{', '.join('.' + k for k in sorted(supported))}")
    return kind


def _bars(ax, items: list[tuple[str, float, float]], title: str, color: str) -> None:
    """Horizontal bars of (label, share, ms), largest on top, labelled in % and ms; a negative share (kernels
    measured longer than the latency) is labelled but drawn empty."""
    labels, shares = [k for k, _, _ in items], [100 * v for _, v, _ in items]
    bars = ax.barh(range(len(items)), [max(s, 0) for s in shares],
                   color=[color if not k.startswith("(") else "tab:gray" for k in labels])
    ax.set_yticks(range(len(items)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_title(title, fontsize=10, loc="left")
    ax.bar_label(bars, [f"{s:.1f}%  ({ms:.2f} ms)" for s, (_, _, ms) in zip(shares, items)], padding=3, fontsize=8)
    ax.set_xlim(0, max(1, *shares) * 1.25)
    ax.grid(axis="x", alpha=0.3)


def _short(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else "…" + text[-(limit - 1):]
