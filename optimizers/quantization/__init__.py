"""The machinery of the `quantize` step (optimizers/quantize.py), one concern per module: config, settings
per target profile, input checks and pre-processing, calibration, the quantizers, the speed guard's
measurements, and the accuracy search (scoring here, the search itself in fallback.py)."""
