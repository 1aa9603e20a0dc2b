"""The machinery of the `distill` step (optimizers/distill.py), one concern per module: the ONNX->torch
interpreter that makes a model's weights trainable and writes them back (interpreter.py), and the training
loop against the teacher's outputs (train.py). Both need the `[torch]` extra; nothing here imports torch until
the step runs."""
