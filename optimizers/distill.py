"""`distill`: label-free knowledge distillation of a pruned or sparsified model against the pipeline's original.

When a least-squares refit after `prune`/`sparsify` is not enough, a few epochs of training against the original
model's outputs recover most of the rest. Quantization notes §11: a 50 %-pruned digits CNN went from 74 % to 80 %
on noisy digits after 15 epochs. Measured with this step: the digits CNN with the smaller half of every conv's
weights zeroed went from 34.9 % to 98.4 % held-out accuracy (the original: 98.9 %) in 1.5 s on its 128 unlabelled
calibration samples, zeros kept.

The student runs in torch through a small ONNX interpreter (no onnx2torch, no export): only initializer values
change, so the graph that comes out is the graph that went in. The teacher runs in ONNX Runtime on each
(augmented) batch. Needs the `[torch]` extra. Run it on the float model, before `quantize`.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any, Literal

import numpy as np
import onnx
from pydantic import Field

from accelopt.converters.onnx_io import copy_model
from accelopt.errors import ConversionError, MissingExtraError, RecipeError
from accelopt.metrics import compare_outputs, worst
from accelopt.optimizers.base import Pass, PassConfig, PassContext, register
from accelopt.optimizers.quantization.prepare import quant_ops
from accelopt.targets.base import run_all
from accelopt.targets.onnxruntime import OrtRunner

_TRAIN_DEFAULT = ["Conv", "ConvTranspose", "Gemm", "MatMul", "BatchNormalization", "LayerNormalization"]
# Largest |torch - ORT| the interpreter may show on the untrained student, relative to max(1, max |ORT|): float32
# reorderings stay near 1e-6, a wrong op semantic is far above.
_PARITY = 1e-3


class DistillConfig(PassConfig):
    epochs: int = Field(15, ge=1, description="passes over the calibration data (at most: budget_s may stop sooner)")
    budget_s: float = Field(120.0, gt=0, description="wall-time budget of the training in seconds; when it is spent "
                                                     "training stops and the best state so far is kept")
    lr: float = Field(1e-3, gt=0, description="Adam learning rate")
    batch_size: int = Field(32, ge=1, description="samples per step (a model with a static batch dimension uses "
                                                  "that instead)")
    temperature: float = Field(4.0, gt=0, description="softmax temperature of the KL loss (scaled back by T*T)")
    loss: Literal["auto", "kl", "mse"] = Field(
        "auto", description="auto: KL on the task output when task.kind is classification, else MSE; kl: KL on the "
                            "task output; mse: MSE everywhere. Other outputs (detection heads too) use MSE divided "
                            "by the teacher's mean square")
    alpha_labels: float = Field(0.0, ge=0, description="weight of cross-entropy against the calibration labels "
                                                       "(classification only); 0 = label-free")
    augment: Literal["none", "noise", "flip"] = Field(
        "noise", description="light augmentation of float inputs each step, labelled by the teacher: noise adds "
                             "Gaussian noise of noise_std times the input's std; flip mirrors a random half of 4-D "
                             "(NCHW) inputs along the width")
    noise_std: float = Field(0.05, ge=0, description="noise std as a fraction of each input's std (augment: noise)")
    samples: int | None = Field(None, ge=1, description="use at most this many calibration samples; null = all")
    seed: int = Field(0, description="seed of torch, shuffling and augmentation: same seed, same model")
    train: list[str] = Field(
        default_factory=lambda: list(_TRAIN_DEFAULT), min_length=1,
        description="op types whose float32 initializers are trained (BatchNormalization: scale and bias only; "
                    "MatMul: also the constant of an Add right after it); every other initializer stays fixed")
    keep_zeros: bool = Field(True, description="weights (rank >= 2) exactly zero at the start stay zero, so a "
                                               "pruned or 2:4-sparse student keeps its sparsity")


def _refuse_quantized(model: onnx.ModelProto) -> None:
    """Integer weights have no gradient: the float model is the one to distil, and quantize comes after."""
    found = sorted(quant_ops(model))
    if found:
        raise RecipeError(f"distill: the model is quantized ({', '.join(found)}); distil the float model, then "
                          "quantize (put distill before quantize in the recipe)")


def _machinery() -> tuple[ModuleType, ModuleType]:
    """The interpreter and training modules, which import torch: only when the step runs."""
    try:
        importlib.import_module("torch")  # a broken install fails here too, with the same remedy
    except ImportError as e:
        raise MissingExtraError("torch", "the distill step") from e
    from accelopt.optimizers.distillation import interpreter, train
    return interpreter, train


def _objective(train: ModuleType, outputs: list[str], teacher_outputs: list[str], ctx: PassContext,
               config: DistillConfig) -> Any:
    """Which loss each float output gets, from the config and the recipe's task."""
    if not outputs:
        raise RecipeError("distill: the model has no float output to match against the teacher")
    missing = sorted(set(outputs) - set(teacher_outputs))
    if missing:
        raise RecipeError(f"distill: the teacher has no output named {', '.join(missing)}; student and original "
                          "must share output names")
    kind = ctx.task.kind if ctx.task is not None else "raw"
    task_output = (ctx.task.output if ctx.task is not None else None) or outputs[0]
    if task_output not in outputs:
        raise RecipeError(f"distill: task.output {task_output!r} is not a float output of the model; "
                          f"outputs: {', '.join(outputs)}")
    if config.alpha_labels > 0 and (kind != "classification" or ctx.calibration.labels is None):
        raise RecipeError("distill: alpha_labels needs task.kind classification and labels in the calibration data")
    kl = config.loss == "kl" or (config.loss == "auto" and kind == "classification")
    return train.Objective(
        losses={name: "kl" if kl and name == task_output else "mse" for name in outputs},
        axis=ctx.task.axis if ctx.task is not None else -1, temperature=config.temperature,
        label_output=task_output if config.alpha_labels > 0 else None, alpha_labels=config.alpha_labels)


def _batch_size(runner: OrtRunner, config: DistillConfig, ctx: PassContext) -> int:
    """The model's static batch when it has one (its Reshapes may depend on it), else the configured size."""
    first = runner.inputs[0].shape[0] if runner.inputs and runner.inputs[0].shape else None
    if isinstance(first, int) and first > 0 and first != config.batch_size:
        ctx.log(f"distill: the model's batch dimension is fixed at {first}; training uses batches of {first}")
        return first
    return config.batch_size


def _check_parity(interpreter: ModuleType, student: Any, feeds: dict[str, np.ndarray],
                  expected: dict[str, np.ndarray], batch: int) -> float:
    """The interpreter must compute what ORT computes before its gradients mean anything."""
    head = {k: v[:batch] for k, v in feeds.items()}
    got = interpreter.run(student, head)
    worst_diff = 0.0
    for name, value in got.items():
        ref = expected[name][:batch].astype(np.float64)
        diff = float(np.max(np.abs(value - ref), initial=0.0))
        if diff > _PARITY * max(1.0, float(np.max(np.abs(ref), initial=0.0))):
            raise ConversionError(f"distill: the torch interpreter disagrees with onnxruntime on output {name!r} "
                                  f"(max abs diff {diff:.3g}); this is a bug in accelopt's interpreter")
        worst_diff = max(worst_diff, diff)
    return worst_diff


def _agreement(ctx: PassContext, teacher: dict[str, np.ndarray], student: dict[str, np.ndarray],
               feeds: dict[str, np.ndarray]) -> dict[str, Any]:
    metrics = worst(compare_outputs(teacher, student, task=ctx.task, feeds=feeds))
    return {"cosine": metrics["cosine"], "top1_agreement": metrics["top1_agreement"]}


@register
class Distill(Pass):
    name = "distill"
    summary = ("Label-free knowledge distillation (torch, [torch] extra) of a pruned or sparsified float model "
               "against the original, on the calibration data; only weight values change.")
    Config = DistillConfig
    uses = frozenset({"calibration", "task", "threads", "original"})

    def apply(self, model: onnx.ModelProto, config: DistillConfig, ctx: PassContext) -> onnx.ModelProto:
        if ctx.original is None:
            raise RecipeError("distill needs the original model as teacher (run it inside a recipe after "
                              "prune/sparsify)")
        _refuse_quantized(model)
        if ctx.calibration is None:
            raise RecipeError("distill needs calibration data to train on: declare data.calibration")
        interpreter, train = _machinery()
        unknown = sorted(set(config.train) - set(interpreter.OPS))
        if unknown:
            raise RecipeError(f"distill: train names op types the interpreter does not run: {', '.join(unknown)}")
        if ctx.original == model:
            ctx.log("distill: the model is still the original, so there is nothing to distil; run it after "
                    "prune/sparsify")
            ctx.decide("skipped", "the input model equals the original")
            return copy_model(model)
        names = interpreter.trainable_initializers(model, config.train)
        if not names:
            raise RecipeError(f"distill: no float32 initializer feeds a {'/'.join(config.train)} node; nothing to "
                              "train (an fp16 model? distil before fp16)")
        student = interpreter.OnnxModule(model, names)
        data = ctx.calibration.take(config.samples) if config.samples else ctx.calibration
        teacher_runner, student_runner = OrtRunner(ctx.original, ctx.threads), OrtRunner(model, ctx.threads)
        outputs = [o.name for o in student_runner.outputs if np.issubdtype(o.dtype, np.floating)]
        objective = _objective(train, outputs, [o.name for o in teacher_runner.outputs], ctx, config)
        batch = _batch_size(student_runner, config, ctx)
        labels = data.labels if config.alpha_labels > 0 else None
        with train.torch_threads(ctx.threads):
            before = run_all(student_runner, data.feeds)
            parity = _check_parity(interpreter, student, data.feeds, before, batch)
            clean = {k: v for k, v in run_all(teacher_runner, data.feeds).items() if k in objective.losses}
            history = train.distill(student, lambda feeds: run_all(teacher_runner, feeds), data.feeds, clean, labels,
                                    batch, objective, config, ctx.log)
        out = interpreter.write_back(model, student.values())
        after = run_all(OrtRunner(out, ctx.threads), data.feeds)
        ctx.decide("interpreter_max_abs_diff", parity)
        ctx.decide("trained", {"initializers": len(names), "params": int(sum(w.numel() for w in student.weights)),
                               "zero_masked_tensors": history.masked})
        ctx.decide("samples", len(data))
        ctx.decide("batch_size", batch)
        ctx.decide("loss", {"kinds": objective.losses, "train_per_epoch": [round(v, 6) for v in history.train_losses],
                            "calibration_before": history.eval_losses[0],
                            "calibration_after": min(history.eval_losses)})
        ctx.decide("epochs_run", len(history.train_losses))
        ctx.decide("best_epoch", history.best_epoch)
        ctx.decide("budget_stopped", history.budget_stopped)
        ctx.decide("seconds", round(history.seconds, 3))
        ctx.decide("teacher_agreement_before", _agreement(ctx, clean, before, data.feeds))
        ctx.decide("teacher_agreement_after", _agreement(ctx, clean, after, data.feeds))
        ctx.log(f"distill: {len(history.train_losses)} epoch(s) in {history.seconds:.1f} s"
                f"{' (budget reached)' if history.budget_stopped else ''}, calibration loss "
                f"{history.eval_losses[0]:.4g} -> {min(history.eval_losses):.4g}")
        return out
