"""The variants of a sweep: recipes x grid axes, expanded into self-contained build specs with labels.

A grid axis is a `--set` override with several values (`steps.quantize.calibration=minmax,entropy`);
the variants are every combination, applied on top of each recipe. Every variant is resolved here,
before any work, so a typo in a grid value fails the sweep in a second, not after an hour of builds.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from pathlib import Path

from accelopt.errors import BadInputError, GateFailed, RecipeError
from accelopt.recipes.schema import Recipe, load_recipe


class EmptyGrid(GateFailed):
    """The issue's contract: a sweep with nothing to run exits 1 (like a --pick nothing meets), not 2."""


@dataclass(frozen=True)
class GridAxis:
    key: str
    values: tuple[str, ...]


@dataclass(frozen=True)
class VariantSpec:
    """Everything one variant's build needs, as plain picklable values: the unit of work an executor
    ships (a local worker process today, a cluster worker later)."""

    label: str
    recipe: str  # built-in name or YAML path
    overrides: tuple[tuple[str, str], ...]  # this variant's grid values (key, value): what sets it apart
    common: tuple[str, ...]  # `key=value` overrides applied to every variant first
    model: Path
    out_dir: Path
    data: Path | None = None
    cache_dir: Path | None = None

    def resolve(self) -> Recipe:
        return load_recipe(self.recipe, [*self.common, *(f"{k}={v}" for k, v in self.overrides)])


def split_top_level(text: str) -> list[str]:
    """Split on commas outside brackets, so a value may be a YAML list or mapping: `[Conv,Gemm],[MatMul]`."""
    parts, depth, current = [], 0, ""
    for ch in text:
        depth += {"[": 1, "{": 1, "]": -1, "}": -1}.get(ch, 0)
        if ch == "," and depth == 0:
            parts.append(current.strip())
            current = ""
        else:
            current += ch
    parts.append(current.strip())
    return parts


def parse_grid(item: str) -> GridAxis:
    """`key.path=v1,v2,...` -> GridAxis; empty keys or values are usage errors."""
    key, sep, text = item.partition("=")
    key = key.strip()
    values = split_top_level(text) if sep else []
    if not key or not sep:
        raise BadInputError(f"--grid {item!r}: expected key.path=value1,value2,... "
                            "e.g. steps.quantize.calibration=minmax,entropy")
    if not text.strip():
        raise EmptyGrid(f"empty grid: --grid {item!r} lists no values, so there is nothing to sweep; give "
                        f"{key}=value1,value2,...")
    if "" in values:
        raise BadInputError(f"--grid {item!r}: empty value in the list")
    if len(set(values)) != len(values):
        raise BadInputError(f"--grid {item!r}: a value is listed twice")
    return GridAxis(key, tuple(values))


def parse_recipes(text: str) -> list[str]:
    names = [r.strip() for r in text.split(",")]
    if not text.strip() or "" in names:
        raise BadInputError(f"--recipes {text!r}: expected recipe names or paths separated by commas, "
                            "e.g. cpu-fp32,cpu-int8")
    return names


def expand(recipes: list[str], axes: list[GridAxis], common: list[str], model: Path, out_dir: Path,
           data: Path | None, cache_dir: Path | None) -> list[VariantSpec]:
    """Every recipe x every grid combination, each resolved once to fail early on a bad recipe or value."""
    keys = [a.key for a in axes]
    if len(set(keys)) != len(keys):
        raise BadInputError(f"--grid: an axis is given twice ({', '.join(keys)})")
    names = _axis_names(keys)
    recipe_labels = _recipe_labels(recipes) if len(recipes) > 1 or not axes else [""] * len(recipes)
    specs: list[VariantSpec] = []
    labels: set[str] = set()
    slugs: set[str] = set()
    for recipe, recipe_label in zip(recipes, recipe_labels):
        for combo in itertools.product(*(a.values for a in axes)):
            grid_label = ",".join(f"{n}={v}" for n, v in zip(names, combo))
            label = _unique(" ".join(p for p in (recipe_label, grid_label) if p), labels)
            spec = VariantSpec(label=label, recipe=recipe, overrides=tuple(zip(keys, combo)), common=tuple(common),
                               model=model, out_dir=out_dir / "variants" / _unique(_slug(label), slugs), data=data,
                               cache_dir=cache_dir)
            try:
                spec.resolve()
            except RecipeError as e:
                raise RecipeError(f"variant {label!r}: {e}") from None
            specs.append(spec)
    return specs


def _axis_names(keys: list[str]) -> list[str]:
    """Short names for labels: the last key segment, or the whole key where two axes share it."""
    tails = [k.rsplit(".", 1)[-1] for k in keys]
    return [t if tails.count(t) == 1 else k.removeprefix("steps.") for t, k in zip(tails, keys)]


def _recipe_labels(recipes: list[str]) -> list[str]:
    """A built-in's name, a file's stem; the full reference where two stems collide."""
    stems = [Path(r).stem for r in recipes]
    return [s if stems.count(s) == 1 else r for s, r in zip(stems, recipes)]


def _slug(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", label.replace("=", "-").replace(",", "_").replace(" ", "_")) or "variant"


def _unique(name: str, seen: set[str]) -> str:
    candidate, n = name, 2
    while candidate in seen:
        candidate, n = f"{name}-{n}", n + 1
    seen.add(candidate)
    return candidate
