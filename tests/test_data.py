"""Data sources: npz, image folders and random data end as validated arrays named after the inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydantic import TypeAdapter, ValidationError

from accelopt.data import (DataConfig, DataSource, Dataset, ImagesSource, NpzSource, RandomSource, load_npz,
                           load_source, random_feeds)
from accelopt.errors import BadInputError
from accelopt.targets.base import TensorSpec

X = TensorSpec("x", ["batch", 3], np.dtype(np.float32))
IMG = TensorSpec("image", ["batch", 3, 4, 6], np.dtype(np.float32))


def _npz(path: Path, **arrays: np.ndarray) -> Path:
    np.savez(path, **arrays)
    return path


def _png(path: Path, rgb: tuple[int, int, int], size: tuple[int, int] = (8, 12)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size[1], size[0]), rgb).save(path)


@pytest.fixture
def class_folders(tmp_path: Path) -> Path:
    """cat/ holds two red images, dog/ one blue image."""
    root = tmp_path / "imgs"
    _png(root / "cat" / "a.png", (255, 0, 0))
    _png(root / "cat" / "b.png", (255, 0, 0))
    _png(root / "dog" / "a.png", (0, 0, 255))
    return root


# --- npz ---------------------------------------------------------------------------------------------


def test_npz_casts_to_input_dtype_and_reads_labels(tmp_path):
    x = np.arange(15, dtype=np.float64).reshape(5, 3)
    ds = load_npz(_npz(tmp_path / "d.npz", x=x, labels=np.arange(5)), [X])
    assert ds.feeds["x"].dtype == np.float32
    np.testing.assert_array_equal(ds.feeds["x"], x.astype(np.float32))
    np.testing.assert_array_equal(ds.labels, np.arange(5))
    assert len(ds) == 5 and not ds.random
    assert ds.source.endswith("d.npz (5 samples)")


def test_npz_without_labels_key_has_no_labels(tmp_path):
    ds = load_npz(_npz(tmp_path / "d.npz", x=np.zeros((2, 3))), [X])
    assert ds.labels is None


def test_npz_source_maps_keys_resolves_relative_path_and_limits(tmp_path):
    _npz(tmp_path / "eval.npz", pixels=np.ones((6, 3)), y=np.arange(6))
    src = NpzSource(type="npz", path="eval.npz", inputs={"x": "pixels"}, labels="y", limit=4)
    ds = load_source(src, [X], tmp_path)
    assert ds.feeds["x"].shape == (4, 3)
    np.testing.assert_array_equal(ds.labels, [0, 1, 2, 3])
    assert ds.source == "npz:eval.npz (first 4 of 6 samples)"


def test_npz_missing_input_names_it_and_lists_keys(tmp_path):
    path = _npz(tmp_path / "d.npz", data=np.zeros((2, 3)), labels=np.zeros(2))
    with pytest.raises(BadInputError) as e:
        load_npz(path, [X])
    msg = str(e.value)
    assert "'x'" in msg and "data, labels" in msg and "\n" not in msg


def test_npz_shape_mismatch_names_input_expected_and_got(tmp_path):
    with pytest.raises(BadInputError, match=r"'x' expects shape \[batch, 3\], got \[5, 4\]"):
        load_npz(_npz(tmp_path / "d.npz", x=np.zeros((5, 4))), [X])
    with pytest.raises(BadInputError, match="expects shape"):  # rank differs
        load_npz(_npz(tmp_path / "e.npz", x=np.zeros((5, 3, 1))), [X])


def test_npz_sample_count_mismatch(tmp_path):
    path = _npz(tmp_path / "d.npz", x=np.zeros((5, 3)), labels=np.zeros(4))
    with pytest.raises(BadInputError, match="x=5, labels=4"):
        load_npz(path, [X])


@pytest.mark.parametrize("content", [b"not a zip at all", b"PK\x03\x04truncated"])
def test_corrupt_npz(tmp_path, content):
    path = tmp_path / "bad.npz"
    path.write_bytes(content)
    with pytest.raises(BadInputError, match="bad.npz"):
        load_npz(path, [X])


def test_truncated_npz_and_missing_file(tmp_path):
    good = _npz(tmp_path / "d.npz", x=np.random.default_rng(0).random((50, 3)))
    cut = tmp_path / "cut.npz"
    cut.write_bytes(good.read_bytes()[:-200])
    with pytest.raises(BadInputError, match="cut.npz"):
        load_npz(cut, [X])
    with pytest.raises(BadInputError, match="not found"):
        load_npz(tmp_path / "nope.npz", [X])


def test_npy_file_is_rejected(tmp_path):
    np.save(tmp_path / "a.npy", np.zeros((2, 3)))
    with pytest.raises(BadInputError, match="not an .npz archive"):
        load_npz(tmp_path / "a.npy", [X])


# --- images ------------------------------------------------------------------------------------------


def test_images_class_folders_shapes_values_labels(class_folders):
    src = ImagesSource(type="images", path=str(class_folders), size=(4, 6), mean=[0.5], std=[0.5],
                       labels="folders")
    ds = load_source(src, [IMG], Path("/unused"))
    x = ds.feeds["image"]
    assert x.shape == (3, 3, 4, 6) and x.dtype == np.float32
    np.testing.assert_allclose(x[0, 0], 1.0)  # red 255 -> (1 - 0.5) / 0.5
    np.testing.assert_allclose(x[0, 1:], -1.0)  # green, blue 0 -> (0 - 0.5) / 0.5
    np.testing.assert_allclose(x[2, 2], 1.0)  # the dog is blue
    np.testing.assert_array_equal(ds.labels, [0, 0, 1])
    assert "3 images, 2 classes" in ds.source


def test_images_nhwc_bgr_per_channel_stats(class_folders):
    spec = TensorSpec("image", [None, 4, 6, 3], np.dtype(np.float32))
    src = ImagesSource(type="images", path=str(class_folders), size=(4, 6), layout="NHWC", channels="bgr",
                       mean=[0.0, 0.1, 0.2], std=[1.0, 1.0, 2.0], limit=1)
    ds = load_source(src, [spec], Path("/unused"))
    assert ds.feeds["image"].shape == (1, 4, 6, 3) and ds.labels is None
    np.testing.assert_allclose(ds.feeds["image"][0, 0, 0], [0.0, -0.1, (1.0 - 0.2) / 2.0], rtol=1e-6)  # B, G, R


def test_images_gray_uint8(class_folders):
    spec = TensorSpec("image", [None, 1, 4, 6], np.dtype(np.uint8))
    src = ImagesSource(type="images", path=str(class_folders), size=(4, 6), channels="gray", scale=1.0,
                       dtype="uint8")
    ds = load_source(src, [spec], Path("/unused"))
    assert ds.feeds["image"].dtype == np.uint8 and ds.feeds["image"].shape == (3, 1, 4, 6)
    assert set(np.unique(ds.feeds["image"][0])) == {76}  # Pillow's luma of pure red


def test_images_wrong_size_for_model(class_folders):
    src = ImagesSource(type="images", path=str(class_folders), size=(5, 5))
    with pytest.raises(BadInputError, match=r"'image' expects shape \[batch, 3, 4, 6\], got \[3, 3, 5, 5\]"):
        load_source(src, [IMG], Path("/unused"))


def test_images_empty_folder_and_no_class_folders(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(BadInputError, match="no images"):
        load_source(ImagesSource(type="images", path="empty", size=(4, 6)), [IMG], tmp_path)
    _png(tmp_path / "flat" / "a.png", (1, 2, 3))
    with pytest.raises(BadInputError, match="class subfolders"):
        load_source(ImagesSource(type="images", path="flat", size=(4, 6), labels="folders"), [IMG], tmp_path)


def test_images_stray_files_warned_and_unreadable_image_named(class_folders):
    _png(class_folders / "stray.png", (0, 0, 0))
    notes: list[str] = []
    ds = load_source(ImagesSource(type="images", path=str(class_folders), size=(4, 6), labels="folders"), [IMG],
                     Path("/unused"), warn=notes.append)
    assert len(ds) == 3 and len(notes) == 1 and "1 image(s) directly in" in notes[0]
    (class_folders / "dog" / "broken.png").write_bytes(b"garbage")
    with pytest.raises(BadInputError, match="broken.png"):
        load_source(ImagesSource(type="images", path=str(class_folders), size=(4, 6)), [IMG], Path("/unused"))


def test_images_need_a_single_known_input(class_folders):
    src = ImagesSource(type="images", path=str(class_folders), size=(4, 6), input="pixels")
    with pytest.raises(BadInputError, match="model inputs: image"):
        load_source(src, [IMG], Path("/unused"))
    with pytest.raises(BadInputError, match="also needs 'x'"):
        load_source(src.model_copy(update={"input": None}), [IMG, X], Path("/unused"))


def test_images_config_validation():
    with pytest.raises(ValidationError, match="mean needs 1 or 3 values"):
        ImagesSource(type="images", path="p", size=(4, 4), mean=[0.1, 0.2])
    with pytest.raises(ValidationError, match="non-zero"):
        ImagesSource(type="images", path="p", size=(4, 4), std=[0.0])
    with pytest.raises(ValidationError, match="size must be positive"):
        ImagesSource(type="images", path="p", size=(0, 4))


# --- random and config -------------------------------------------------------------------------------


def test_random_with_pins_and_integer_inputs():
    specs = [TensorSpec("x", ["batch", "seq", 4], np.dtype(np.float32)),
             TensorSpec("ids", ["batch", "seq"], np.dtype(np.int64))]
    feeds = random_feeds(specs, samples=3, seed=7, input_shapes={"x": [2, 5, 4], "ids": [2, 5]}, low=2, high=9)
    assert feeds["x"].shape == (3, 5, 4) and feeds["x"].dtype == np.float32
    assert feeds["x"].min() >= 2 and feeds["x"].max() <= 9
    assert feeds["ids"].dtype == np.int64 and set(np.unique(feeds["ids"])) <= set(range(2, 10))
    again = random_feeds(specs, samples=3, seed=7, input_shapes={"x": [2, 5, 4], "ids": [2, 5]}, low=2, high=9)
    np.testing.assert_array_equal(feeds["x"], again["x"])


def test_random_without_pin_fails_for_inner_dynamic_dim():
    assert random_feeds([X], samples=2)["x"].shape == (2, 3)  # a dynamic batch alone needs no pin
    with pytest.raises(BadInputError, match="'x' dim 1 is dynamic.*pin it with the recipe's input.shapes, or --shape"):
        random_feeds([TensorSpec("x", ["batch", "seq"], np.dtype(np.float32))], samples=2)
    with pytest.raises(BadInputError, match="rank 2"):
        random_feeds([X], samples=2, input_shapes={"x": [1, 3, 3]})


def test_random_source_warns_and_is_marked():
    notes: list[str] = []
    ds = load_source(RandomSource(type="random", samples=4, seed=1), [X], Path("."), warn=notes.append)
    assert ds.random and len(ds) == 4 and ds.labels is None
    assert len(notes) == 1 and "unfit for calibration and accuracy" in notes[0]


def test_data_config_discriminates_and_rejects_unknown_keys():
    cfg = DataConfig.model_validate({"calibration": {"type": "npz", "path": "c.npz"},
                                     "evaluation": {"type": "random", "samples": 2}})
    assert isinstance(cfg.calibration, NpzSource) and isinstance(cfg.evaluation, RandomSource)
    with pytest.raises(ValidationError, match="extra"):
        TypeAdapter(DataSource).validate_python({"type": "npz", "path": "c.npz", "label": "y"})


# --- Dataset -----------------------------------------------------------------------------------------


def test_take_and_batches():
    ds = Dataset({"x": np.arange(10.0).reshape(5, 2)}, np.arange(5), "t")
    assert [len(b["x"]) for b in ds.batches(2)] == [2, 2, 1]
    np.testing.assert_array_equal(np.concatenate([b["x"] for b in ds.batches(2)]), ds.feeds["x"])
    first = ds.take(3)
    assert len(first) == 3 and list(first.labels) == [0, 1, 2]
    assert ds.take(9) is ds


def test_fingerprint_stable_and_sensitive(tmp_path):
    x = np.random.default_rng(0).random((4, 3)).astype(np.float32)
    a = load_npz(_npz(tmp_path / "a.npz", x=x, labels=np.arange(4)), [X])
    b = load_npz(_npz(tmp_path / "b.npz", x=x.copy(), labels=np.arange(4)), [X])
    assert a.fingerprint() == b.fingerprint()  # content, not file name
    changed = x.copy()
    changed.reshape(-1).view(np.uint8)[5] ^= 1
    assert Dataset({"x": changed}, a.labels, "c").fingerprint() != a.fingerprint()
    assert Dataset({"x": x}, np.array([0, 1, 2, 2]), "c").fingerprint() != a.fingerprint()
    assert Dataset({"x": x}, None, "c").fingerprint() != a.fingerprint()
