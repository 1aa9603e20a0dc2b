"""Shared fixtures: an isolated step cache per test, model files on disk, and a CLI runner."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import onnx
import pytest

from accelopt.cli.app import main
from tests import models

# coremltools draws a tqdm bar per pass pipeline; tests import it directly (importorskip) before accelopt's
# loader could turn them off.
os.environ.setdefault("TQDM_DISABLE", "1")


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("ACCELOPT_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))


@dataclass
class Result:
    code: int
    out: str
    err: str


@pytest.fixture
def cli(capsys):
    """Run `accelopt ARGS...` in-process; returns exit code and captured stdout/stderr."""

    def run(*args: str) -> Result:
        capsys.readouterr()
        code = main([str(a) for a in args])
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return run


@pytest.fixture
def conv_bn_path(tmp_path) -> Path:
    p = tmp_path / "conv_bn.onnx"
    onnx.save(models.conv_bn_model(dynamic_batch=True), str(p))
    return p


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()
