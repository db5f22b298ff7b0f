import os

import numpy as np
import pytest

from tpsnet_plugin.utils import atomic_open, atomic_save_numpy, atomic_write_bytes, atomic_write_text


def folder_listing(folder):
    return sorted(p.name for p in folder.iterdir())


def test_writes_replace_the_file_and_leave_no_temporary(tmp_path):
    target = tmp_path / "note.txt"
    atomic_write_text(target, "first")
    atomic_write_text(target, "zweite Fassung ✓")
    assert target.read_text(encoding="utf-8") == "zweite Fassung ✓"
    atomic_write_bytes(tmp_path / "blob.bin", b"\x00\xff" * 1000)
    assert (tmp_path / "blob.bin").read_bytes() == b"\x00\xff" * 1000
    array = np.arange(12, dtype=np.float32).reshape(3, 4)
    atomic_save_numpy(tmp_path / "cache.npy", array)
    np.testing.assert_array_equal(np.load(tmp_path / "cache.npy"), array)
    assert folder_listing(tmp_path) == ["blob.bin", "cache.npy", "note.txt"]


def test_new_files_get_the_permissions_of_a_plain_open(tmp_path):
    (tmp_path / "plain").write_text("x")
    atomic_write_text(tmp_path / "atomic", "x")
    assert (tmp_path / "atomic").stat().st_mode == (tmp_path / "plain").stat().st_mode


def test_failure_mid_write_keeps_the_old_file_and_removes_the_temporary(tmp_path):
    target = tmp_path / "state.json"
    atomic_write_text(target, "old")
    with pytest.raises(RuntimeError, match="killed"):
        with atomic_open(target) as handle:
            handle.write(b"half of the new")
            raise RuntimeError("killed")
    assert target.read_text() == "old"
    assert folder_listing(tmp_path) == ["state.json"]
    # np.save writes the header, then refuses the object array: a real failure half-way through
    atomic_save_numpy(tmp_path / "cache.npy", np.zeros(3))
    with pytest.raises(ValueError):
        atomic_save_numpy(tmp_path / "cache.npy", np.array([{"a": 1}], dtype=object))
    np.testing.assert_array_equal(np.load(tmp_path / "cache.npy"), np.zeros(3))
    assert folder_listing(tmp_path) == ["cache.npy", "state.json"]


@pytest.mark.parametrize("failing", ["fsync", "replace"])
def test_failing_fsync_or_rename_keeps_the_old_file(tmp_path, monkeypatch, failing):
    target = tmp_path / "latest"
    atomic_write_text(target, "epoch-1")

    def fail(*args, **kwargs):
        raise OSError(f"{failing} failed")

    monkeypatch.setattr(os, failing, fail)
    with pytest.raises(OSError, match=f"{failing} failed"):
        atomic_write_text(target, "epoch-2")
    monkeypatch.undo()
    assert target.read_text() == "epoch-1"
    assert folder_listing(tmp_path) == ["latest"]


def test_missing_folder_raises_and_creates_nothing(tmp_path):
    with pytest.raises(FileNotFoundError):
        atomic_write_text(tmp_path / "missing" / "file.txt", "x")
    assert folder_listing(tmp_path) == []
