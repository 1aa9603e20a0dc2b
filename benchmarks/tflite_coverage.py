"""Op coverage of the TFLite lowering, measured on the ONNX backend node tests (onnx 1.20.1, see
onnx_node_tests.py): each test model goes through the real target (`get_target("tflite")`, fp32: layout pass,
TF emitter, TFLiteConverter with builtin ops only), runs in the LiteRT interpreter (one thread) and is compared
with the test's expected outputs.

The harness (op_coverage.py) leaves out the ``*_expanded*`` tests, freezes parameter inputs into initializers,
compares (floats allclose with rtol 1e-3, atol 1e-4), runs the tests in worker processes with a timeout and
summarises per op type. Each test ends as one of: pass, mismatch, unsupported (the emitter has no handler, or a
handler raised `Unsupported`; its reason code is kept), converter_error (the layout pass, TF or
TFLiteConverter failed), runtime_error (LiteRT failed, crashed or the test ran past --timeout), skipped (types
no TFLite kernel computes with: strings, bfloat16, float8, 4-bit, complex, and uint64, which not even CAST
takes). A pass whose graph folded to constants entirely (no op lowered) is counted as pass and shown as folded.

The headline number is the pass rate over the tests of the op types the emitter claims
(`accelopt.converters.tf.registry.supported_op_types()`), skipped tests left out.

    cd benchmarks
    python tflite_coverage.py [--only Resize,LSTM] [--workers 2] [--json out.json] \
        [--markdown ../docs/tflite-coverage.md]
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import op_coverage  # noqa: E402
from op_coverage import Failed, lowering_failure  # noqa: E402


class TFLite(op_coverage.Backend):
    name = "TFLite"
    lowering = "the emitter"
    # uint64 too: no TFLite builtin takes it, not even CAST, so a graph cannot convert it at its boundary either.
    no_types = op_coverage.NO_EDGE_TYPES | {onnx.TensorProto.UINT64}
    skipped_types = ("types no TFLite kernel computes with (strings, bfloat16, float8, 4-bit, complex, and uint64, "
                     "which not even CAST takes)")
    ran = "run in the LiteRT interpreter"

    def claimed(self) -> list[str]:
        from accelopt.converters.tf.registry import supported_op_types

        import accelopt.converters.tf.ops  # noqa: F401  (registers the handlers; no TensorFlow import)

        return supported_op_types()

    def lowered(self) -> str:
        return ("The TFLite target's lowering (layout pass, TF emitter, TFLiteConverter with builtin ops only, "
                "fp32)")

    def start(self) -> None:
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
        import logging

        # Not logging.disable(): LiteRT's interpreter misbehaves with logging disabled wholesale.
        logging.getLogger("tensorflow").setLevel(logging.ERROR)
        try:
            import absl.logging

            absl.logging.set_verbosity(absl.logging.ERROR)
        except ImportError:
            pass
        from accelopt.targets import get_target

        import accelopt.targets.tflite  # noqa: F401  (registers the target)

        self.target = get_target("tflite", {"precision": "fp32"})

    def run_one(self, model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], bool]:
        from accelopt.errors import first_line

        with tempfile.TemporaryDirectory(prefix="tflite_cov_") as tmp:
            try:
                artifact = self.target.lower(model, Path(tmp))
            except Exception as e:
                raise lowering_failure(e) from e
            folded = artifact.meta.get("onnx_ops_lowered", 1) == 0
            try:
                got = self.target.runner(artifact, threads=1).run(feeds)
            except Exception as e:
                raise Failed("runtime_error", type(e).__name__, first_line(e, 300), folded) from e
        return got, folded


if __name__ == "__main__":
    op_coverage.main(TFLite, __doc__)
