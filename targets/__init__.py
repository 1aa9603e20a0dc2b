"""The target registry: recipes name a target, `get_target` builds it with validated options."""

from __future__ import annotations

import importlib.util
from typing import Any

from pydantic import ValidationError

from accelopt import __version__
from accelopt.errors import MissingExtraError, RecipeError
from accelopt.targets.base import Target

TARGETS: dict[str, type[Target]] = {}

# Targets on the roadmap, with the module and extra each needs: naming the missing extra (or saying the
# target is not in this version) beats a bare "unknown target".
PLANNED: dict[str, tuple[str, str]] = {
    "tensorrt": ("tensorrt", "tensorrt"),
}


def register_target(cls: type[Target]) -> type[Target]:
    if cls.name in TARGETS:
        raise RuntimeError(f"target {cls.name!r} registered twice")
    TARGETS[cls.name] = cls
    return cls


def get_target(name: str, options: dict[str, Any] | None = None) -> Target:
    """The named target configured with `options`; bad names and keys fail as one-line RecipeErrors."""
    if name not in TARGETS and name in PLANNED:
        module, extra = PLANNED[name]
        if importlib.util.find_spec(module) is None:
            raise MissingExtraError(extra, f"target {name}")
        raise RecipeError(f"target {name!r} is not in accelopt {__version__} yet; available: {', '.join(sorted(TARGETS))}")
    if name not in TARGETS:
        raise RecipeError(f"unknown target {name!r}; valid targets: {', '.join(sorted(TARGETS))}")
    cls = TARGETS[name]
    try:
        config = cls.Config.model_validate(options or {})
    except ValidationError as e:
        raise RecipeError(_option_error(name, cls, e)) from None
    return cls(config)


def _option_error(name: str, cls: type[Target], e: ValidationError) -> str:
    """One line naming the first bad option and the valid ones."""
    err = e.errors()[0]
    key = ".".join(str(part) for part in err["loc"]) or "options"
    valid = ", ".join(cls.Config.model_fields) or "none"
    if err["type"] == "extra_forbidden":
        return f"target {name}: unknown option {key!r}; valid options: {valid}"
    return f"target {name}: option {key!r}: {err['msg']}; valid options: {valid}"


from accelopt.targets import coreml, onnxruntime, tflite, tvm  # noqa: E402,F401  (register themselves)
