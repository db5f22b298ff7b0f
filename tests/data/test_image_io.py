"""load_rgb: every image mode to 8-bit RGB by its range, or an error naming the file.

Each test writes small images of one PIL mode and compares the loaded pixels with the scaling
computed here, through load_rgb, the folder dataset and the default transform.
"""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import tpsnet_plugin  # noqa: F401  (torchvision fix before anything imports it)
from tpsnet_plugin.data.folder import DomainImageFolder
from tpsnet_plugin.data.image_io import ImageReadError, load_rgb, to_rgb
from tpsnet_plugin.data.transforms import default_transform

RNG = np.random.default_rng(0)
# Both ends of the range, the 8-bit steps and random values.
U16 = np.concatenate([[0, 1, 128, 129, 256, 257, 32767, 32768, 65278, 65534, 65535],
                      RNG.integers(0, 65536, 53)]).astype(np.uint16).reshape(8, 8)


def rgb_of(image: Image.Image) -> np.ndarray:
    assert image.mode == "RGB"
    return np.asarray(image)


def gray_expected(values) -> np.ndarray:
    """8-bit gray replicated to three channels."""
    gray = np.rint(np.asarray(values, dtype=np.float64)).clip(0, 255).astype(np.uint8)
    return np.repeat(gray[..., None], 3, axis=-1)


def save(image: Image.Image, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


def test_16_bit_png_scales_by_full_range(tmp_path):
    path = save(Image.fromarray(U16), tmp_path / "depth.png")
    assert Image.open(path).mode == "I;16"  # a real 16-bit PNG
    expected = gray_expected(U16.astype(np.float64) / 257)
    loaded = rgb_of(load_rgb(path))
    assert np.array_equal(loaded, expected)
    assert loaded[0, 0, 0] == 0 and loaded[1, 2, 0] == 255  # 0 -> 0, 65535 -> 255, not clipped
    # Not "almost white": PIL's own conversion clips every value above 255.
    assert (expected < 255).mean() > 0.9


def test_16_bit_tiff_and_32_bit_integer_tiff(tmp_path):
    sixteen = save(Image.fromarray(U16), tmp_path / "depth.tif")
    assert Image.open(sixteen).mode.startswith("I;16")
    assert np.array_equal(rgb_of(load_rgb(sixteen)), gray_expected(U16 / 257))
    # Mode "I" (32-bit signed) holding 16-bit values: the same scaling.
    wide = save(Image.fromarray(U16.astype(np.int32)), tmp_path / "wide.tif")
    assert Image.open(wide).mode == "I"
    assert np.array_equal(rgb_of(load_rgb(wide)), gray_expected(U16 / 257))
    # Values outside 0..65535 have no known range: refused, naming the file and the fix.
    odd = save(Image.fromarray(np.array([[-5, 70000]], dtype=np.int32)), tmp_path / "odd.tif")
    with pytest.raises(ImageReadError, match=r"values in \[-5, 70000\]") as err:
        load_rgb(odd)
    assert str(odd) in str(err.value) and "convert it to an 8-bit PNG or JPEG" in str(err.value)


def test_float_tiff_in_unit_range_scales_by_255(tmp_path):
    values = np.concatenate([[0.0, 1.0, 0.5, 0.25, 1 / 255, 0.999],
                             RNG.random(58)]).astype(np.float32).reshape(8, 8)
    path = save(Image.fromarray(values), tmp_path / "unit.tif")
    assert Image.open(path).mode == "F"
    loaded = rgb_of(load_rgb(path))
    assert np.array_equal(loaded, gray_expected(values.astype(np.float64) * 255))
    assert loaded[0, 1, 0] == 255 and loaded[0, 2, 0] == 128  # not all black


def test_float_tiff_in_byte_range_is_kept(tmp_path):
    values = np.concatenate([[0.0, 255.0, 1.5, 127.4],
                             RNG.random(60) * 255]).astype(np.float32).reshape(8, 8)
    path = save(Image.fromarray(values), tmp_path / "bytes.tif")
    assert np.array_equal(rgb_of(load_rgb(path)), gray_expected(values))


@pytest.mark.parametrize("bad, what", [
    (np.nan, "NaN/inf"), (np.inf, "NaN/inf"), (-0.5, r"values in \[-0.5, 1\]"),
    (300.0, r"values in \[0, 300\]"),
])
def test_float_tiff_out_of_range_is_refused(tmp_path, bad, what):
    values = np.array([[0.0, 1.0], [0.5, bad]], dtype=np.float32)
    path = save(Image.fromarray(values), tmp_path / "bad.tif")
    with pytest.raises(ImageReadError, match=what) as err:
        load_rgb(path)
    message = str(err.value)
    assert str(path) in message and "convert it to an 8-bit PNG or JPEG" in message


@pytest.mark.parametrize("mode, color", [
    ("L", 77), ("1", 1), ("RGB", (1, 2, 3)), ("CMYK", (10, 20, 30, 40)), ("YCbCr", (90, 100, 160)),
])
def test_8_bit_modes_convert_like_pil(tmp_path, mode, color):
    image = Image.new(mode, (5, 4), color)
    path = save(image, tmp_path / f"x_{mode}.{'jpg' if mode == 'YCbCr' else 'tif'}")
    reference = Image.open(path).convert("RGB")
    assert np.array_equal(rgb_of(load_rgb(path)), np.asarray(reference))


def test_transparency_is_composited_on_white(tmp_path):
    alpha = np.array([[0, 1, 64, 128], [200, 254, 255, 0]], dtype=np.uint8)
    color = np.zeros((2, 4, 3), dtype=np.uint8)  # transparent black: the common case
    color[1] = (200, 10, 90)

    def on_white(rgb, a):
        a = a.astype(np.float64)[..., None] / 255
        return np.rint(rgb * a + 255 * (1 - a)).astype(np.uint8)

    rgba = save(Image.fromarray(np.dstack([color, alpha]), "RGBA"), tmp_path / "rgba.png")
    assert np.array_equal(rgb_of(load_rgb(rgba)), on_white(color, alpha))
    assert (rgb_of(load_rgb(rgba))[0, 0] == 255).all()  # fully transparent: white, not black
    gray = color[..., 1]
    la = save(Image.fromarray(np.dstack([gray, alpha]), "LA"), tmp_path / "la.png")
    assert np.array_equal(rgb_of(load_rgb(la)), on_white(np.repeat(gray[..., None], 3, -1), alpha))
    # Palette with a transparent index, as GIFs have.
    palette = Image.fromarray(np.array([[0, 1], [1, 0]], dtype=np.uint8), "P")
    palette.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    gif = tmp_path / "t.gif"
    palette.save(gif, transparency=0)
    assert Image.open(gif).info.get("transparency") == 0
    assert rgb_of(load_rgb(gif)).tolist() == [[[255] * 3, [10, 200, 30]], [[10, 200, 30], [255] * 3]]


def test_undecodable_file_names_it(tmp_path):
    path = tmp_path / "broken.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n nothing")
    with pytest.raises(ImageReadError) as err:
        load_rgb(path)
    assert str(path) in str(err.value) and isinstance(err.value, OSError)


def test_default_transform_scales_high_depth_images():
    out = default_transform(8)(Image.fromarray(U16))
    assert torch.allclose(out, torch.from_numpy(gray_expected(U16 / 257)).permute(2, 0, 1) / 255)
    with pytest.raises(ImageReadError, match="NaN/inf"):
        to_rgb(Image.fromarray(np.full((2, 2), np.nan, dtype=np.float32)))


def write_domain(root: Path) -> dict:
    """One class folder with an 8-bit, a 16-bit and a float image; returns name -> RGB array."""
    folder = root / "dom" / "cls"
    values = {
        "a_8bit.png": np.full((8, 8), 40, dtype=np.uint8),
        "b_16bit.png": U16,
        "c_float.tif": np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8),
    }
    for name, array in values.items():
        save(Image.fromarray(array), folder / name)
    return {
        "a_8bit.png": gray_expected(values["a_8bit.png"]),
        "b_16bit.png": gray_expected(U16 / 257),
        "c_float.tif": gray_expected(values["c_float.tif"].astype(np.float64) * 255),
    }


def test_folder_dataset_loads_every_mode_by_its_range(tmp_path):
    expected = write_domain(tmp_path)
    ds = DomainImageFolder(tmp_path, "dom", image_size=8)  # 8x8: the resize keeps the pixels
    for i, (path, _) in enumerate(ds.samples):
        want = torch.from_numpy(expected[Path(path).name]).permute(2, 0, 1).float() / 255
        assert torch.allclose(ds[i][0], want), path


def test_folder_dataset_nan_float_image_raises_or_is_skipped(tmp_path):
    write_domain(tmp_path)
    bad = save(Image.fromarray(np.array([[np.nan, 0.5]], dtype=np.float32)),
               tmp_path / "dom" / "cls" / "d_nan.tif")
    ds = DomainImageFolder(tmp_path, "dom")
    with pytest.raises(OSError) as err:
        ds[[p for p, _ in ds.samples].index(str(bad))]
    message = str(err.value)
    assert str(bad) in message and "convert it to an 8-bit PNG or JPEG" in message
    assert "on_error='skip' (config: data.on_error)" in message and "'dom'" in message
    with pytest.warns(UserWarning, match="skipped 1 unreadable image"):
        skipping = DomainImageFolder(tmp_path, "dom", on_error="skip")
    assert skipping.skipped == [str(bad)] and len(skipping) == 3


# How the stored pixels are turned to be shown, for each EXIF orientation (tag 274), written out
# from the EXIF specification's "0th row / 0th column" table, without PIL.
UPRIGHT = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],  # mirrored left-right
    3: lambda a: a[::-1, ::-1],  # turned 180 degrees
    4: lambda a: a[::-1],  # mirrored top-bottom
    5: lambda a: a.transpose(1, 0, *range(2, a.ndim)),  # mirrored along the main diagonal
    6: lambda a: np.rot90(a, -1),  # stored turned left: turn 90 degrees clockwise
    7: lambda a: a[::-1, ::-1].transpose(1, 0, *range(2, a.ndim)),  # mirrored along the anti-diagonal
    8: lambda a: np.rot90(a, 1),  # stored turned right: turn 90 degrees counter-clockwise
}


def with_orientation(orientation: int) -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif


@pytest.mark.parametrize("suffix", ["png", "tif"])
@pytest.mark.parametrize("orientation", sorted(UPRIGHT))
def test_exif_orientation_is_applied(tmp_path, orientation, suffix):
    pixels = RNG.integers(0, 256, (3, 5, 3), dtype=np.uint8)  # not square, no symmetry
    path = tmp_path / f"photo.{suffix}"
    Image.fromarray(pixels).save(path, exif=with_orientation(orientation))
    assert Image.open(path).getexif()[0x0112] == orientation
    assert np.array_equal(rgb_of(load_rgb(path)), UPRIGHT[orientation](pixels))
    # A 16-bit PNG is turned too, then scaled by its range. (Not a 16-bit TIFF: Pillow turns
    # TIFFs itself while decoding and garbles 16-bit ones with an orientation tag.)
    depth = tmp_path / "depth.png"
    Image.fromarray(U16[:3, :5]).save(depth, exif=with_orientation(orientation))
    assert np.array_equal(rgb_of(load_rgb(depth)), UPRIGHT[orientation](gray_expected(U16[:3, :5] / 257)))


def test_sideways_phone_jpeg_is_used_upright_by_the_folder_dataset(tmp_path):
    """A JPEG stored sideways with orientation 6: training (dataset + transform) sees it upright."""
    rows, cols = np.mgrid[0:16, 0:24]
    pixels = np.stack([rows * 15, cols * 10, (rows + cols) * 6], axis=-1).astype(np.uint8)
    folder = tmp_path / "dom" / "cls"
    folder.mkdir(parents=True)
    Image.fromarray(pixels).save(folder / "plain.jpg", quality=95)
    Image.fromarray(pixels).save(folder / "sideways.jpg", quality=95, exif=with_orientation(6))
    plain, sideways = rgb_of(load_rgb(folder / "plain.jpg")), rgb_of(load_rgb(folder / "sideways.jpg"))
    assert plain.shape == (16, 24, 3) and sideways.shape == (24, 16, 3)
    assert np.array_equal(sideways, UPRIGHT[6](plain))  # same encoded pixels, turned
    ds = DomainImageFolder(tmp_path, "dom", image_size=(24, 16))  # the upright size: no resampling
    loaded = {Path(path).name: ds[i][0] for i, (path, _) in enumerate(ds.samples)}
    assert torch.equal(loaded["sideways.jpg"], torch.from_numpy(sideways.copy()).permute(2, 0, 1).float() / 255)
