"""The op-coverage harness of the lowering benchmarks (tflite_coverage.py, coreml_coverage.py): the ONNX backend
node tests (onnx 1.20.1, see onnx_node_tests.py) through one backend's conversion and runtime, summarised per
op type. A backend (a `Backend` subclass) supplies its name, the op types its lowering claims, the ONNX
element types it cannot compute with, and `run_one` (convert one test model and run it); the rest is here:

- ``*_expanded*`` tests are left out: they are the function expansions of an op into other ops, not the op.
- Inputs that are parameters in real models (Reshape's shape, Slice's starts/ends/axes/steps, Pad's pads and
  constant_value, Resize's roi/scales/sizes, Split's split, TopK's K, Clip's min/max, Tile's repeats, reduction
  axes, conv and RNN weights...; the (op type, input slot) table `PARAMETERS`) are frozen into initializers
  with the test's values: real models get them as constants after the simplify step, and both edge targets
  are static-shape. Data inputs (Gather/GatherND/ScatterND indices, MatMul operands, RNN initial states...)
  stay graph inputs.
- Outputs match when floats are allclose (the backend's tolerance) with NaNs in the same places, and ints and
  bools are equal.
- Each test ends as one of the backend's statuses: pass, mismatch, unsupported (the lowering raised
  `Unsupported`; its reason code is kept), converter_error, runtime_error (also a crash, or a test that ran
  past --timeout), skipped (a type the backend lacks)... A pass whose graph folded to constants entirely (no
  op lowered) is counted as pass and shown as folded.
- Tests run in --workers worker processes, one test at a time each, with a per-test timeout: a hang or a
  crash costs one test, the worker is restarted; a worker is replaced after 120 tests (bounds the memory
  converters pile up in one process).

The headline number is the pass rate over the tests of the op types the lowering claims, skipped tests left
out.
"""

from __future__ import annotations

import argparse
import datetime
import json
import multiprocessing as mp
import os
import re
import sys
import time
import traceback
from collections import Counter, deque
from pathlib import Path
from typing import Any

import numpy as np
import onnx

sys.path.insert(0, str(Path(__file__).parent))

import onnx_node_tests  # noqa: E402
from real_models import DEFAULT_CACHE  # noqa: E402

STATUSES = ["pass", "mismatch", "unsupported", "converter_error", "runtime_error", "skipped"]
RTOL, ATOL = 1e-3, 1e-4

# (op type) -> input slots that are parameters in real models: frozen into initializers with the test's values.
PARAMETERS: dict[str, set[int]] = {
    "Reshape": {1}, "Expand": {1}, "Tile": {1}, "Slice": {1, 2, 3, 4}, "Pad": {1, 2, 3}, "Squeeze": {1},
    "Unsqueeze": {1}, "Split": {1}, "Resize": {1, 2, 3}, "Upsample": {1}, "Clip": {1, 2},
    "ConstantOfShape": {0}, "TopK": {1}, "OneHot": {1, 2}, "CumSum": {1}, "Range": {0, 1, 2}, "Trilu": {1},
    "CenterCropPad": {1}, "Col2Im": {1, 2}, "DFT": {1, 2}, "STFT": {1, 3}, "NonMaxSuppression": {2, 3, 4},
    "LSTM": {1, 2, 3, 4, 7}, "GRU": {1, 2, 3, 4}, "RNN": {1, 2, 3, 4}, "Conv": {1, 2}, "ConvTranspose": {1, 2},
    "ConvInteger": {1, 2, 3}, "BatchNormalization": {1, 2, 3, 4}, "InstanceNormalization": {1, 2},
    "LayerNormalization": {1, 2}, "GroupNormalization": {1, 2}, "PRelu": {1},
    "QuantizeLinear": {1, 2}, "DequantizeLinear": {1, 2}, "Dropout": {1, 2}, "MaxUnpool": {2},
    "ReverseSequence": {1}, "AffineGrid": {1}, "HannWindow": {0}, "HammingWindow": {0},
    "BlackmanWindow": {0}, "MelWeightMatrix": {0, 1, 2, 3, 4}, "DeformConv": {1, 2},
    "QLinearConv": {1, 2, 3, 4, 5, 6, 7, 8}, "QLinearMatMul": {1, 2, 4, 5, 6, 7},
    "DynamicQuantizeLinear": set(), "ReduceMean": {1}, "ReduceSum": {1}, "ReduceMax": {1}, "ReduceMin": {1},
    "ReduceProd": {1}, "ReduceL1": {1}, "ReduceL2": {1}, "ReduceLogSum": {1}, "ReduceLogSumExp": {1},
    "ReduceSumSquare": {1}, "RotaryEmbedding": {1, 2},
}


def element_types(*names: str) -> set[int]:
    """ONNX element types by TensorProto name; names this onnx does not know are left out."""
    return {getattr(onnx.TensorProto, n) for n in names if hasattr(onnx.TensorProto, n)}


# Types neither edge runtime computes with: strings, bfloat16, complex, the float8/float4 and 2/4-bit formats.
NO_EDGE_TYPES = element_types("STRING", "BFLOAT16", "COMPLEX64", "COMPLEX128", "FLOAT8E4M3FN", "FLOAT8E4M3FNUZ",
                              "FLOAT8E5M2", "FLOAT8E5M2FNUZ", "INT4", "UINT4", "FLOAT4E2M1", "FLOAT8E8M0", "INT2",
                              "UINT2")


class Failed(Exception):
    """How one test failed, raised by a backend's `run_one`: a status, a short reason code and the detail
    (and whether the graph had folded to constants, when it failed after conversion)."""

    def __init__(self, status: str, reason: str, detail: str, folded: bool = False):
        super().__init__(detail)
        self.status, self.reason, self.detail, self.folded = status, reason, detail, folded


def lowering_failure(e: Exception) -> Failed:
    """A conversion error as a status: unsupported when the lowering raised `Unsupported` (itself or as the
    cause) with a reason other than lowering_failed (a handler built something the backend then rejected: a
    bug, like any other error), else converter_error."""
    from accelopt.converters.registry import Unsupported
    from accelopt.errors import first_line

    cause = e if isinstance(e, Unsupported) else e.__cause__
    if isinstance(cause, Unsupported) and cause.reason != "lowering_failed":
        return Failed("unsupported", cause.reason, first_line(e, 300))
    reason = "lowering_failed" if isinstance(cause, Unsupported) else type(e).__name__
    return Failed("converter_error", reason, first_line(e, 300))


class Backend:
    """What a coverage script supplies. An instance holds the parsed options and goes to each worker process
    (so a subclass lives at a module's top level); `start` runs there once, then `run_one` for each test."""

    name = ""  # "TFLite": titles
    lowering = ""  # what claims op types, in prose: "the emitter"
    no_types: set[int] = NO_EDGE_TYPES  # ONNX element types it cannot compute with: such tests are skipped
    skipped_types = ""  # those types in prose, for the markdown
    ran = ""  # how the converted models run, for the markdown: "run in the LiteRT interpreter"
    statuses = STATUSES

    def __init__(self, options: dict[str, Any]):
        self.options = options

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        """The backend's own command-line options."""

    def claimed(self) -> list[str]:
        """The op types the lowering claims (called in the main process)."""
        raise NotImplementedError

    def tolerance(self) -> tuple[float, float]:
        """rtol, atol for float outputs."""
        return RTOL, ATOL

    def lowered(self) -> str:
        """What converts the test models, for the markdown: "The TFLite target's lowering (...)"."""
        raise NotImplementedError

    def notes(self) -> list[str]:
        """Paragraphs the markdown adds after the one saying what ran."""
        return []

    def start(self) -> None:
        """In the worker, before its first test: imports, the target, logging kept quiet."""

    def run_one(self, model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], bool]:
        """Convert and run one test model (parameters frozen, `feeds` the remaining inputs): its outputs by
        ONNX name, and whether the whole graph folded to constants; raises `Failed` for what went wrong."""
        raise NotImplementedError


def snake(op_type: str) -> str:
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", op_type).lower()


def main_op(test_name: str, model: onnx.ModelProto) -> str:
    """The op type a test is about: the node whose snake-case name the test name starts with (longest wins),
    else the last node."""
    name = test_name.removeprefix("test_")
    ops = [n.op_type for n in model.graph.node]
    matches = [op for op in ops if name.startswith(snake(op))]
    if matches:
        return max(matches, key=len)
    return ops[-1] if ops else "?"


def freeze_parameters(model: onnx.ModelProto, inputs: dict[str, np.ndarray]) -> tuple[onnx.ModelProto,
                                                                                     dict[str, np.ndarray]]:
    """A copy with the parameter inputs (by `PARAMETERS`) turned into initializers with the test's values."""
    from onnx import numpy_helper

    frozen = set()
    for node in model.graph.node:
        for slot in PARAMETERS.get(node.op_type, ()):
            if slot < len(node.input) and node.input[slot] in inputs:
                frozen.add(node.input[slot])
    if not frozen:
        return model, inputs
    out = onnx.ModelProto()
    out.CopyFrom(model)
    keep = [i for i in out.graph.input if i.name not in frozen]
    del out.graph.input[:]
    out.graph.input.extend(keep)
    out.graph.initializer.extend(numpy_helper.from_array(np.asarray(inputs[n]), n) for n in sorted(frozen))
    return out, {k: v for k, v in inputs.items() if k not in frozen}


def unsupported_types(model: onnx.ModelProto, types: set[int]) -> list[str]:
    """The names of the element types in `types` the model's inputs, outputs, initializers, tensor attributes
    or Cast targets use (and the kind of any non-tensor input or output)."""
    bad = set()
    for v in [*model.graph.input, *model.graph.output]:
        t = v.type
        if not t.HasField("tensor_type"):
            bad.add(t.WhichOneof("value") or "?")
        elif t.tensor_type.elem_type in types:
            bad.add(onnx.TensorProto.DataType.Name(t.tensor_type.elem_type).lower())
    for init in model.graph.initializer:
        if init.data_type in types:
            bad.add(onnx.TensorProto.DataType.Name(init.data_type).lower())
    for node in model.graph.node:
        for a in node.attribute:
            if a.type == onnx.AttributeProto.TENSOR and a.t.data_type in types:
                bad.add(onnx.TensorProto.DataType.Name(a.t.data_type).lower())
            if a.name == "to" and a.type == onnx.AttributeProto.INT and a.i in types:
                bad.add(onnx.TensorProto.DataType.Name(a.i).lower())
    return sorted(bad)


def compare(expected: np.ndarray, got: np.ndarray, rtol: float = RTOL, atol: float = ATOL) -> str | None:
    """None when they match, else what differs."""
    expected, got = np.asarray(expected), np.asarray(got)
    if expected.shape != got.shape:
        return f"shape {list(got.shape)} != {list(expected.shape)}"
    if expected.dtype.kind in "fc":
        e, g = expected.astype(np.float64), got.astype(np.float64)
        if not np.array_equal(np.isnan(e), np.isnan(g)):
            return "NaN positions differ"
        ok = np.isclose(g, e, rtol=rtol, atol=atol) | np.isnan(e)
        if not ok.all():
            diff = np.abs(np.where(ok, 0, g - e))
            return f"max |diff| {np.nanmax(diff):.3g} ({int((~ok).sum())}/{ok.size} elements)"
        return None
    if expected.dtype != got.dtype and not (expected.dtype.kind == got.dtype.kind):
        if not np.array_equal(expected.astype(np.float64), got.astype(np.float64)):
            return f"dtype {got.dtype} != {expected.dtype} and values differ"
        return None
    if not np.array_equal(expected, got):
        return f"{int((expected != got).sum())}/{expected.size} elements differ"
    return None


def run_test(backend: Backend, model: onnx.ModelProto, inputs: dict, outputs: dict) -> dict:
    """One test's result: status, reason, detail, folded."""
    result = {"status": "pass", "reason": "", "detail": "", "folded": False}
    bad = unsupported_types(model, backend.no_types)
    if bad:
        return {**result, "status": "skipped", "reason": "type", "detail": ", ".join(bad)}
    model, feeds = freeze_parameters(model, inputs)
    try:
        got, result["folded"] = backend.run_one(model, feeds)
    except Failed as f:
        return {**result, "status": f.status, "reason": f.reason, "detail": f.detail, "folded": f.folded}
    rtol, atol = backend.tolerance()
    for out_name, expected in outputs.items():
        problem = compare(expected, got[out_name], rtol, atol)
        if problem:
            return {**result, "status": "mismatch", "reason": "numerics", "detail": f"{out_name}: {problem}"}
    return result


# ---------------------------------------------------------------------------------------------- worker side

def worker_main(conn, backend: Backend, verbose: bool) -> None:
    if not verbose:  # converters and runtimes print from native code too: silence the file descriptors
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
    backend.start()
    while True:
        task = conn.recv()
        if task is None:
            return
        name, blob, inputs, outputs = task
        try:
            result = run_test(backend, onnx.load_from_string(blob), inputs, outputs)
        except Exception as e:  # the harness itself must not die on one test
            result = {"status": "converter_error", "reason": type(e).__name__,
                      "detail": traceback.format_exception_only(e)[-1].strip()[:300], "folded": False}
        conn.send(result)


class Worker:
    def __init__(self, ctx, backend: Backend, verbose: bool):
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=worker_main, args=(child, backend, verbose), daemon=True)
        self.process.start()
        child.close()
        self.task: tuple | None = None
        self.started = 0.0
        self.done = 0

    def send(self, task: tuple) -> None:
        self.task, self.started = task, time.monotonic()
        self.conn.send(task)

    def stop(self) -> None:
        try:
            self.conn.send(None)
        except (BrokenPipeError, OSError):
            pass
        self.process.join(5)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()

    def kill(self) -> None:
        self.process.kill()
        self.process.join()


def run_all(backend: Backend, tests: list[tuple], workers: int, timeout: float, verbose: bool, recycle: int = 120,
            progress=None) -> dict[str, dict]:
    """test name -> result, the tests spread over `workers` processes, one at a time each."""
    ctx = mp.get_context("spawn")
    pool = [Worker(ctx, backend, verbose) for _ in range(max(1, workers))]
    pending = deque(tests)
    results: dict[str, dict] = {}
    try:
        while pending or any(w.task for w in pool):
            for i, w in enumerate(pool):
                if w.task is None and pending:
                    if w.done >= recycle:  # bounds the memory converted graphs pile up in one process
                        w.stop()
                        w = pool[i] = Worker(ctx, backend, verbose)
                    w.send(pending.popleft())
            time.sleep(0.02)
            for i, w in enumerate(pool):
                if w.task is None:
                    continue
                name = w.task[0]
                result = None
                try:
                    if w.conn.poll():
                        result = w.conn.recv()
                except (EOFError, OSError):
                    result = None
                if result is None:
                    if not w.process.is_alive():
                        result = {"status": "runtime_error", "reason": "crash",
                                  "detail": f"worker died (exit code {w.process.exitcode})", "folded": False}
                    elif time.monotonic() - w.started > timeout:
                        result = {"status": "runtime_error", "reason": "timeout",
                                  "detail": f"ran past {timeout:.0f} s", "folded": False}
                    else:
                        continue
                    w.kill()
                    pool[i] = Worker(ctx, backend, verbose)
                else:
                    w.task, w.done = None, w.done + 1
                result["seconds"] = round(time.monotonic() - w.started, 2)
                results[name] = result
                if progress:
                    progress(name, result)
    finally:
        for w in pool:
            if w.task is None:
                w.stop()
            else:
                w.kill()
    return results


# ---------------------------------------------------------------------------------------------- report side

def summarize(rows: list[dict], claimed: set[str], statuses: list[str] = STATUSES) -> dict:
    per_op: dict[str, dict] = {}
    for r in rows:
        op = per_op.setdefault(r["op"], {"op": r["op"], "claimed": r["op"] in claimed, "tests": 0,
                                         **{s: 0 for s in statuses}, "folded": 0, "reasons": Counter()})
        op["tests"] += 1
        op[r["status"]] += 1
        op["folded"] += r["status"] == "pass" and r["folded"]
        if r["status"] not in ("pass", "skipped"):
            op["reasons"][f"{r['status']}:{r['reason']}"] += 1
    for op in per_op.values():
        counted = op["tests"] - op["skipped"]
        op["rate"] = op["pass"] / counted if counted else None
        op["main_failure"] = op["reasons"].most_common(1)[0][0] if op["reasons"] else ""
        op["reasons"] = dict(op["reasons"])
    claimed_rows = [r for r in rows if r["op"] in claimed and r["status"] != "skipped"]
    passed = sum(r["status"] == "pass" for r in claimed_rows)
    all_counted = [r for r in rows if r["status"] != "skipped"]
    return {
        "claimed_tests": len(claimed_rows), "claimed_passed": passed,
        "claimed_rate": passed / len(claimed_rows) if claimed_rows else None,
        "all_tests": len(all_counted), "all_passed": sum(r["status"] == "pass" for r in all_counted),
        "statuses": dict(Counter(r["status"] for r in rows)),
        "per_op": sorted(per_op.values(), key=lambda o: o["op"]),
        "unclaimed_ops": sorted(op for op in per_op if op not in claimed),
    }


def _rate(rate: float | None) -> str:
    return "-" if rate is None else f"{100 * rate:.0f}%"


def print_table(summary: dict, title: str) -> None:
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        Console = None
    columns = ["op", "claimed", "tests", "passed", "rate", "skipped", "main failure"]
    rows = [[o["op"], "yes" if o["claimed"] else "", str(o["tests"]), str(o["pass"]) + (
        f" ({o['folded']} folded)" if o["folded"] else ""), _rate(o["rate"]), str(o["skipped"] or ""),
             o["main_failure"]] for o in summary["per_op"]]
    if Console is not None:
        table = Table(title=title)
        for c in columns:
            table.add_column(c, justify="right" if c in ("tests", "passed", "rate", "skipped") else "left")
        for r in rows:
            table.add_row(*r)
        Console(width=140).print(table)
    else:
        print("  ".join(columns))
        for r in rows:
            print("  ".join(r))
    print(f"statuses: {summary['statuses']}")
    print(f"claimed op types: {summary['claimed_passed']}/{summary['claimed_tests']} node tests pass "
          f"({_rate(summary['claimed_rate'])}); all op types: {summary['all_passed']}/{summary['all_tests']}")


def write_markdown(path: Path, backend: Backend, summary: dict, claimed: list[str], command: str,
                   seconds: float) -> None:
    rtol, atol = backend.tolerance()
    lines = [
        f"# {backend.name} op coverage",
        "",
        f"{backend.lowered()} on the ONNX backend node tests of onnx {onnx_node_tests.ONNX_TESTS_VERSION}, "
        f"{backend.ran} and compared with the tests' expected outputs (floats: rtol {rtol:g}, atol {atol:g}; ints "
        "and bools exact). `*_expanded` tests are left out (they are function expansions into other ops). Inputs "
        "that are parameters in real models (shapes, axes, pads, slice bounds, Resize scales/sizes, TopK's K, "
        "weights...) are frozen into initializers with the tests' values, as the simplify step makes them in real "
        f"models; data inputs stay inputs. Skipped tests use {backend.skipped_types}.",
        "",
        *(line for note in backend.notes() for line in (note, "")),
        f"Generated {datetime.date.today().isoformat()} with `{command}` ({seconds / 60:.1f} min, "
        f"{os.cpu_count()} CPUs).",
        "",
        f"**Op types {backend.lowering} claims: {summary['claimed_passed']}/{summary['claimed_tests']} node tests "
        f"pass ({_rate(summary['claimed_rate'])})**; over every op type: {summary['all_passed']}/"
        f"{summary['all_tests']}.",
        "",
        "| op | claimed | tests | passed | rate | skipped | main failure |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for o in summary["per_op"]:
        passed = str(o["pass"]) + (f" ({o['folded']} folded)" if o["folded"] else "")
        lines.append(f"| {o['op']} | {'yes' if o['claimed'] else ''} | {o['tests']} | {passed} | {_rate(o['rate'])} "
                     f"| {o['skipped'] or ''} | {o['main_failure'].replace('|', '/')} |")
    lines += ["", "## Op types without a lowering", "",
              f"Op types with node tests that {backend.lowering} does not claim (a test that folds to constants may "
              "still pass):", "", ", ".join(summary["unclaimed_ops"]) or "none", "",
              "## Claimed op types", "", ", ".join(claimed), ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))


def shown_command(argv: list[str]) -> str:
    """The command as run, minus where the JSON went, prefixed with `cd benchmarks &&` when run from there."""
    shown, skip = [], False
    for a in argv[1:]:
        if skip or a.startswith("--json"):
            skip = a == "--json"
            continue
        shown.append(a)
    script = Path(argv[0])
    here = Path(__file__).resolve().parent
    if Path.cwd().resolve() == here:
        return " ".join(["cd benchmarks && python", script.name, *shown])
    try:
        script = script.resolve().relative_to(Path.cwd().resolve())
    except ValueError:
        pass
    return " ".join(["python", str(script), *shown])


def main(backend_type: type[Backend], doc: str) -> None:
    """The coverage script of one backend: `doc` is its module docstring (the first paragraph is --help's)."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0],
                                     epilog=f"Each test ends as one of: {', '.join(backend_type.statuses)} (the top of "
                                     f"{Path(sys.argv[0]).name} says what each means). The headline is the pass rate "
                                     "over the tests of the claimed op types, skipped ones left out.")
    parser.add_argument("--only", metavar="OPS", help="comma-separated op types: the tests about one of them (e.g. Add,Relu,Conv)")
    parser.add_argument("--cache", type=Path, metavar="DIR", default=DEFAULT_CACHE,
                        help="where the onnx wheel with the node tests is downloaded (default: %(default)s)")
    parser.add_argument("--workers", type=int, metavar="N", default=2, help="worker processes (default: %(default)s)")
    parser.add_argument("--timeout", type=float, metavar="SECONDS", default=180.0, help="seconds per test (default: %(default)s)")
    parser.add_argument("--json", type=Path, metavar="PATH", help="write the summary and every test's result here")
    parser.add_argument("--markdown", type=Path, metavar="PATH", help="write the per-op table here (the docs/*-coverage.md page)")
    parser.add_argument("--failures", action="store_true", help="print every failing test with its reason")
    parser.add_argument("--verbose", action="store_true", help="keep the workers' output (converter and runtime logs)")
    backend_type.add_arguments(parser)
    args = parser.parse_args()
    backend = backend_type(vars(args))

    claimed = backend.claimed()
    only = set(args.only.split(",")) if args.only else None
    start = time.monotonic()
    tests, ops = [], {}
    for t in onnx_node_tests.node_tests(args.cache, only):
        if "_expanded" in t.name:
            continue
        op = main_op(t.name, t.model)
        if only and op not in only:
            continue
        ops[t.name] = op
        tests.append((t.name, t.model.SerializeToString(), t.inputs, t.outputs))
    print(f"{len(tests)} node tests, {len(set(ops.values()))} op types, {args.workers} workers", flush=True)
    if only and only - set(ops.values()):
        print(f"no node tests are about {', '.join(sorted(only - set(ops.values())))}", flush=True)

    done = [0]

    def progress(name: str, result: dict) -> None:
        done[0] += 1
        if args.failures and result["status"] not in ("pass", "skipped"):
            print(f"  {name}: {result['status']} {result['reason']}: {result['detail']}", flush=True)
        elif done[0] % 100 == 0:
            print(f"  {done[0]}/{len(tests)} ({time.monotonic() - start:.0f} s)", flush=True)

    results = run_all(backend, tests, args.workers, args.timeout, args.verbose, progress=progress)
    seconds = time.monotonic() - start
    rows = [{"test": name, "op": ops[name], **results[name]} for name in sorted(results)]
    summary = summarize(rows, set(claimed), backend.statuses)
    print_table(summary, f"{backend.name} lowering on the ONNX backend node tests")
    print(f"{len(rows)} tests in {seconds:.0f} s")
    if args.json:
        args.json.write_text(json.dumps({"summary": summary, "tests": rows, "seconds": seconds}, indent=1))
    if args.markdown:
        write_markdown(args.markdown, backend, summary, claimed, shown_command(sys.argv), seconds)
