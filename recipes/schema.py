"""The recipe: a versioned, pydantic-validated YAML file, resolved once before any work starts.

Resolution: built-in base (`extends`) <- the recipe file <- `--set key=value` overrides. Mappings
merge key by key; lists (notably `steps`) replace. Every step's config is validated by the pass's
own `Config`, read from the registry, so a misspelt key fails here naming the valid ones.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from accelopt.data import DataConfig
from accelopt.errors import RecipeError
from accelopt.metrics import TaskSpec
from accelopt.optimizers import REGISTRY, get_pass

BUILTIN_DIR = Path(__file__).parent
SCHEMA_VERSION = 1


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class InputSpec(_Strict):
    shapes: dict[str, list[int]] = Field(default_factory=dict,
                                         description="pin input shapes, e.g. {input: [1, 3, 224, 224]}")


class ValidationSpec(_Strict):
    samples: int = Field(64, gt=0, description="evaluation samples compared after every step")
    latency: bool = Field(True, description="measure latency after every step")
    batch: int = Field(1, gt=0, description="batch size for latency")
    threads: int | None = Field(1, gt=0, description="intra-op threads for latency (null: runtime default)")
    warmup: int = Field(5, ge=0)
    runs: int = Field(50, gt=0, description="timed runs per round; three rounds, interleaved across models")


class TargetSpec(_Strict):
    name: str = "onnxruntime"
    options: dict[str, Any] = Field(default_factory=dict)


class Gates(_Strict):
    min_cosine: float | None = Field(None, description="every compared output's cosine vs the input model")
    min_sqnr_db: float | None = Field(None, description="every compared output's SQNR vs the input model")
    min_top1_agreement: float | None = Field(
        None, description="top-1 agreement with the input model (classification: per sample; detection: class "
                          "of the top-k anchors); needs task kind classification or detection")
    max_accuracy_drop: float | None = Field(None, description="task accuracy drop (0.01 = 1 point); needs labels")
    min_speedup: float | None = Field(None, description="input latency / output latency on the target")
    max_size_mb: float | None = Field(None, description="artifact size in MB (10^6 bytes)")


class Step(_Strict):
    """One resolved step: the pass name and its validated config."""

    name: str
    config: dict[str, Any] = Field(default_factory=dict)


class Recipe(_Strict):
    version: Literal[1] = 1
    name: str = "custom"
    description: str = ""
    extends: str | None = None
    task: TaskSpec = Field(default_factory=TaskSpec)
    input: InputSpec = Field(default_factory=InputSpec)
    data: DataConfig = Field(default_factory=DataConfig)
    steps: list[Step] = Field(default_factory=list)
    target: TargetSpec = Field(default_factory=TargetSpec)
    validation: ValidationSpec = Field(default_factory=ValidationSpec)
    gates: Gates = Field(default_factory=Gates)
    # Where relative data paths resolve: the recipe file's folder (cwd for built-ins).
    base_dir: Path = Field(default_factory=Path.cwd, exclude=True)

    @field_validator("steps", mode="before")
    @classmethod
    def _steps_from_yaml(cls, v: Any) -> Any:
        if not isinstance(v, list):
            raise ValueError("steps must be a list of {step-name: config} entries")
        return [_parse_step(i, s) for i, s in enumerate(v)]

    @model_validator(mode="after")
    def _last_only_steps_are_last(self) -> Recipe:
        for i, step in enumerate(self.steps[:-1]):
            pass_cls = get_pass(step.name)
            why = pass_cls().only_last(pass_cls.Config.model_validate(step.config))
            if why:
                raise ValueError(f"steps[{i}].{step.name} must be the last step: {why}")
        return self

    def to_yaml_dict(self) -> dict[str, Any]:
        """The fully resolved recipe as the user would write it (what --emit-recipe prints)."""
        d = self.model_dump(mode="json", exclude={"base_dir"}, exclude_none=True)
        d["steps"] = [{s.name: s.config} for s in self.steps]
        d.pop("extends", None)
        return d


def _parse_step(index: int, entry: Any) -> Any:
    if isinstance(entry, Step):
        return entry
    if isinstance(entry, dict) and set(entry) == {"name", "config"}:
        entry = {entry["name"]: entry["config"]}
    if isinstance(entry, str):
        entry = {entry: {}}
    if not isinstance(entry, dict) or len(entry) != 1:
        raise ValueError(f"steps[{index}] must be one {{step-name: config}} mapping, got {entry!r}")
    (name, cfg), = entry.items()
    pass_cls = get_pass(name)
    try:
        config = pass_cls.Config.model_validate(cfg or {})
    except ValidationError as e:
        raise RecipeError(_one_line(e, f"steps[{index}].{name}", pass_cls.Config)) from None
    return Step(name=name, config=config.model_dump(mode="json"))


def _one_line(err: ValidationError, where: str, model: type[BaseModel]) -> str:
    """Pydantic's report in one line, with the valid keys when the problem is an unknown key."""
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first["loc"])
    path = ".".join(p for p in (where, loc) if p)
    if first["type"] == "extra_forbidden":
        valid = _valid_keys(model, first["loc"][:-1])
        return f"unknown key {path!r}; valid keys: {', '.join(valid)}"
    return f"invalid {path}: {first['msg']}"


def _valid_keys(model: type[BaseModel], loc: tuple) -> list[str]:
    """Field names of the (nested) model at `loc`; best effort through unions."""
    current: Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        field = getattr(current, "model_fields", {}).get(part)
        if field is None:
            # discriminated unions name the variant in loc (e.g. 'npz'): find it by its literal type
            variant = _union_variant(current, part)
            if variant is None:
                return []
            current = variant
            continue
        current = _model_of(field.annotation) or current
    return sorted(k for k in getattr(current, "model_fields", {}) if k != "base_dir")


def _model_of(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _model_of(arg)
        if found is not None:
            return found
    return None


def _union_variant(current: Any, tag: Any) -> type[BaseModel] | None:
    for field in getattr(current, "model_fields", {}).values():
        for arg in _flatten(field.annotation):
            if isinstance(arg, type) and issubclass(arg, BaseModel):
                t = arg.model_fields.get("type")
                if t is not None and tag in getattr(t.annotation, "__args__", ()):
                    return arg
    return None


def _flatten(annotation: Any) -> list[Any]:
    args = getattr(annotation, "__args__", None)
    if not args:
        return [annotation]
    out = []
    for a in args:
        out.extend(_flatten(a))
    return out


# --- loading -------------------------------------------------------------------------------------

class _Loader(yaml.SafeLoader):
    """YAML 1.2 booleans and integers. YAML 1.1 would read `ort: off` or `mode: no` as False, and an unquoted
    `pattern: 2:4` as the base-60 integer 124."""


_YAML12 = {"tag:yaml.org,2002:bool", "tag:yaml.org,2002:int"}
_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag not in _YAML12]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                              list("tTfF"))
_Loader.add_implicit_resolver("tag:yaml.org,2002:int", re.compile(r"^(?:[-+]?(?:0|[1-9][0-9]*)|0x[0-9a-fA-F]+)$"),
                              list("-+0123456789"))


def parse_yaml(text: str):
    return yaml.load(text, Loader=_Loader)  # noqa: S506 (a SafeLoader subclass)


def builtin_names() -> list[str]:
    return sorted(p.stem for p in BUILTIN_DIR.glob("*.yaml"))


def builtin_path(name: str) -> Path:
    p = BUILTIN_DIR / f"{name}.yaml"
    if not p.exists():
        raise RecipeError(f"unknown recipe {name!r}; built-in recipes: {', '.join(builtin_names())} "
                          "(or give a path to a .yaml file)")
    return p


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise RecipeError(f"recipe not found: {path}") from None
    except (IsADirectoryError, UnicodeDecodeError) as e:
        raise RecipeError(f"cannot read recipe {path}: {e}") from None
    try:
        raw = parse_yaml(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise RecipeError(f"{path} is not valid YAML{where}: {getattr(e, 'problem', e)}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise RecipeError(f"{path}: a recipe is a YAML mapping, got {type(raw).__name__}")
    return raw


def _locate(ref: str) -> tuple[Path, bool]:
    """A recipe reference is a built-in name or a path; returns (path, is_builtin)."""
    p = Path(ref)
    if p.suffix in {".yaml", ".yml"} or p.exists() or "/" in ref:
        return p, False
    return builtin_path(ref), True


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict) and k != "steps":
            out[k] = _merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _raw_resolved(ref: str, seen: tuple[str, ...] = ()) -> tuple[dict[str, Any], Path]:
    path, is_builtin = _locate(ref)
    raw = read_yaml(path)
    parent = raw.get("extends")
    base_dir = Path.cwd() if is_builtin else path.resolve().parent
    if parent:
        if parent in seen:
            raise RecipeError(f"recipe {ref!r} extends itself through {' -> '.join(seen)}")
        base, _ = _raw_resolved(str(parent), seen + (ref,))
        raw = _merge(base, raw)
    return raw, base_dir


def raw_recipe(ref: str) -> dict[str, Any]:
    """A recipe as written (its `extends` chain merged), before validation fills in defaults."""
    return _raw_resolved(ref)[0]


def load_recipe(ref: str, overrides: list[str] | None = None) -> Recipe:
    """Resolve a built-in name or a path, apply `--set` overrides, validate everything."""
    raw, base_dir = _raw_resolved(ref)
    for item in overrides or []:
        apply_override(raw, item)
    return validate(raw, base_dir, source=ref)


def validate(raw: dict[str, Any], base_dir: Path, source: str = "recipe") -> Recipe:
    if "version" in raw and raw["version"] != SCHEMA_VERSION:
        raise RecipeError(f"{source}: recipe version {raw['version']!r} is not supported "
                          f"(this accelopt reads version {SCHEMA_VERSION})")
    # A section left with only comments (`data:`) is null in YAML: read it as "use the defaults".
    present = {k: v for k, v in raw.items() if v is not None}
    try:
        return Recipe.model_validate({**present, "base_dir": base_dir})
    except ValidationError as e:
        raise RecipeError(f"{source}: {_one_line(e, '', Recipe)}") from None
    except RecipeError as e:  # raised by a step's own Config validation, already one line
        raise RecipeError(f"{source}: {e}") from None


def apply_override(raw: dict[str, Any], item: str) -> None:
    """Apply one `key.path=value` (value parsed as YAML). Steps are addressed by name or index:
    `steps.fuse.ort=off` or `steps.1.ort=off`."""
    if "=" not in item:
        raise RecipeError(f"--set {item!r}: expected key.path=value")
    key, _, text = item.partition("=")
    try:
        value = parse_yaml(text) if text else ""
    except yaml.YAMLError:
        value = text
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise RecipeError(f"--set {item!r}: empty key")
    if parts[0] == "steps" and len(parts) >= 3:
        entry = _find_step(raw.get("steps") or [], parts[1], item)
        node = entry
        parts = parts[2:]
    else:
        node = raw
    for p in parts[:-1]:
        nxt = node.get(p)
        if nxt is None:
            nxt = node[p] = {}
        if not isinstance(nxt, dict):
            raise RecipeError(f"--set {item!r}: {p!r} is not a mapping")
        node = nxt
    node[parts[-1]] = value


def _find_step(steps: list[Any], ref: str, item: str) -> dict[str, Any]:
    for i, entry in enumerate(steps):
        if isinstance(entry, str):
            entry = steps[i] = {entry: {}}
        (name, cfg), = entry.items()
        if ref == name or ref == str(i):
            if cfg is None:
                cfg = entry[name] = {}
            return cfg
    names = [next(iter(e)) if isinstance(e, dict) else e for e in steps]
    raise RecipeError(f"--set {item!r}: no step {ref!r} in this recipe; steps: {', '.join(map(str, names)) or 'none'}")


def dump_yaml(recipe: Recipe) -> str:
    return yaml.safe_dump(recipe.to_yaml_dict(), sort_keys=False)


def passes_table() -> list[dict[str, Any]]:
    """Every registered step with its config fields: what `recipes steps` and the docs show."""
    rows = []
    for name, cls in sorted(REGISTRY.items()):
        fields = {k: {"default": f.get_default(call_default_factory=True),
                      "type": _type_name(f.annotation), "help": f.description or ""}
                  for k, f in cls.Config.model_fields.items()}
        rows.append({"name": name, "summary": cls.summary, "version": cls.version, "config": fields})
    return rows


def _type_name(annotation: Any) -> str:
    """A readable type for docs and tables: literals list their choices, optionals end in `| null`."""
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Annotated:  # PositiveInt and friends: the base type is what a user writes
        return _type_name(args[0])
    if origin is Literal:
        return " | ".join(str(a) for a in args)
    if origin in (Union, UnionType):
        return " | ".join("null" if a is type(None) else _type_name(a) for a in args)
    if origin in (dict, list, tuple):
        return f"{origin.__name__}[{', '.join(_type_name(a) for a in args)}]"
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def passes_markdown() -> str:
    """docs/steps.md: generated from the registry, so the docs cannot drift from the code."""
    lines = ["# Steps", "", "Generated by `accelopt recipes steps --markdown` from the pass registry; "
             "do not edit by hand.", ""]
    for r in passes_table():
        lines += [f"## `{r['name']}` (version {r['version']})", "", r["summary"], "",
                  "| key | type | default | meaning |", "|---|---|---|---|"]
        lines += [f"| `{k}` | {_cell(f['type'])} | `{f['default']!r}` | {_cell(f['help'])} |"
                  for k, f in r["config"].items()]
        lines.append("")
    return "\n".join(lines)
