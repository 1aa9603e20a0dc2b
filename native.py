"""Native libraries (onnxsim's C++ core, ORT's optimizer) print straight to file descriptor 2, past Python's
sys.stderr: accelopt's stderr must carry only its own one-line errors and warnings."""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from typing import Iterator


@contextmanager
def quiet_native_stderr() -> Iterator[None]:
    """Point fd 2 at /dev/null for the duration; Python-level errors still propagate as exceptions."""
    fd = 2  # where native code writes, whatever Python's sys.stderr is
    sys.stderr.flush()
    saved = os.dup(fd)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
        yield
    finally:
        os.dup2(saved, fd)
        os.close(saved)
        os.close(devnull)
