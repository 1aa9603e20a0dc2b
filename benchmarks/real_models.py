"""Real pretrained models and real input data for the benchmarks.

PaddleOCR's text-orientation classifier (``ch_ppocr_mobile_v2.0_cls_infer.onnx``, MobileNetV3,
35 unfused BatchNormalization nodes, opset 11, 2 classes: 0 and 180 degrees) is taken from the
``rapidocr-onnxruntime`` wheel on PyPI. The wheel is downloaded with ``pip download --no-deps``
(the package is never installed) and the model file is extracted with ``zipfile``.

Model facts: input ``x`` float32 [N,3,H,W] (all dims dynamic; the batch dim is stored as
``dim_value: -1``), expected H,W = 48,192, RGB, normalized as ``(x/255 - 0.5) / 0.5``; output
``save_infer_model/scale_0.tmp_1`` float32 [N,2], softmax probabilities.

Input data: random 48x192 crops of the two photos that ship inside scikit-learn
(``sklearn.datasets.load_sample_images()``: china.jpg, flower.jpg; needs Pillow).

Run ``python benchmarks/real_models.py`` to fetch the model and check it runs on the data.
The cache (``benchmarks/.models/``) is git-ignored.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

DEFAULT_CACHE = Path(__file__).resolve().parent / ".models"

PPOCR_PACKAGE = "rapidocr-onnxruntime"
PPOCR_VERSION = "1.4.4"
PPOCR_WHEEL = "rapidocr_onnxruntime-1.4.4-py3-none-any.whl"
PPOCR_MEMBER = "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx"
PPOCR_CLS_SHA256 = "e47acedf663230f8863ff1ab0e64dd2d82b838fceb5957146dab185a89d6215c"
PPOCR_CLS_INPUT = "x"
PPOCR_CLS_OUTPUT = "save_infer_model/scale_0.tmp_1"
PPOCR_CLS_HW = (48, 192)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fetch_ppocr_cls(cache_dir: Path = DEFAULT_CACHE) -> Path:
    """Return the path of the PP-OCR mobile v2.0 direction classifier, fetching it if needed.

    Downloads the ``rapidocr-onnxruntime==1.4.4`` wheel into ``cache_dir`` (only when neither the
    model nor the wheel is there yet) and extracts the ONNX file next to it. The extracted file is
    checked against a known sha256.
    """
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    model = cache_dir / Path(PPOCR_MEMBER).name
    if model.is_file() and _sha256(model) == PPOCR_CLS_SHA256:
        return model

    wheel = cache_dir / PPOCR_WHEEL
    if not wheel.is_file():
        cmd = [
            sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
            "--disable-pip-version-check", "-q",
            f"{PPOCR_PACKAGE}=={PPOCR_VERSION}", "-d", str(cache_dir),
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0 or not wheel.is_file():
            raise RuntimeError(
                f"could not download {PPOCR_PACKAGE}=={PPOCR_VERSION} with pip "
                f"(exit {proc.returncode}): {proc.stderr.strip()[-500:]}"
            )

    with zipfile.ZipFile(wheel) as zf:
        data = zf.read(PPOCR_MEMBER)
    digest = hashlib.sha256(data).hexdigest()
    if digest != PPOCR_CLS_SHA256:
        raise RuntimeError(f"{PPOCR_MEMBER} in {wheel} has sha256 {digest}, expected {PPOCR_CLS_SHA256}")
    fd, tmp = tempfile.mkstemp(dir=cache_dir, suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, model)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return model


def ppocr_cls_data(n: int = 32, seed: int = 0) -> dict[str, np.ndarray]:
    """``n`` seeded random 48x192 RGB crops of scikit-learn's sample photos, as the model expects.

    Returns ``{"x": float32 [n,3,48,192]}`` normalized as ``(x/255 - 0.5) / 0.5`` (range [-1,1]).
    Crops alternate between china.jpg and flower.jpg.
    """
    from sklearn.datasets import load_sample_images

    images = load_sample_images().images  # two uint8 [427,640,3] RGB photos
    h, w = PPOCR_CLS_HW
    rng = np.random.default_rng(seed)
    out = np.empty((n, 3, h, w), dtype=np.float32)
    for i in range(n):
        img = images[i % len(images)]
        top = int(rng.integers(0, img.shape[0] - h + 1))
        left = int(rng.integers(0, img.shape[1] - w + 1))
        crop = img[top : top + h, left : left + w].astype(np.float32)
        out[i] = ((crop / 255.0 - 0.5) / 0.5).transpose(2, 0, 1)
    return {PPOCR_CLS_INPUT: out}


def save_npz(data: dict[str, np.ndarray], path: Path) -> Path:
    """Write ``data`` as an .npz (one array per input name) for ``--data`` style use."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **data)
    return path


def run_ppocr_cls(model: Path, data: dict[str, np.ndarray], threads: int = 1) -> np.ndarray:
    """Run the classifier in ONNX Runtime (CPU) and return its [n,2] probabilities."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(model), so, providers=["CPUExecutionProvider"])
    return sess.run([PPOCR_CLS_OUTPUT], data)[0]


def main() -> int:
    model = fetch_ppocr_cls()
    print(f"model: {model} ({model.stat().st_size} bytes, sha256 {PPOCR_CLS_SHA256[:12]}...)")
    data = ppocr_cls_data()
    x = data[PPOCR_CLS_INPUT]
    print(f"data: x {x.dtype} {list(x.shape)} range [{x.min():.3f}, {x.max():.3f}]")
    probs = run_ppocr_cls(model, data)
    ok = (
        probs.shape == (len(x), 2)
        and np.all(np.isfinite(probs))
        and np.all(probs >= 0)
        and np.allclose(probs.sum(axis=1), 1.0, atol=1e-4)
    )
    counts = np.bincount(probs.argmax(axis=1), minlength=2)
    print(f"output: {probs.dtype} {list(probs.shape)}, rows sum to 1: {ok}, argmax counts {counts.tolist()}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
