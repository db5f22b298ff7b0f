"""A trained model as a folder or a Hugging Face Hub repo: config.json + model.safetensors."""

import huggingface_hub
import pytest
import torch
from safetensors.torch import save_file

from tpsnet_plugin.errors import WeightsDownloadError
from tpsnet_plugin.models import TPSNet, create_tpsnet
from tpsnet_plugin.models.pretrained import pretrained_config, save_config
from tpsnet_plugin.training import default_config


@pytest.fixture
def model_folder(tmp_path):
    torch.manual_seed(0)
    section = {**default_config()["model"], "pretrained": False}
    model = create_tpsnet(section, 32, 2, 3, pretrained=False).eval()
    model.set_text_features(torch.randn(2, 3, 32))
    folder = tmp_path / "snapshot"
    folder.mkdir()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "model.safetensors"))
    save_config(folder, pretrained_config(section, model, embed_dim=32, num_domains=2, num_clusters=3, image_size=16,
                                          domain_names=["a", "b"], classes=["x", "y", "z"]))
    return model, folder


def test_a_hub_repo_id_is_downloaded_and_loaded(model_folder, monkeypatch, tmp_path):
    model, folder = model_folder
    calls = []

    def snapshot_download(repo_id, revision=None, allow_patterns=None):
        calls.append((repo_id, revision, sorted(allow_patterns)))
        return str(folder)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    monkeypatch.chdir(tmp_path)  # no local folder of that name
    loaded = TPSNet.from_pretrained("someone/tpsnet-digits", revision="v1")
    assert calls == [("someone/tpsnet-digits", "v1", ["config.json", "model.safetensors"])]
    images = torch.rand(2, 3, 16, 16)
    torch.testing.assert_close(loaded(images, [0, 1]), model(images, [0, 1]))
    assert loaded.config["domain_names"] == ["a", "b"]


def test_a_local_folder_wins_over_the_hub(model_folder, monkeypatch):
    model, folder = model_folder
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda *a, **k: pytest.fail("downloaded"))
    assert TPSNet.from_pretrained(folder).config["classes"] == ["x", "y", "z"]


def test_neither_a_folder_nor_a_fetchable_repo_is_one_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(WeightsDownloadError, match="neither a folder here nor a Hugging Face Hub.*HF_HUB_OFFLINE"):
        TPSNet.from_pretrained("nobody/no-such-model")
