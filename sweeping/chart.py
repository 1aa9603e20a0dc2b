"""pareto.png: a sweep's variants as latency vs accuracy (or cosine), with the Pareto frontier drawn.

Drawn from the sweep.json document alone, so a chart can be redrawn from any earlier sweep. Points are
numbered as in the terminal table (close points share one label, "2,5", instead of overprinting), a
key beside the plot names every variant, and failed variants are listed in the caption.
Matplotlib's object API with the Agg canvas: no display, no global pyplot state.
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FormatStrFormatter

FRONTIER = "tab:blue"
DOMINATED = "0.55"
MERGE_PX = 14  # points closer than this on the canvas share one label
KEY_WIDTH = 40  # at most this many characters of a label in the key
CAPTION_CHARS = 170  # of a failed variant's line under the plot


def write_pareto_png(doc: dict[str, Any], path: Path) -> bool:
    """Draw the chart; False (nothing written) when no variant has both a latency and a quality value."""
    quality = doc.get("quality")
    numbered = [(i + 1, v) for i, v in enumerate(doc["variants"])]
    points = [(n, v) for n, v in numbered
              if quality and v["metrics"] and v["metrics"]["latency_ms"] is not None
              and v["metrics"][quality] is not None]
    if not points:
        return False
    scale = 100.0 if quality == "accuracy" else 1.0

    def y_of(v: dict[str, Any]) -> float:
        return v["metrics"][quality] * scale

    fig = Figure(figsize=(13.5, 6.5), dpi=110)
    FigureCanvasAgg(fig)
    caption = _caption(numbered)
    bottom = 0.13 + 0.03 * len(caption)  # room under the x axis for the failed variants
    ax = fig.add_axes((0.085, bottom, 0.5, 0.88 - bottom))
    ref = _input_point(doc, quality, scale)
    xs = [v["metrics"]["latency_ms"] for _, v in points] + ([ref[0]] if ref else [])
    ys = [y_of(v) for _, v in points] + ([ref[1]] if ref else [])
    # Minimum spans keep timer noise and float rounding from being magnified into visible differences.
    # Accuracy and cosine top out at 100% and 1: the window never shows impossible values above that.
    y_span = 1.0 if quality == "accuracy" else 1e-4
    for limits, axis, setter in ((_padded(xs, 0.1 * max(xs)), ax.xaxis, ax.set_xlim),
                                 (_padded(ys, y_span, ceiling=scale), ax.yaxis, ax.set_ylim)):
        setter(*limits)
        axis.set_major_formatter(FormatStrFormatter(f"%.{_decimals(*limits)}f"))

    front = sorted(((v["metrics"]["latency_ms"], y_of(v)) for _, v in points if v["pareto"]))
    if front:
        fx, fy = zip(*front)
        ax.plot([*fx, ax.get_xlim()[1]], [*fy, fy[-1]], drawstyle="steps-post", color=FRONTIER, lw=1.5,
                alpha=0.7, label="Pareto frontier", zorder=1)
    for on_front in (True, False):
        chosen = [(n, v) for n, v in points if v["pareto"] == on_front]
        if chosen:
            ax.scatter([v["metrics"]["latency_ms"] for _, v in chosen], [y_of(v) for _, v in chosen],
                       s=70 if on_front else 45, zorder=3, color=FRONTIER if on_front else "white",
                       edgecolors=FRONTIER if on_front else DOMINATED, linewidths=1.5,
                       label="Pareto-optimal" if on_front else "dominated")
    if ref:
        ax.scatter([ref[0]], [ref[1]], marker="X", s=80, color="black", zorder=4, label="input model")
        ax.annotate("input", ref, xytext=(6, -12), textcoords="offset points", fontsize=9)
    for anchor, numbers in _merged_labels(ax, [(n, (v["metrics"]["latency_ms"], y_of(v))) for n, v in points]):
        ax.annotate(",".join(map(str, numbers)), anchor, xytext=(6, 5), textcoords="offset points", fontsize=9,
                    fontweight="bold")

    lat = doc.get("latency") or {}
    ax.set_xlabel(f"latency, median ms per batch of {lat.get('batch', '?')} "
                  f"({lat.get('threads', '?')} thread(s), timed side by side)  ← faster")
    ax.set_ylabel(("task accuracy (%)" if quality == "accuracy" else "worst output cosine vs input") + "  better →")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize=8, framealpha=0.9)
    ax.set_title(f"{Path(doc['model']['path']).name}: latency vs {quality}, {len(points)} variant(s)",
                 loc="left", fontsize=11)
    fig.text(0.615, 0.88, _key(numbered, quality), family="monospace", fontsize=7.5, va="top")
    if caption:
        fig.text(0.085, 0.02, "\n".join(caption), fontsize=8, color="firebrick", va="bottom")
    fig.savefig(path)
    return True


def _input_point(doc: dict[str, Any], quality: str, scale: float) -> tuple[float, float] | None:
    """The input model as a reference point: its accuracy, or cosine 1 against itself."""
    inp = doc.get("input") or {}
    value = inp.get("accuracy") if quality == "accuracy" else 1.0
    if inp.get("latency_ms") is None or value is None:
        return None
    return inp["latency_ms"], value * scale


def _padded(values: list[float], min_span: float, ceiling: float = math.inf,
            share: float = 0.12) -> tuple[float, float]:
    """Limits around `values` with a margin, never narrower than `min_span`, and not reaching far
    above `ceiling` (a value at the ceiling keeps a small margin, so its marker is not clipped)."""
    lo, hi = min(values), max(values)
    pad = max((hi - lo) * share, (min_span - (hi - lo)) / 2)
    top = max(ceiling, hi) + 0.04 * (hi - lo + 2 * pad)
    shift = max(hi + pad - top, 0.0)
    return lo - pad - shift, hi + pad - shift


def _decimals(lo: float, hi: float) -> int:
    """Enough decimals to tell ticks apart (cosines differ in the 5th digit), no more."""
    return min(max(1, 1 - math.floor(math.log10((hi - lo) / 5))), 8)


def _merged_labels(ax, points: list[tuple[int, tuple[float, float]]]) -> list[tuple[tuple[float, float], list[int]]]:
    """Group points that would overprint on the canvas; each group is labelled once at its first point."""
    groups: list[tuple[tuple[float, float], Any, list[int]]] = []
    for number, xy in points:
        px = ax.transData.transform(xy)
        for _, gpx, members in groups:
            if abs(px[0] - gpx[0]) < MERGE_PX and abs(px[1] - gpx[1]) < MERGE_PX:
                members.append(number)
                break
        else:
            groups.append((xy, px, [number]))
    return [(xy, members) for xy, _, members in groups]


def _key(numbered: list[tuple[int, dict[str, Any]]], quality: str) -> str:
    """The table beside the plot: every variant by number, with its latency, accuracy (when scored) and cosine."""
    width = min(max(len(v["label"]) for _, v in numbered), KEY_WIDTH)
    columns = ["accuracy", "cosine"] if quality == "accuracy" else ["cosine"]
    lines = [f"{'#':>2}  {'variant':<{width}} {'ms':>8}" + "".join(f" {c:>9}" for c in columns)]
    for n, v in numbered:
        m = v["metrics"] or {}
        name = v["label"] if len(v["label"]) <= width else v["label"][:width - 1] + "…"
        if v["status"] in ("failed", "pending"):
            lines.append(f"{n:>2}  {name:<{width}} {v['status']:>8}")
            continue
        lat = "-" if m.get("latency_ms") is None else f"{m['latency_ms']:.3f}"
        shown = [_value(m.get(c), c) for c in columns]
        mark = "*" if v["pareto"] else " "
        lines.append(f"{n:>2}{mark} {name:<{width}} {lat:>8}" + "".join(f" {x:>9}" for x in shown))
    return "\n".join(lines + ["", "* Pareto-optimal"])


def _value(v: float | None, metric: str) -> str:
    return "-" if v is None else f"{100 * v:.2f}%" if metric == "accuracy" else f"{v:.6f}"


def _caption(numbered: list[tuple[int, dict[str, Any]]], shown: int = 5) -> list[str]:
    """One line per failed variant (the first `shown` of them): its number, label and error."""
    failed = [textwrap.shorten(f"#{n} {v['label']}: {v['error']}", CAPTION_CHARS, placeholder=" …")
              for n, v in numbered if v["status"] == "failed"]
    if not failed:
        return []
    more = [f"and {len(failed) - shown} more (see sweep.json)"] if len(failed) > shown else []
    return ["failed variants (not plotted):", *failed[:shown], *more]
