"""Data sources a recipe declares (npz, image folders, random) and the `Dataset` they load into.

Every source ends as arrays named after the model inputs, cast to the inputs' dtypes and checked
against their static shapes, so a wrong file fails here with one line instead of deep in a pass.
"""

from __future__ import annotations

import hashlib
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Callable, Iterator, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from accelopt.errors import BadInputError
from accelopt.targets.base import TensorSpec

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


class _Source(BaseModel):
    model_config = ConfigDict(extra="forbid")


class NpzSource(_Source):
    type: Literal["npz"]
    path: str  # relative paths resolve against the recipe's folder
    labels: str | None = "labels"  # key holding labels; used only if present in the file
    inputs: dict[str, str] = {}  # model input name -> array key, when the keys differ from the names
    limit: int | None = Field(default=None, ge=1)


class ImagesSource(_Source):
    type: Literal["images"]
    path: str  # a folder of images, or a folder of class subfolders
    size: tuple[int, int]  # (height, width)
    # One value for all channels, or one per channel.
    mean: list[float] = [0.0]
    std: list[float] = [1.0]
    scale: float = 1 / 255
    layout: Literal["NCHW", "NHWC"] = "NCHW"
    channels: Literal["rgb", "bgr", "gray"] = "rgb"
    dtype: Literal["float32", "float16", "uint8", "int8"] = "float32"
    labels: Literal["folders"] | None = None  # class index = position of the subfolder in sorted order
    input: str | None = None  # the model input that receives the images (default: the first)
    limit: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _check_normalization(self) -> ImagesSource:
        if min(self.size) < 1:
            raise ValueError(f"size must be positive (height, width), got {list(self.size)}")
        n = 1 if self.channels == "gray" else 3
        for key in ("mean", "std"):
            if len(getattr(self, key)) not in (1, n):
                raise ValueError(f"{key} needs 1 or {n} values for {self.channels} images")
        if any(s == 0 for s in self.std):
            raise ValueError("std values must be non-zero")
        return self


class RandomSource(_Source):
    type: Literal["random"]
    samples: int = Field(default=8, ge=1)
    seed: int = 0
    low: float = 0.0
    high: float = 1.0


DataSource = Annotated[NpzSource | ImagesSource | RandomSource, Field(discriminator="type")]


class DataConfig(_Source):
    """The recipe's `data:` section."""

    calibration: DataSource | None = None
    evaluation: DataSource | None = None


@dataclass
class Dataset:
    feeds: dict[str, np.ndarray]  # model input name -> array, first axis = samples
    labels: np.ndarray | None
    source: str  # for reports, e.g. "npz:examples/digits/evaluation.npz (450 samples)"
    random: bool = False  # synthetic: unfit for calibration and accuracy

    def __len__(self) -> int:
        for arr in self.feeds.values():
            return len(arr)
        return 0 if self.labels is None else len(self.labels)

    def take(self, n: int) -> Dataset:
        """The first `n` samples (all of them when there are fewer)."""
        if n >= len(self):
            return self
        return Dataset(
            feeds={k: v[:n] for k, v in self.feeds.items()},
            labels=None if self.labels is None else self.labels[:n],
            source=f"{self.source}, first {n}",
            random=self.random,
        )

    def batches(self, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
        """Consecutive slices of `batch_size` samples; the last one may be smaller."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        for start in range(0, len(self), batch_size):
            yield {k: v[start:start + batch_size] for k, v in self.feeds.items()}

    def fingerprint(self) -> str:
        """Content hash (names, dtypes, shapes, bytes, labels): a cache key that ignores file names."""
        h = hashlib.sha256()
        arrays = sorted(self.feeds.items())
        if self.labels is not None:
            arrays.append(("\0labels", self.labels))
        for name, arr in arrays:
            arr = np.ascontiguousarray(arr)
            h.update(f"{name}|{arr.dtype.str}|{arr.shape}|".encode())
            h.update(arr.data)
        return h.hexdigest()


def load_source(
    source: NpzSource | ImagesSource | RandomSource,
    inputs: list[TensorSpec],
    base_dir: Path,
    input_shapes: dict[str, list[int]] | None = None,
    warn: Callable[[str], None] | None = None,
) -> Dataset:
    """Load a declared source for a model with `inputs`; `warn` receives non-fatal notes."""
    if isinstance(source, RandomSource):
        if warn:
            warn(f"random data ({source.samples} samples, seed {source.seed}) is unfit for calibration "
                 "and accuracy; declare npz or images data")
        feeds = random_feeds(inputs, source.samples, source.seed, input_shapes, source.low, source.high)
        return Dataset(feeds, None, f"random:seed={source.seed} ({source.samples} samples)", random=True)
    path = Path(source.path)
    if not path.is_absolute():
        path = Path(base_dir) / path
    if isinstance(source, NpzSource):
        return _read_npz(path, inputs, source.labels, source.inputs, source.limit, shown=source.path)
    return _read_images(path, source, inputs, warn, shown=source.path)


def load_npz(path: str | Path, inputs: list[TensorSpec], labels_key: str | None = "labels") -> Dataset:
    """Arrays keyed by input name (plus optional labels): what `--data FILE.npz` reads."""
    return _read_npz(Path(path), inputs, labels_key, {}, None, shown=str(path))


def random_feeds(
    inputs: list[TensorSpec],
    samples: int,
    seed: int = 0,
    input_shapes: dict[str, list[int]] | None = None,
    low: float = 0.0,
    high: float = 1.0,
) -> dict[str, np.ndarray]:
    """Seeded random arrays, `samples` along the first axis; integer inputs get integers in [low, high]."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for spec in inputs:
        shape = (samples, *_resolved_dims(spec, (input_shapes or {}).get(spec.name)))
        dtype = np.dtype(spec.dtype)
        if dtype == np.bool_:
            feeds[spec.name] = rng.integers(0, 2, shape).astype(bool)
        elif np.issubdtype(dtype, np.integer):
            feeds[spec.name] = rng.integers(int(np.ceil(low)), int(np.floor(high)), shape, endpoint=True).astype(dtype)
        elif np.issubdtype(dtype, np.floating):
            feeds[spec.name] = rng.uniform(low, high, shape).astype(dtype)
        else:
            raise BadInputError(f"input {spec.name!r} has dtype {dtype}; random data cannot fill it, declare npz data")
    return feeds


def _resolved_dims(spec: TensorSpec, pin: list[int] | None) -> list[int]:
    """Dims after the sample axis: static ones from the model, dynamic ones from the shape pin."""
    if pin is not None and len(pin) != len(spec.shape):
        raise BadInputError(f"input.shapes pins {spec.name!r} to {list(pin)} but the model's input has "
                            f"rank {len(spec.shape)} ({_shape_str(spec.shape)})")
    dims = []
    for i, dim in enumerate(spec.shape[1:], start=1):
        if isinstance(dim, int):
            dims.append(dim)
        elif pin is not None and isinstance(pin[i], int):
            dims.append(pin[i])
        else:
            raise BadInputError(f"input {spec.name!r} dim {i} is dynamic ({dim!r}) in {_shape_str(spec.shape)}; "
                                "pin it with the recipe's input.shapes, or --shape NAME:D1,D2,... on the command line")
    return dims


def _read_npz(path: Path, inputs: list[TensorSpec], labels_key: str | None, key_map: dict[str, str],
              limit: int | None, shown: str) -> Dataset:
    arrays = _npz_arrays(path)
    feeds = {}
    for spec in inputs:
        key = key_map.get(spec.name, spec.name)
        if key not in arrays:
            raise BadInputError(f"{shown} has no array {key!r} for model input {spec.name!r}; "
                                f"keys in the file: {', '.join(sorted(arrays)) or 'none'}")
        feeds[spec.name] = arrays[key]
    labels = arrays.get(labels_key) if labels_key else None
    total = _sample_count(feeds, labels, shown)
    if limit is not None and limit < total:
        feeds = {k: v[:limit] for k, v in feeds.items()}
        labels = None if labels is None else labels[:limit]
        count = f"first {limit} of {total} samples"
    else:
        count = f"{total} samples"
    return Dataset(_fit(feeds, inputs, shown), labels, f"npz:{shown} ({count})")


def _npz_arrays(path: Path) -> dict[str, np.ndarray]:
    """All arrays of an .npz file, read eagerly so the file is closed and errors surface here."""
    if not path.is_file():
        raise BadInputError(f"data file not found: {path}")
    try:
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise BadInputError(f"{path} is not an .npz archive; save named arrays with numpy.savez")
        with loaded as npz:
            return {k: npz[k] for k in npz.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as e:
        raise BadInputError(f"{path} is not a readable .npz file ({type(e).__name__}: {str(e)[:120]})") from e


def _sample_count(feeds: dict[str, np.ndarray], labels: np.ndarray | None, shown: str) -> int:
    counts = {name: (len(a) if a.ndim else 0) for name, a in feeds.items()}
    if labels is not None:
        counts["labels"] = len(labels) if labels.ndim else 0
    if len(set(counts.values())) > 1:
        listing = ", ".join(f"{k}={v}" for k, v in counts.items())
        raise BadInputError(f"{shown}: arrays disagree on the number of samples (first axis): {listing}")
    return next(iter(counts.values()), 0)


def _fit(feeds: dict[str, np.ndarray], inputs: list[TensorSpec], shown: str) -> dict[str, np.ndarray]:
    """Cast each array to its input's dtype and check the static dims after the sample axis."""
    out = {}
    for spec in inputs:
        arr = feeds[spec.name]
        if spec.shape and (arr.ndim != len(spec.shape) or any(
                isinstance(want, int) and want != got for want, got in zip(spec.shape[1:], arr.shape[1:]))):
            raise BadInputError(f"{shown}: input {spec.name!r} expects shape {_shape_str(spec.shape)}, "
                                f"got {list(arr.shape)} (the first axis is the sample axis)")
        out[spec.name] = arr.astype(spec.dtype, copy=False)
    return out


def _shape_str(shape: list[int | str | None]) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def _read_images(folder: Path, src: ImagesSource, inputs: list[TensorSpec],
                 warn: Callable[[str], None] | None, shown: str) -> Dataset:
    spec = _image_input(src, inputs)
    files, labels, classes = _image_files(folder, src.labels == "folders", warn, shown)
    if src.limit is not None:
        files, labels = files[:src.limit], None if labels is None else labels[:src.limit]
    if warn and np.dtype(src.dtype) != np.dtype(spec.dtype):
        warn(f"images for {spec.name!r} are prepared as {src.dtype} but the model input is {np.dtype(spec.dtype)}; "
             f"they are cast (set dtype: {np.dtype(spec.dtype)} to match)")
    batch = np.stack([_image_array(f, src) for f in files])
    desc = f"images:{shown} ({len(files)} images" + (f", {len(classes)} classes)" if classes else ")")
    return Dataset(_fit({spec.name: batch}, [spec], shown), labels, desc)


def _image_input(src: ImagesSource, inputs: list[TensorSpec]) -> TensorSpec:
    """The input fed with images; a model with further inputs needs an npz source instead."""
    names = [s.name for s in inputs]
    name = src.input or names[0]
    if name not in names:
        raise BadInputError(f"images source targets input {name!r}; model inputs: {', '.join(names)}")
    if len(names) > 1:
        others = ", ".join(repr(n) for n in names if n != name)
        raise BadInputError(f"images feed only {name!r} but the model also needs {others}; use an npz source")
    return next(s for s in inputs if s.name == name)


def _image_files(folder: Path, by_folder: bool, warn: Callable[[str], None] | None,
                 shown: str) -> tuple[list[Path], np.ndarray | None, list[str]]:
    """Image paths in sorted order, with class indices when subfolders are the classes."""
    if not folder.is_dir():
        raise BadInputError(f"image folder not found: {folder}")
    if not by_folder:
        files = sorted(p for p in folder.rglob("*") if _is_image(p))
        if not files:
            raise BadInputError(f"no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) found in {shown}")
        return files, None, []
    classes = sorted(d.name for d in folder.iterdir() if d.is_dir() and any(_is_image(p) for p in d.rglob("*")))
    if not classes:
        raise BadInputError(f"labels: folders needs class subfolders with images in {shown}; none found")
    stray = [p for p in folder.iterdir() if _is_image(p)]
    if stray and warn:
        warn(f"{len(stray)} image(s) directly in {shown} ignored: labels: folders reads class subfolders")
    files, labels = [], []
    for index, name in enumerate(classes):
        found = sorted(p for p in (folder / name).rglob("*") if _is_image(p))
        files += found
        labels += [index] * len(found)
    return files, np.asarray(labels, dtype=np.int64), classes


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file()


def _image_array(path: Path, src: ImagesSource) -> np.ndarray:
    """One image resized, reordered, normalized ((x * scale - mean) / std) and laid out as asked."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im = im.convert("L" if src.channels == "gray" else "RGB")
            im = im.resize((src.size[1], src.size[0]), Image.Resampling.BILINEAR)
            x = np.asarray(im, dtype=np.float32)
    except (OSError, UnidentifiedImageError) as e:
        raise BadInputError(f"cannot read image {path}: {str(e)[:120]}") from e
    x = x[:, :, None] if x.ndim == 2 else x
    if src.channels == "bgr":
        x = x[:, :, ::-1]
    x = (x * src.scale - np.asarray(src.mean, np.float32)) / np.asarray(src.std, np.float32)
    if src.layout == "NCHW":
        x = x.transpose(2, 0, 1)
    dtype = np.dtype(src.dtype)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        x = np.clip(np.rint(x), info.min, info.max)
    return np.ascontiguousarray(x.astype(dtype))
