"""Build the bundled demo: a small CNN trained on scikit-learn's handwritten digits.

Writes, next to this file:

- ``digits_cnn.onnx``   opset 17, input ``input`` float32 [batch,1,8,8] (dynamic batch), output
                        ``logits`` float32 [batch,10]; Conv layers are followed by *unfused*
                        BatchNormalization nodes (accelopt's ``fuse`` step folds them).
- ``calibration.npz``   ``input``: 128 training samples, float32 [128,1,8,8] in [0,1].
- ``evaluation.npz``    ``input``: the held-out split, float32 [450,1,8,8] in [0,1];
                        ``labels``: int64 [450].

Run it with::

    python examples/digits/make_digits.py

It needs ``numpy``, ``scikit-learn`` (the digits ship inside it, nothing is downloaded), ``onnx``,
``onnxruntime`` and ``torch`` (``pip install 'accelopt[torch]'``; tested with torch 2.13.0 CPU).
``onnxscript`` is NOT needed: the model is exported with the TorchScript-based exporter
(``dynamo=False``), the only torch exporter that keeps BatchNormalization as separate nodes
(with ``do_constant_folding=False``) and writes opset 17 directly. The dynamo exporter's default
optimizer folds BatchNorm into the Conv weights, which would leave ``fuse`` nothing to show.

The script is deterministic (fixed seeds, deterministic algorithms, one thread): running it twice
writes byte-identical ``.npz`` files and an ONNX model with identical outputs.
"""

from __future__ import annotations

import collections
import sys
import warnings
import zipfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SEED = 0
N_EVAL = 450
N_CALIB = 128
EPOCHS = 15
BATCH = 32
OPSET = 17


def load_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Digits as float32 [N,1,8,8] in [0,1]; stratified, seeded train/evaluation split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.images.astype(np.float32) / 16.0).reshape(-1, 1, 8, 8)
    y = digits.target.astype(np.int64)
    x_tr, x_ev, y_tr, y_ev = train_test_split(
        x, y, test_size=N_EVAL, stratify=y, random_state=SEED, shuffle=True
    )
    return (np.ascontiguousarray(x_tr), y_tr, np.ascontiguousarray(x_ev), y_ev)


def build_model():
    import torch.nn as nn

    class DigitsCNN(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(1, 16, 3, padding=1, bias=False)
            self.bn1 = nn.BatchNorm2d(16)
            self.conv2 = nn.Conv2d(16, 32, 3, padding=1, bias=False)
            self.bn2 = nn.BatchNorm2d(32)
            self.pool = nn.MaxPool2d(2)
            self.conv3 = nn.Conv2d(32, 32, 3, padding=1, bias=False)
            self.bn3 = nn.BatchNorm2d(32)
            self.gap = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(32, 10)

        def forward(self, x):
            x = self.bn1(self.conv1(x)).relu()
            x = self.pool(self.bn2(self.conv2(x)).relu())
            x = self.bn3(self.conv3(x)).relu()
            return self.fc(self.gap(x).flatten(1))

    return DigitsCNN()


def train(x_tr: np.ndarray, y_tr: np.ndarray):
    import torch
    import torch.nn.functional as F

    model = build_model()
    xs, ys = torch.from_numpy(x_tr), torch.from_numpy(y_tr)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=EPOCHS)
    gen = torch.Generator().manual_seed(SEED)
    model.train()
    for _ in range(EPOCHS):
        perm = torch.randperm(len(xs), generator=gen)
        for i in range(0, len(xs), BATCH):
            idx = perm[i : i + BATCH]
            if len(idx) < 2:  # BatchNorm needs more than one sample per batch
                continue
            opt.zero_grad()
            loss = F.cross_entropy(model(xs[idx]), ys[idx])
            loss.backward()
            opt.step()
        sched.step()
    return model.eval()


def export_onnx(model, path: Path) -> None:
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter warns that it is legacy
        torch.onnx.export(
            model,
            (torch.zeros(2, 1, 8, 8),),
            str(path),
            dynamo=False,
            do_constant_folding=False,  # True folds BatchNorm into Conv
            opset_version=OPSET,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        )


def check_onnx(path: Path) -> None:
    import onnx

    m = onnx.load(str(path))
    onnx.checker.check_model(m, full_check=True)
    ops = collections.Counter(n.op_type for n in m.graph.node)
    opset = {o.domain: o.version for o in m.opset_import}.get("", None)
    dims = [d.dim_param or d.dim_value for d in m.graph.input[0].type.tensor_type.shape.dim]
    assert opset == OPSET, opset
    assert m.graph.input[0].name == "input" and dims == ["batch", 1, 8, 8], dims
    out_dims = [d.dim_param or d.dim_value for d in m.graph.output[0].type.tensor_type.shape.dim]
    assert m.graph.output[0].name == "logits" and out_dims == ["batch", 10], out_dims
    assert ops["BatchNormalization"] == 3, f"BatchNorm was folded by the exporter: {dict(ops)}"
    print(f"ONNX: {path.name}, {path.stat().st_size} bytes, opset {opset}, ops {dict(ops)}")


def save_npz(path: Path, **arrays: np.ndarray) -> None:
    """Like np.savez_compressed, but byte-reproducible (fixed zip timestamps, sorted keys)."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for key in sorted(arrays):
            info = zipfile.ZipInfo(key + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            with zf.open(info, "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.ascontiguousarray(arrays[key]), allow_pickle=False)


def main() -> int:
    import onnxruntime as ort
    import torch

    torch.manual_seed(SEED)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)

    x_tr, y_tr, x_ev, y_ev = load_split()
    calib_idx = np.sort(np.random.default_rng(SEED).choice(len(x_tr), N_CALIB, replace=False))
    save_npz(HERE / "calibration.npz", input=x_tr[calib_idx])
    save_npz(HERE / "evaluation.npz", input=x_ev, labels=y_ev)

    model = train(x_tr, y_tr)
    with torch.no_grad():
        torch_logits = model(torch.from_numpy(x_ev)).numpy()
    torch_acc = float((torch_logits.argmax(1) == y_ev).mean())

    onnx_path = HERE / "digits_cnn.onnx"
    export_onnx(model, onnx_path)
    check_onnx(onnx_path)

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])
    ort_logits = sess.run(["logits"], {"input": x_ev})[0]
    ort_acc = float((ort_logits.argmax(1) == y_ev).mean())
    max_diff = float(np.abs(ort_logits - torch_logits).max())

    print(f"train {len(x_tr)} / evaluation {len(x_ev)} samples, calibration {N_CALIB}")
    print(f"accuracy on evaluation split: torch {torch_acc:.4f}, onnxruntime {ort_acc:.4f}")
    print(f"max |torch - onnxruntime| logits: {max_diff:.2e}")
    ok = torch_acc >= 0.95 and (ort_logits.argmax(1) == torch_logits.argmax(1)).all() and max_diff < 1e-3
    if not ok:
        print("FAILED: accuracy below 0.95 or torch and onnxruntime disagree", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
