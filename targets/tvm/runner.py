"""Runs model.so in TVM's Relax VM with OrtRunner's interface, so validation and timing treat both alike."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from accelopt.errors import BadInputError, ConversionError, first_line
from accelopt.targets.base import LatencyStats, wall_clock_bench
from accelopt.targets.tvm.env import import_tvm
from accelopt.targets.tvm.lower import device_kind, read_io


class TvmRunner:
    """One VM over one library; the thread pool is set to `threads` (it can only shrink: env.import_tvm)."""

    def __init__(self, library: Path, threads: int | None = None):
        tvm = import_tvm()
        from tvm import relax

        library = Path(library)
        self.inputs, self.outputs = read_io(library)
        if threads is not None:
            tvm.get_global_func("runtime.config_threadpool")(1, threads)
        self.threads = int(tvm.runtime.num_threads())
        self._tvm = tvm
        self._dev = tvm.cuda(0) if device_kind(library) == "cuda" else tvm.cpu(0)
        self._main = relax.VirtualMachine(tvm.runtime.load_module(str(library)), self._dev)["main"]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Output name -> array, in the model's output order."""
        missing = [s.name for s in self.inputs if s.name not in feeds]
        if missing:
            raise BadInputError(f"tvm runner: missing inputs {missing}")
        args = [self._tvm.runtime.tensor(np.ascontiguousarray(feeds[s.name], dtype=s.dtype), self._dev)
                for s in self.inputs]
        try:
            out = self._main(*args)
        except Exception as e:  # the VM raises TVMError subclasses for shape and dtype mismatches
            raise ConversionError(f"tvm failed running the model: {first_line(e, 300)}") from e
        values = list(out) if type(out).__name__ == "Array" else [out]  # one output comes back bare
        return {s.name: v.numpy() for s, v in zip(self.outputs, values)}

    def bench(self, feeds: dict[str, np.ndarray], warmup: int = 5, runs: int = 50) -> LatencyStats:
        """Wall time per call, measured exactly like OrtRunner.bench (inputs copied in, outputs out)."""
        return wall_clock_bench(self, feeds, warmup, runs)
