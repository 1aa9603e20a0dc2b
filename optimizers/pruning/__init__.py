"""Structured channel pruning on ONNX graphs, split by job: which channels are coupled (`groups`), which to keep
(`criteria`), how to cut them out (`rewrite`), how to recover accuracy without training (`refit`), and how to read
intermediate tensors on calibration data (`activations`). The `prune` pass (optimizers/prune.py) drives them."""
