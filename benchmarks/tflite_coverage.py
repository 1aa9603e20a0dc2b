"""Op coverage of the TFLite lowering, measured on the ONNX backend node tests (onnx 1.20.1, see
onnx_node_tests.py): each test model goes through the real target (`get_target("tflite")`, fp32: layout pass,
TF emitter, TFLiteConverter with builtin ops only), runs in the LiteRT interpreter (one thread) and is compared
with the test's expected outputs.

- ``*_expanded*`` tests are left out: they are the function expansions of an op into other ops, not the op.
- Inputs that are parameters in real models (Reshape's shape, Slice's starts/ends/axes/steps, Pad's pads and
  constant_value, Resize's roi/scales/sizes, Split's split, TopK's K, Clip's min/max, Tile's repeats, reduction
  axes, conv and RNN weights...; the (op type, input slot) table `PARAMETERS`) are frozen into initializers
  with the test's values: real models get them as constants after the simplify step, and TFLite is
  static-shape. Data inputs (Gather/GatherND/ScatterND indices, MatMul operands, RNN initial states...) stay
  graph inputs.
- Outputs match when floats are allclose (rtol 1e-3, atol 1e-4) with NaNs in the same places, and ints and
  bools are equal.
- Each test ends as one of: pass, mismatch, unsupported (the emitter has no handler, or a handler raised
  `Unsupported`; its reason code is kept), converter_error (the layout pass, TF or TFLiteConverter failed),
  runtime_error (LiteRT failed, crashed or the test ran past --timeout), skipped (types no TFLite kernel
  computes with: strings, bfloat16, float8, 4-bit, complex, and uint64, which not even CAST takes). A pass
  whose graph folded to constants entirely (no op lowered) is counted as pass and shown as folded.
- Tests run in --workers worker processes, one test at a time each, with a per-test timeout: a hang or a
  crash costs one test, the worker is restarted.

The headline number is the pass rate over the tests of the op types the emitter claims
(`accelopt.converters.tf.registry.supported_op_types()`), skipped tests left out.

    cd benchmarks
    python tflite_coverage.py [--only Resize,LSTM] [--workers 2] [--json out.json] \
        [--markdown ../docs/tflite-coverage.md]
"""

from __future__ import annotations

import argparse
import datetime
import json
import multiprocessing as mp
import os
import re
import sys
import tempfile
import time
import traceback
from collections import Counter, deque
from pathlib import Path

import numpy as np
import onnx

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

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

# Types no TFLite builtin computes with: strings, bfloat16, complex, and uint64 (not even CAST takes it, so a
# graph cannot convert it at its boundary either).
_NO_TFLITE_TYPE = {onnx.TensorProto.STRING, onnx.TensorProto.BFLOAT16, onnx.TensorProto.COMPLEX64,
                   onnx.TensorProto.COMPLEX128, onnx.TensorProto.UINT64}
for _name in ("FLOAT8E4M3FN", "FLOAT8E4M3FNUZ", "FLOAT8E5M2", "FLOAT8E5M2FNUZ", "INT4", "UINT4", "FLOAT4E2M1",
              "FLOAT8E8M0", "INT2", "UINT2"):
    if hasattr(onnx.TensorProto, _name):
        _NO_TFLITE_TYPE.add(getattr(onnx.TensorProto, _name))


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


def _unsupported_types(model: onnx.ModelProto) -> list[str]:
    bad = set()
    for v in [*model.graph.input, *model.graph.output]:
        t = v.type
        if not t.HasField("tensor_type"):
            bad.add(t.WhichOneof("value") or "?")
        elif t.tensor_type.elem_type in _NO_TFLITE_TYPE:
            bad.add(onnx.TensorProto.DataType.Name(t.tensor_type.elem_type).lower())
    for init in model.graph.initializer:
        if init.data_type in _NO_TFLITE_TYPE:
            bad.add(onnx.TensorProto.DataType.Name(init.data_type).lower())
    for node in model.graph.node:
        for a in node.attribute:
            if a.type == onnx.AttributeProto.TENSOR and a.t.data_type in _NO_TFLITE_TYPE:
                bad.add(onnx.TensorProto.DataType.Name(a.t.data_type).lower())
            if a.name == "to" and a.type == onnx.AttributeProto.INT and a.i in _NO_TFLITE_TYPE:
                bad.add(onnx.TensorProto.DataType.Name(a.i).lower())
    return sorted(bad)


def compare(expected: np.ndarray, got: np.ndarray) -> str | None:
    """None when they match, else what differs."""
    expected, got = np.asarray(expected), np.asarray(got)
    if expected.shape != got.shape:
        return f"shape {list(got.shape)} != {list(expected.shape)}"
    if expected.dtype.kind in "fc":
        e, g = expected.astype(np.float64), got.astype(np.float64)
        if not np.array_equal(np.isnan(e), np.isnan(g)):
            return "NaN positions differ"
        ok = np.isclose(g, e, rtol=RTOL, atol=ATOL) | np.isnan(e)
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


# ---------------------------------------------------------------------------------------------- worker side

def _quiet_worker(verbose: bool) -> None:
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    if not verbose:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
    import logging

    # Not logging.disable(): LiteRT's interpreter misbehaves with logging disabled wholesale.
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    try:
        import absl.logging

        absl.logging.set_verbosity(absl.logging.ERROR)
    except ImportError:
        pass


def run_one(target, name: str, model: onnx.ModelProto, inputs: dict, outputs: dict) -> dict:
    from accelopt.converters.tf.registry import Unsupported
    from accelopt.errors import first_line

    result = {"status": "pass", "reason": "", "detail": "", "folded": False}
    bad = _unsupported_types(model)
    if bad:
        return {**result, "status": "skipped", "reason": "type", "detail": ", ".join(bad)}
    model, feeds = freeze_parameters(model, inputs)
    with tempfile.TemporaryDirectory(prefix="tflite_cov_") as tmp:
        try:
            artifact = target.lower(model, Path(tmp))
        except Exception as e:
            cause = e if isinstance(e, Unsupported) else e.__cause__
            if isinstance(cause, Unsupported) and cause.reason != "lowering_failed":
                return {**result, "status": "unsupported", "reason": cause.reason, "detail": first_line(e, 300)}
            reason = "lowering_failed" if isinstance(cause, Unsupported) else type(e).__name__
            return {**result, "status": "converter_error", "reason": reason, "detail": first_line(e, 300)}
        result["folded"] = artifact.meta.get("onnx_ops_lowered", 1) == 0
        try:
            got = target.runner(artifact, threads=1).run(feeds)
        except Exception as e:
            return {**result, "status": "runtime_error", "reason": type(e).__name__, "detail": first_line(e, 300)}
    for out_name, expected in outputs.items():
        problem = compare(expected, got[out_name])
        if problem:
            return {**result, "status": "mismatch", "reason": "numerics", "detail": f"{out_name}: {problem}"}
    return result


def worker_main(conn, verbose: bool) -> None:
    _quiet_worker(verbose)
    import onnx as _onnx

    from accelopt.targets import get_target

    import accelopt.targets.tflite  # noqa: F401  (registers the target)

    target = get_target("tflite", {"precision": "fp32"})
    while True:
        task = conn.recv()
        if task is None:
            return
        name, blob, inputs, outputs = task
        try:
            result = run_one(target, name, _onnx.load_from_string(blob), inputs, outputs)
        except Exception as e:  # the harness itself must not die on one test
            result = {"status": "converter_error", "reason": type(e).__name__,
                      "detail": traceback.format_exception_only(e)[-1].strip()[:300], "folded": False}
        conn.send(result)


class Worker:
    def __init__(self, ctx, verbose: bool):
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=worker_main, args=(child, verbose), daemon=True)
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


def run_all(tests: list[tuple], workers: int, timeout: float, verbose: bool, recycle: int = 120,
            progress=None) -> dict[str, dict]:
    """test name -> result, the tests spread over `workers` processes, one at a time each."""
    ctx = mp.get_context("spawn")
    pool = [Worker(ctx, verbose) for _ in range(max(1, workers))]
    pending = deque(tests)
    results: dict[str, dict] = {}
    try:
        while pending or any(w.task for w in pool):
            for i, w in enumerate(pool):
                if w.task is None and pending:
                    if w.done >= recycle:  # bounds the memory TF graphs pile up in one process
                        w.stop()
                        w = pool[i] = Worker(ctx, verbose)
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
                    pool[i] = Worker(ctx, verbose)
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

def summarize(rows: list[dict], claimed: set[str]) -> dict:
    per_op: dict[str, dict] = {}
    for r in rows:
        op = per_op.setdefault(r["op"], {"op": r["op"], "claimed": r["op"] in claimed, "tests": 0, **{s: 0 for s in
                                                                                                      STATUSES},
                                          "folded": 0, "reasons": Counter()})
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


def print_table(summary: dict) -> None:
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
        table = Table(title="TFLite lowering on the ONNX backend node tests")
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


def write_markdown(path: Path, summary: dict, claimed: list[str], command: str, seconds: float) -> None:
    lines = [
        "# TFLite op coverage",
        "",
        "The TFLite target's lowering (layout pass, TF emitter, TFLiteConverter with builtin ops only, fp32) on the "
        "ONNX backend node tests of onnx 1.20.1, run in the LiteRT interpreter and compared with the tests' "
        f"expected outputs (floats: rtol {RTOL:g}, atol {ATOL:g}; ints and bools exact). `*_expanded` tests are left "
        "out (they are function expansions into other ops). Inputs that are parameters in real models (shapes, "
        "axes, pads, slice bounds, Resize scales/sizes, TopK's K, weights...) are frozen into initializers with "
        "the tests' values, as the simplify step makes them in real models; data inputs stay inputs. Skipped "
        "tests use types no TFLite kernel computes with (strings, bfloat16, float8, 4-bit, complex, and uint64, "
        "which not even CAST takes).",
        "",
        f"Generated {datetime.date.today().isoformat()} with `cd benchmarks && {command}` ({seconds / 60:.1f} min, "
        f"{os.cpu_count()} CPUs).",
        "",
        f"**Op types the emitter claims: {summary['claimed_passed']}/{summary['claimed_tests']} node tests pass "
        f"({_rate(summary['claimed_rate'])})**; over every op type: {summary['all_passed']}/{summary['all_tests']}.",
        "",
        "| op | claimed | tests | passed | rate | skipped | main failure |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for o in summary["per_op"]:
        passed = str(o["pass"]) + (f" ({o['folded']} folded)" if o["folded"] else "")
        lines.append(f"| {o['op']} | {'yes' if o['claimed'] else ''} | {o['tests']} | {passed} | {_rate(o['rate'])} "
                     f"| {o['skipped'] or ''} | {o['main_failure'].replace('|', '/')} |")
    lines += ["", "## Op types without a lowering", "",
              "Op types with node tests that the emitter does not claim (a test that folds to constants may still "
              "pass):", "", ", ".join(summary["unclaimed_ops"]) or "none", "",
              "## Claimed op types", "", ", ".join(claimed), ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", help="comma-separated op types (tests whose model uses one of them)")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=180.0, help="seconds per test")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--markdown", type=Path)
    parser.add_argument("--failures", action="store_true", help="print every failing test with its reason")
    parser.add_argument("--verbose", action="store_true", help="keep the workers' TF logs")
    args = parser.parse_args()

    from accelopt.converters.tf.registry import supported_op_types

    import accelopt.converters.tf.ops  # noqa: F401  (registers the handlers; no TensorFlow import)

    claimed = supported_op_types()
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

    done = [0]

    def progress(name: str, result: dict) -> None:
        done[0] += 1
        if args.failures and result["status"] not in ("pass", "skipped"):
            print(f"  {name}: {result['status']} {result['reason']}: {result['detail']}", flush=True)
        elif done[0] % 100 == 0:
            print(f"  {done[0]}/{len(tests)} ({time.monotonic() - start:.0f} s)", flush=True)

    results = run_all(tests, args.workers, args.timeout, args.verbose, progress=progress)
    seconds = time.monotonic() - start
    rows = [{"test": name, "op": ops[name], **results[name]} for name in sorted(results)]
    summary = summarize(rows, set(claimed))
    print_table(summary)
    print(f"{len(rows)} tests in {seconds:.0f} s")
    shown, skip = [], False
    for a in sys.argv[1:]:  # the command as run, minus where the JSON went
        if skip or a.startswith("--json"):
            skip = a == "--json"
            continue
        shown.append(a)
    command = " ".join(["python tflite_coverage.py", *shown])
    if args.json:
        args.json.write_text(json.dumps({"summary": summary, "tests": rows, "seconds": seconds}, indent=1))
    if args.markdown:
        write_markdown(args.markdown, summary, claimed, command, seconds)


if __name__ == "__main__":
    main()
