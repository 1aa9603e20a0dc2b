"""The pass contract and the registry every other part reads.

A pass is a class with a `name`, a one-line `summary`, a pydantic `Config` (unknown keys rejected)
and `apply(model, config, ctx) -> model`. Registering it once (`@register`) makes it available to
recipes, to `accelopt recipes`, to the recipe schema and to the docs.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar

import onnx
from pydantic import BaseModel, ConfigDict

from accelopt.errors import RecipeError


class PassConfig(BaseModel):
    """Base of every pass config: unknown keys are an error, never silently ignored."""

    model_config = ConfigDict(extra="forbid")


@dataclass
class PassContext:
    """What a pass may use: data, shape pins, the target, a temp dir, and a place to report.

    Passes never print: `log` lines and `decide` entries end up in the step's report.
    """

    tmp_dir: Path
    calibration: Any = None  # accelopt.data.Dataset | None: what calibration-based passes fit on
    evaluation: Any = None  # accelopt.data.Dataset | None: held-out samples (labels optional) for accuracy searches
    original: Any = None  # onnx.ModelProto | None: the pipeline's input model, before any step (distill's teacher)
    task: Any = None  # accelopt.metrics.TaskSpec | None: how outputs are judged
    input_shapes: dict[str, list[int | str]] = field(default_factory=dict)
    target: Any = None  # accelopt.targets.base.Target
    threads: int | None = 1  # intra-op threads for any latency a pass measures (the recipe's validation.threads)
    cache_dir: Path | None = None  # persistent, content-keyed storage a pass may reuse (e.g. calibration ranges); None = no cache
    on_log: Callable[[str], None] | None = None
    decisions: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def log(self, message: str) -> None:
        self.notes.append(message)
        if self.on_log:
            self.on_log(message)

    def decide(self, key: str, value: Any) -> None:
        """Record a decision (what was fused, which nodes stayed float...) for the report."""
        self.decisions[key] = value


class Pass(ABC):
    name: ClassVar[str]
    summary: ClassVar[str]
    Config: ClassVar[type[PassConfig]] = PassConfig
    # Bump when the pass's output for the same input and config changes: it is part of the cache key.
    version: ClassVar[int] = 1
    # Numeric precision of the output, which picks the default comparison tolerances.
    precision: ClassVar[str] = "fp32"
    # Context a pass reads beyond the model and config ("calibration", "evaluation", "task", "threads", "original"):
    # exactly these join its cache key, so a change in unused data never forces a rerun.
    uses: ClassVar[frozenset[str]] = frozenset()

    def output_precision(self, config: PassConfig) -> str:
        """The precision this config produces (a pass whose precision depends on its mode overrides it)."""
        return self.precision

    def only_last(self, config: PassConfig) -> str | None:
        """Why this config must be the recipe's last step (its output is one no other step can read), or None."""
        return None

    @abstractmethod
    def apply(self, model: onnx.ModelProto, config: PassConfig, ctx: PassContext) -> onnx.ModelProto:
        """Return a new model; never mutate `model` in place."""


REGISTRY: dict[str, type[Pass]] = {}


def register(cls: type[Pass]) -> type[Pass]:
    if cls.name in REGISTRY:
        raise RuntimeError(f"pass {cls.name!r} registered twice")
    REGISTRY[cls.name] = cls
    return cls


def get_pass(name: str) -> type[Pass]:
    try:
        return REGISTRY[name]
    except KeyError:
        raise RecipeError(f"unknown step {name!r}; valid steps: {', '.join(sorted(REGISTRY))}") from None
