"""`accelopt profile`: kernels mapped to nodes, shares, MACs, bottleneck rules, --json, --plot, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

from accelopt.errors import BadInputError
from accelopt.profiling.report import profile_model
from accelopt.targets.base import Target
from tests import models

FAST = ("--runs", "3", "--warmup", "1")


def _save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.save(model, str(path))
    return path


def _optimized_node_names(path: Path, tmp_path: Path) -> set[str]:
    """The graph ORT runs at its default level, read independently of the profiler."""
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "ort-optimized.onnx")
    options.log_severity_level = 3
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return {n.name for n in onnx.load(options.optimized_model_filepath).graph.node}


def _profile(cli, *args) -> dict:
    r = cli("profile", *args, *FAST, "--json")
    assert r.code == 0, r.err
    return json.loads(r.out)


def test_rows_cover_the_optimized_graph_and_shares_add_up(cli, tmp_path, monkeypatch):
    path = _save(models.conv_stack(), tmp_path / "conv_stack.onnx")
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    d = _profile(cli, path)
    assert list(work.iterdir()) == []  # ORT's trace and optimized graph went to a temp dir
    assert d["schema"] == "accelopt.profile/1"
    assert {r["kernel"] for r in d["nodes"]} == _optimized_node_names(path, tmp_path)
    assert all(r["ms"] >= 0 for r in d["nodes"])
    assert sum(r["share"] for r in d["nodes"]) + d["unattributed_share"] == pytest.approx(1.0)
    assert d["node_ms"] == pytest.approx(sum(r["ms"] for r in d["nodes"]))
    assert d["coverage"] == pytest.approx(d["node_ms"] / d["latency_ms"]["median"])
    assert sum(o["share"] for o in d["op_types"]) == pytest.approx(sum(r["share"] for r in d["nodes"]))
    assert d["unmapped"] == [] and d["threads"] == 1 and d["runs"] == 3
    conv1 = next(r for r in d["nodes"] if r["nodes"][:1] == ["conv1"])
    assert {"conv3x3", "float"} <= set(conv1["tags"])
    assert any("winograd" in b["step"] for b in d["bottlenecks"])  # 3x3 stride-1 convs are most of the time


def test_conv_macs_follow_the_formula_and_fused_parts_are_named(cli, conv_bn_path):
    d = _profile(cli, conv_bn_path)
    rows = {r["nodes"][0]: r for r in d["nodes"] if r["nodes"]}
    # conv_bn_model: conv1 3->8 and conv2 8->8, 3x3, 16x16 outputs, batch 1: Cout*H*W * Cin*kh*kw
    assert rows["conv1"]["macs"] == 8 * 16 * 16 * 3 * 9
    assert rows["conv2"]["macs"] == 8 * 16 * 16 * 8 * 9
    assert {"Conv", "BatchNormalization", "Relu"} <= set(rows["conv1"]["ops"])  # ORT folded BN and Relu into it
    assert rows["conv1"]["gflops"] == pytest.approx(2 * rows["conv1"]["macs"] / rows["conv1"]["ms"] / 1e6)
    assert rows["conv1"]["bytes"] > 0 and rows["conv1"]["gbps"] > 0
    assert d["macs"] == 8 * 256 * 27 + 8 * 256 * 72 + 32
    steps = {b["step"].split()[0] for b in d["bottlenecks"]}
    assert "fuse" in steps  # BatchNormalization present
    bn = next(b for b in d["bottlenecks"] if "BatchNormalization" in b["what"])
    assert bn["top"][0] in ("conv1", "conv2")


def test_unnamed_nodes_are_numbered_to_map_kernels(cli, tmp_path):
    model = models.conv_stack()
    for node in model.graph.node:
        node.name = ""
    d = _profile(cli, _save(model, tmp_path / "unnamed.onnx"))
    assert d["unmapped"] == [] and any("numbered" in n for n in d["notes"])
    assert next(r for r in d["nodes"] if r["nodes"][:1] == ["Conv_0"])["macs"] == 16 * 16 * 16 * 3 * 9


class _Calibration(CalibrationDataReader):
    def __init__(self) -> None:
        rng = np.random.default_rng(0)
        self._feeds = iter([{"x": rng.random((1, 3, 8, 8), dtype=np.float32)} for _ in range(4)])

    def get_next(self) -> dict | None:
        return next(self._feeds, None)


def test_qdq_islands_name_the_speed_guard(cli, tmp_path):
    """Only the convs quantized: SiLU, the head's Sigmoids and Mul stay float between DequantizeLinear and
    QuantizeLinear kernels that ORT cannot fuse away."""
    float_path = _save(models.yolo_like_head(), tmp_path / "head.onnx")
    qdq = tmp_path / "head.qdq.onnx"
    quantize_static(str(float_path), str(qdq), _Calibration(), quant_format=QuantFormat.QDQ, op_types_to_quantize=["Conv"])
    d = _profile(cli, qdq)
    islands = next(b for b in d["bottlenecks"] if b["what"].startswith("QuantizeLinear/DequantizeLinear"))
    assert "speed guard" in islands["step"] and islands["share"] >= 0.05
    qconv = next(r for r in d["nodes"] if r["op_type"] == "QLinearConv")  # a Q/DQ group ORT fused
    assert qconv["nodes"][0] == "head_conv" and "DequantizeLinear" in qconv["ops"]
    assert qconv["macs"] == (4 + 4) * 64 * 16  # 1x1 conv 16 -> 8 channels at 8x8
    assert "uint8" == qconv["precision"]


def test_default_output_tables_and_greppable_lines(cli, tmp_path):
    path = _save(models.yolo_like_head(), tmp_path / "head.onnx")
    r = cli("profile", path, *FAST, "--top", "3")
    assert r.code == 0, r.err
    assert "top 3 of" in r.out and "time per kernel op type" in r.out and "QuickGelu" in r.out
    lines = r.out.splitlines()
    assert any(line.startswith("latency: median ") for line in lines)
    assert any(line.startswith("coverage: kernels ") for line in lines)
    assert any(line.startswith("bottleneck 1: ") and " -> " in line for line in lines)


def test_plot_writes_a_png(cli, tmp_path):
    path = _save(models.conv_stack(), tmp_path / "conv_stack.onnx")
    png = tmp_path / "charts" / "profile.png"
    r = cli("profile", path, *FAST, "--plot", png)
    assert r.code == 0, r.err
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in png.parent.iterdir()) == ["profile.png"]  # no temp file left
    r = cli("profile", path, *FAST, "--plot", tmp_path / "profile.nope")
    assert r.code == 2 and "--plot" in r.err


def test_batch_and_data(cli, conv_bn_path, tmp_path):
    d = _profile(cli, conv_bn_path, "--batch", "2")
    conv1 = next(r for r in d["nodes"] if r["nodes"][:1] == ["conv1"])
    assert d["batch"] == 2 and conv1["macs"] == 2 * 8 * 16 * 16 * 3 * 9
    np.savez(tmp_path / "d.npz", x=np.ones((3, 3, 16, 16), np.float32))
    assert "d.npz" in _profile(cli, conv_bn_path, "--data", tmp_path / "d.npz")["data"]


def test_bad_input_is_one_line_with_exit_2(cli, tmp_path, conv_bn_path):
    missing = cli("profile", tmp_path / "nope.onnx")
    assert missing.code == 2 and "not found" in missing.err
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model at all")
    assert cli("profile", junk).code == 2
    np.savez(tmp_path / "bad.npz", x=np.ones((2, 3, 5, 5), np.float32))
    bad = cli("profile", conv_bn_path, "--data", tmp_path / "bad.npz")
    assert bad.code == 2 and "expects shape" in bad.err
    unknown = cli("profile", conv_bn_path, "--target", "nope")
    assert unknown.code == 2 and "unknown target" in unknown.err
    fixed = cli("profile", _save(models.conv_stack(batch=1), tmp_path / "fixed.onnx"), "--batch", "2")
    assert fixed.code == 2 and "rejected the inputs" in fixed.err
    for r in (missing, bad, unknown, fixed):
        assert len(r.err.strip().splitlines()) == 1 and "Traceback" not in r.err


def test_a_target_without_profiler_says_so():
    class NoProfiler(Target):
        name = "none"
        summary = "a target with no profiler"

        def check(self, model):
            return []

        def lower(self, model, out_dir):
            raise NotImplementedError

        def runner(self, artifact, threads=None):
            return None

    with pytest.raises(BadInputError, match="no profiler"):
        profile_model(models.conv_stack(), NoProfiler(), {"x": np.zeros((1, 3, 16, 16), np.float32)},
                      path="m.onnx", data="zeros", threads=1, warmup=0, runs=1)
