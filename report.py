"""report.json (versioned schema), report.md, JUnit XML, and the gates that decide the exit code."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable
from xml.sax.saxutils import escape, quoteattr

REPORT_SCHEMA = "accelopt.report/1"
REPORT_FILES = ("report.json", "report.md", "junit.xml")


_NOT_RUN = "the artifact was not run on this machine"
# gate -> (its value in report["final"], which side the threshold bounds, why it may be unmeasurable)
GATES: dict[str, tuple[Callable[[dict[str, Any]], float | None], str, str]] = {
    "min_cosine": (lambda f: (f.get("worst") or {}).get("cosine"), "min", _NOT_RUN),
    "min_sqnr_db": (lambda f: (f.get("worst") or {}).get("sqnr_db"), "min", _NOT_RUN),
    "min_top1_agreement": (lambda f: (f.get("worst") or {}).get("top1_agreement"), "min",
                           "no top-1 agreement: needs task.kind classification or detection"),
    "max_accuracy_drop": (lambda f: f.get("accuracy_drop"), "max",
                          "no accuracy: needs task.kind classification and labels in the evaluation data"),
    "min_speedup": (lambda f: f.get("speedup"), "min",
                    "latency not measured (validation.latency is off or no runtime here)"),
    "max_size_mb": (lambda f: f["size_bytes"] / 1e6, "max", ""),
}


def evaluate_gates(gates: Any, report: dict[str, Any]) -> list[dict[str, Any]]:
    """Every gate the recipe sets, judged on the artifact. A gate that cannot be measured fails:
    a CI gate that silently passes is worse than none."""
    out = []
    for name, (read, bound, why) in GATES.items():
        threshold = getattr(gates, name)
        if threshold is None:
            continue
        value = read(report["final"])
        passed = value is not None and (value >= threshold if bound == "min" else value <= threshold)
        out.append({"name": name, "threshold": threshold, "value": value, "passed": passed,
                    "reason": why if value is None else ""})
    return out


def write_reports(report: dict[str, Any], out_dir: Path, junit: bool = False) -> list[Path]:
    out_dir = Path(out_dir)
    paths = [out_dir / "report.json", out_dir / "report.md"]
    paths[0].write_text(json.dumps(report, indent=2, default=_jsonable))
    paths[1].write_text(render_markdown(report))
    if junit:
        paths.append(out_dir / "junit.xml")
        paths[2].write_text(render_junit(report))
    return paths


def _jsonable(o: Any) -> Any:
    if hasattr(o, "item"):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    return str(o)


def fmt(v: Any, spec: str = ".4g", none: str = "-") -> str:
    if v is None:
        return none
    if isinstance(v, float):
        if v == float("inf"):
            return "inf"
        return format(v, spec)
    return str(v)


def step_rows(report: dict[str, Any]) -> list[dict[str, str]]:
    """One row per step plus the input and the target artifact: what the table and report.md show."""
    ref_lat = (report["reference"].get("latency") or {}).get("median_ms")
    rows = [{"step": "input", "nodes": str(report["input"]["node_count"]),
             "size": _kb(report["input"]["size_bytes"]), "seconds": "-", "cosine": "1", "sqnr": "inf",
             "max_abs": "0", "top1": "-", "accuracy": _pct(report["reference"].get("accuracy")),
             "latency_ms": fmt(ref_lat, ".3f"), "speedup": "1.00x" if ref_lat else "-"}]
    for s in report["steps"]:
        w = s["worst"]
        rows.append({"step": s["name"] + (" (cached)" if s.get("cached") else ""), "nodes": str(s["nodes_after"]),
                     "size": _kb(s["bytes_after"]), "seconds": fmt(s.get("seconds"), ".2f"),
                     "cosine": fmt(w.get("cosine"), ".6f"), "sqnr": fmt(w.get("sqnr_db"), ".1f"),
                     "max_abs": fmt(w.get("max_abs"), ".2e"), "top1": _pct(w.get("top1_agreement")),
                     "accuracy": _pct(s.get("accuracy")),
                     "latency_ms": fmt((s.get("latency") or {}).get("median_ms"), ".3f"),
                     "speedup": _x(s.get("speedup"))})
    f = report["final"]
    w = f.get("worst") or {}
    rows.append({"step": f"target: {report['target']['name']}", "nodes": "-", "size": _kb(f["size_bytes"]),
                 "seconds": "-", "cosine": fmt(w.get("cosine"), ".6f"), "sqnr": fmt(w.get("sqnr_db"), ".1f"),
                 "max_abs": fmt(w.get("max_abs"), ".2e"), "top1": _pct(w.get("top1_agreement")),
                 "accuracy": _pct(f.get("accuracy")), "latency_ms": fmt((f.get("latency") or {}).get("median_ms"), ".3f"),
                 "speedup": _x(f.get("speedup"))})
    return rows


WATERFALL = [("step", "step"), ("latency_ms", "latency ms"), ("delta_ms", "Δ ms"), ("factor", "step x"),
             ("speedup", "total x"), ("quality", "accuracy"), ("delta_quality", "Δ accuracy"), ("bar", "latency")]


def waterfall_rows(report: dict[str, Any], width: int = 24) -> list[dict[str, str]]:
    """Each step's latency and quality next to the step before it: what every step adds on top of the ones
    before, so interactions (INT8 gaining less after pruning than alone) show. Quality is task accuracy when
    the data have labels, else the worst cosine against the input. Empty when latency was not measured."""
    ref_ms = (report["reference"].get("latency") or {}).get("median_ms")
    if not ref_ms or not report["steps"]:
        return []
    use_accuracy = report["reference"].get("accuracy") is not None
    points = [("input", ref_ms, report["reference"].get("accuracy") if use_accuracy else 1.0)]
    for s in report["steps"]:
        ms = (s.get("latency") or {}).get("median_ms")
        points.append((s["name"], ms, s.get("accuracy") if use_accuracy else (s.get("worst") or {}).get("cosine")))
    rows, prev_ms, prev_q = [], None, None
    for name, ms, q in points:
        rows.append({
            "step": name, "latency_ms": fmt(ms, ".3f"),
            "delta_ms": "-" if ms is None or prev_ms is None else f"{ms - prev_ms:+.3f}",
            "factor": "-" if ms is None or prev_ms is None else f"{prev_ms / ms:.2f}x",
            "speedup": "-" if ms is None else f"{ref_ms / ms:.2f}x",
            "quality": (_pct(q) if use_accuracy else fmt(q, ".6f")),
            "delta_quality": "-" if q is None or prev_q is None else
            (f"{100 * (q - prev_q):+.2f} pt" if use_accuracy else f"{q - prev_q:+.6f}"),
            "bar": "-" if ms is None else "#" * max(1, round(width * ms / max(ref_ms, *(m for _, m, _ in points if m)))),
        })
        prev_ms, prev_q = (ms if ms is not None else prev_ms), (q if q is not None else prev_q)
    if not use_accuracy:
        rows[0]["quality"] = "1 (cosine)"
    return rows


def step_notes(report: dict[str, Any]) -> list[tuple[str, str]]:
    """(step, note) in step order; a note that already names its step is not prefixed twice."""
    return [(s["name"], n.removeprefix(f"{s['name']}: ")) for s in report["steps"] for n in s.get("notes", [])]


def lowering_tables(report: dict[str, Any]) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, header, rows) for each list of records a target's lowering reported, e.g. TVM's Winograd choice
    per conv shape; any target can add one under its artifact's meta without the report knowing it."""
    meta = (report.get("target") or {}).get("lowering") or {}
    tables = []
    for key, records in meta.items():
        if not (isinstance(records, list) and records and all(isinstance(r, dict) for r in records)):
            continue
        header = list(dict.fromkeys(k for r in records for k in r))
        rows = [[", ".join(map(str, v)) if isinstance(v, list) else fmt(v) for v in (r.get(k) for k in header)]
                for r in records]
        tables.append((key.replace("_", " "), header, rows))
    return tables


def lowering_log(report: dict[str, Any]) -> list[str]:
    """What the target said while lowering (choices made, budgets spent)."""
    return list(((report.get("target") or {}).get("lowering") or {}).get("log") or [])


def _kb(n: int | None) -> str:
    return "-" if n is None else f"{n / 1024:.1f} kB" if n < 1 << 20 else f"{n / (1 << 20):.2f} MB"


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.2f}%"


def _x(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}x"


COLUMNS = [("step", "step"), ("nodes", "nodes"), ("size", "size"), ("seconds", "time s"), ("cosine", "cosine"),
           ("sqnr", "SQNR dB"), ("max_abs", "max abs"), ("top1", "top-1 agree"), ("accuracy", "accuracy"),
           ("latency_ms", "latency ms"), ("speedup", "speedup")]


def render_markdown(report: dict[str, Any]) -> str:
    inp = report["input"]
    lat = report["final"].get("latency") or report["reference"].get("latency") or {}  # the artifact may be untimed
    lines = [f"# accelopt report: {report['recipe']['name']}", "",
             f"- input: `{inp['path']}` (sha256 `{inp['sha256'][:16]}…`, {inp['node_count']} nodes, "
             f"{inp.get('params', 0):,} parameters, MACs {fmt(inp.get('macs'), ',') if inp.get('macs') else 'unknown'})",
             f"- data: {report['data']['evaluation']['source']}; {report['data']['evaluation']['compared']} samples compared",
             f"- target: {report['target']['name']}; latency at batch {lat.get('batch', '-')}, "
             f"{lat.get('threads', '-')} thread(s), median of {lat.get('runs', '-')} runs",
             *([f"- artifact numerics checked by: {report['final']['numerics_by']}"]
               if report["final"].get("numerics_by") else []),
             f"- result: **{'PASSED' if report['passed'] else 'GATE FAILED'}**", "",
             "| " + " | ".join(h for _, h in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in step_rows(report):
        lines.append("| " + " | ".join(r[k] for k, _ in COLUMNS) + " |")
    waterfall = waterfall_rows(report)
    if waterfall:
        lines += ["", "## Waterfall", "", "Each step against the one before it (latency measured side by side).", "",
                  "| " + " | ".join(h for _, h in WATERFALL) + " |", "|" + "---|" * len(WATERFALL)]
        lines += ["| " + " | ".join(f"`{r[k]}`" if k == "bar" else r[k] for k, _ in WATERFALL) + " |"
                  for r in waterfall]
    if report["gates"]:
        lines += ["", "## Gates", "", "| gate | threshold | value | result |", "|---|---|---|---|"]
        for g in report["gates"]:
            res = "pass" if g["passed"] else f"FAIL {g['reason']}".strip()
            lines.append(f"| {g['name']} | {g['threshold']} | {fmt(g['value'])} | {res} |")
    notes = step_notes(report)
    if notes:
        lines += ["", "## Notes", ""] + [f"- **{name}**: {note}" for name, note in notes]
    decisions = [(s["name"], s["decisions"]) for s in report["steps"] if s.get("decisions")]
    if decisions:
        lines += ["", "## Decisions", ""]
        lines += [f"- **{name}**: `{json.dumps(d, default=str)}`" for name, d in decisions]
    said, tables = lowering_log(report), lowering_tables(report)
    if said or tables:
        lines += ["", f"## Target {report['target']['name']}", ""] + [f"- {line}" for line in said]
        for title, header, rows in tables:
            lines += ["", f"**{title}**", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            lines += ["| " + " | ".join(r) + " |" for r in rows]
    if report["warnings"]:
        lines += ["", "## Warnings", ""] + [f"- {w}" for w in report["warnings"]]
    lines += ["", "## Artifacts", ""] + [f"- `{a['path']}` {a['bytes']:,} bytes, sha256 `{a['sha256']}`"
                                        for a in report["artifacts"]]
    lines += ["", "Tool versions: " + ", ".join(f"{k} {v}" for k, v in report["tool_versions"].items()), ""]
    return "\n".join(lines)


def render_junit(report: dict[str, Any]) -> str:
    """One test case per step (within tolerance) and per gate, for CI dashboards."""
    cases = []
    for s in report["steps"]:
        fail = None if s["within_tolerance"] else f"outputs beyond {s['precision']} tolerances"
        cases.append((f"step.{s['name']}", s.get("seconds") or 0.0, fail))
    for g in report["gates"]:
        fail = None if g["passed"] else (g["reason"] or f"value {g['value']} vs threshold {g['threshold']}")
        cases.append((f"gate.{g['name']}", 0.0, fail))
    failures = sum(1 for c in cases if c[2])
    body = []
    for name, secs, fail in cases:
        inner = f"<failure message={quoteattr(fail)}>{escape(fail)}</failure>" if fail else ""
        body.append(f'  <testcase classname="accelopt.{escape(report["recipe"]["name"])}" name={quoteattr(name)} '
                    f'time="{secs:.3f}">{inner}</testcase>')
    return (f'<?xml version="1.0" encoding="utf-8"?>\n<testsuite name="accelopt" tests="{len(cases)}" '
            f'failures="{failures}">\n' + "\n".join(body) + "\n</testsuite>\n")
