"""MultiDomainDataset and build_folder_domains on small generated image trees."""

import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

import tpsnet_plugin  # noqa: F401  (torchvision fix before anything imports it)
from tpsnet_plugin.data import MultiDomainDataset, build_folder_domains
from tpsnet_plugin.data.folder import DomainImageFolder


def make_tree(root: Path, spec: dict, office31: bool = False) -> None:
    """``spec`` = {domain: {class: count}}; each image's colour encodes (domain, class, k)."""
    for d, (domain, classes) in enumerate(spec.items()):
        base = root / domain / "images" if office31 else root / domain
        for c, (name, count) in enumerate(classes.items()):
            (base / name).mkdir(parents=True, exist_ok=True)
            for k in range(count):
                Image.new("RGB", (10, 10), (40 * d, 20 * c, 10 * k)).save(base / name / f"{k}.png")


def reference_items(parts):
    """Brute force: walk the parts in order, yielding (part, local index, domain id)."""
    for d, part in enumerate(parts):
        for j in range(len(part)):
            yield part, j, d


SPEC = {
    "Art": {"Bike": 2, "Alarm Clock": 3, "Zebra": 1},
    "Real World": {"Zebra": 2, "Bike": 1, "Alarm Clock": 2},
    "Clipart": {"Alarm Clock": 1, "Bike": 1, "Zebra": 3},
}


def test_multi_domain_dataset_matches_parts(tmp_path):
    make_tree(tmp_path, SPEC)
    parts = [DomainImageFolder(tmp_path, d, image_size=8) for d in SPEC]
    ds = MultiDomainDataset(parts)
    assert ds.domain_names == list(SPEC) and ds.num_domains == 3
    assert ds.classes == ["Alarm Clock", "Bike", "Zebra"]
    total = sum(n for classes in SPEC.values() for n in classes.values())
    assert len(ds) == sum(len(p) for p in parts) == total
    assert ds.labels.dtype == np.int64 and ds.domains.dtype == np.int64
    for i, (part, j, d) in enumerate(reference_items(parts)):
        image, label, domain, index = ds[i]
        ref_image, ref_label, _ = part[j]
        assert (label, domain, index) == (ref_label, d, i)
        assert ds.labels[i] == part.labels[j] and ds.domains[i] == d
        assert torch.equal(image, ref_image)
    for d, name in enumerate(SPEC):
        expected = [i for i, (_, _, dd) in enumerate(reference_items(parts)) if dd == d]
        assert ds.domain_indices(d).tolist() == expected
        assert ds.domain_indices(name).tolist() == expected
    assert ds[-1][3] == len(ds) - 1 and torch.equal(ds[-1][0], ds[len(ds) - 1][0])
    with pytest.raises(IndexError):
        ds[len(ds)]
    with pytest.raises(KeyError, match="unknown domain"):
        ds.domain_indices("Product")
    batch = next(iter(DataLoader(ds, batch_size=total)))
    assert batch[0].shape == (total, 3, 8, 8)
    assert batch[1].tolist() == ds.labels.tolist() and batch[2].tolist() == ds.domains.tolist()
    assert batch[3].tolist() == list(range(total))
    restored = pickle.loads(pickle.dumps(ds))  # spawn-based DataLoader workers pickle it
    assert torch.equal(restored[7][0], ds[7][0])


def test_multi_domain_dataset_rejects_bad_parts(tmp_path):
    make_tree(tmp_path, {"a": {"x": 1, "y": 1}, "b": {"x": 1, "z": 1}, "c": {"x": 1, "y": 1}})
    a, b, c = (DomainImageFolder(tmp_path, d) for d in "abc")
    with pytest.raises(ValueError, match="at least 2 domains"):
        MultiDomainDataset([a])
    with pytest.raises(ValueError, match=r"domain 'b' lacks \['y'\]; has extra \['z'\]"):
        MultiDomainDataset([a, b])
    c.set_classes(["y", "x"])
    with pytest.raises(ValueError, match="same classes in another order"):
        MultiDomainDataset([a, c])
    with pytest.raises(ValueError, match="distinct"):
        MultiDomainDataset([a, a], domain_names=["same", "same"])
    with pytest.raises(ValueError, match="2 domain names for 3"):
        MultiDomainDataset([a, a, a], domain_names=["p", "q"])
    assert MultiDomainDataset([a, a], domain_names=["p", "q"]).domain_names == ["p", "q"]


def test_build_shares_class_order(tmp_path):
    make_tree(tmp_path, SPEC)
    ds = build_folder_domains(tmp_path, ["Clipart", "Art"], image_size=6)
    assert ds.domain_names == ["Clipart", "Art"] and ds.classes == ["Alarm Clock", "Bike", "Zebra"]
    for part in ds.datasets:
        assert part.classes == ds.classes
        for path, label in part.samples:
            assert Path(path).parent.name == ds.classes[label]
    counts = {(ds.domain_names[d], ds.classes[c]) for d, c in zip(ds.domains, ds.labels)}
    assert counts == {(d, c) for d in ["Clipart", "Art"] for c in SPEC[d]}
    assert ds[0][0].shape == (3, 6, 6)
    order = ["Zebra", "Bike", "Alarm Clock"]
    given = build_folder_domains(tmp_path, ["Art", "Clipart"], classes=order)
    assert given.classes == ["Zebra", "Bike", "Alarm Clock"]
    for part in given.datasets:
        assert all(Path(p).parent.name == given.classes[y] for p, y in part.samples)


def test_build_class_in_some_domains_only(tmp_path):
    spec = {
        "A": {"cat": 2, "dog": 1, "owl": 1},
        "B": {"cat": 1, "dog": 2, "emu": 1},
        "C": {"cat": 1, "dog": 1},
    }
    make_tree(tmp_path, spec)
    with pytest.raises(ValueError) as err:
        build_folder_domains(tmp_path, ["A", "B", "C"])
    message = str(err.value)
    assert "domain 'A' lacks ['emu']" in message and "domain 'B' lacks ['owl']" in message
    assert "domain 'C' lacks ['emu', 'owl']" in message
    assert "class_policy='intersection' (config: data.class_policy)" in message
    with pytest.warns(UserWarning, match=r"dropped 2 classes .*\['emu', 'owl'\]; keeping 2"):
        ds = build_folder_domains(tmp_path, ["A", "B", "C"], class_policy="intersection")
    assert ds.classes == ["cat", "dog"]
    for part in ds.datasets:
        names = [Path(p).parent.name for p, _ in part.samples]
        assert names == [ds.classes[y] for y in part.labels]
        kept = [c for c, n in spec[part.domain].items() if c in ds.classes for _ in range(n)]
        assert sorted(names) == sorted(kept)
    with pytest.raises(ValueError, match=r"domain 'C' lacks \['owl'\]"):
        build_folder_domains(tmp_path, ["A", "C"], classes=["cat", "owl"])
    with pytest.raises(ValueError, match="no class has images in all"):
        build_folder_domains(tmp_path, ["A", "B"], classes=["owl", "emu"],
                             class_policy="intersection")


def test_build_from_list_files_and_office31(tmp_path):
    make_tree(tmp_path, {"clipart": {"bird": 2, "zebra": 1}, "sketch": {"bird": 1, "zebra": 2}})
    lists = {}
    for domain, rows in {"clipart": [("zebra/0", 6), ("bird/0", 2), ("bird/1", 2)],
                         "sketch": [("bird/0", 2), ("zebra/1", 6), ("zebra/0", 6)]}.items():
        lists[domain] = tmp_path / f"{domain}_test.txt"
        lists[domain].write_text("".join(f"{domain}/{rel}.png {label}\n" for rel, label in rows))
    ds = build_folder_domains(tmp_path, ["clipart", "sketch"], list_files=lists)
    assert ds.classes == ["bird", "zebra"] and ds.labels.tolist() == [1, 0, 0, 0, 1, 1]
    same = build_folder_domains(tmp_path, ["clipart", "sketch"],
                                list_files=[lists["clipart"], lists["sketch"]])
    assert same.labels.tolist() == ds.labels.tolist()
    with pytest.raises(ValueError, match=r"no entry for domains \['sketch'\]"):
        build_folder_domains(tmp_path, ["clipart", "sketch"],
                             list_files={"clipart": lists["clipart"]})

    office_spec = {"amazon": {"bike": 1, "mug": 2}, "webcam": {"bike": 2, "mug": 1}}
    make_tree(tmp_path / "office31", office_spec, office31=True)
    office = build_folder_domains(tmp_path / "office31", ["amazon", "webcam"])
    assert [p.layout for p in office.datasets] == ["office31", "office31"]
    assert office.classes == ["bike", "mug"] and office.labels.tolist() == [0, 1, 1, 0, 0, 1]


def test_build_argument_errors_and_skip(tmp_path):
    make_tree(tmp_path, {"A": {"cat": 2}, "B": {"cat": 1}})
    with pytest.raises(ValueError, match="at least 2 distinct domains"):
        build_folder_domains(tmp_path, ["A"])
    with pytest.raises(ValueError, match="at least 2 distinct domains"):
        build_folder_domains(tmp_path, ["A", "A"])
    with pytest.raises(TypeError, match="list of domain names"):
        build_folder_domains(tmp_path, "AB")
    with pytest.raises(ValueError, match="class_policy"):
        build_folder_domains(tmp_path, ["A", "B"], class_policy="union")
    with pytest.raises(FileNotFoundError, match=r"domain 'C' not found .*\['A', 'B'\]"):
        build_folder_domains(tmp_path, ["A", "C"])
    broken = tmp_path / "B" / "cat" / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.warns(UserWarning, match="skipped 1 unreadable"):
        ds = build_folder_domains(tmp_path, ["A", "B"], on_error="skip")
    assert len(ds) == 3 and ds.datasets[1].skipped == [str(broken)]


def test_build_warns_when_a_domain_is_one_image_repeated(tmp_path):
    make_tree(tmp_path, {"A": {"cat": 2, "dog": 2}, "B": {"cat": 2, "dog": 1}})
    placeholder = (tmp_path / "A" / "cat" / "0.png").read_bytes()
    for path in (tmp_path / "A").rglob("*.png"):  # e.g. a failed download's placeholder image
        path.write_bytes(placeholder)
    with pytest.warns(UserWarning, match="domain 'A': all 4 images are the same") as record:
        ds = build_folder_domains(tmp_path, ["A", "B"])
    assert len(ds) == 7 and not any("'B'" in str(w.message) for w in record)
    # Same size and same first 8 KB, different content at the end: no warning.
    for k, path in enumerate(sorted((tmp_path / "A").rglob("*.png"))):
        pixels = np.zeros((120, 120, 3), dtype=np.uint8)
        pixels[0, 0] = k + 1  # BMP rows are stored bottom-up: the top row ends the file
        Image.fromarray(pixels).save(path, format="BMP")  # uncompressed: equal sizes and heads
    files = sorted((tmp_path / "A").rglob("*.png"))
    assert len({p.stat().st_size for p in files}) == 1
    assert len({p.read_bytes()[:8192] for p in files}) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        build_folder_domains(tmp_path, ["A", "B"])


def test_build_domain_with_fewer_images_than_classes_is_a_clear_error(tmp_path):
    make_tree(tmp_path, {"A": {"cat": 1, "dog": 1, "emu": 1, "owl": 1}, "B": {"cat": 1, "dog": 1}})
    with pytest.raises(ValueError) as err:
        build_folder_domains(tmp_path, ["A", "B"])
    message = str(err.value)
    assert message.startswith("domain 'B' has only 2 image(s), fewer than the 4 classes")
    assert "root and domains (config: data.root, data.domains)" in message
    assert "class_policy='intersection' (config: data.class_policy)" in message
