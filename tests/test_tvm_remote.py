"""Remote tuning and deployment over TVM's RPC tracker, on a loopback tracker and server (no board needed).

parse_tracker runs without TVM (CI); the rest skips when TVM is absent.
"""

from __future__ import annotations

import math
import os
import socket

import numpy as np
import pytest

from accelopt.errors import ConversionError, RecipeError
from accelopt.targets.tvm.remote import parse_tracker
from tests import models

KEY = "accelopt-test"


def test_parse_tracker():
    assert parse_tracker("192.168.1.10:9190") == ("192.168.1.10", 9190)
    assert parse_tracker(" board.local:9190 ") == ("board.local", 9190)
    for bad in ("9190", "host", "host:", ":9190", "host:port", "host:0", "host:70000"):
        with pytest.raises(RecipeError, match="is not HOST:PORT"):
            parse_tracker(bad)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_check_tracker_names_the_fix_when_unreachable():
    pytest.importorskip("tvm")
    from accelopt.targets.tvm.remote import check_tracker

    tracker = f"127.0.0.1:{_closed_port()}"
    with pytest.raises(ConversionError) as info:
        check_tracker(tracker, "board", timeout_s=2)
    message = str(info.value)
    assert "\n" not in message and tracker in message
    assert f"python -m tvm.exec.rpc_server --tracker {tracker} --key board" in message


def test_loopback_comes_up_and_leaves_no_process():
    pytest.importorskip("tvm")
    psutil = pytest.importorskip("psutil")
    from accelopt.targets.tvm.remote import check_tracker, loopback

    with loopback(key=KEY) as tracker:
        assert check_tracker(tracker, KEY) == 1
        with pytest.raises(ConversionError, match="no server under key 'other'.*--key other$"):
            check_tracker(tracker, "other")
        started = [p for p in psutil.Process().children(recursive=True)
                   if any("tvm.exec." in part for part in p.cmdline())]
        names = " ".join(" ".join(p.cmdline()) for p in started)
        assert "tvm.exec.rpc_tracker" in names and "tvm.exec.rpc_server" in names
    _, alive = psutil.wait_procs(started, timeout=10)
    assert alive == []


@pytest.fixture(scope="module")
def tracker():
    """One loopback for the deployment and tuning tests (it takes 10-30 s to start); the server runs
    1 thread, which the runner must report."""
    pytest.importorskip("tvm")
    from accelopt.targets.tvm.remote import loopback

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TVM_NUM_THREADS", "1")
        with loopback(key=KEY) as address:
            yield address


def _target() -> dict:
    from accelopt.targets.tvm.env import host_mcpu, import_tvm

    import_tvm()
    return {"kind": "llvm", "mcpu": host_mcpu(), "num-cores": 1}


def test_remote_runner_matches_ort(tmp_path, tracker):
    from accelopt.targets.onnxruntime import OrtRunner
    from accelopt.targets.tvm.lower import lower
    from accelopt.targets.tvm.remote import RemoteTvmRunner

    model = models.conv_stack(channels=8, size=8, layers=1)
    artifact = lower(model, tmp_path, _target(), threads=1, tuning=None, log=print)
    runner = RemoteTvmRunner(artifact.path, tracker, KEY)
    assert runner.threads == 1 and [s.name for s in runner.outputs] == ["y"]
    feeds = {"x": np.random.default_rng(1).standard_normal((1, 3, 8, 8)).astype(np.float32)}
    out = runner.run(feeds)["y"]
    assert np.abs(out - OrtRunner(model, threads=1).run(feeds)["y"]).max() < 1e-4
    stats = runner.bench(feeds, warmup=1, runs=5)
    assert stats.runs == 5 and stats.median_ms > 0 and stats.threads == 1
    runner.close()  # frees the loopback's only server for the next test


@pytest.mark.skipif(os.environ.get("ACCELOPT_SLOW") != "1",
                    reason="tunes through the tracker: about 2 minutes on 2 cores; ACCELOPT_SLOW=1 runs it")
def test_target_tunes_and_runs_through_the_tracker(tmp_path, tracker):
    """The whole remote path as a recipe uses it: trials measured on the server, the library run there."""
    from accelopt.targets import get_target
    from accelopt.targets.onnxruntime import OrtRunner
    from accelopt.targets.tvm.remote import RemoteTvmRunner
    from accelopt.targets.tvm.tune import progress_of

    model = models.conv_stack(channels=8, size=8, layers=1)
    target = get_target("tvm", {"threads": 1, "tracker": tracker, "key": KEY,
                                "tuning": {"trials": 4, "time_s": 300, "winograd": None}})
    assert target.check(model) == []
    artifact = target.lower(model, tmp_path)
    trials, kernels, best = progress_of(tmp_path)
    assert trials >= 1 and kernels >= 1 and math.isfinite(best)  # at least one trial ran on the server
    assert any(f"measured on '{KEY}' via the tracker at {tracker}" in line for line in artifact.meta["log"])
    runner = target.runner(artifact, threads=1)
    assert isinstance(runner, RemoteTvmRunner)
    feeds = {"x": np.random.default_rng(2).standard_normal((1, 3, 8, 8)).astype(np.float32)}
    assert np.abs(runner.run(feeds)["y"] - OrtRunner(model, threads=1).run(feeds)["y"]).max() < 1e-4


def test_tracker_needs_a_key_and_a_valid_address():
    from accelopt.targets.tvm import TvmTargetConfig

    with pytest.raises(ValueError, match="tracker and key go together"):
        TvmTargetConfig(tracker="127.0.0.1:9190")
    with pytest.raises(RecipeError, match="is not HOST:PORT"):
        TvmTargetConfig(tracker="127.0.0.1", key="board")
