"""The ONNX backend node tests (one small model per op and attribute case, with inputs and expected outputs),
read from the onnx 1.20.1 wheel: the 1.23 wheel the project installs no longer ships them. The wheel is
downloaded with ``pip download --no-deps`` into the benchmark cache (never installed over the project's onnx)
and read in place with ``zipfile``. Op coverage scripts for the TFLite and Core ML lowerings use it.

    python benchmarks/onnx_node_tests.py        # fetch once, print how many tests each op type has
"""

from __future__ import annotations

import re
import zipfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from real_models import DEFAULT_CACHE, _pip_download

ONNX_TESTS_VERSION = "1.20.1"
_ROOT = "onnx/backend/test/data/node/"
_DATA = re.compile(r"test_data_set_0/(input|output)_(\d+)\.pb$")


@dataclass
class NodeTest:
    name: str
    model: onnx.ModelProto
    inputs: dict[str, np.ndarray]
    outputs: dict[str, np.ndarray]

    @property
    def op_types(self) -> set[str]:
        return {n.op_type for n in self.model.graph.node}


def fetch_wheel(cache_dir: Path = DEFAULT_CACHE) -> Path:
    return _pip_download("onnx", ONNX_TESTS_VERSION, f"onnx-{ONNX_TESTS_VERSION}-*.whl", cache_dir)


def node_tests(cache_dir: Path = DEFAULT_CACHE, only: set[str] | None = None) -> Iterator[NodeTest]:
    """Every node test (or those whose model uses one of `only`'s op types), with its first data set.
    Tests whose tensors are sequences or optionals (not plain tensors) are skipped."""
    with zipfile.ZipFile(fetch_wheel(cache_dir)) as wheel:
        members: dict[str, list[str]] = {}
        for name in wheel.namelist():
            test, _, rest = name.removeprefix(_ROOT).partition("/")
            if name.startswith(_ROOT) and rest:
                members.setdefault(test, []).append(name)
        for test, files in sorted(members.items()):
            if f"{_ROOT}{test}/model.onnx" not in files:
                continue
            model = onnx.load_from_string(wheel.read(f"{_ROOT}{test}/model.onnx"))
            if only is not None and not ({n.op_type for n in model.graph.node} & only):
                continue
            tensors: dict[str, dict[int, np.ndarray]] = {"input": {}, "output": {}}
            try:
                for name in files:
                    if match := _DATA.search(name):
                        proto = onnx.TensorProto()
                        proto.ParseFromString(wheel.read(name))
                        tensors[match.group(1)][int(match.group(2))] = numpy_helper.to_array(proto)
            except Exception:  # a sequence or optional stored where a tensor was expected
                continue
            fed = [i.name for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}]
            if len(tensors["input"]) != len(fed) or len(tensors["output"]) != len(model.graph.output):
                continue
            yield NodeTest(test, model, {n: tensors["input"][i] for i, n in enumerate(fed)},
                           {o.name: tensors["output"][i] for i, o in enumerate(model.graph.output)})


def main() -> None:
    counts = Counter(op for test in node_tests() for op in test.op_types)
    print(f"{sum(1 for _ in node_tests())} node tests with tensor data, {len(counts)} op types")
    for op, n in sorted(counts.items()):
        print(f"{op:32s} {n}")


if __name__ == "__main__":
    main()
