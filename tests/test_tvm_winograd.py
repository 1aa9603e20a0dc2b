"""Per-layer Winograd selection: eligibility, the legalizer's numerics, per-layer error, the choice rule."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from accelopt.targets.tvm.winograd import Layer, WinogradConfig, choose, default_tiles, eligible, kernel_of
from tests import models


def _layer(**latency: float) -> Layer:
    return Layer("n1c16h16w16o16p1111", ["conv1"], (1, 16, 16, 16), (1, 1, 1, 1), np.zeros((16, 16, 3, 3)),
                 latency_ms=dict(latency))


def test_eligible_convs_are_grouped_by_shape_and_small_ones_skipped():
    layers = eligible(models.conv_stack(channels=16, size=16, layers=2), WinogradConfig())
    assert [(layer.key, layer.nodes) for layer in layers] == [("n1c16h16w16o16p1111", ["conv1", "conv2"])]
    # the stem (3 input channels) is too narrow; raising the bar leaves nothing
    assert eligible(models.conv_stack(channels=16, size=16), WinogradConfig(min_channels=32)) == []
    assert eligible(models.conv_stack(channels=16, size=16), WinogradConfig(min_size=17)) == []


def test_fp32_tries_f2_and_f4_quantized_only_f2():
    config = WinogradConfig()
    assert default_tiles(models.conv_stack(), config) == [2, 4]
    assert default_tiles(models.conv_stack(), WinogradConfig(tiles=[4])) == [4]
    model = models.conv_stack()
    model.graph.node.insert(0, helper.make_node("QuantizeLinear", ["x", "s"], ["q"], name="q0"))
    assert default_tiles(model, config) == [2]


def test_choice_is_the_fastest_within_tolerance():
    fast_but_wrong = _layer(direct=2.0, f2=1.5, f4=1.0)
    fast_but_wrong.error = {"direct": 1e-7, "f2": 1e-7, "f4": 5e-3}
    unmeasured = _layer(direct=2.0)
    nothing = _layer()
    choose([fast_but_wrong, unmeasured, nothing], ["direct", "f2", "f4"], tolerance=1e-3)
    assert (fast_but_wrong.choice, unmeasured.choice, nothing.choice) == ("f2", "direct", "direct")


def test_kernel_names_map_back_to_layers():
    assert kernel_of("fused_conv2d_f4_n1c64h56w56o64p1111_add_relu") == ("f4", "n1c64h56w56o64p1111")
    assert kernel_of("fused_conv2d_direct_n1c16h16w16o16p1111_add1") == ("direct", "n1c16h16w16o16p1111")
    assert kernel_of("fused_conv2d3_add_relu") is None


tvm = pytest.importorskip("tvm")

from accelopt.targets.onnxruntime import OrtRunner  # noqa: E402
from accelopt.targets.tvm.env import host_mcpu  # noqa: E402
from accelopt.targets.tvm.frontend import prepare  # noqa: E402
from accelopt.targets.tvm.winograd import layer_error  # noqa: E402


@pytest.mark.parametrize("algorithm", ["direct", "f2", "f4"])
def test_each_algorithm_builds_and_matches_ort(algorithm):
    model = models.conv_stack(channels=16, size=16, layers=2)
    key = eligible(model, WinogradConfig())[0].key
    mod = prepare(model, {key: algorithm})
    names = [gv.name_hint for gv in mod.get_global_vars()]
    assert any(f"conv2d_{algorithm}_{key}" in n for n in names)
    exe = tvm.compile(mod, target=tvm.target.Target({"kind": "llvm", "mcpu": host_mcpu()}))
    vm = tvm.relax.VirtualMachine(exe, tvm.cpu(0))
    x = np.random.default_rng(0).standard_normal((1, 3, 16, 16)).astype(np.float32)
    got = vm["main"](tvm.runtime.tensor(x)).numpy()
    want = OrtRunner(model, threads=1).run({"x": x})["y"]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_layer_error_is_measured_against_float64():
    layer = eligible(models.conv_stack(channels=16, size=16, layers=1), WinogradConfig())[0]
    target = {"kind": "llvm", "mcpu": host_mcpu()}
    errors = {a: layer_error(layer, a, target) for a in ("direct", "f2", "f4")}
    assert all(0 < e < 1e-5 for e in errors.values()), errors
    assert errors["f4"] > errors["f2"]  # larger tiles, larger error (notes §6.3)
