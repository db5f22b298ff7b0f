"""Tests for the embedded Digits data set and its build script."""

import importlib.util
import warnings
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

import tpsnet_plugin  # noqa: F401  (applies the torchvision import fix first)
from tpsnet_plugin.data.digits import (
    CLASSES,
    DOMAINS,
    MNIST_INSTANCES,
    DigitsDomain,
    instance_indices,
    load_domain,
    shared_instances,
    shared_instances_warning,
)
from tpsnet_plugin.evaluation import evaluate_domains, raw_pixel_features
from tpsnet_plugin.training.data import build_dataset

RGB_DOMAINS = ("mnist-m",)
GRAY_DOMAINS = tuple(domain for domain in DOMAINS if domain not in RGB_DOMAINS)


@pytest.fixture(scope="module")
def builder():
    return importlib.import_module("scripts.build_digits")


@pytest.fixture(scope="module")
def mnist_m_script():
    return importlib.import_module("scripts.mnist_m")


@pytest.mark.parametrize("domain", GRAY_DOMAINS)
def test_domain_arrays_are_well_formed(domain):
    images, labels = load_domain(domain)
    assert images.dtype == np.uint8 and images.ndim == 3 and images.shape[1:] == (28, 28)
    assert labels.dtype == np.int64 and labels.shape == (len(images),)
    assert set(np.unique(labels).tolist()) == set(range(len(CLASSES)))
    # every image holds a digit stretched to full white
    assert (images.reshape(len(images), -1).max(axis=1) == 255).all()


@pytest.mark.parametrize("domain", GRAY_DOMAINS)
def test_digits_are_white_on_black_and_centred(domain):
    images, _ = load_domain(domain)
    pixels = images.astype(np.float64)
    frame = np.ones((28, 28), dtype=bool)
    frame[4:24, 4:24] = False  # the MNIST-style 20x20 box
    assert (pixels[:, frame] == 0).all()
    # mostly background: a dark mean, most pixels exactly zero
    assert pixels.mean() < 0.35 * 255
    assert (images == 0).mean() > 0.5
    # centre of mass near the image centre (13.5) for the average digit
    rows, cols = np.meshgrid(np.arange(28), np.arange(28), indexing="ij")
    mass = pixels.sum(axis=(1, 2))
    centre_row = (pixels * rows).sum(axis=(1, 2)) / mass
    centre_col = (pixels * cols).sum(axis=(1, 2)) / mass
    assert abs(np.median(centre_row) - 13.5) < 2 and abs(np.median(centre_col) - 13.5) < 2


def test_source_domain_sizes():
    _, uci = load_domain("handwritten-uci")
    _, mnist = load_domain("handwritten-mnist")
    _, half = load_domain("handwritten-mnist-half")
    _, mnist_m = load_domain("mnist-m")
    assert len(uci) == 1797  # sklearn load_digits
    assert np.bincount(mnist).tolist() == [500] * 10  # OpenCV digits.png: 500 per class
    assert np.bincount(half).tolist() == [250] * 10
    assert np.bincount(mnist_m).tolist() == [250] * 10


def test_mnist_m_and_half_split_the_handwritten_mnist_instances():
    images, labels = load_domain("handwritten-mnist")
    half, half_labels = load_domain("handwritten-mnist-half")
    _, mnist_m_labels = load_domain("mnist-m")
    blended, kept = instance_indices("mnist-m"), instance_indices("handwritten-mnist-half")
    assert blended.dtype == np.int64 and kept.dtype == np.int64
    np.testing.assert_array_equal(blended, np.arange(1, 5000, 2))  # stored source_index: the odd
    np.testing.assert_array_equal(kept, np.arange(0, 5000, 2))  # the even
    assert not set(blended.tolist()) & set(kept.tolist())
    assert sorted(blended.tolist() + kept.tolist()) == list(range(5000))
    np.testing.assert_array_equal(instance_indices("handwritten-mnist"), np.arange(5000))
    assert instance_indices("printed") is None
    # the rule (MNIST_INSTANCES) says what the arrays hold
    for name in MNIST_INSTANCES:
        np.testing.assert_array_equal(instance_indices(name), np.arange(5000)[MNIST_INSTANCES[name]])
    # handwritten-mnist-half is a view of the shipped array; mnist-m keeps its sources' labels
    np.testing.assert_array_equal(half, images[0::2])
    np.testing.assert_array_equal(half_labels, labels[0::2])
    assert half.flags["C_CONTIGUOUS"] and half_labels.dtype == np.int64
    np.testing.assert_array_equal(mnist_m_labels, labels[blended])
    # usable wherever a Digits domain is
    dataset = DigitsDomain("handwritten-mnist-half", image_size=28, channels=1)
    assert len(dataset) == 2500 and dataset.domain == "handwritten-mnist-half" and not dataset.rgb
    assert torch.allclose(dataset[3][0][0], torch.from_numpy(images[6]).float() / 255.0)
    np.testing.assert_allclose(domain_pixels("handwritten-mnist-half"), domain_pixels("handwritten-mnist")[0::2])


@pytest.mark.slow
def test_each_mnist_m_image_comes_from_its_source_digit():
    """Brute force: among all 5,000 binarised handwritten-mnist digits, the source explains best.

    An mnist-m image is ``|crop - ink|``: the photo, colour-inverted where the digit is ink. Undo
    the inversion under a candidate's ink mask: with the true mask, the result is the smooth photo
    crop; with any other, the strokes leave sharp edges. So the source digit should be the
    candidate of least total variation, out of all 5,000 (the 499 other digits of its class and
    the even-index digits of handwritten-mnist-half included).
    """
    blends, _ = load_domain("mnist-m")
    digits, _ = load_domain("handwritten-mnist")
    sources = instance_indices("mnist-m")
    masks = torch.from_numpy(digits >= 128)  # the blend's binarisation (scripts/mnist_m.py)
    sample = np.random.default_rng(0).choice(len(blends), 200, replace=False)
    best = []
    for k in sample:
        variation = torch.zeros(len(masks))
        for channel in range(3):
            blend = torch.from_numpy(blends[k, :, :, channel].astype(np.float32))
            photo = torch.where(masks, 255 - blend, blend)  # 5000 x 28 x 28 candidate crops
            variation += (photo[:, 1:] - photo[:, :-1]).abs().sum((1, 2))
            variation += (photo[:, :, 1:] - photo[:, :, :-1]).abs().sum((1, 2))
        best.append(int(variation.argmin()))
    # 200 of 200 with the shipped arrays; allow a rare mid-grey crop where ink barely shows
    assert (np.asarray(best) == sources[sample]).mean() >= 0.98
    assert all(index % 2 == 1 for index in best)  # never a handwritten-mnist-half digit


def test_shared_instances_rule():
    assert shared_instances(["handwritten-mnist", "mnist-m"]) == [("handwritten-mnist", "mnist-m")]
    assert shared_instances(["mnist-m", "printed", "handwritten-mnist"]) == [("mnist-m", "handwritten-mnist")]
    assert shared_instances(["handwritten-mnist-half", "mnist-m", "printed"]) == []
    assert shared_instances(["handwritten-mnist", "handwritten-mnist-half"]) == [
        ("handwritten-mnist", "handwritten-mnist-half")]
    assert shared_instances(["handwritten-uci", "printed", "handwriting-fonts"]) == []
    message = shared_instances_warning(["handwritten-mnist", "mnist-m"])
    assert "2500" in message and "'handwritten-mnist-half'" in message and "instance" in message
    assert shared_instances_warning(["handwritten-mnist-half", "mnist-m"]) is None


def _digits_config(domains):
    return {"dataset": "digits", "domains": domains, "image_size": 28, "subset_per_domain": 0}


def test_build_dataset_warns_when_domains_share_instances():
    with pytest.warns(UserWarning, match=r"handwritten-mnist-half.*instead of 'handwritten-mnist'"):
        dataset = build_dataset(_digits_config(["handwritten-mnist", "mnist-m"]))
    assert [len(part) for part in dataset.datasets] == [5000, 2500]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dataset = build_dataset(_digits_config(["handwritten-mnist-half", "mnist-m"]))
        build_dataset(_digits_config(["handwritten-mnist", "printed"]))
    assert dataset.domain_names == ["handwritten-mnist-half", "mnist-m"]
    assert [len(part) for part in dataset.datasets] == [2500, 2500]


def test_unknown_domain_names_choices_and_close_match():
    with pytest.raises(ValueError) as error:
        load_domain("printd")
    message = str(error.value)
    assert "'printed'" in message and all(domain in message for domain in DOMAINS)
    with pytest.raises(ValueError, match="unknown Digits domain"):
        DigitsDomain("svhn")


def test_default_item_shape_dtype_range():
    dataset = DigitsDomain("handwritten-uci")
    images, labels = load_domain("handwritten-uci")
    assert len(dataset) == len(images)
    assert dataset.domain == "handwritten-uci" and dataset.classes == list(CLASSES)
    assert dataset.labels.dtype == np.int64 and (dataset.labels == labels).all()
    image, label, index = dataset[7]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32
    assert 0.0 <= image.min() and image.max() <= 1.0 and image.max() > 0.5
    assert label == labels[7] and index == 7
    assert torch.equal(image[0], image[1]) and torch.equal(image[0], image[2])
    # reference: Pillow's bilinear resize of the stored uint8 image, within rounding
    reference = np.asarray(Image.fromarray(images[7]).resize((32, 32), Image.Resampling.BILINEAR))
    assert np.abs(image[0].numpy() - reference / 255.0).max() < 3 / 255


def test_native_size_single_channel_is_the_stored_array():
    dataset = DigitsDomain("printed", image_size=28, channels=1)
    images, _ = load_domain("printed")
    image, _, _ = dataset[3]
    assert image.shape == (1, 28, 28)
    assert torch.allclose(image[0], torch.from_numpy(images[3]).float() / 255.0)


def test_images_tensor_matches_items():
    dataset = DigitsDomain("handwriting-fonts", image_size=20, channels=3)
    batch = dataset.images_tensor()
    assert batch.shape == (len(dataset), 3, 20, 20) and batch.dtype == torch.float32
    for i in (0, 1, len(dataset) // 2, len(dataset) - 1):
        assert torch.equal(batch[i], dataset[i][0])


def test_transform_receives_resized_pil_image():
    seen = []

    def record(image):
        seen.append((image.mode, image.size))
        return np.asarray(image)

    rgb = DigitsDomain("handwritten-mnist", image_size=40, transform=record)
    image, label, index = rgb[11]
    gray = DigitsDomain("handwritten-mnist", image_size=28, channels=1, transform=record)
    gray_image = gray[11][0]
    stored, labels = load_domain("handwritten-mnist")
    assert seen == [("RGB", (40, 40)), ("L", (28, 28))]
    assert image.shape == (40, 40, 3) and label == labels[11] and index == 11
    assert (gray_image == stored[11]).all()


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="channels"):
        DigitsDomain("printed", channels=2)
    with pytest.raises(ValueError, match="image_size"):
        DigitsDomain("printed", image_size=0)


def domain_pixels(domain: str) -> np.ndarray:
    """A domain's gray pixels through the raw-pixel baseline's features (not normalised)."""
    images = DigitsDomain(domain, image_size=28, channels=1).images_tensor()
    return raw_pixel_features(images, normalize=False).numpy()


def test_shipped_uci_domain_matches_a_rebuild(builder):
    images, labels = builder.build_handwritten_uci()
    shipped_images, shipped_labels = load_domain("handwritten-uci")
    np.testing.assert_array_equal(images, shipped_images)
    np.testing.assert_array_equal(labels, shipped_labels)


def test_normalise_digit_keeps_aspect_and_centres(builder):
    canvas = np.zeros((50, 60))
    canvas[5:35, 40:55] = 7.0  # a 30 x 15 block, off centre, dim
    out = builder.normalise_digit(canvas)
    assert out.dtype == np.uint8 and out.shape == (28, 28) and out.max() == 255
    rows = np.flatnonzero(out.any(axis=1))
    cols = np.flatnonzero(out.any(axis=0))
    assert (rows[0], rows[-1]) == (4, 23)  # the long side fills the 20 px box
    assert 9 <= len(cols) <= 11  # aspect 1:2 kept
    assert abs((cols[0] + cols[-1]) / 2 - 13.5) <= 0.5


def test_save_domain_is_byte_deterministic(builder, tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(5, 28, 28), dtype=np.uint8)
    labels = np.arange(5, dtype=np.int64)
    builder.save_domain(tmp_path / "a.npz", images, labels)
    builder.save_domain(tmp_path / "b.npz", images, labels)
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()
    # a fixed member timestamp, not the build time (np.savez_compressed stamps the clock)
    with zipfile.ZipFile(tmp_path / "a.npz") as archive:
        assert {info.date_time for info in archive.infolist()} == {(1980, 1, 1, 0, 0, 0)}
    with np.load(tmp_path / "a.npz") as loaded:
        np.testing.assert_array_equal(loaded["images"], images)
        np.testing.assert_array_equal(loaded["labels"], labels)


def test_mnist_m_is_rgb_half_of_handwritten_mnist():
    images, labels = load_domain("mnist-m")
    _, mnist_labels = load_domain("handwritten-mnist")
    assert images.dtype == np.uint8 and images.shape == (2500, 28, 28, 3)
    # one blend per odd-index handwritten-mnist digit, in its order, with its label
    np.testing.assert_array_equal(labels, mnist_labels[1::2])
    assert labels.dtype == np.int64
    assert np.bincount(labels).tolist() == [250] * 10
    # colour, not gray stored three times: channels differ in most pixels of most images
    differ = (images[..., 0] != images[..., 1]) | (images[..., 1] != images[..., 2])
    assert differ.mean() > 0.5
    assert (differ.reshape(len(images), -1).mean(axis=1) > 0.1).mean() > 0.9
    # photo texture, not a flat background: most images vary well beyond the digit
    assert (images.reshape(len(images), -1).std(axis=1) > 20).mean() > 0.9


def test_rgb_domain_items_stay_rgb():
    stored, labels = load_domain("mnist-m")
    dataset = DigitsDomain("mnist-m")  # 3 x 32 x 32
    image, label, index = dataset[7]
    assert dataset.rgb and not DigitsDomain("printed").rgb
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32
    assert label == labels[7] and index == 7
    assert not torch.equal(image[0], image[1])
    # the same resize as the gray domains, per channel: Pillow's bilinear within rounding
    reference = np.asarray(Image.fromarray(stored[7]).resize((32, 32), Image.Resampling.BILINEAR))
    assert np.abs(image.permute(1, 2, 0).numpy() - reference / 255.0).max() < 3 / 255
    batch = dataset.images_tensor()
    assert batch.shape == (len(dataset), 3, 32, 32)
    for i in (0, len(dataset) - 1):
        assert torch.equal(batch[i], dataset[i][0])
    # native size is the stored array; one channel is the mean of the three
    native = DigitsDomain("mnist-m", image_size=28)[3][0]
    assert torch.allclose(native, torch.from_numpy(stored[3]).permute(2, 0, 1).float() / 255.0)
    gray = DigitsDomain("mnist-m", image_size=28, channels=1)[3][0]
    assert gray.shape == (1, 28, 28)
    assert torch.allclose(gray[0], torch.from_numpy(stored[3]).float().mean(2) / 255.0, atol=1e-6)
    np.testing.assert_allclose(
        domain_pixels("mnist-m"), raw_pixel_features(torch.from_numpy(stored).permute(0, 3, 1, 2), normalize=False),
        atol=1e-6)


def test_rgb_domain_transform_receives_rgb_pil_image():
    seen = []

    def record(image):
        seen.append((image.mode, image.size))
        return np.asarray(image)

    stored, _ = load_domain("mnist-m")
    rgb = DigitsDomain("mnist-m", image_size=28, transform=record)[5][0]
    gray = DigitsDomain("mnist-m", image_size=40, channels=1, transform=record)[5][0]
    assert seen == [("RGB", (28, 28)), ("L", (40, 40))]
    np.testing.assert_array_equal(rgb, stored[5])
    assert gray.shape == (40, 40)


def _raw_pixel_p1(domains):
    """Raw-pixel P@1 of every direction between ``domains``, with the package's evaluation."""
    features, labels, ids = [], [], []
    for i, name in enumerate(domains):
        images, domain_labels = load_domain(name)
        images = torch.from_numpy(images)
        images = images.permute(0, 3, 1, 2) if images.ndim == 4 else images[:, None]
        features.append(raw_pixel_features(images))  # gray = mean of the channels
        labels.append(domain_labels)
        ids.append(np.full(len(domain_labels), i))
    results = evaluate_domains(torch.cat(features), np.concatenate(labels), np.concatenate(ids),
                               domain_names=list(domains), ks=(1,), map_at_all=False)
    return {direction: metrics["precision_at_1"] for direction, metrics in results.items()}


def test_mnist_m_shift_is_real_for_raw_pixels():
    # handwritten-mnist-half: no digit instance on both sides of the mnist-m pair
    p1 = _raw_pixel_p1(("handwritten-mnist-half", "printed", "mnist-m"))
    # mnist-m queries: the photo texture hides the digit from raw pixels, far more than the
    # handwriting-to-print shape change does.
    assert p1["mnist-m->handwritten-mnist-half"] < 0.75 * p1["printed->handwritten-mnist-half"]
    # The other direction (handwritten-mnist-half->mnist-m) is not below printed's: the mnist-m
    # gallery holds other digits of the same writing style, and those blended into dark crops stay
    # close to white-on-black digits, so raw pixels still find the class.


def test_build_mnist_m_is_deterministic(mnist_m_script, tmp_path):
    rng = np.random.default_rng(0)
    digits = np.zeros((5, 28, 28), dtype=np.uint8)
    digits[:, 6:22, 12:16] = rng.integers(100, 256, size=(5, 16, 4), dtype=np.uint8)
    photos = []
    for i, size in enumerate(((90, 70), (64, 120))):
        path = tmp_path / f"photo{i}.png"
        Image.fromarray(rng.integers(0, 256, size=(*size, 3), dtype=np.uint8)).save(path)
        photos.append(path)
    first = mnist_m_script.build_mnist_m(digits, photos, seed=3)
    second = mnist_m_script.build_mnist_m(digits, photos, seed=3)
    assert first.dtype == np.uint8 and first.shape == (5, 28, 28, 3)
    assert first.tobytes() == second.tobytes()
    assert not np.array_equal(first, mnist_m_script.build_mnist_m(digits, photos, seed=4))
