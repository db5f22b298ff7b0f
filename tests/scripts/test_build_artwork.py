"""Tests for scripts/build_artwork.py: captions, holdout protection and a build on fake packages (no network)."""

import os

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from tpsnet_plugin.data.icons import load_manifest


@pytest.fixture(scope="module")
def artwork(load_script):
    return load_script("build_artwork")


@pytest.mark.parametrize("stem, author, caption", [
    ("medicina_dottore_archite_01", "Architetto Francesco Rollandin", "medicina dottore"),  # author cut at 24
    ("esperimento_chimico_arch_01", "Architetto Francesco Rollandin", "esperimento chimico"),
    ("evolution_steps_marcelo__01", "Marcelo Mathias Lima", "evolution steps"),  # cut at a blank
    ("cfbulb_notlit_benji_park_", "Benji Park", "cfbulb notlit"),  # bare "_" suffix
    ("ours_etienne_bersac_r", "Etienne Bersac", "ours"),  # "_r" suffix
    ("safety_pin_timothy_whit_r", "Timothy White", "safety pin"),
    ("server_zazou", "zazou (shockwavedj@yahoo.es)", "server"),  # first word of the author
    ("green_arrow_mo_01", "mo", "green arrow"),
    ("glace_01_jean-victor_bal_01", "Jean-Victor Balin", "glace 01"),  # hyphens in the author
    ("jigsaw_red_01", "Nicu Buculei", "jigsaw red"),  # no author in the name
    ("bordered_d_a", "Nicu Buculei", "bordered d a"),  # a card rank is no suffix
    ("white_h_10", "Nicu Buculei", "white h 10"),  # nor "_10" (left out as a digit)
    ("a_boy_plays_soccer_01", None, "a boy plays soccer"),
    ("roller_blader_ganson", None, "roller blader ganson"),  # without Author chunk: kept
    ("benji_park_01", "Benji Park", "benji park"),  # nothing but the author: kept whole
    ("pattern-dots-square", "Alan Horkan", "pattern dots square"),
    ("viewmag+", None, "viewmag+"),
])
def test_openclipart_caption_drops_suffix_and_author(artwork, stem, author, caption):
    assert artwork.openclipart_caption(stem, author) == caption


def test_openclipart_author_is_only_dropped_at_a_word_boundary_or_the_name_limit(artwork):
    # "danube" is a whole word of the author: dropped; "dan" is neither a word of it nor cut by the limit: kept
    assert artwork.openclipart_caption("moon_danube_01", "Danube River Authority") == "moon"
    assert artwork.openclipart_caption("pan_dan_01", "Daniel Smith") == "pan dan"


@pytest.mark.parametrize("description, caption", [
    ("A blackbird.\nfr.utf8=Un merle.\n", "blackbird"),
    ("A knight\u2019s helmet.", "knight's helmet"),
    ("Tux\u2014the Linux mascot!", "tux the linux mascot"),
    ("Cent sign. 100 cents make 1 dollar.", "cent sign"),
    ('A wooden toy from Germany called a "R\u00e4ucherm\u00e4nnchen".',
     "wooden toy from germany called a rauchermannchen"),
    ("The house of the hunter.", "house of the hunter"),
    ("Anthurium", "anthurium"),
    ("", ""),
])
def test_tuxpaint_caption(artwork, description, caption):
    assert artwork.tuxpaint_caption(description) == caption


def test_digit_and_holdout_rules(artwork):
    assert artwork.is_digit_caption("ornamental h 7") and artwork.is_digit_caption("zero stars")
    assert artwork.is_digit_caption("alarm clock") and artwork.is_digit_caption("simple calculator")
    assert artwork.is_digit_caption("keyboard key") and artwork.is_digit_caption("white h 10")
    assert not artwork.is_digit_caption("blackbird") and not artwork.is_digit_caption("letter g")
    assert artwork.mentions_holdout("signs_and_symbols/flags/signalflag_tango", "signalflag")
    assert artwork.mentions_holdout("computer/icons/x", "gnome fs home")
    assert not artwork.mentions_holdout("animals/birds/blackbird", "blackbird")


def _drawing(seed, size=64):
    """A white image with a few coloured rectangles (a stand-in for an icon)."""
    rng = np.random.default_rng(seed)
    pixels = np.full((size, size, 3), 255, np.uint8)
    for _ in range(4):
        x, y = rng.integers(0, size - size // 3, 2)
        w, h = rng.integers(size // 8, size // 3, 2)
        pixels[y:y + h, x:x + w] = rng.integers(0, 200, 3)
    return Image.fromarray(pixels)


def test_near_duplicate_filter_drops_a_holdout_copy_and_keeps_a_different_image(artwork):
    holdout = _drawing(1)
    reference = np.stack([artwork.gray_signature(holdout)])
    candidates = [holdout.copy(), holdout.resize((32, 32)).resize((64, 64)), _drawing(2),
                  Image.new("RGB", (64, 64), "white")]
    mask, best = artwork.near_duplicate_mask(np.stack([artwork.gray_signature(c) for c in candidates]), reference)
    assert mask.tolist() == [True, True, False, False] and best.tolist() == [0, 0, 0, 0]
    assert not artwork.near_duplicate_mask(np.zeros((2, 256)), np.zeros((0, 256)))[0].any()
    assert not np.any(artwork.gray_signature(Image.new("RGB", (64, 64), "white")))  # flat: matches nothing


def _png(path, image, author=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    info = PngImagePlugin.PngInfo()
    if author:
        info.add_text("Author", author)
    image.save(path, pnginfo=info)


def _stamp(folder, rel, image, description):
    _png(folder / f"{rel}.png", image)
    (folder / f"{rel}.txt").write_text(description + "\nfr.utf8=Quelque chose.\n", encoding="utf-8")


@pytest.fixture(scope="module")
def icons_corpus(tmp_path_factory, load_script):
    """A finished icon corpus: theme "tango" held out, theme "moka" for training."""
    build_icons = load_script("build_icons")
    root = tmp_path_factory.mktemp("icons")
    for theme, seed in (("tango", 1), ("moka", 3)):
        _png(root / "themes" / theme / "48x48" / "places" / "folder.png", _drawing(seed, 48))
    themes = {theme: root / "themes" / theme for theme in ("tango", "moka")}
    result = build_icons.build_corpus(themes, root / "corpus", size=32, holdout=["tango"])
    build_icons.write_marker(root / "corpus", result, 32, ["tango"])
    return root / "corpus"


def test_build_on_fake_packages_writes_a_corpus_load_manifest_accepts(artwork, icons_corpus, tmp_path):
    oc = tmp_path / "openclipart-png"
    art = oc / "usr/share/openclipart/png"
    _png(art / "animals/birds/cigno_architetto_frances_01.png", _drawing(10, 128), "Architetto Francesco Rollandin")
    _png(art / "animals/copy_of_cigno_01.png", _drawing(10, 128), "Someone")  # same pixels: duplicate image
    os.symlink("birds/cigno_architetto_frances_01.png", art / "animals/cigno_link_01.png")
    _png(art / "shapes/stars/star_75pt23step.png", _drawing(11, 64))  # numeral: digit
    _png(art / "signs_and_symbols/flags/signalflag_tango.png", _drawing(12, 64))  # holdout name
    _png(art / "computer/folder_blue_jon_phillips_01.png", _drawing(1, 96), "Jon Phillips")  # = tango icon
    _png(art / "computer/folder_red_jon_phillips_01.png",
         _drawing(1, 96).transpose(Image.Transpose.FLIP_LEFT_RIGHT), "Jon Phillips")  # its mirror
    _png(art / "computer/folder_green_jon_phillips_01.png", _drawing(3, 96), "Jon Phillips")  # = moka: kept
    _png(art / "office/pencil_long_01.png", Image.new("RGB", (400, 50), "red"))  # aspect > 4
    _png(art / "office/pin_01.png", Image.new("RGB", (16, 16), "red"))  # under 32 px
    (art / "README").write_text("not an image")
    tp = tmp_path / "tuxpaint-stamps-default"
    stamps = tp / "usr/share/tuxpaint/stamps"
    _stamp(stamps, "animals/birds/blackbird", _drawing(20, 100), "A blackbird.")
    _stamp(stamps, "vehicles/auto/car", _drawing(21, 100), "A red car\u2014fast!")
    _png(stamps / "vehicles/auto/car_mirror.png", _drawing(21, 100).transpose(Image.Transpose.FLIP_LEFT_RIGHT))
    _stamp(stamps, "symbols/math/1", _drawing(22, 100), "One.")  # digit
    _stamp(stamps, "symbols/money/coins/penny", _drawing(23, 100), "A penny.")  # digit folder
    _png(stamps / "plants/fern.png", _drawing(24, 100))  # no description
    (stamps / "plants/tree.svg").write_text('<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>')
    (stamps / "plants/tree.txt").write_text("A tree.")  # SVG only, no renderer here

    holdout = artwork.holdout_signatures(icons_corpus)
    assert len(holdout[1]) == 2 and holdout[1][0] == "tango/folder"  # the icon and its mirror
    out = tmp_path / "corpus"
    result = artwork.build_corpus({"openclipart": oc, "tuxpaint": tp}, out, holdout, size=32)
    artwork.write_provenance(out / "PROVENANCE.md", result, {
        "openclipart": {"package": "openclipart-png", "version": "1", "licence": "public domain"},
        "tuxpaint": {"package": "tuxpaint-stamps-default", "version": "1", "licence": "GPL-2"}},
        32, "none", icons_corpus, artwork.rebuild_command(out))
    artwork.write_marker(out, result, 32)

    records = load_manifest(out)
    assert [(r.theme, r.name, r.caption) for r in records] == [
        ("openclipart", "animals/birds/cigno_architetto_frances_01", "cigno"),
        ("openclipart", "computer/folder_green_jon_phillips_01", "folder green"),
        ("tuxpaint", "animals/birds/blackbird", "blackbird"),
        ("tuxpaint", "vehicles/auto/car", "red car fast"),
    ]
    assert {r.split for r in records} == {"train"}
    assert records[0].source == "usr/share/openclipart/png/animals/birds/cigno_architetto_frances_01.png"
    assert records[0].source_size == 128
    for record in records:
        with Image.open(record.path) as image:
            assert image.mode == "RGB" and image.size == (32, 32)
    assert dict(result.skipped["openclipart"]) == {
        "link": 1, "digit caption": 1, "holdout name": 1, "aspect > 4": 1, "under 32 px": 1, "duplicate image": 1,
        "near-duplicate of a holdout icon": 2}
    assert dict(result.skipped["tuxpaint"]) == {
        "mirror copy": 1, "digit caption": 1, "digit folder": 1, "no description": 1, "SVG only (no renderer)": 1}
    assert sorted(icon for _, icon, _ in result.near_duplicates) == ["tango/folder", "tango/folder (mirror)"]
    provenance = (out / "PROVENANCE.md").read_text()
    assert "near-duplicate of a holdout icon | 2 | 0 |" in provenance
    assert result.closest_kept[1].startswith("tango/folder") and result.closest_kept[2] < 0.97
    assert f"Closest image kept: `{result.closest_kept[0]}` ~ `{result.closest_kept[1]}`" in provenance
    assert "python -m scripts.build_artwork --cache-dir" in provenance

    again = artwork.build_corpus({"openclipart": oc, "tuxpaint": tp}, tmp_path / "again", holdout, size=32)
    assert again.manifest_sha256 == result.manifest_sha256  # deterministic
    assert (out / "images/openclipart/animals/birds/cigno_architetto_frances_01.png").read_bytes() == (
        tmp_path / "again/images/openclipart/animals/birds/cigno_architetto_frances_01.png").read_bytes()


def test_an_unfinished_icon_corpus_is_refused(artwork, tmp_path):
    from tpsnet_plugin.data.icons import IncompleteCorpusError

    with pytest.raises(IncompleteCorpusError):
        artwork.holdout_signatures(tmp_path)


def test_default_cache_dir(artwork, monkeypatch, tmp_path):
    monkeypatch.setenv("TPSNET_CACHE", str(tmp_path))
    assert artwork.default_cache_dir() == tmp_path / "artwork"
    monkeypatch.delenv("TPSNET_CACHE")
    assert artwork.default_cache_dir().parts[-2:] == ("tpsnet_plugin", "artwork")
