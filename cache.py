"""Content-addressed step cache: a second CI run of the same recipe skips finished steps.

Keys hash what determines a step's output (input model bytes, pass name and version, config, data
fingerprint, shape pins, target, tool versions), never a file name, so a changed model, config or
library upgrade can never be served a stale result.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import onnx

from accelopt.converters.onnx_io import save_model


def default_cache_dir() -> Path:
    env = os.environ.get("ACCELOPT_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "accelopt"


def cache_key(parts: dict[str, Any]) -> str:
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()


class StepCache:
    def __init__(self, root: Path | None = None):
        self.root = Path(root) if root else default_cache_dir()

    def _entry(self, key: str) -> Path:
        return self.root / "steps" / key[:2] / key

    def get(self, key: str) -> tuple[onnx.ModelProto, dict[str, Any]] | None:
        """The cached model and its step record, or None; a damaged entry counts as a miss and goes."""
        entry = self._entry(key)
        if not (entry / "record.json").exists():
            return None
        try:
            record = json.loads((entry / "record.json").read_text())
            model = onnx.load(str(entry / "model.onnx"))
        except Exception:
            shutil.rmtree(entry, ignore_errors=True)
            return None
        return model, record

    def put(self, key: str, model: onnx.ModelProto, record: dict[str, Any]) -> None:
        """Write atomically: a crash mid-write leaves no entry that `get` would trust."""
        entry = self._entry(key)
        entry.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=entry.parent))
        try:
            save_model(model, tmp / "model.onnx")
            (tmp / "record.json").write_text(json.dumps(record, default=str))
            if entry.exists():
                shutil.rmtree(entry)
            os.replace(tmp, entry)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
