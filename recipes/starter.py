"""The commented starter recipe that `accelopt recipes init` writes, validated before it is shown."""

from __future__ import annotations

from pathlib import Path

import yaml

from accelopt.optimizers import REGISTRY
from accelopt.recipes.schema import parse_yaml, raw_recipe, validate
from accelopt.targets import get_target

_TEMPLATE = """\
# accelopt recipe (schema version 1). Check it with: accelopt recipes validate THIS_FILE
# Run it with:  accelopt convert model.onnx --recipe THIS_FILE -o out/
version: 1
name: my-model-{target}
description: What this recipe is for, in one line.

# Start from a built-in recipe and change only what differs (mappings merge, `steps` replaces):
# extends: {base}

# What the model does, so checks compare what matters:
#   classification (top-1 agreement, accuracy with labels), embedding (per-sample cosine),
#   detection (boxes and scores compared apart: set axis, boxes: [0, 4], scores: [4, null]), raw.
task:
  kind: raw

# Pin dynamic input dimensions (needed for random data and for fix-shapes):
input:
  shapes: {{}}
  #  images: [1, 3, 224, 224]

# Real data beats random: arrays named after the model inputs, first axis = samples.
# Relative paths resolve against this file's folder.
data:
  # evaluation: {{type: npz, path: eval.npz}}          # optional `labels` array enables accuracy
  # calibration: {{type: npz, path: calib.npz}}
  # evaluation: {{type: images, path: images/, size: [224, 224], mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225], labels: folders}}

# Ordered steps; each is checked against the input model. Available: {steps}
# (`accelopt recipes steps` lists every key with its default.)
# These are {base}'s.
steps:
{step_lines}

target:
  name: {target}
  options: {{}}

# How each step is checked: samples compared, latency batch/threads/runs.
validation:
  samples: 64
  latency: true
  batch: 1
  threads: 1

# CI gates: exit code 1 when one is missed. A gate that cannot be measured fails.
gates:
  min_cosine: 0.9999
  # max_accuracy_drop: 0.01   # needs task.kind classification and labels
  # min_speedup: 1.0          # output latency vs input latency on the target
  # max_size_mb: 50
"""


# The built-in recipe each target's starter takes its steps from: what that target needs (TFLite: static
# shapes and the layout step; TVM and Core ML: static shapes).
BASE = {"onnxruntime": "cpu-fp32", "tflite": "tflite-fp32", "tvm": "tvm-cpu", "coreml": "coreml-fp16"}


def _step_lines(recipe: str) -> str:
    """The recipe's steps as its file writes them (`- fuse: {ort: 'off'}`), one per line."""
    return "\n".join(f"  - {name}: {yaml.safe_dump(config or {}, default_flow_style=True, width=1000).strip()}"
                     for step in raw_recipe(recipe)["steps"] for name, config in step.items())


def starter_recipe(target: str) -> str:
    get_target(target)  # unknown target -> RecipeError naming the valid ones
    base = BASE.get(target, "cpu-fp32")
    text = _TEMPLATE.format(target=target, steps=", ".join(sorted(REGISTRY)), base=base,
                            step_lines=_step_lines(base))
    validate(parse_yaml(text), Path.cwd(), source="starter recipe")
    return text
