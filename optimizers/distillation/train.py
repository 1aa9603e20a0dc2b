"""The distillation loop: Adam on the student's weights against the teacher's outputs, within an epoch and a
wall-time budget.

After every epoch the student is scored on the clean (un-augmented) calibration data and the best state is kept,
the starting state included: a run cut short by the budget, or one that overfits a small calibration set, never
returns a student further from the teacher than it started.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from accelopt.optimizers.distillation.interpreter import OnnxModule, as_tensors

if TYPE_CHECKING:
    from accelopt.optimizers.distill import DistillConfig

Arrays = dict[str, np.ndarray]
Teacher = Callable[[Arrays], Arrays]
_EVAL_BATCH = 256  # samples per forward pass when scoring; no gradients, so memory stays small


@dataclass
class Objective:
    """What the student is scored on: per output "kl" (softened class distributions) or "mse" (raw values,
    divided by the teacher's mean square so outputs of any scale weigh alike), plus optional label CE."""

    losses: dict[str, str]
    axis: int  # class axis of the KL / cross-entropy outputs
    temperature: float
    label_output: str | None = None  # the output cross-entropy reads; None = label-free
    alpha_labels: float = 0.0


@dataclass
class History:
    train_losses: list[float] = field(default_factory=list)  # mean training loss of each epoch
    eval_losses: list[float] = field(default_factory=list)  # clean calibration loss: [before, after epoch 1, ...]
    best_epoch: int = 0  # 0 = the starting weights were kept
    budget_stopped: bool = False
    seconds: float = 0.0
    masked: int = 0  # weight tensors held to their starting zeros


@contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """torch's intra-op thread count for the block (a process-wide setting, restored afterwards)."""
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _loss(student: dict[str, torch.Tensor], teacher: Arrays, scales: dict[str, float], objective: Objective,
          labels: np.ndarray | None = None) -> torch.Tensor:
    total = torch.zeros(())
    t_ = objective.temperature
    for name, kind in objective.losses.items():
        s, t = student[name], torch.from_numpy(teacher[name])
        if kind == "kl":
            kl = F.kl_div(F.log_softmax(s / t_, objective.axis), F.log_softmax(t / t_, objective.axis),
                          reduction="sum", log_target=True)
            total = total + kl * t_ * t_ / (s.numel() / s.shape[objective.axis])  # mean over distributions
        else:
            total = total + F.mse_loss(s, t) / scales[name]
    if labels is not None and objective.label_output is not None and objective.alpha_labels > 0:
        logits = torch.movedim(student[objective.label_output], objective.axis, 1)
        total = total + objective.alpha_labels * F.cross_entropy(logits, torch.from_numpy(labels).long())
    return total


def _augment(feeds: Arrays, config: DistillConfig, stds: dict[str, float], rng: np.random.Generator) -> Arrays:
    """Light, label-preserving changes to float inputs; the teacher labels the result, so none need be exact."""
    out = {}
    for name, x in feeds.items():
        if config.augment == "noise" and name in stds:
            x = (x + rng.normal(0.0, config.noise_std * stds[name], x.shape)).astype(x.dtype)
        elif config.augment == "flip" and name in stds and x.ndim == 4:
            flip = rng.random(len(x)) < 0.5
            x = np.where(flip[:, None, None, None], x[..., ::-1], x)
        out[name] = x
    return out


def _take(arrays: Arrays, index: np.ndarray) -> Arrays:
    return {k: v[index] for k, v in arrays.items()}


def evaluate(student: OnnxModule, feeds: Arrays, targets: Arrays, scales: dict[str, float],
             objective: Objective) -> float:
    """The distillation loss (no label term) over all samples: what decides which state is kept."""
    n = len(next(iter(feeds.values())))
    total = 0.0
    with torch.no_grad():
        for start in range(0, n, _EVAL_BATCH):
            index = np.arange(start, min(start + _EVAL_BATCH, n))
            batch_loss = _loss(student(as_tensors(_take(feeds, index))), _take(targets, index), scales, objective)
            total += float(batch_loss) * len(index)
    return total / n


def _zero_masks(student: OnnxModule) -> list[tuple[torch.nn.Parameter, torch.Tensor]]:
    """Weights (rank >= 2) with exact zeros: pruned or 2:4-sparse students, whose sparsity must survive."""
    return [(w, w.detach() != 0) for w in student.weights if w.dim() >= 2 and bool((w == 0).any())]


def distill(student: OnnxModule, teacher: Teacher, feeds: Arrays, clean: Arrays, labels: np.ndarray | None,
            batch_size: int, objective: Objective, config: DistillConfig, log: Callable[[str], None]) -> History:
    """Train `student` in place towards `teacher` on `feeds` (`clean`: the teacher's outputs on them, which also
    serve un-augmented batches); the student ends holding the best state seen."""
    start = time.perf_counter()
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    scales = {k: max(float(np.mean(np.square(clean[k], dtype=np.float64))), 1e-12) for k in objective.losses}
    stds = {k: float(v.std()) for k, v in feeds.items() if np.issubdtype(v.dtype, np.floating)}
    masks = _zero_masks(student) if config.keep_zeros else []
    optimizer = torch.optim.Adam(student.weights, lr=config.lr)
    history = History(masked=len(masks))
    history.eval_losses.append(evaluate(student, feeds, clean, scales, objective))
    best = [w.detach().clone() for w in student.weights]
    n = len(next(iter(feeds.values())))
    for epoch in range(1, config.epochs + 1):
        losses = []
        order = rng.permutation(n)
        for begin in range(0, n, batch_size):
            if time.perf_counter() - start > config.budget_s:
                history.budget_stopped = True
                break
            index = order[begin:begin + batch_size]
            batch = _take(feeds, index)
            if config.augment == "none":
                targets = _take(clean, index)
            else:
                batch = _augment(batch, config, stds, rng)
                targets = teacher(batch)
            loss = _loss(student(as_tensors(batch)), targets, scales, objective,
                         None if labels is None else labels[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                for weight, keep in masks:
                    weight.mul_(keep)
            losses.append(loss.item())
        if not losses:
            break
        history.train_losses.append(float(np.mean(losses)))
        score = evaluate(student, feeds, clean, scales, objective)
        history.eval_losses.append(score)
        if score < min(history.eval_losses[:-1]):
            history.best_epoch = epoch
            best = [w.detach().clone() for w in student.weights]
        log(f"distill: epoch {epoch}/{config.epochs} train loss {history.train_losses[-1]:.4g}, "
            f"calibration loss {score:.4g} ({time.perf_counter() - start:.1f} s)")
        if history.budget_stopped:
            break
    with torch.no_grad():
        for weight, value in zip(student.weights, best):
            weight.copy_(value)
    history.seconds = time.perf_counter() - start
    return history
