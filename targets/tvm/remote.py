"""Tuning and running on another machine through TVM's RPC tracker (notes §11), and a loopback tracker that
tests and benchmarks use in place of a board. TVM is imported inside the functions that need it, so
`parse_tracker` validates a recipe on a host without TVM.
"""

from __future__ import annotations

import gc
import os
import queue
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from accelopt.errors import BadInputError, ConversionError, RecipeError, first_line
from accelopt.targets.base import LatencyStats
from accelopt.targets.tvm.env import import_tvm
from accelopt.targets.tvm.lower import device_kind, read_io

# RPCConfig's 10 s default bounds the whole measurement (queueing, upload, run): too short for a slow board.
SESSION_TIMEOUT_S = 60
# Loopback start-up: tracker and servers each import TVM (and torch, through apache-tvm-ffi): 15 s on 2 cores.
_LOOPBACK_START_S = 90
_POLL_S = 0.5


def parse_tracker(text: str) -> tuple[str, int]:
    """Split "host:port" as recipes and the CLI give it."""
    host, sep, port = text.strip().rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise RecipeError(f"tvm: tracker {text!r} is not HOST:PORT (e.g. 192.168.1.10:9190)")
    return host, int(port)


def rpc_runner(tracker: str, key: str, workers: int, evaluator_config: Any,
               initializer: Callable[[], None] | None = None) -> Any:
    """A MetaSchedule runner measuring on the servers registered under `key`; `workers` sessions at a time
    (one per device: more queue at the tracker and can run past the session timeout)."""
    from tvm.s_tir.meta_schedule.runner import RPCConfig, RPCRunner

    host, port = parse_tracker(tracker)
    config = RPCConfig(tracker_host=host, tracker_port=port, tracker_key=key, session_timeout_sec=SESSION_TIMEOUT_S)
    return RPCRunner(rpc_config=config, evaluator_config=evaluator_config, max_workers=workers,
                     initializer=initializer)


def check_tracker(tracker: str, key: str, timeout_s: float = 5) -> int:
    """Servers registered under `key`, free or busy; fails when there are none, since a session request for
    such a key waits at the tracker forever."""
    host, port = parse_tracker(tracker)
    try:
        summary = _tracker_summary(host, port, timeout_s)
    except (OSError, RuntimeError) as e:
        raise ConversionError(f"cannot reach the RPC tracker at {tracker} ({first_line(e, 100)}): start it with "
                              f"python -m tvm.exec.rpc_tracker --port {port}, and on the device "
                              f"python -m tvm.exec.rpc_server --tracker {tracker} --key {key}") from e
    # queue_info counts only free servers; a server in a session stays listed in server_info
    count = sum(s.get("key") == f"server:{key}" for s in summary["server_info"])
    if count == 0:
        raise ConversionError(f"the RPC tracker at {tracker} has no server under key '{key}': start one on the "
                              f"device with python -m tvm.exec.rpc_server --tracker {tracker} --key {key}")
    return count


def _tracker_summary(host: str, port: int, timeout_s: float) -> dict[str, Any]:
    """connect_tracker retries a refused port for 60 s and reads without a timeout: probe the port first, then
    wait for the summary at most timeout_s (a stuck daemon thread is left behind, not the caller)."""
    socket.create_connection((host, port), timeout=timeout_s).close()
    from tvm import rpc

    answer: queue.Queue = queue.Queue()

    def ask() -> None:
        try:
            answer.put(rpc.connect_tracker(host, port).summary())
        except Exception as e:  # handed to the caller's thread
            answer.put(e)

    threading.Thread(target=ask, daemon=True).start()
    try:
        result = answer.get(timeout=timeout_s)
    except queue.Empty:
        raise TimeoutError(f"no answer within {timeout_s:g} s; is it a tracker?") from None
    if isinstance(result, Exception):
        raise result
    return result


class RemoteTvmRunner:
    """TvmRunner's interface with model.so running on an RPC server: validation and timing happen on the
    device the library was built for. The session stays open while the runner lives."""

    def __init__(self, library: Path, tracker: str, key: str):
        tvm = import_tvm()
        from tvm import relax, rpc

        library = Path(library)
        self.inputs, self.outputs = read_io(library)
        check_tracker(tracker, key)
        try:
            self._remote = rpc.connect_tracker(*parse_tracker(tracker)).request(key)
            self._remote.upload(str(library))  # into the session's temp folder, removed when the session ends
            self._dev = self._remote.cuda() if device_kind(library) == "cuda" else self._remote.cpu()
            self._vm = relax.VirtualMachine(self._remote.load_module(library.name), self._dev)
            self.threads = int(self._remote.get_function("runtime.NumThreads")())
        except Exception as e:  # RuntimeError from the tracker, TVMError from the server
            raise ConversionError(f"tvm could not load {library.name} on '{key}' at {tracker}: "
                                  f"{first_line(e, 300)}") from e
        self._tvm = tvm

    def close(self) -> None:
        """End the session now: the server serves one session at a time, and tuning or another runner waits in
        the tracker's queue until this one ends (the VM's references would otherwise keep it to the next gc)."""
        self._vm = self._dev = self._remote = None
        gc.collect()

    def _set_input(self, feeds: dict[str, np.ndarray]) -> None:
        """Copy the inputs to the device; the stateful VM calls work over RPC for any number of outputs."""
        missing = [s.name for s in self.inputs if s.name not in feeds]
        if missing:
            raise BadInputError(f"tvm remote runner: missing inputs {missing}")
        self._vm.set_input("main", *[self._tvm.runtime.tensor(np.ascontiguousarray(feeds[s.name], dtype=s.dtype),
                                                              self._dev) for s in self.inputs])

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Output name -> array, in the model's output order."""
        try:
            self._set_input(feeds)
            self._vm.invoke_stateful("main")
            out = self._vm.get_outputs("main")
        except BadInputError:
            raise
        except Exception as e:
            raise ConversionError(f"tvm failed running the model remotely: {first_line(e, 300)}") from e
        values = out if isinstance(out, tuple) else (out,)
        return {s.name: v.numpy() for s, v in zip(self.outputs, values)}

    def bench(self, feeds: dict[str, np.ndarray], warmup: int = 5, runs: int = 50) -> LatencyStats:
        """Time per call measured on the device by time_evaluator (wall time here would measure the network),
        so unlike TvmRunner.bench it leaves out copying inputs in and outputs out."""
        if runs < 1:
            raise ValueError(f"runs must be >= 1, got {runs}")
        try:
            self._set_input(feeds)
            for _ in range(warmup):
                self._vm.invoke_stateful("main")
            timer = self._vm.time_evaluator("invoke_stateful", self._dev, number=1, repeat=runs)
            times = [float(t) * 1000 for t in timer("main").results]
        except BadInputError:
            raise
        except Exception as e:
            raise ConversionError(f"tvm failed timing the model remotely: {first_line(e, 300)}") from e
        first = feeds[self.inputs[0].name] if self.inputs else None
        batch = int(first.shape[0]) if first is not None and first.ndim else 1
        return LatencyStats.from_times(times, batch=batch, threads=self.threads, warmup=warmup)


@contextmanager
def loopback(key: str = "accelopt-loopback", servers: int = 1) -> Iterator[str]:
    """A tracker and `servers` RPC servers on 127.0.0.1 (yields "127.0.0.1:PORT"). Each process has its own
    process group, so the popen workers and forked sessions under it die with it; all are killed on exit.
    The servers inherit this environment, TVM_NUM_THREADS included."""
    port = _free_port()
    tracker = f"127.0.0.1:{port}"
    deadline = time.monotonic() + _LOOPBACK_START_S
    procs: list[tuple[str, subprocess.Popen, Any]] = []
    try:
        procs.append(_start("rpc_tracker", "--host", "127.0.0.1", "--port", str(port), "--port-end", str(port + 1)))
        # servers started before the tracker listens retry only every 5 s
        _wait_until(lambda: _port_open(port), f"RPC tracker at {tracker}", procs, deadline)
        procs += [_start("rpc_server", "--tracker", tracker, "--key", key, "--host", "127.0.0.1")
                  for _ in range(servers)]
        _wait_until(lambda: _registered(tracker, key) >= servers, f"{servers} RPC server(s) under '{key}'",
                    procs, deadline)
        yield tracker
    finally:
        for _, proc, err in procs:
            _kill_group(proc)
            err.close()


def _start(module: str, *args: str) -> tuple[str, subprocess.Popen, Any]:
    err = tempfile.TemporaryFile()
    proc = subprocess.Popen([sys.executable, "-m", f"tvm.exec.{module}", *args], stdout=subprocess.DEVNULL,
                            stderr=err, start_new_session=True)
    return module, proc, err


def _wait_until(ready: Callable[[], bool], what: str, procs: list[tuple[str, subprocess.Popen, Any]],
                deadline: float) -> None:
    while not ready():
        dead = [(name, proc.returncode) for name, proc, _ in procs if proc.poll() is not None]
        if dead or time.monotonic() > deadline:
            why = f"{dead[0][0]} exited with code {dead[0][1]}" if dead else f"not up after {_LOOPBACK_START_S} s"
            raise ConversionError(f"loopback RPC: {what}: {why}; stderr: {_tails(procs)}")
        time.sleep(_POLL_S)


def _registered(tracker: str, key: str) -> int:
    try:
        return check_tracker(tracker, key, timeout_s=2)
    except ConversionError:
        return 0


def _tails(procs: list[tuple[str, subprocess.Popen, Any]]) -> str:
    """The last stderr lines of each process, on one line."""
    parts = []
    for name, _, err in procs:
        err.seek(0)
        lines = [line.strip() for line in err.read().decode(errors="replace").splitlines() if line.strip()]
        parts.append(f"{name}: {' / '.join(lines[-2:]) or '(empty)'}")
    return " | ".join(parts)[:1000]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _port_open(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the process group: the tracker and servers keep popen workers and forked sessions in it."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()
