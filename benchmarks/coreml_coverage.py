"""Op coverage of the Core ML lowering, measured on the ONNX backend node tests (onnx 1.20.1, see
onnx_node_tests.py): each test model is translated to MIL (`accelopt.converters.mil.translator.translate`, for
--target), converted to an ML Program by coremltools (`ct.convert` with its pass pipeline, --precision), run by
accelopt's numpy MIL evaluator and compared with the test's expected outputs.

Core ML's own predict needs macOS, so on Linux the evaluator runs the program coremltools produced (after its
passes and fp16 casts): it checks the ONNX -> MIL translation and coremltools' rewrites, not Apple's kernels.
The harness (op_coverage.py) leaves out the ``*_expanded*`` tests, freezes parameter inputs into initializers,
compares (floats allclose: fp32 rtol 1e-3, atol 1e-4; fp16 rtol 1e-2, atol 1e-2), runs the tests in worker
processes with a timeout and summarises per op type. Each test ends as one of: pass, mismatch, unsupported (the
translator raised `Unsupported`: no handler, an attribute value or type Core ML lacks, a newer deployment
target needed; its reason code is kept), converter_error (the translator failed otherwise, e.g. MIL rejected
what a handler built, or ct.convert failed), runtime_error (the evaluator failed, crashed or the test ran past --timeout), no_kernel (the evaluator
has no kernel for a MIL op in the converted program; the MIL op is the reason), skipped (types Core ML lacks:
strings, bfloat16, float8, 4-bit, complex).

The headline number is the pass rate over the tests of the op types the translator claims
(`accelopt.converters.mil.registry.supported_op_types()`), skipped tests left out.

    cd benchmarks
    python coreml_coverage.py [--only Add,Relu,Conv] [--target iOS18] [--precision fp32] [--workers 2] \
        [--json out.json] [--markdown ../docs/coreml-coverage.md]
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import onnx

sys.path.insert(0, str(Path(__file__).parent))

import op_coverage  # noqa: E402
from op_coverage import Failed, lowering_failure  # noqa: E402

from accelopt.converters.mil import DEPLOYMENT_TARGETS, MACOS, canonical_target  # noqa: E402  (no coremltools)

# Per precision: rtol, atol. fp16 computes with 11-bit mantissas, so a few ulp of a value near 1 are ~1e-3.
TOLERANCE = {"fp32": (op_coverage.RTOL, op_coverage.ATOL), "fp16": (1e-2, 1e-2)}


class CoreML(op_coverage.Backend):
    name = "Core ML"
    lowering = "the translator"
    skipped_types = "types Core ML has no tensors of (strings, bfloat16, float8, 4-bit, complex)"
    ran = "run by accelopt's numpy MIL evaluator (not by Core ML: see below)"
    statuses = ["pass", "mismatch", "unsupported", "converter_error", "runtime_error", "no_kernel", "skipped"]

    @staticmethod
    def add_arguments(parser) -> None:
        parser.add_argument("--target", default="iOS18", choices=[*DEPLOYMENT_TARGETS, *MACOS], metavar="TARGET",
                            help="the Core ML deployment target the models are lowered for, one of %(choices)s: "
                                 "ops and attributes a newer target added pass only from it on (default: "
                                 "%(default)s)")
        parser.add_argument("--precision", default="fp32", choices=list(TOLERANCE),
                            help="ct.convert's compute precision; fp16 outputs are compared with rtol and atol "
                                 "1e-2 instead of fp32's 1e-3 and 1e-4 (default: %(default)s)")

    def claimed(self) -> list[str]:
        from accelopt.converters.mil.registry import supported_op_types

        import accelopt.converters.mil.ops  # noqa: F401  (registers the handlers; no coremltools import)

        return supported_op_types()

    def tolerance(self) -> tuple[float, float]:
        return TOLERANCE[self.options["precision"]]

    def lowered(self) -> str:
        return (f"The Core ML target's lowering (MIL translator, ct.convert to an ML Program with coremltools' "
                f"pass pipeline, {self.options['precision']}, deployment target {self.options['target']})")

    def notes(self) -> list[str]:
        return ["Core ML itself did not run these models: its predict needs macOS, and this page is made on Linux. "
                "accelopt's numpy MIL evaluator ran the program coremltools produced, after its pass pipeline "
                "(fusions, constant folding, fp16 casts), so a pass checks the ONNX -> MIL translation and "
                "coremltools' rewrites, not Apple's kernels or the Neural Engine's arithmetic. `no_kernel` counts "
                "tests whose converted program has a MIL op the evaluator has no kernel for (the op is the "
                "reason): a gap of the checker, not necessarily of the lowering."]

    def start(self) -> None:
        from accelopt.converters.mil import load_ct

        load_ct()  # coremltools with its import chatter off (untested-version warnings, _MLModelProxy, tqdm)

    def run_one(self, model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], bool]:
        from accelopt.converters.mil.evaluate import EvaluatorGap
        from accelopt.converters.mil.translator import translate
        from accelopt.errors import first_line
        from accelopt.targets.coreml.convert import to_mlmodel
        from accelopt.targets.coreml.runner import MilRunner

        try:
            translated = translate(model, canonical_target(self.options["target"]))
        except Exception as e:
            raise lowering_failure(e) from e
        folded = not translated.ops
        io = {"inputs": [s.to_dict() for s in translated.inputs],
              "outputs": [s.to_dict() for s in translated.outputs]}
        try:
            mlmodel = to_mlmodel(translated, self.options["precision"])
        except Exception as e:
            raise Failed("converter_error", type(e).__name__, "ct.convert: " + first_line(e, 300), folded) from e
        try:
            got = MilRunner(mlmodel._mil_program, io).run(feeds)
        except EvaluatorGap as e:
            op = re.search(r"no kernel for (\S+)", str(e))
            raise Failed("no_kernel", op.group(1) if op else "EvaluatorGap", first_line(e, 300), folded) from e
        except Exception as e:
            raise Failed("runtime_error", type(e).__name__, first_line(e, 300), folded) from e
        return got, folded


if __name__ == "__main__":
    op_coverage.main(CoreML, __doc__)
