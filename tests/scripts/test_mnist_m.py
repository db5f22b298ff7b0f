"""Tests for scripts/mnist_m.py: the MNIST-M style blend, its photo list and provenance section."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import tpsnet_plugin  # noqa: F401  (applies the torchvision import fix first)
from tpsnet_plugin.data.digits import MNIST_INSTANCES, instance_indices, load_domain

ROOT = Path(__file__).resolve().parents[2]
PROVENANCE = ROOT / "tpsnet_plugin" / "data" / "digits_arrays" / "PROVENANCE.md"


@pytest.fixture(scope="module")
def mnist_m():
    return importlib.import_module("scripts.mnist_m")


def _photo(path, size, colour=None, seed=0):
    if colour is None:
        pixels = np.random.default_rng(seed).integers(0, 256, size=(*size, 3), dtype=np.uint8)
    else:
        pixels = np.broadcast_to(np.asarray(colour, dtype=np.uint8), (*size, 3)).copy()
    Image.fromarray(pixels).save(path)
    return path


def test_blend_is_abs_difference_with_binarised_digit(mnist_m, tmp_path):
    colour = (30, 140, 250)
    photo = _photo(tmp_path / "flat.png", (80, 100), colour)
    digits = np.zeros((3, 28, 28), dtype=np.uint8)
    digits[:, 10:18, 12:16] = 255
    digits[:, 5, 5] = mnist_m.DIGIT_THRESHOLD  # ink
    digits[:, 6, 6] = mnist_m.DIGIT_THRESHOLD - 1  # background
    out = mnist_m.build_mnist_m(digits, [photo], seed=0)
    ink = digits >= mnist_m.DIGIT_THRESHOLD
    expected = np.where(ink[..., None], 255 - np.array(colour), np.array(colour))
    np.testing.assert_array_equal(out, expected)


def test_crops_cover_photos_and_scales(mnist_m, tmp_path):
    # photo i is flat grey 40*(i+1): the output background says which photo each crop came from
    photos = [_photo(tmp_path / f"p{i}.png", (60 + 10 * i, 90), (40 * (i + 1),) * 3)
              for i in range(3)]
    digits = np.zeros((60, 28, 28), dtype=np.uint8)
    out = mnist_m.build_mnist_m(digits, photos, seed=1)
    used = {int(image[0, 0, 0]) for image in out}
    assert used == {40, 80, 120}


def test_random_photo_crops_are_textured_and_seeded(mnist_m, tmp_path):
    photos = [_photo(tmp_path / f"n{i}.png", (70, 50 + 40 * i), seed=i) for i in range(2)]
    digits = np.zeros((6, 28, 28), dtype=np.uint8)
    a = mnist_m.build_mnist_m(digits, photos, seed=0)
    assert a.reshape(6, -1).std(axis=1).min() > 5
    np.testing.assert_array_equal(a, mnist_m.build_mnist_m(digits, photos, seed=0))
    assert not np.array_equal(a, mnist_m.build_mnist_m(digits, photos, seed=1))


def test_large_photos_are_reduced_to_the_working_side(mnist_m, tmp_path):
    path = _photo(tmp_path / "big.png", (mnist_m.WORK_SIDE * 2, mnist_m.WORK_SIDE * 3), seed=5)
    assert mnist_m._load_photo(path).shape == (mnist_m.WORK_SIDE, mnist_m.WORK_SIDE * 3 // 2, 3)
    small = _photo(tmp_path / "small.png", (40, 30), seed=6)
    assert mnist_m._load_photo(small).shape == (40, 30, 3)


def test_bad_inputs_raise(mnist_m, tmp_path):
    photo = _photo(tmp_path / "ok.png", (40, 40))
    tiny = _photo(tmp_path / "tiny.png", (20, 60))
    digits = np.zeros((2, 28, 28), dtype=np.uint8)
    with pytest.raises(ValueError, match="uint8"):
        mnist_m.build_mnist_m(digits.astype(np.float32), [photo])
    with pytest.raises(ValueError, match="no photographs"):
        mnist_m.build_mnist_m(digits, [])
    with pytest.raises(ValueError, match="smaller"):
        mnist_m.build_mnist_m(digits, [photo, tiny])


def test_photo_list_is_explicit_and_documented(mnist_m):
    paths = [(photo.package, photo.path) for photo in mnist_m.PHOTOS]
    assert len(paths) == len(set(paths))
    assert {photo.package for photo in mnist_m.PHOTOS} == set(mnist_m.PACKAGES)
    assert not set(mnist_m.PACKAGES) & set(mnist_m.INSPECTED_WITHOUT_PHOTOS)
    shipped = PROVENANCE.read_text()
    assert shipped.count(mnist_m.SECTION_BEGIN) == 1 and shipped.count(mnist_m.SECTION_END) == 1
    for photo in mnist_m.PHOTOS:
        assert f"`{photo.path}` | {photo.package} |" in shipped
    assert "no other part of the project" in shipped
    # the shipped section says which half mnist-m holds, and names its complement
    section = shipped[shipped.index(mnist_m.SECTION_BEGIN):]
    assert "2500 images" in section and "odd index" in section and "`source_index`" in section
    assert "### handwritten-mnist-half (no file)" in section and "even-index" in section


def test_provenance_section_is_appended_then_replaced(mnist_m, tmp_path):
    path = tmp_path / "PROVENANCE.md"
    path.write_text("# Digits\n\nbody\n")
    packages = {name: {"version": "1", "licence": "GPL-2+"} for name in mnist_m.PACKAGES}
    mnist_m.write_provenance_section(path, mnist_m.provenance_section(10, packages))
    once = path.read_text()
    assert once.startswith("# Digits\n\nbody\n\n" + mnist_m.SECTION_BEGIN)
    packages = {name: {"version": "2", "licence": "GPL-2+"} for name in mnist_m.PACKAGES}
    mnist_m.write_provenance_section(path, mnist_m.provenance_section(10, packages))
    twice = path.read_text()
    assert twice.count(mnist_m.SECTION_BEGIN) == 1 and "| 2 | GPL-2+ |" in twice
    assert "| 1 | GPL-2+ |" not in twice and twice.startswith("# Digits\n\nbody\n")


def test_fetch_photos_names_missing_files(mnist_m, tmp_path, monkeypatch):
    helpers = mnist_m.debian_packages
    monkeypatch.setattr(helpers, "download_packages",
                        lambda packages, folder, update=True: {p: tmp_path / f"{p}.deb" for p in packages})
    monkeypatch.setattr(helpers, "extract_package", lambda deb, folder: Path(folder))
    monkeypatch.setattr(helpers, "deb_field", lambda deb, field: "9.9")
    monkeypatch.setattr(helpers, "package_licence", lambda root, package: "GPL-2+")
    with pytest.raises(FileNotFoundError, match="Aqua.jpg"):
        mnist_m.fetch_photos(tmp_path)
    for photo in mnist_m.PHOTOS:
        target = tmp_path / "packages" / photo.package / photo.path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.touch()
    paths, packages = mnist_m.fetch_photos(tmp_path)
    assert [p.name for p in paths] == [Path(photo.path).name for photo in mnist_m.PHOTOS]
    assert packages == {p: {"version": "9.9", "licence": "GPL-2+"} for p in mnist_m.PACKAGES}


def test_kept_rows_are_the_odd_ones_and_match_the_package_rule(mnist_m):
    np.testing.assert_array_equal(mnist_m.source_rows(10), [1, 3, 5, 7, 9])
    assert mnist_m.source_rows(5000).dtype == np.int64
    assert mnist_m.SOURCE_ROWS == MNIST_INSTANCES[mnist_m.DOMAIN]
    assert mnist_m.COMPLEMENT_DOMAIN in MNIST_INSTANCES


def test_write_domain_keeps_the_odd_blends_of_the_full_draw(mnist_m, tmp_path, monkeypatch):
    # a small fake source and photo set: the written arrays are the full build's odd rows
    rng = np.random.default_rng(0)
    digits = np.zeros((20, 28, 28), dtype=np.uint8)
    digits[:, 6:22, 10:18] = rng.integers(0, 256, size=(20, 16, 8), dtype=np.uint8)
    labels = np.arange(20, dtype=np.int64) // 2
    source = tmp_path / "handwritten-mnist.npz"
    np.savez(source, images=digits, labels=labels)
    photos = [_photo(tmp_path / f"p{i}.png", (70 + 20 * i, 90), seed=i) for i in range(3)]
    packages = {name: {"version": "1", "licence": "GPL-2+"} for name in mnist_m.PACKAGES}
    monkeypatch.setattr(mnist_m, "fetch_photos", lambda cache, update=True: (photos, packages))
    out = tmp_path / "out"
    images, kept_labels = mnist_m.write_domain(out, cache=tmp_path, source=source)
    full = mnist_m.build_mnist_m(digits, photos, mnist_m.SEED)
    with np.load(out / "mnist-m.npz") as stored:
        assert sorted(stored.files) == ["images", "labels", "source_index"]
        np.testing.assert_array_equal(stored["source_index"], np.arange(1, 20, 2))
        np.testing.assert_array_equal(stored["images"], full[1::2])
        np.testing.assert_array_equal(stored["labels"], labels[1::2])
        assert stored["source_index"].dtype == np.int64 and stored["labels"].dtype == np.int64
    np.testing.assert_array_equal(images, full[1::2])
    np.testing.assert_array_equal(kept_labels, labels[1::2])
    # not the first half's blends, nor a fresh draw for the kept digits alone
    assert not np.array_equal(images, mnist_m.build_mnist_m(digits[1::2], photos, mnist_m.SEED))
    text = (out / "PROVENANCE.md").read_text()
    assert "10 images" in text and "(1, 3, ..., 19)" in text and "(0, 2, ..., 18; 10)" in text
    # byte-deterministic output
    first = (out / "mnist-m.npz").read_bytes()
    mnist_m.write_domain(out, cache=tmp_path, source=source)
    assert (out / "mnist-m.npz").read_bytes() == first


def test_shipped_mnist_m_is_the_odd_half(mnist_m):
    images, labels = load_domain("mnist-m")
    _, source_labels = load_domain("handwritten-mnist")
    assert images.shape == (2500, 28, 28, 3)
    np.testing.assert_array_equal(instance_indices("mnist-m"), mnist_m.source_rows(5000))
    np.testing.assert_array_equal(labels, source_labels[mnist_m.source_rows(5000)])


def test_shipped_mnist_m_matches_a_rebuild(mnist_m):
    root = mnist_m.default_cache_dir() / "packages"
    photos = [root / photo.package / photo.path for photo in mnist_m.PHOTOS]
    if not all(path.is_file() for path in photos):
        pytest.skip(f"photo packages not unpacked in {root} (run scripts/mnist_m.py once)")
    digits, labels = load_domain("handwritten-mnist")
    shipped, shipped_labels = load_domain("mnist-m")
    kept = mnist_m.source_rows(len(digits))
    np.testing.assert_array_equal(mnist_m.build_mnist_m(digits, photos, mnist_m.SEED)[kept], shipped)
    np.testing.assert_array_equal(labels[kept], shipped_labels)
