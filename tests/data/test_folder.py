"""DomainImageFolder and default_transform on small generated image trees."""

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import tpsnet_plugin  # noqa: F401  (torchvision fix before anything imports it)
from tpsnet_plugin.data.folder import DomainImageFolder
from tpsnet_plugin.data.transforms import default_transform


def solid(path: Path, color, mode: str = "RGB", size: int = 12, fmt: str | None = None) -> Path:
    """Write a solid-colour image (any PIL mode) and return its path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, (size, size), color).save(path, format=fmt)
    return path


def on_white(color, alpha: int) -> tuple:
    """``color`` with opacity ``alpha`` (0..255) over a white background, rounded."""
    return tuple(round(c * alpha / 255 + 255 * (1 - alpha / 255)) for c in color)


def class_color(name: str) -> tuple:
    """A distinct colour per class, so a loaded image tells which class folder it came from."""
    code = sum(ord(ch) * (i + 1) for i, ch in enumerate(name))
    return (code % 251, (code * 7) % 251, (code * 13) % 251)


def make_tree(root: Path, spec: dict, office31: bool = False, ext: str = ".png") -> None:
    """``spec`` = {domain: {class: number of images}}; PNG so colours survive exactly."""
    for domain, classes in spec.items():
        base = root / domain / "images" if office31 else root / domain
        for name, count in classes.items():
            for k in range(count):
                solid(base / name / f"img_{k:03d}{ext}", class_color(name))


def check_items(ds: DomainImageFolder, size: int) -> None:
    """Every item is a 3×size×size tensor whose colour is its label's class colour."""
    for i in range(len(ds)):
        image, label, index = ds[i]
        assert index == i and label == ds.labels[i] == ds.samples[i][1]
        assert image.shape == (3, size, size) and image.dtype == torch.float32
        expected = torch.tensor(class_color(ds.classes[label]), dtype=torch.float32) / 255
        assert torch.allclose(image.mean(dim=(1, 2)), expected, atol=1e-6)
        assert Path(ds.samples[i][0]).parent.name == ds.classes[label]


def test_folder_layout_sorted_and_labelled(tmp_path):
    spec = {"Art": {"Zebra": 2, "Alarm Clock": 3, "bike": 1}, "Clipart": {"Zebra": 1}}
    make_tree(tmp_path, spec)
    ds = DomainImageFolder(tmp_path, "Art", image_size=8)
    assert ds.layout == "folder" and ds.domain == "Art" and ds.root == tmp_path
    assert ds.classes == sorted(spec["Art"])  # "Alarm Clock" < "Zebra" < "bike"
    assert len(ds) == 6 and ds.labels.dtype == np.int64
    assert [p for p, _ in ds.samples] == sorted(p for p, _ in ds.samples)  # class, then file
    assert np.bincount(ds.labels).tolist() == [spec["Art"][c] for c in ds.classes]
    check_items(ds, 8)
    again = DomainImageFolder(tmp_path, "Art", image_size=8)
    assert again.samples == ds.samples


def test_office31_layout_and_auto_detection(tmp_path):
    make_tree(tmp_path, {"amazon": {"back_pack": 2, "bike": 2}}, office31=True)
    make_tree(tmp_path, {"webcam": {"back_pack": 1, "bike": 1}})
    # A class literally called "images" holds image files, so auto must keep the folder layout.
    make_tree(tmp_path, {"dslr": {"images": 2, "bike": 1}})
    amazon = DomainImageFolder(tmp_path, "amazon", image_size=10)
    assert amazon.layout == "office31" and amazon.classes == ["back_pack", "bike"]
    check_items(amazon, 10)
    assert DomainImageFolder(tmp_path, "amazon", layout="office31").samples == amazon.samples
    assert DomainImageFolder(tmp_path, "webcam").layout == "folder"
    dslr = DomainImageFolder(tmp_path, "dslr")
    assert dslr.layout == "folder" and dslr.classes == ["bike", "images"]
    with pytest.raises(FileNotFoundError, match=r"layout='auto' \(config: data.layout\)"):
        DomainImageFolder(tmp_path, "webcam", layout="office31")


@pytest.mark.filterwarnings("error")  # e.g. PIL's palette-transparency warning
def test_formats_and_modes_become_rgb(tmp_path):
    cls = tmp_path / "dom" / "a class"
    cls.mkdir(parents=True)
    palette = Image.new("P", (12, 12), 1)
    palette.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    palette.save(cls / "palette.png")
    palette.save(cls / "transparent.gif", transparency=0)  # transparent palette index
    palette.save(cls / "alpha_palette.png", transparency=bytes([0, 128]))  # per-entry alpha
    Image.new("RGB", (12, 12), (90, 20, 200)).save(cls / "lossless.webp", lossless=True)
    solid(cls / "rgba.png", (40, 50, 60, 128), "RGBA")
    solid(cls / "gray.bmp", 77, "L")
    solid(cls / "UPPER.PNG", (1, 2, 3))
    solid(cls / "page.tiff", (0, 0, 0, 0), "CMYK")  # no ink: white
    solid(cls / "photo.JPG", (120, 120, 120), fmt="JPEG")
    expected = {
        "palette.png": (10, 200, 30), "transparent.gif": (10, 200, 30),  # used index is opaque
        # half-transparent: composited on white
        "alpha_palette.png": on_white((10, 200, 30), 128),
        "lossless.webp": (90, 20, 200), "rgba.png": on_white((40, 50, 60), 128),
        "gray.bmp": (77, 77, 77),
        "UPPER.PNG": (1, 2, 3), "page.tiff": (255, 255, 255), "photo.JPG": (120, 120, 120),
    }
    (cls / "notes.txt").write_text("not an image")
    solid(cls / ".hidden.png", (0, 0, 0))
    solid(tmp_path / "dom" / ".cache" / "x.png", (0, 0, 0))  # hidden folder is not a class

    ds = DomainImageFolder(tmp_path, "dom", image_size=(6, 9))
    assert sorted(os.path.basename(p) for p, _ in ds.samples) == sorted(expected)
    assert ds.classes == ["a class"]
    for i in range(len(ds)):
        image, _, index = ds[i]
        assert image.shape == (3, 6, 9)
        name = os.path.basename(ds.samples[index][0])
        want = torch.tensor(expected[name], dtype=torch.float32) / 255
        atol = 3 / 255 if name == "photo.JPG" else 1e-6  # JPEG is lossy
        assert torch.allclose(image.mean(dim=(1, 2)), want, atol=atol), name


def test_default_transform():
    checker = np.indices((16, 16)).sum(0) % 2 * 255
    checker = Image.fromarray(checker.astype(np.uint8)).convert("RGB")
    out = default_transform(2)(checker)
    assert out.shape == (3, 2, 2) and out.dtype == torch.float32
    # Antialiased downscaling averages the checkerboard; sampling without a filter gives 0 or 1.
    assert torch.allclose(out, torch.full_like(out, 0.5), atol=0.02)
    gray = default_transform((3, 5))(Image.new("L", (7, 7), 51))
    assert gray.shape == (3, 3, 5) and torch.allclose(gray, torch.full_like(gray, 0.2))
    restored = pickle.loads(pickle.dumps(default_transform(4)))
    assert torch.equal(restored(checker), default_transform(4)(checker))
    for bad in (0, (4,), "224", 2.5, (4, 0)):
        with pytest.raises((TypeError, ValueError), match="image_size"):
            default_transform(bad)


def test_custom_transform_receives_rgb_pil(tmp_path):
    solid(tmp_path / "d" / "c" / "x.png", 9, "L")
    ds = DomainImageFolder(tmp_path, "d", transform=lambda im: (im.mode, im.size))
    assert ds[0][0] == ("RGB", (12, 12))


def test_missing_root_domain_and_empty_domain(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist") as err:
        DomainImageFolder(tmp_path / "nope", "Art")
    assert str(tmp_path / "nope") in str(err.value)
    make_tree(tmp_path, {"Art": {"a": 1}, "Real_World": {"a": 1}})
    with pytest.raises(FileNotFoundError) as err:
        DomainImageFolder(tmp_path, "Real World")
    message = str(err.value)
    assert "'Real World' not found" in message and "'Art'" in message
    assert "did you mean 'Real_World'" in message
    (tmp_path / "Empty" / "a").mkdir(parents=True)
    (tmp_path / "Empty" / "a" / "readme.txt").write_text("x")
    with pytest.raises(ValueError, match="holds no images: found 1 class folders"):
        DomainImageFolder(tmp_path, "Empty")
    solid(tmp_path / "Flat" / "x.png", (1, 1, 1))
    with pytest.raises(ValueError, match="directly in it without class folders"):
        DomainImageFolder(tmp_path, "Flat")
    with pytest.raises(ValueError, match="layout must be one of"):
        DomainImageFolder(tmp_path, "Art", layout="imagefolder")
    with pytest.raises(ValueError, match="on_error must be one of"):
        DomainImageFolder(tmp_path, "Art", on_error="ignore")


def test_classes_given_select_and_reorder(tmp_path):
    make_tree(tmp_path, {"d": {"a": 2, "b": 1, "c": 3}})
    ds = DomainImageFolder(tmp_path, "d", classes=["c", "a", "z"])
    assert ds.classes == ["c", "a", "z"]
    assert ds.missing_classes == ["z"] and ds.ignored_classes == ["b"]
    assert len(ds) == 5
    check_items(ds, 224)
    ds.set_classes(["b", "a", "c"])
    assert len(ds) == 6 and ds.missing_classes == [] and ds.ignored_classes == []
    check_items(ds, 224)
    with pytest.raises(ValueError, match="no images of the requested classes"):
        DomainImageFolder(tmp_path, "d", classes=["x", "y"])
    with pytest.raises(ValueError, match="distinct"):
        ds.set_classes(["a", "a"])


def write_list(path: Path, lines) -> Path:
    path.write_text("".join(f"{line}\n" for line in lines))
    return path


def test_list_file_named_by_folders(tmp_path):
    spec = {"clipart": {"aircraft carrier": 2, "bird": 2, "zebra": 1}}
    make_tree(tmp_path, spec)
    # DomainNet-style labels: fixed ints, here deliberately not in alphabetical order.
    label_of = {"zebra": 0, "aircraft carrier": 4, "bird": 9}
    lines = [f"clipart/{c}/img_{k:03d}.png {label_of[c]}"
             for c, count in spec["clipart"].items() for k in range(count)]
    list_file = write_list(tmp_path / "clipart_train.txt", ["", *reversed(lines), ""])
    ds = DomainImageFolder(tmp_path, "clipart", list_file=list_file)  # layout "auto" -> "list"
    assert ds.layout == "list" and ds.classes == ["zebra", "aircraft carrier", "bird"]
    expected_paths = [str(tmp_path / line.rsplit(" ", 1)[0]) for line in reversed(lines)]
    assert [p for p, _ in ds.samples] == expected_paths  # list order is kept
    check_items(ds, 224)
    # A subset in a new order (e.g. DomainNet-7 from the 345-class list), by name.
    subset = DomainImageFolder(tmp_path, "clipart", classes=["bird", "zebra"], layout="list",
                               list_file="clipart_train.txt")  # relative to root
    assert len(subset) == 3 and subset.ignored_classes == ["aircraft carrier"]
    check_items(subset, 224)


def test_list_file_unnamed_labels_index_classes(tmp_path):
    for k, color in enumerate([(10, 0, 0), (0, 20, 0), (0, 0, 30)]):
        solid(tmp_path / f"{k}.png", color)
    list_file = write_list(tmp_path / "flat.txt", ["0.png 2", "1.png 0", "2.png 2"])
    ds = DomainImageFolder(tmp_path, "flat", list_file=list_file)
    assert ds.classes == ["0", "2"] and ds.labels.tolist() == [1, 0, 1]
    named = DomainImageFolder(tmp_path, "flat", classes=["x", "y", "z"], list_file=list_file)
    assert named.labels.tolist() == [2, 0, 2] and named.missing_classes == ["y"]
    with pytest.raises(ValueError, match=r"flat\.txt:1: label 2 out of range for the 2 given"):
        DomainImageFolder(tmp_path, "flat", classes=["x", "y"], list_file=list_file)


@pytest.mark.parametrize(
    "bad, match",
    [
        ("clipart/bird/img_000.png", "malformed line"),
        ("clipart/bird/img_000.png bird", "malformed line"),
        ("clipart/bird/img_000.png -1", "malformed line"),
        ("../outside/img.png 0", "escapes the dataset root"),
        ("clipart/../../outside.png 0", "escapes the dataset root"),
        ("/etc/img.png 0", "escapes the dataset root"),
    ],
)
def test_list_file_bad_lines(tmp_path, bad, match):
    make_tree(tmp_path, {"clipart": {"bird": 1}})
    list_file = write_list(tmp_path / "l.txt", ["clipart/bird/img_000.png 0", bad])
    with pytest.raises(ValueError, match=match) as err:
        DomainImageFolder(tmp_path, "clipart", list_file=list_file)
    assert f"{list_file}:2" in str(err.value)
    if "malformed" in match:
        assert "<relative/path/to/image> <non-negative integer label>" in str(err.value)


def test_list_file_missing_entries(tmp_path):
    make_tree(tmp_path, {"real": {"bird": 2}})
    lines = ["real/bird/img_000.png 0", "real/bird/gone.png 0", "real/bird/img_001.png 0"]
    list_file = write_list(tmp_path / "real.txt", lines)
    with pytest.raises(FileNotFoundError, match=r"1 of 3 files .* do not exist") as err:
        DomainImageFolder(tmp_path, "real", list_file=list_file)
    assert "gone.png (line 2)" in str(err.value)
    with pytest.warns(UserWarning, match="skipped 1 missing"):
        ds = DomainImageFolder(tmp_path, "real", list_file=list_file, on_error="skip")
    assert len(ds) == 2 and ds.skipped == [str(tmp_path / "real/bird/gone.png")]
    with pytest.raises(FileNotFoundError, match="list file"):
        DomainImageFolder(tmp_path, "real", list_file=tmp_path / "none.txt")
    with pytest.raises(ValueError, match="go together"):
        DomainImageFolder(tmp_path, "real", layout="list")


def truncated_jpeg(path: Path) -> Path:
    rng = np.random.default_rng(0)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(path, "JPEG")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def test_truncated_image_raise_names_file(tmp_path):
    make_tree(tmp_path, {"d": {"a": 2}})
    bad = truncated_jpeg(tmp_path / "d" / "a" / "broken.jpg")
    ds = DomainImageFolder(tmp_path, "d")  # "raise" does not scan up front
    assert len(ds) == 3
    position = [p for p, _ in ds.samples].index(str(bad))
    with pytest.raises(OSError, match="cannot read image") as err:
        ds[position]
    assert str(bad) in str(err.value) and "on_error='skip' (config: data.on_error)" in str(err.value)
    ds[(position + 1) % 3]  # the good files still load


def test_truncated_image_skip_drops_and_counts(tmp_path):
    make_tree(tmp_path, {"d": {"a": 2, "b": 2}})
    bad = [truncated_jpeg(tmp_path / "d" / "a" / "broken.jpg"),
           truncated_jpeg(tmp_path / "d" / "b" / "zz.jpg")]
    (tmp_path / "d" / "b" / "garbage.png").write_bytes(b"not a png")
    with pytest.warns(UserWarning, match="skipped 3 unreadable image"):
        ds = DomainImageFolder(tmp_path, "d", on_error="skip")
    assert sorted(ds.skipped) == sorted([*map(str, bad), str(tmp_path / "d" / "b" / "garbage.png")])
    assert len(ds) == 4 and not set(ds.skipped) & {p for p, _ in ds.samples}
    check_items(ds, 224)
    for path in [p for p, _ in ds.samples]:
        truncated_jpeg(Path(path))
    with pytest.warns(UserWarning), pytest.raises(ValueError, match="none of its 4 images"):
        ds.check_images()


@pytest.mark.parametrize("link, target", [
    ("bike/sub/back_to_bike", "bike"),  # a loop to the class folder
    ("cup/up_to_domain", "."),  # a loop through the domain folder (every class again)
])
def test_symlink_loop_is_walked_once(tmp_path, link, target):
    make_tree(tmp_path, {"Art": {"bike": 3, "cup": 2}})
    art = tmp_path / "Art"
    solid(art / "bike" / "sub" / "deep.png", class_color("bike"))
    os.symlink(art / target, art / link)
    with pytest.warns(UserWarning, match="symlink loop") as record:
        ds = DomainImageFolder(tmp_path, "Art", image_size=4)
    assert len(ds) == 6 and np.bincount(ds.labels).tolist() == [4, 2]
    assert len({os.path.realpath(p) for p, _ in ds.samples}) == 6
    assert all(p.startswith(str(art / ds.classes[y]) + os.sep) for p, y in ds.samples)
    message = str(record[0].message)
    assert "'Art'" in message and str(art / link) in message


def test_symlink_to_other_class_or_domain(tmp_path):
    make_tree(tmp_path, {"Art": {"bike": 2, "zebra": 2}, "Clipart": {"zebra": 3}})
    art = tmp_path / "Art"
    # A link to a sibling class folder must not relabel that class's images as "bike".
    os.symlink(art / "zebra", art / "bike" / "zebra_link")
    # A file link to an image of another class of the domain: counted once, under its own class.
    os.symlink(art / "zebra" / "img_000.png", art / "bike" / "alias.png")
    # Two links to another domain's class folder: its files are used once, with a warning.
    os.symlink(tmp_path / "Clipart" / "zebra", art / "bike" / "from_clipart")
    os.symlink(tmp_path / "Clipart" / "zebra", art / "bike" / "from_clipart_again")
    with pytest.warns(UserWarning) as record:
        ds = DomainImageFolder(tmp_path, "Art")
    messages = [str(w.message) for w in record]
    outside = [m for m in messages if "outside the domain folder" in m]
    assert len(outside) == 1 and "3 image(s)" in outside[0]
    assert str(art / "bike" / "from_clipart" / "img_000.png") in outside[0]
    assert str(tmp_path / "Clipart" / "zebra" / "img_000.png") in outside[0]
    assert any("symlink loop, or several links" in m for m in messages)
    by_class = {c: sorted(os.path.relpath(os.path.realpath(p), tmp_path)
                          for p, y in ds.samples if ds.classes[y] == c) for c in ds.classes}
    assert by_class["zebra"] == ["Art/zebra/img_000.png", "Art/zebra/img_001.png"]
    assert by_class["bike"] == ["Art/bike/img_000.png", "Art/bike/img_001.png",
                                *(f"Clipart/zebra/img_{k:03d}.png" for k in range(3))]
    assert len(ds) == 7


def test_list_file_utf8_bom_is_ignored(tmp_path):
    make_tree(tmp_path, {"clipart": {"bird": 2}})
    list_file = tmp_path / "bom.txt"
    lines = ["clipart/bird/img_000.png 0", "clipart/bird/img_001.png 0"]
    list_file.write_text("\n".join(lines) + "\n", encoding="utf-8-sig")
    assert list_file.read_bytes().startswith(b"\xef\xbb\xbf")
    ds = DomainImageFolder(tmp_path, "clipart", list_file=list_file)
    assert [p for p, _ in ds.samples] == [str(tmp_path / line.split()[0]) for line in lines]
    assert ds.classes == ["bird"]


def test_list_file_not_utf8_names_the_file_and_the_fix(tmp_path):
    make_tree(tmp_path, {"clipart": {"café": 1}})
    list_file = tmp_path / "latin1.txt"
    list_file.write_bytes("clipart/café/img_000.png 0\n".encode("latin-1"))
    with pytest.raises(ValueError, match="not UTF-8") as err:
        DomainImageFolder(tmp_path, "clipart", list_file=list_file)
    message = str(err.value)
    assert str(list_file) in message and "line 1" in message and "save it as UTF-8" in message


def test_office31_detection_ignores_stray_files(tmp_path):
    make_tree(tmp_path, {"amazon": {"back_pack": 2, "bike": 1}}, office31=True)
    images = tmp_path / "amazon" / "images"
    (images / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (images / "readme.txt").write_text("Office-31, amazon domain")
    (images / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0")
    ds = DomainImageFolder(tmp_path, "amazon", image_size=6)
    assert ds.layout == "office31" and ds.classes == ["back_pack", "bike"] and len(ds) == 3
    check_items(ds, 6)
