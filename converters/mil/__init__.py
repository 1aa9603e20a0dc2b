"""ONNX -> Core ML's MIL: the translator (`translator.translate`), its op-handler registry (`registry`,
`ops/`), and a numpy evaluator of MIL programs (`evaluate`, `kernels/`) that checks numerics where Core ML
itself cannot run (Linux).

coremltools is the [coreml] extra and imports TensorFlow and torch when they are installed (seconds), so
nothing here imports it until a model is translated or evaluated: the registry and `check` work without it.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import os
from types import ModuleType

from accelopt.errors import MissingExtraError

# The Core ML deployment targets accelopt lowers for, oldest first (the first ML Program is iOS15), with the
# macOS release that has the same Core ML: opsets, and so op support, follow these.
DEPLOYMENT_TARGETS = ["iOS15", "iOS16", "iOS17", "iOS18", "iOS26"]
MACOS = {"macOS12": "iOS15", "macOS13": "iOS16", "macOS14": "iOS17", "macOS15": "iOS18", "macOS26": "iOS26"}


def canonical_target(name: str) -> str:
    """iOS name of a deployment target given as iOS or macOS."""
    return MACOS.get(name, name)


def target_at_least(have: str, need: str) -> bool:
    return DEPLOYMENT_TARGETS.index(canonical_target(have)) >= DEPLOYMENT_TARGETS.index(canonical_target(need))


@functools.cache
def load_ct() -> ModuleType:
    """coremltools, imported once with its start-up chatter off (untested-version warnings for every ML
    framework installed, 'Failed to load _MLModelProxy' on Linux, tqdm bars for each pass pipeline)."""
    if importlib.util.find_spec("coremltools") is None:
        raise MissingExtraError("coreml", "target coreml")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("TQDM_DISABLE", "1")
    from accelopt.isolation import quiet_native_stderr

    logger = logging.getLogger("coremltools")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with quiet_native_stderr():
            import coremltools
    finally:
        logger.setLevel(level)
    logger.setLevel(logging.ERROR)  # its passes log each rewrite at WARNING ("dtype mismatch") otherwise
    return coremltools
