"""Comparing a step's outputs with the reference: per output, task-aware, Polygraphy semantics.

One number over a whole output can hide a broken model: a YOLOv8 head concatenates boxes (0..320)
and class scores (0..1), so zeroing every score still leaves the whole-tensor cosine at 0.999. The
recipe's `task:` section says what the model does, and the task output is split and scored the way
the task uses it.

Conventions (all arithmetic in float64):
- abs error = |test - ref|; rel error = abs / (|ref| + tiny), tiny = the smallest normal float64, so
  a zero reference gives a huge (never NaN) relative error and that element is judged by atol alone.
- An element fails only where abs > atol AND rel > rtol (Polygraphy's elementwise check).
- NaN and Inf must sit at the same positions with the same values in both tensors, or the output
  fails and no tolerance can pass it (min_atol = min_rtol = inf); the error statistics cover the
  elements that are finite in both.
- Integer and bool outputs are compared exactly (atol = rtol = 0).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, model_validator

from accelopt.errors import BadInputError, ConversionError, RecipeError

# precision -> (atol, rtol). Either bound passing is enough for an element (see module docstring).
DEFAULT_TOLERANCES: dict[str, tuple[float, float]] = {
    # fp32 rewrites (fusion, reordered reductions, other kernels) move results by ~1e-6 relative;
    # long accumulations reach ~1e-5 absolute, so 1e-4/1e-3 catches real bugs without noise.
    "fp32": (1e-4, 1e-3),
    # fp16 keeps 11 significant bits (unit roundoff ~4.9e-4) and rounds after every op.
    "fp16": (1e-2, 1e-2),
    # int8: one quantization step is ~1/255 of a tensor's range and errors compound over layers;
    # elementwise bounds are loose here on purpose, cosine/SQNR/top-1 carry the real judgement.
    "int8": (5e-2, 1e-1),
    # int4 (weight-only, e.g. MatMulNBits): 16 levels per block, several times int8's step.
    "int4": (1e-1, 2e-1),
}

_TINY = np.finfo(np.float64).tiny


class TaskSpec(BaseModel):
    """The recipe's `task:` section: which output the task reads and how to score it."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["classification", "detection", "embedding", "raw"] = "raw"
    output: str | None = None  # None = the first output
    axis: int = -1  # class axis (classification) / box+score axis (detection)
    boxes: tuple[int, int] | None = None  # detection: [start, end) along axis holding box coords
    scores: tuple[int, int | None] | None = None  # detection: [start, end) of class scores
    top_k: int = 5  # detection: class agreement on the top-k rows by reference score
    # embedding: the input holding the attention mask ([samples, tokens], nonzero = real token); the cosine is
    # then taken per real token, since padding positions are never read downstream and may differ freely
    mask_input: str | None = None

    @model_validator(mode="after")
    def _detection_needs_slices(self) -> TaskSpec:
        if self.kind == "detection" and (self.boxes is None or self.scores is None):
            raise ValueError("task kind 'detection' needs both 'boxes' and 'scores' slices, e.g. [0, 4] and [4, null]")
        if self.top_k < 1:
            raise ValueError("top_k must be at least 1")
        return self


@dataclass
class OutputMetrics:
    name: str  # output name, or "name[boxes]" / "name[scores]" for detection parts
    shape: list[int]
    max_abs: float
    max_rel: float
    mean_abs: float
    cosine: float  # flattened; for embeddings the minimum per-sample cosine
    sqnr_db: float  # inf when identical
    top1_agreement: float | None
    atol: float
    rtol: float
    min_atol: float  # smallest atol that passes at this rtol
    min_rtol: float  # smallest rtol that passes at this atol
    passed: bool
    cosine_mean: float | None = None  # embeddings: mean per-sample cosine
    nonfinite: int = 0  # positions where one side is NaN/Inf and the other is not (or another Inf)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def compare_outputs(
    ref: dict[str, np.ndarray],
    test: dict[str, np.ndarray],
    task: TaskSpec | None = None,
    precision: str = "fp32",
    atol: float | None = None,
    rtol: float | None = None,
    feeds: dict[str, np.ndarray] | None = None,
) -> list[OutputMetrics]:
    """Metrics per output in `ref`'s order; the task output is scored the way the task reads it.
    `feeds` (the inputs both ran on) is needed only for an embedding task with a `mask_input`."""
    atol, rtol = _tolerances(precision, atol, rtol)
    task = task or TaskSpec()
    task_output = _task_output(ref, task)
    results: list[OutputMetrics] = []
    for name, r in ref.items():
        r = np.asarray(r)
        t = _matching(name, r, test)
        if name == task_output and task.kind == "detection":
            results.extend(_detection_metrics(name, r, t, task, atol, rtol))
            continue
        m = _metrics(name, r, t, atol, rtol)
        if name == task_output and task.kind == "classification":
            m.top1_agreement = _argmax_agreement(r, t, _axis(task.axis, r.ndim, name))
        elif name == task_output and task.kind == "embedding":
            m.cosine, m.cosine_mean = _per_sample_cosine(*_valid_tokens(r, t, task, feeds))
        results.append(m)
    return results


def accuracy(logits: np.ndarray, labels: np.ndarray, axis: int = -1) -> float:
    """Top-1 accuracy against integer class labels, or one-hot labels shaped like `logits`."""
    logits = np.asarray(logits)
    labels = np.asarray(labels)
    pred = np.argmax(logits, axis=axis)
    if labels.shape == logits.shape:  # one-hot
        labels = np.argmax(labels, axis=axis)
    labels = labels.reshape(pred.shape) if labels.size == pred.size else labels
    if labels.shape != pred.shape or pred.size == 0:
        raise BadInputError(
            f"labels of shape {list(labels.shape)} do not fit predictions of shape {list(pred.shape)}")
    return float(np.mean(pred == labels))


def worst(metrics: list[OutputMetrics]) -> dict[str, Any]:
    """The worst value of each metric over all outputs: what a gate or a one-line summary reads."""
    top1 = [m.top1_agreement for m in metrics if m.top1_agreement is not None]
    return {
        "cosine": min((m.cosine for m in metrics), default=None),
        "sqnr_db": min((m.sqnr_db for m in metrics), default=None),
        "max_abs": max((m.max_abs for m in metrics), default=None),
        "top1_agreement": min(top1, default=None),
        "passed": all(m.passed for m in metrics),
    }


def _tolerances(precision: str, atol: float | None, rtol: float | None) -> tuple[float, float]:
    if precision not in DEFAULT_TOLERANCES:
        raise RecipeError(f"unknown precision {precision!r}; valid: {', '.join(DEFAULT_TOLERANCES)}")
    default_atol, default_rtol = DEFAULT_TOLERANCES[precision]
    return (default_atol if atol is None else atol), (default_rtol if rtol is None else rtol)


def _task_output(ref: dict[str, np.ndarray], task: TaskSpec) -> str | None:
    """The output the task applies to; a name the model lacks is a recipe error."""
    if task.output is None:
        return next(iter(ref), None)
    if task.output not in ref:
        raise RecipeError(f"task.output {task.output!r} is not an output of the model; outputs: {', '.join(ref)}")
    return task.output


def _matching(name: str, r: np.ndarray, test: dict[str, np.ndarray]) -> np.ndarray:
    if name not in test:
        raise ConversionError(f"output {name!r} is missing from the converted model's outputs")
    t = np.asarray(test[name])
    if t.shape != np.shape(r):
        raise ConversionError(f"output {name!r} has shape {list(t.shape)}, reference has {list(np.shape(r))}")
    return t


def _axis(axis: int, ndim: int, name: str) -> int:
    if not -ndim <= axis < ndim:
        raise RecipeError(f"task.axis {axis} is out of range for output {name!r} of rank {ndim}")
    return axis % ndim


def _metrics(name: str, ref: np.ndarray, test: np.ndarray, atol: float, rtol: float) -> OutputMetrics:
    """Error statistics and the pass/fail verdict of one tensor pair."""
    ref = np.asarray(ref)
    if ref.dtype.kind in "biu":  # integers and bools: exact comparison
        atol, rtol = 0.0, 0.0
    r = ref.astype(np.float64)
    t = np.asarray(test).astype(np.float64)
    nonfinite_ok = _nonfinite_match(r, t)
    finite = np.isfinite(r) & np.isfinite(t)
    r, t = r[finite], t[finite]
    abs_err = np.abs(t - r)
    rel_err = abs_err / (np.abs(r) + _TINY)
    min_atol, min_rtol = _min_tolerances(abs_err, rel_err, atol, rtol)
    if not nonfinite_ok:
        min_atol = min_rtol = math.inf
    # A NaN or Inf the reference does not have is the worst error there is: the statistics over the finite
    # positions alone would call an all-NaN output identical (cosine 1.0).
    bad = 0 if nonfinite_ok else _nonfinite_mismatches(ref.astype(np.float64), np.asarray(test, np.float64))
    return OutputMetrics(
        name=name,
        shape=list(ref.shape),
        max_abs=_max(abs_err) if not bad else math.inf,
        max_rel=_max(rel_err) if not bad else math.inf,
        mean_abs=(float(abs_err.mean()) if abs_err.size else 0.0) if not bad else math.inf,
        cosine=_cosine(r, t) if not bad else 0.0,
        sqnr_db=_sqnr_db(r, t) if not bad else -math.inf,
        top1_agreement=None,
        atol=atol,
        rtol=rtol,
        min_atol=min_atol,
        min_rtol=min_rtol,
        passed=nonfinite_ok and not bool(np.any((abs_err > atol) & (rel_err > rtol))),
        nonfinite=bad,
    )


def _nonfinite_match(r: np.ndarray, t: np.ndarray) -> bool:
    """NaN/Inf at the same positions, infinities of the same sign."""
    r_bad, t_bad = ~np.isfinite(r), ~np.isfinite(t)
    if not np.array_equal(r_bad, t_bad):
        return False
    return bool(np.array_equal(r[r_bad], t[t_bad], equal_nan=True))


def _nonfinite_mismatches(r: np.ndarray, t: np.ndarray) -> int:
    """How many positions differ in their NaN/Inf (NaN where the reference is finite, an Inf of the other sign)."""
    r_bad, t_bad = ~np.isfinite(r), ~np.isfinite(t)
    same = (r_bad == t_bad) & (~r_bad | (np.isnan(r) & np.isnan(t)) | (r == t))
    return int((~same).sum())


def _min_tolerances(abs_err: np.ndarray, rel_err: np.ndarray, atol: float, rtol: float) -> tuple[float, float]:
    """The exact thresholds: the largest error among the elements the other bound does not excuse."""
    return _max(abs_err[rel_err > rtol]), _max(rel_err[abs_err > atol])


def _max(a: np.ndarray) -> float:
    return float(a.max()) if a.size else 0.0


def _cosine(r: np.ndarray, t: np.ndarray) -> float:
    """Cosine similarity of the flattened tensors; a zero reference matches only a zero test."""
    r, t = r.ravel(), t.ravel()
    if np.array_equal(r, t):
        return 1.0
    nr, nt = np.linalg.norm(r), np.linalg.norm(t)
    if nr == 0.0 or nt == 0.0:
        return 0.0
    return float(np.clip(np.dot(r, t) / (nr * nt), -1.0, 1.0))


def _finite_cosine(r: np.ndarray, t: np.ndarray) -> float:
    """Cosine over the positions finite in both; 0 when their NaN/Inf differ (see _metrics)."""
    if not _nonfinite_match(r, t):
        return 0.0
    finite = np.isfinite(r) & np.isfinite(t)
    return _cosine(r[finite], t[finite])


def _sqnr_db(r: np.ndarray, t: np.ndarray) -> float:
    """10*log10(signal power / error power); inf when identical, -inf for a zero signal."""
    noise = float(np.sum((t - r) ** 2))
    signal = float(np.sum(r**2))
    if noise == 0.0:
        return math.inf
    if signal == 0.0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)


def _per_sample_cosine(ref: np.ndarray, test: np.ndarray) -> tuple[float, float]:
    """(min, mean) cosine over samples along the first axis: one bad embedding must not average out."""
    r = np.asarray(ref, dtype=np.float64)
    t = np.asarray(test, dtype=np.float64)
    rows = r.shape[0] if r.ndim > 1 else 1
    values = [_finite_cosine(a, b) for a, b in zip(r.reshape(rows, -1), t.reshape(rows, -1))]
    return (min(values), float(np.mean(values))) if values else (1.0, 1.0)


def _valid_tokens(ref: np.ndarray, test: np.ndarray, task: TaskSpec,
                  feeds: dict[str, np.ndarray] | None) -> tuple[np.ndarray, np.ndarray]:
    """With a mask input: one row per real token ([tokens, hidden]); otherwise the outputs as they are."""
    if task.mask_input is None or feeds is None:
        return ref, test
    if task.mask_input not in feeds:
        raise RecipeError(f"task.mask_input {task.mask_input!r} is not a model input; inputs: {', '.join(feeds)}")
    mask = np.asarray(feeds[task.mask_input]) != 0
    if mask.shape != ref.shape[:mask.ndim]:
        raise RecipeError(f"task.mask_input {task.mask_input!r} has shape {list(mask.shape)}, which does not "
                          f"lead the output's {list(ref.shape)}")
    return ref[mask], test[mask]


def _argmax_agreement(ref: np.ndarray, test: np.ndarray, axis: int) -> float:
    """Fraction of positions (samples, pixels...) whose argmax along `axis` agrees."""
    a, b = np.argmax(ref, axis=axis), np.argmax(test, axis=axis)
    return float(np.mean(a == b)) if a.size else 1.0


def _detection_metrics(
    name: str, ref: np.ndarray, test: np.ndarray, task: TaskSpec, atol: float, rtol: float
) -> list[OutputMetrics]:
    """Boxes and scores scored apart: their ranges differ by orders of magnitude."""
    assert task.boxes is not None and task.scores is not None  # TaskSpec's validator guarantees it
    axis = _axis(task.axis, ref.ndim, name)
    results = []
    for part, (start, end) in (("boxes", task.boxes), ("scores", task.scores)):
        index: list[slice] = [slice(None)] * ref.ndim
        index[axis] = slice(start, end)
        r, t = ref[tuple(index)], test[tuple(index)]
        if r.size == 0:
            raise RecipeError(f"task.{part} [{start}, {end}) selects nothing along axis {axis} of {name!r}")
        m = _metrics(f"{name}[{part}]", r, t, atol, rtol)
        if part == "scores":
            m.top1_agreement = _topk_class_agreement(r, t, axis, task.top_k)
        results.append(m)
    return results


def _topk_class_agreement(ref: np.ndarray, test: np.ndarray, axis: int, top_k: int) -> float:
    """Class agreement on each sample's top-k rows (anchors) by reference confidence.

    Rows are the positions along every axis but `axis`, grouped per sample (first axis) when the
    tensor has a batch axis besides the rows and classes.
    """
    r = np.moveaxis(np.asarray(ref, dtype=np.float64), axis, -1)
    t = np.moveaxis(np.asarray(test, dtype=np.float64), axis, -1)
    groups = r.shape[0] if r.ndim >= 3 else 1
    r = r.reshape(groups, -1, r.shape[-1])
    t = t.reshape(groups, -1, t.shape[-1])
    k = min(top_k, r.shape[1])
    top = np.argsort(-r.max(axis=-1), axis=1, kind="stable")[:, :k]
    r_cls = np.take_along_axis(r.argmax(axis=-1), top, axis=1)
    t_cls = np.take_along_axis(t.argmax(axis=-1), top, axis=1)
    return float(np.mean(r_cls == t_cls))
