"""ONNX -> ONNX passes. Importing this package registers every pass module in it (see `base.REGISTRY`):
adding a step is adding one module that defines a `@register`ed Pass."""

import importlib
import pkgutil

from accelopt.optimizers.base import REGISTRY, Pass, PassConfig, PassContext, get_pass, register

for _module in pkgutil.iter_modules(__path__):
    if _module.name != "base":
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["REGISTRY", "Pass", "PassConfig", "PassContext", "get_pass", "register"]
