"""ONNX -> ONNX passes. Importing this package registers every built-in pass (see `base.REGISTRY`)."""

from accelopt.optimizers.base import REGISTRY, Pass, PassConfig, PassContext, get_pass, register
from accelopt.optimizers import fix_shapes, fp16, fuse, simplify  # noqa: F401,E402  (registers the passes)

__all__ = ["REGISTRY", "Pass", "PassConfig", "PassContext", "get_pass", "register"]
