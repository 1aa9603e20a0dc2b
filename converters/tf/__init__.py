"""ONNX -> TensorFlow: the emitter (`emitter.emit`) and its op-handler registry (`registry`, `ops/`).

TensorFlow is the [tflite] extra and takes seconds to import, so nothing here imports it until a model is
emitted: the registry (which ops are claimed) and `check` work without it.
"""

from __future__ import annotations

import importlib.util
import os
from types import ModuleType

from accelopt.errors import MissingExtraError


def load_tf() -> ModuleType:
    """TensorFlow, imported once with its C++ start-up logging off; a one-line error when it is missing."""
    if importlib.util.find_spec("tensorflow") is None:
        raise MissingExtraError("tflite", "target tflite")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from accelopt.isolation import quiet_native_stderr

    with quiet_native_stderr():  # absl's start-up lines ("This TensorFlow binary is optimized...") go to fd 2
        import tensorflow
    return tensorflow
