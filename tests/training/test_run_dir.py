"""The output dir: no run overwritten by accident, one writer at a time."""

import subprocess
import sys

import pytest

from tpsnet_plugin.training.run_dir import (
    OutputDirError,
    OutputDirLock,
    check_output_dir,
    remove_run_artifacts,
    write_run_marker,
)


def finished_run(folder):
    write_run_marker(folder)
    (folder / "checkpoints" / "synergy-epoch001").mkdir(parents=True)
    (folder / "summary.json").write_text("{}")
    (folder / "metrics.jsonl").write_text("")
    (folder / "notes.txt").write_text("mine")  # not a run artifact
    return folder


def test_a_new_run_refuses_a_folder_holding_a_run(tmp_path):
    finished_run(tmp_path)
    message = r"holds a run \(tpsnet_run.json, checkpoints, summary.json, metrics.jsonl\).*--resume.*--overwrite"
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


def test_overwrite_refuses_a_folder_with_run_names_that_no_run_of_ours_wrote(tmp_path):
    # A project folder: the user's own config.yaml and logs/, taken for a run before the marker existed.
    (tmp_path / "config.yaml").write_text("mine: 1\n")
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "notes.log").write_text("keep me")
    for overwrite in (False, True):
        with pytest.raises(OutputDirError, match=r"logs, config.yaml.*no tpsnet_plugin run wrote.*another --output"):
            check_output_dir(tmp_path, resume=False, overwrite=overwrite)
    assert (tmp_path / "logs" / "notes.log").read_text() == "keep me"
    assert (tmp_path / "config.yaml").read_text() == "mine: 1\n"


def test_a_run_written_before_the_marker_is_still_recognised_by_its_checkpoints(tmp_path):
    (tmp_path / "checkpoints" / "warmup-end").mkdir(parents=True)
    (tmp_path / "checkpoints" / "warmup-end" / "checkpoint.json").write_text("{}")
    (tmp_path / "config.yaml").write_text("seed: 0\n")
    with pytest.raises(OutputDirError, match="already holds a run"):
        check_output_dir(tmp_path, resume=False, overwrite=False)
    check_output_dir(tmp_path, resume=False, overwrite=True)


def test_resume_needs_an_existing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        check_output_dir(tmp_path / "typo", resume=True, overwrite=False)
    with pytest.raises(ValueError, match="exclude each other"):
        check_output_dir(tmp_path, resume=True, overwrite=True)


@pytest.mark.slow
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
