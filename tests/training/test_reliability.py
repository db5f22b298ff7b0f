"""Reliability of whole runs: no lost runs, refused mismatched resumes, clear errors, signals."""

import errno
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tpsnet_plugin.training import NonFiniteLossError, TPSNetTrainer
from tpsnet_plugin.training.checkpoint import CheckpointError, ResumeMismatchError, latest_checkpoint
from tpsnet_plugin.training.run_dir import OutputDirError, TrainingInterrupted

EXTRA = ("warmup.epochs=0", "synergy.epochs=2", "synergy.checkpoint_every=1")


@pytest.fixture(scope="module")
def finished(tmp_path_factory, tiny_config):
    """A finished tiny run (2 synergy epochs, checkpoints after each)."""
    root = tmp_path_factory.mktemp("finished")
    TPSNetTrainer(tiny_config(root, *EXTRA)).fit()
    return root / "run"


@pytest.fixture
def run(finished, tmp_path):
    shutil.copytree(finished, tmp_path / "run")
    return tmp_path


def test_a_new_run_into_a_finished_run_refuses_and_keeps_it(run, tiny_config):
    summary = (run / "run" / "summary.json").read_text()
    with pytest.raises(OutputDirError, match="already holds a run.*--resume.*--overwrite"):
        TPSNetTrainer(tiny_config(run, *EXTRA)).fit()
    assert (run / "run" / "summary.json").read_text() == summary
    assert (run / "run" / "checkpoints" / "synergy-epoch002").is_dir()


@pytest.mark.slow
def test_overwrite_replaces_the_run(run, tiny_config):
    (run / "run" / "logs").mkdir(exist_ok=True)
    (run / "run" / "logs" / "tpsnet.csv").write_text("step,name,value\n1,old,1\n")
    TPSNetTrainer(tiny_config(run, *EXTRA, "synergy.epochs=1")).fit(overwrite=True)
    summary = json.loads((run / "run" / "summary.json").read_text())
    assert summary["last_epoch"] == 1
    checkpoints = sorted(p.name for p in (run / "run" / "checkpoints").iterdir() if p.is_dir())
    assert checkpoints == ["synergy-epoch001", "synergy-start"]
    assert not (run / "run" / "logs" / "tpsnet.csv").exists()  # the old CSV is not appended to


def test_resume_falls_back_to_the_newest_complete_checkpoint(run, capsys, tiny_config):
    (run / "run" / "checkpoints" / "latest").write_text("synergy-epoch009")
    trainer = TPSNetTrainer(tiny_config(run, *EXTRA))
    assert trainer.resume().name == "synergy-epoch002"
    assert "missing or incomplete: using the newest complete checkpoint, synergy-epoch002" in capsys.readouterr().out
    assert (trainer.state.stage, trainer.state.epoch) == ("synergy", 2)


def test_resume_without_a_complete_checkpoint_stops(run, tiny_config):
    shutil.rmtree(run / "run" / "checkpoints")
    with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
        TPSNetTrainer(tiny_config(run, *EXTRA)).fit(resume=True)


@pytest.mark.parametrize(
    ("change", "listed"),
    [
        ("cluster.nredo=2", "config cluster.nredo: 1 in the checkpoint, 2 now"),
        ("model.phase_prior=false", "config model.phase_prior: True in the checkpoint, False now"),
        ("data.subset_per_domain=80", "dataset sizes: [96, 96] in the checkpoint, [80, 80] now"),
        ("seed=1", "dataset the file list or labels"),
    ],
)
def test_resume_refuses_another_experiment_and_lists_the_differences(run, change, listed, tiny_config):
    summary = (run / "run" / "summary.json").read_text()
    with pytest.raises(ResumeMismatchError, match="Cannot resume") as error:
        TPSNetTrainer(tiny_config(run, *EXTRA, change)).fit(resume=True)
    assert listed in str(error.value)
    assert (run / "run" / "summary.json").read_text() == summary  # nothing was written


@pytest.mark.slow
def test_resume_takes_new_learning_rates_and_more_epochs(run, tiny_config):
    trainer = TPSNetTrainer(tiny_config(run, *EXTRA, "synergy.epochs=3", "synergy.lr_head=0.0005",
                                        "synergy.lr_backbone=0.0002", "eval.ks=[1, 5]"))
    summary = trainer.fit(resume=True)
    assert [group["lr"] for group in trainer.setup.optimizer.param_groups] == [0.0002, 0.0005]
    assert summary["last_epoch"] == 3 and set(summary["last"]["printed->handwritten-mnist"]) == {
        "precision_at_1", "precision_at_5", "map_at_all"}


def test_damaged_model_file_is_named(run, tiny_config):
    model = run / "run" / "checkpoints" / "synergy-epoch002" / "model.safetensors"
    model.write_bytes(model.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="synergy-epoch002.*damaged"):
        TPSNetTrainer(tiny_config(run, *EXTRA)).resume()


def test_unrestorable_random_states_warn(run, tiny_config):
    (run / "run" / "checkpoints" / "synergy-epoch002" / "random_states_0.pkl").write_bytes(b"garbage")
    with pytest.warns(RuntimeWarning, match="random_states_0.pkl cannot be restored"):
        TPSNetTrainer(tiny_config(run, *EXTRA)).resume()


@pytest.mark.slow
def test_disk_full_names_the_intact_checkpoint_and_leaves_no_partial_folder(tmp_path, monkeypatch, tiny_config):
    trainer = TPSNetTrainer(tiny_config(tmp_path, *EXTRA))
    save_state = trainer.accelerator.save_state
    calls = []

    def full_disk(folder):
        calls.append(folder)
        if len(calls) == 2:
            save_state(folder)  # half written, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")
        save_state(folder)

    monkeypatch.setattr(trainer.accelerator, "save_state", full_disk)
    with pytest.raises(OSError, match=r"No space left on device while writing checkpoint .*prompts-start; "
                                      r"the previous checkpoint .*cluster-start is intact"):
        trainer.fit()
    checkpoints = tmp_path / "run" / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["cluster-start", "latest"]


def _cli(repo, tmp_path, *args):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(repo / "examples" / "train_ucdir.py"), "--output-dir",
                           str(tmp_path / "run"), *args], env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "synergy.epochs=ten"], "Config key 'synergy.epochs' expects an integer"),
        (["--set", "synergy.epoch=3"], "Unknown config key 'synergy.epoch'. Did you mean synergy.epochs,"),
        (["--config", "nope.yaml"], "--config nope.yaml: no such file, and no packaged recipe"),
        (["--resume"], "does not exist"),
    ],
)
def test_cli_errors_are_one_clean_line(tmp_path, args, message, repo):
    result = _cli(repo, tmp_path, *args)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("train_ucdir: error: ")
    assert message in result.stderr


@pytest.mark.slow
def test_cli_rejects_zero_clusters(tmp_path, repo):
    result = _cli(repo, tmp_path, "--num-clusters", "0")
    assert result.returncode == 2 and "expects a positive integer" in result.stderr


def _training_processes(output_dir: Path) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        # the training process runs the script itself; the launcher runs `python -m accelerate...`
        if len(argv) > 1 and argv[1].endswith("train_ucdir.py") and str(output_dir) in argv:
            pids.append(int(entry.name))
    return pids


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds the training process through /proc")
def test_signalled_launcher_stops_training_and_the_output_dir_is_locked(tmp_path, run_cli, repo):
    launcher = (str(Path(sys.executable).parent / "accelerate"), "launch", "--num_processes", "1",
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no")
    process = run_cli(tmp_path, "synergy.epochs=1000", "eval.every=0", launcher=launcher)
    output_dir = tmp_path / "run"
    deadline = time.time() + 300
    while not (output_dir / "checkpoints" / "synergy-start").exists() and process.poll() is None:
        assert time.time() < deadline, "the run did not reach its first checkpoint"
        time.sleep(0.2)
    assert process.poll() is None, process.stdout.read()[-3000:]
    children = _training_processes(output_dir)
    assert children, f"the training process was not found; launcher state {process.poll()}"

    second = _cli(repo, tmp_path, "--resume")
    assert second.returncode == 2 and "being written by another training process" in second.stderr

    os.kill(process.pid, signal.SIGTERM)  # what timeout, schedulers and `kill PID` do
    process.wait(timeout=60)
    deadline = time.time() + 60
    while _training_processes(output_dir) and time.time() < deadline:
        time.sleep(0.2)
    assert not _training_processes(output_dir), "the training process outlived its launcher"
    # the stop kept a complete checkpoint, and the run continues from it (fewer epochs: a safe change)
    folder = latest_checkpoint(output_dir / "checkpoints")
    epoch = json.loads((folder / "checkpoint.json").read_text())["epoch"]
    resumed = run_cli(tmp_path, "--resume", f"synergy.epochs={epoch + 1}", "eval.every=0")
    out = resumed.communicate(timeout=300)[0]
    assert resumed.returncode == 0, out[-3000:]
    assert json.loads((output_dir / "summary.json").read_text())["last_epoch"] == epoch + 1


def _forget_option(run_dir, section, key):
    """Remove an option from every checkpoint's recorded config (a checkpoint older than the option)."""
    for meta_file in (run_dir / "checkpoints").glob("*/checkpoint.json"):
        meta = json.loads(meta_file.read_text())
        del meta["config"][section][key]
        meta_file.write_text(json.dumps(meta))


@pytest.mark.slow
def test_resume_accepts_an_option_newer_than_the_checkpoint_only_at_its_default(run, tiny_config):
    _forget_option(run / "run", "augment", "amplitude_mix_p")
    with pytest.raises(ResumeMismatchError) as error:
        TPSNetTrainer(tiny_config(run, *EXTRA, "augment.amplitude_mix_p=1.0")).fit(resume=True)
    assert "config augment.amplitude_mix_p: '<absent>' in the checkpoint, 1.0 now" in str(error.value)
    summary = TPSNetTrainer(tiny_config(run, *EXTRA, "synergy.epochs=3")).fit(resume=True)
    assert summary["last_epoch"] == 3


def _load_cli(repo):
    spec = importlib.util.spec_from_file_location("train_ucdir", repo / "examples" / "train_ucdir.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _Payload:
    def __reduce__(self):
        return (os.system, ("echo pickled code ran",))


def _sets(*items):
    return [arg for item in items for arg in ("--set", item)]


def test_pickled_code_in_weights_options_is_one_line_naming_the_file_the_key_and_where_it_was_set(
        tmp_path, capsys, tiny_overrides, repo):
    evil = tmp_path / "evil.pt"
    torch.save({"weights": _Payload()}, evil)
    cli = _load_cli(repo).cli
    for option in ("model.checkpoint_path", "model.clip_pretrained"):
        extra = ["model.text_prior=true"] if option == "model.clip_pretrained" else []
        status = cli(["--output-dir", str(tmp_path / option), *_sets(*tiny_overrides, *extra, f"{option}={evil}")])
        err = capsys.readouterr().err
        assert status == 2, err
        line = err.strip().splitlines()[-1]  # after the progress lines
        assert "Traceback" not in err
        assert line.startswith("train_ucdir: error: ") and str(evil) in line
        assert "holds pickled code (posix.system)" in line and "weights_only=False" not in line
        assert line.endswith(f"({option} is set in --set)")


def test_damaged_packaged_weights_say_the_recipe_chose_them(tmp_path, capsys, monkeypatch, repo):
    from tpsnet_plugin.text_prior import packaged_weights

    file, _ = packaged_weights.PACKAGED_WEIGHTS["tpsnet-tiny-clip"]["icons"]
    monkeypatch.setitem(packaged_weights.PACKAGED_WEIGHTS["tpsnet-tiny-clip"], "icons", (file, "0" * 64))
    for domain in ("a", "b"):
        for label in ("x", "y"):
            (tmp_path / "data" / domain / label).mkdir(parents=True)
            for i in range(3):
                image = Image.fromarray(np.full((8, 8, 3), 60 * i, np.uint8))
                image.save(tmp_path / "data" / domain / label / f"{i}.png")
    status = _load_cli(repo).cli(["--data-root", str(tmp_path / "data"), "--domains", "a", "b",
                                  "--output-dir", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert status == 2, err
    line = err.strip().splitlines()[-1]
    assert "Traceback" not in err
    assert "the 'icons' weights of 'tpsnet-tiny-clip' are damaged" in line
    recipe = repo / "tpsnet_plugin" / "configs" / "folder.yaml"
    assert line.endswith(f"(model.clip_pretrained is set in the recipe 'folder' ({recipe}))")


def test_output_dir_inside_the_data_root_is_refused_before_any_work(tmp_path):
    (tmp_path / "data").mkdir()
    config = {"data": {"dataset": "folder", "root": str(tmp_path / "data")},
              "output_dir": str(tmp_path / "data" / "runs" / "one")}
    with pytest.raises(OutputDirError, match=r"inside the dataset root .*read as a domain or a class"):
        TPSNetTrainer(config)
    assert not (tmp_path / "data" / "runs").exists()


def test_resume_with_fewer_epochs_than_the_checkpoint_is_refused(run, tiny_config):
    with pytest.raises(ValueError, match=r"synergy epoch 2, past the 1 epochs synergy.epochs=1.*>= 2"):
        TPSNetTrainer(tiny_config(run, *EXTRA, "synergy.epochs=1")).fit(resume=True)


def test_a_stop_in_the_warm_up_says_there_is_nothing_to_resume(tmp_path, monkeypatch, tiny_config):
    trainer = TPSNetTrainer(tiny_config(tmp_path))

    def stop(*args, **kwargs):
        raise TrainingInterrupted("stopped by SIGTERM")

    monkeypatch.setattr(trainer.stages[0].loss_fn, "forward", stop)
    with pytest.raises(TrainingInterrupted, match=r"stopped by SIGTERM before the first checkpoint.*--overwrite"):
        trainer.fit()
    assert latest_checkpoint(tmp_path / "run" / "checkpoints") is None


def test_a_nan_warm_up_loss_names_warmup_lr_and_no_resume(tmp_path, monkeypatch, tiny_config):
    trainer = TPSNetTrainer(tiny_config(tmp_path))
    monkeypatch.setattr(trainer.stages[0].loss_fn, "forward", lambda *a, **k: torch.tensor(float("nan")))
    with pytest.raises(NonFiniteLossError) as error:
        trainer.fit()
    message = str(error.value)
    assert "stage 'warmup'" in message and "Lower warmup.lr" in message
    assert "--overwrite" in message and "--resume" not in message


@pytest.mark.slow
def test_a_stop_signal_with_dataloader_workers_is_one_line_saying_how_to_continue(tmp_path, run_cli):
    # `timeout` sends SIGTERM to the whole process group: the DataLoader workers die of it too, and torch
    # used to add a "worker killed by signal" traceback after the stop.
    process = run_cli(tmp_path, "data.num_workers=2", "synergy.epochs=1000", "eval.every=0",
                      start_new_session=True)
    checkpoint = tmp_path / "run" / "checkpoints" / "synergy-start"
    deadline = time.time() + 300
    while not checkpoint.exists() and process.poll() is None:
        assert time.time() < deadline, "the run did not reach its first checkpoint"
        time.sleep(0.2)
    time.sleep(1.0)  # inside the synergy loop, workers running
    os.killpg(process.pid, signal.SIGTERM)
    output = process.communicate(timeout=120)[0]
    assert process.returncode == 130, output[-3000:]
    assert "Traceback" not in output and "killed by signal" not in output, output[-3000:]
    stops = [line for line in output.splitlines() if line.startswith("train_ucdir:")]
    assert len(stops) == 1 and stops[0].startswith("train_ucdir: stopped by SIGTERM; the last complete checkpoint")
    assert stops[0].endswith(f"continue with --resume --output-dir {tmp_path / 'run'}")
