"""Errors a user can act on, each with the exit code the design fixes.

The CLI turns any `AccelError` into one line on stderr and its exit code; anything else is a bug and
is shown as a traceback only with `--debug`.
"""

from __future__ import annotations

import re

EXIT_OK = 0
EXIT_GATE_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_CONVERSION_FAILED = 3


# C++ libraries (ONNX Runtime) put a source location and a function signature before the message, which can
# fill the whole line: "/onnxruntime_src/.../model.cc:192 onnxruntime::Model::Model(onnx::ModelProto&&, ...) Unsupported"
_CPP_WHERE = re.compile(r"\S+\.(?:cc|cpp|cxx|h|hpp):\d+ (?:[\w:~<>]+\((?:[^()]|\([^()]*\))*\)(?: const)? )?")


def first_line(error: BaseException, limit: int = 200, with_type: bool = False) -> str:
    """An exception's message cut to one line: library errors can span pages, ours must not."""
    text = _CPP_WHERE.sub("", str(error)).strip()
    line = text.splitlines()[0][:limit] if text else type(error).__name__
    return f"{type(error).__name__}: {line}" if with_type and text else line


class AccelError(Exception):
    """Base of every error meant for the user: the message is the whole story, one line."""

    exit_code = EXIT_BAD_INPUT


class BadInputError(AccelError):
    """A path, model, data file or argument the user gave is wrong."""


class RecipeError(BadInputError):
    """The recipe is invalid: unknown key, bad value, unknown step."""


class MissingExtraError(BadInputError):
    """An optional dependency group is not installed."""

    def __init__(self, extra: str, what: str):
        super().__init__(f"{what} needs the [{extra}] extra: pip install 'accelopt[{extra}]'")


class ConversionError(AccelError):
    """A step or target could not transform a valid model."""

    exit_code = EXIT_CONVERSION_FAILED


class Interrupted(AccelError):
    """Ctrl-C: a distinct code (128 + SIGINT), never confused with a failed gate."""

    exit_code = 130


class GateFailed(AccelError):
    """The pipeline ran but a recipe gate was missed."""

    exit_code = EXIT_GATE_FAILED
