"""The output dir: no run overwritten by accident, one writer at a time."""

import subprocess
import sys

import pytest

from tpsnet_plugin.training.run_dir import OutputDirError, OutputDirLock, check_output_dir, remove_run_artifacts


def finished_run(folder):
    (folder / "checkpoints" / "synergy-epoch001").mkdir(parents=True)
    (folder / "summary.json").write_text("{}")
    (folder / "metrics.jsonl").write_text("")
    (folder / "notes.txt").write_text("mine")  # not a run artifact
    return folder


def test_a_new_run_refuses_a_folder_holding_a_run(tmp_path):
    finished_run(tmp_path)
    message = r"already holds a run \(checkpoints, summary.json, metrics.jsonl\).*--resume.*--overwrite"
    with pytest.raises(OutputDirError, match=message):
        check_output_dir(tmp_path, resume=False, overwrite=False)
    assert (tmp_path / "summary.json").exists()


def test_empty_or_missing_folders_are_fine(tmp_path):
    check_output_dir(tmp_path / "new", resume=False, overwrite=False)
    (tmp_path / "empty").mkdir()
    check_output_dir(tmp_path / "empty", resume=False, overwrite=False)


def test_overwrite_removes_only_run_artifacts(tmp_path):
    finished_run(tmp_path)
    check_output_dir(tmp_path, resume=False, overwrite=True)
    remove_run_artifacts(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_resume_needs_an_existing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        check_output_dir(tmp_path / "typo", resume=True, overwrite=False)
    with pytest.raises(ValueError, match="exclude each other"):
        check_output_dir(tmp_path, resume=True, overwrite=True)


def test_lock_refuses_a_second_writer_naming_its_pid(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from tpsnet_plugin.training.run_dir import OutputDirLock; "
         f"lock = OutputDirLock({str(tmp_path)!r}).acquire(); print('locked', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(OutputDirError, match=rf"another training process \(pid {holder.pid}\)"):
            OutputDirLock(tmp_path).acquire()
    finally:
        holder.kill()
        holder.wait()
    with OutputDirLock(tmp_path):  # released when the holder died
        pass
