"""Reading and writing ONNX files safely: clear errors, external data, atomic writes."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator

import onnx
from google.protobuf.message import DecodeError

from accelopt.errors import BadInputError

# Protobuf cannot serialise a message over 2 GiB; stay clear of the limit.
EXTERNAL_DATA_THRESHOLD = 1_800_000_000


def is_large(model: onnx.ModelProto) -> bool:
    """Too big for one protobuf: must travel with external data (and be handed to ORT by path)."""
    return model.ByteSize() > EXTERNAL_DATA_THRESHOLD


def copy_model(model: onnx.ModelProto) -> onnx.ModelProto:
    """A deep copy, for libraries that edit the proto they are given (onnxsim < 0.8 pins shapes in place)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _files_under(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*") if p.is_file())


def sha256_path(path: str | os.PathLike) -> str:
    """A file's sha256, or a folder artifact's (a Core ML .mlpackage): over each file's relative path and
    sha256, in sorted order, so the same content gives the same digest wherever it lies."""
    path = Path(path)
    if not path.is_dir():
        return sha256_file(path)
    h = hashlib.sha256()
    for f in _files_under(path):
        h.update(f"{f.relative_to(path).as_posix()}\0{sha256_file(f)}\n".encode())
    return h.hexdigest()


def path_bytes(path: str | os.PathLike) -> int:
    """Size of a file, or of every file in a folder artifact."""
    path = Path(path)
    return sum(f.stat().st_size for f in _files_under(path)) if path.is_dir() else path.stat().st_size


# Other model formats a user may hand over, by what identifies them: named, instead of "not ONNX".
OTHER_FORMATS = {".tflite": "TFLite", ".keras": "Keras", ".h5": "Keras/HDF5", ".pb": "TensorFlow",
                 ".pt": "PyTorch", ".pth": "PyTorch", ".mlpackage": "Core ML", ".mlmodel": "Core ML",
                 ".engine": "TensorRT", ".plan": "TensorRT", ".safetensors": "safetensors weights"}


def load_model(path: str | os.PathLike, *, check: bool = True) -> onnx.ModelProto:
    """Load an ONNX model (with its external data), or raise a one-line `BadInputError`."""
    p = Path(path)
    if not p.exists():
        raise BadInputError(f"model not found: {p}")
    fmt = "TensorFlow SavedModel" if (p / "saved_model.pb").exists() else OTHER_FORMATS.get(p.suffix.lower())
    if fmt:
        raise BadInputError(f"{p} is a {fmt} model; this accelopt reads ONNX (.onnx): export it to ONNX first")
    if p.is_dir():
        raise BadInputError(f"{p} is a directory; expected an .onnx file")
    try:
        model = onnx.load(str(p), load_external_data=True)
    except (DecodeError, RuntimeWarning, ValueError) as e:
        raise BadInputError(f"{p} is not a valid ONNX model ({type(e).__name__}: {str(e)[:120]})") from e
    except FileNotFoundError as e:
        raise BadInputError(f"{p}: external data file missing ({e.filename})") from e
    except Exception as e:  # onnx raises bare errors for truncated or foreign files
        raise BadInputError(f"{p} could not be read as ONNX ({type(e).__name__}: {str(e)[:120]})") from e
    if not model.graph.node and not model.graph.output:
        raise BadInputError(f"{p} is not an ONNX model (no graph found; is it another format?)")
    if check:
        check_model(model, str(p))
    return model


def check_model(model: onnx.ModelProto, what: str = "model") -> None:
    """Run `onnx.checker` (by path when the model is too large for an in-memory check)."""
    try:
        if is_large(model):
            with tempfile.TemporaryDirectory() as d:
                f = save_model(model, Path(d) / "check.onnx")
                onnx.checker.check_model(str(f))
        else:
            onnx.checker.check_model(model)
    except onnx.checker.ValidationError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else "invalid"
        raise BadInputError(f"{what} fails onnx.checker: {first[:200]}") from e


def model_bytes(model: onnx.ModelProto) -> int:
    """Serialized size including initializers (what a file would weigh)."""
    return model.ByteSize()


def save_model(model: onnx.ModelProto, path: str | os.PathLike) -> Path:
    """Write `model` to `path`, using external data next to it when it is too big for one protobuf.

    onnx.save_model moves tensors out of the proto it is given when writing external data, so that
    path saves a copy: the caller's model stays whole.
    """
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    if is_large(model):
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        onnx.save_model(copy, str(p), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=p.name + ".data", size_threshold=1024)
    else:
        onnx.save_model(model, str(p))
    return p


def model_files(path: str | os.PathLike) -> list[Path]:
    """The model file plus any external-data files it references."""
    p = Path(path)
    files = [p]
    data = p.with_name(p.name + ".data")
    if data.exists():
        files.append(data)
    return files


@contextmanager
def staged_dir(final: str | os.PathLike, replaces: Iterable[str] = ()) -> Iterator[Path]:
    """Yield a temp dir beside `final`; on success its files move into `final`, on error nothing does.

    A failed run therefore never leaves a half-written artifact under its final name. `replaces`
    names files of an earlier run in `final` that go when the new ones arrive (so a stale
    junit.xml or external-data file never sits beside a new report); nothing else there is touched.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.partial-", dir=final.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    final.mkdir(parents=True, exist_ok=True)
    for name in replaces:
        old = final / name
        if old.exists() and not (tmp / name).exists():
            shutil.rmtree(old) if old.is_dir() and not old.is_symlink() else old.unlink()
    for item in tmp.iterdir():
        dest = final / item.name
        if dest.is_dir() and not dest.is_symlink():
            shutil.rmtree(dest)
        os.replace(item, dest)
    shutil.rmtree(tmp, ignore_errors=True)
