"""Model sources (local directory, config .json, Hugging Face id online with a stand-in for
snapshot_download, offline) and Google Drive paths (mounted or not, in and out of Colab)."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest

import enstack
from enstack import colab, hub

sys.path.insert(0, str(Path(__file__).parent))
from test_trainer import TINY, overrides  # noqa: E402

from enstack.data import synthetic  # noqa: E402


# ------------------------------------------------------------------ hub


def test_local_directory_and_config_json_are_used_as_they_are(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(TINY))
    assert hub.resolve(str(tmp_path)) == tmp_path
    assert hub.resolve(str(tmp_path / "config.json"), from_scratch=True) == tmp_path / "config.json"
    assert hub.resolve_dir(str(tmp_path / "config.json"), from_scratch=True) == tmp_path
    with pytest.raises(enstack.ModelError, match="is a file.*from_scratch: true"):
        hub.resolve(str(tmp_path / "config.json"))
    with pytest.raises(enstack.ModelError, match="does not exist"):
        hub.resolve(str(tmp_path / "missing" / "model"))


def test_hub_id_shape():
    assert hub.is_hub_id("microsoft/codebert-base") and hub.is_hub_id("roberta-base")
    for not_an_id in ("/abs/path", "a/b/c", "../x", "model.json", "./x"):
        assert not hub.is_hub_id(not_an_id), not_an_id


@pytest.fixture
def empty_hf_cache(tmp_path, monkeypatch):
    import huggingface_hub

    real = huggingface_hub.snapshot_download
    cache = tmp_path / "hf-cache"

    def in_empty_cache(repo_id, **kwargs):  # the real function, pointed at an empty cache
        return real(repo_id, cache_dir=str(cache), **kwargs)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", in_empty_cache)
    return cache


def test_offline_without_a_cached_copy_says_how_to_give_a_local_path(monkeypatch, empty_hf_cache):
    import huggingface_hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub, "list_repo_files", lambda *a, **k: pytest.fail("went online"))
    with pytest.raises(enstack.ModelError) as e:
        hub.resolve("enstack-test/not-cached")
    message = str(e.value)
    assert "HF_HUB_OFFLINE" in message and "not in the local Hugging Face cache" in message
    assert "huggingface-cli download enstack-test/not-cached --local-dir DIR" in message
    assert "model.name_or_path" in message


def fake_hub(monkeypatch, repo_files, fail=None):
    """Stand-ins for list_repo_files and snapshot_download that write the allowed files."""
    import fnmatch

    import huggingface_hub

    calls = []

    def list_repo_files(repo_id, **kwargs):
        if fail is not None:
            raise fail
        return list(repo_files)

    def snapshot_download(repo_id, allow_patterns=None, local_files_only=False, **kwargs):
        calls.append({"repo_id": repo_id, "allow_patterns": allow_patterns, "local_files_only": local_files_only})
        if local_files_only or fail is not None:
            raise FileNotFoundError("not cached")
        root = Path(kwargs.get("cache_dir") or fake_hub.root) / repo_id.replace("/", "--")
        root.mkdir(parents=True, exist_ok=True)
        for name in repo_files:
            if any(fnmatch.fnmatch(name, p) for p in allow_patterns):
                (root / name).write_text(json.dumps(TINY) if name == "config.json" else "x")
        return str(root)

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub, "list_repo_files", list_repo_files)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    return calls


def test_online_fetches_config_tokenizer_and_one_weight_format(monkeypatch, tmp_path):
    fake_hub.root = tmp_path
    files = ["config.json", "pytorch_model.bin", "model.safetensors", "tf_model.h5", "flax_model.msgpack",
             "vocab.json", "merges.txt", "README.md"]
    calls = fake_hub(monkeypatch, files)
    path = hub.resolve("org/model")
    assert sorted(p.name for p in path.iterdir()) == ["config.json", "merges.txt", "model.safetensors", "vocab.json"]
    assert calls[-1]["repo_id"] == "org/model" and not calls[-1]["local_files_only"]
    # Only pickled weights: those are fetched.
    bin_only = hub.allow_patterns(["config.json", "pytorch_model.bin"])
    assert "pytorch_model.bin" in bin_only and "model.safetensors" not in bin_only
    # From scratch needs no weights at all.
    assert not any("model" in p and ("bin" in p or "safetensors" in p) for p in hub.allow_patterns(None, False))


def test_online_errors_are_model_errors(monkeypatch, tmp_path):
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    fake_hub.root = tmp_path
    fake_hub(monkeypatch, [], fail=ConnectionError("Name or service not known"))
    with pytest.raises(enstack.ModelError, match="looks offline.*huggingface-cli download org/model --local-dir"):
        hub.resolve("org/model")
    fake_hub(monkeypatch, [], fail=RepositoryNotFoundError.__new__(RepositoryNotFoundError))
    with pytest.raises(enstack.ModelError, match="no model 'org/model'.*huggingface-cli login"):
        hub.resolve("org/model")
    fake_hub(monkeypatch, [], fail=GatedRepoError.__new__(GatedRepoError))
    with pytest.raises(enstack.ModelError, match="gated"):
        hub.resolve("org/model")
    fake_hub(monkeypatch, ["README.md"])
    with pytest.raises(enstack.ModelError, match="no config.json"):
        hub.resolve("org/readme-only")


def test_trainer_builds_a_from_scratch_model_from_a_hub_id(monkeypatch, tmp_path):
    fake_hub.root = tmp_path / "hub"
    calls = fake_hub(monkeypatch, ["config.json", "model.safetensors"])
    synthetic.write_jsonl(tmp_path / "functions.jsonl", 60, seed=2)
    ov = overrides(tmp_path, tmp_path / "run", **{"model.name_or_path": "enstack-test/tiny"})
    trainer = enstack.Trainer(enstack.load_config("configs/demo.yaml", overrides=ov))
    trainer.prepare()
    assert enstack.model.config_of(trainer.model)["hidden_size"] == TINY["hidden_size"]
    assert calls and all("model.safetensors" not in c["allow_patterns"] for c in calls)  # config only


# ------------------------------------------------------------------ Drive


@pytest.fixture
def fake_drive(tmp_path, monkeypatch):
    root = tmp_path / "content" / "drive"
    monkeypatch.setattr(colab, "DRIVE_ROOT", str(root))
    return root


def test_drive_paths_are_refused_while_drive_is_not_mounted(fake_drive, monkeypatch):
    cfg = {"run": {"output_dir": str(fake_drive / "MyDrive" / "run"), "mirror_dir": None},
           "data": {"train": "/local/train.jsonl"}}
    monkeypatch.setattr(colab, "in_colab", lambda: False)
    with pytest.raises(enstack.ConfigError) as e:
        colab.check_drive_paths(cfg, {"--out": str(fake_drive / "MyDrive" / "p.npy")})
    message = str(e.value)
    assert "Google Drive is not mounted" in message and "run.output_dir" in message and "--out" in message
    assert "data.train" not in message and "not a Colab runtime" in message
    monkeypatch.setattr(colab, "in_colab", lambda: True)
    with pytest.raises(enstack.ConfigError, match=r"enstack.colab.mount_drive\(\).*drive.mount\("):
        colab.check_drive_paths(cfg)
    monkeypatch.setattr(colab, "drive_mounted", lambda root=None: True)
    colab.check_drive_paths(cfg)  # mounted: fine
    colab.check_drive_paths({"run": {"output_dir": "/tmp/elsewhere"}})


def test_a_directory_named_like_drive_is_not_a_mount(fake_drive):
    (fake_drive / "MyDrive").mkdir(parents=True)  # what writing to an unmounted path leaves behind
    assert not colab.drive_mounted()
    assert colab.is_drive_path(fake_drive / "MyDrive" / "x") and not colab.is_drive_path(str(fake_drive) + "2")


def test_trainer_refuses_an_unmounted_drive_output_dir_before_writing(fake_drive, tmp_path):
    synthetic.write_jsonl(tmp_path / "functions.jsonl", 60, seed=2)
    (tmp_path / "tiny.json").write_text(json.dumps(TINY))
    out = fake_drive / "MyDrive" / "run"
    cfg = enstack.load_config("configs/demo.yaml", overrides=overrides(tmp_path, out))
    with pytest.raises(enstack.ConfigError, match="Google Drive is not mounted"):
        enstack.Trainer(cfg)
    assert not fake_drive.exists()


@pytest.mark.skipif(colab.drive_mounted("/content/drive"), reason="Drive is mounted here")
def test_cli_refuses_the_real_unmounted_drive_path(capsys):
    from enstack import cli

    code = cli.main(["train", "configs/demo.yaml", "--set", "run.output_dir=/content/drive/MyDrive/enstack/demo"])
    err = capsys.readouterr().err
    assert code == 2 and "ConfigError: Google Drive is not mounted" in err and "Traceback" not in err


def test_mount_drive_only_in_colab(fake_drive, monkeypatch):
    monkeypatch.setattr(colab, "in_colab", lambda: False)
    assert colab.mount_drive() is False
    mounted = []
    drive = types.SimpleNamespace(mount=lambda point, force_remount=False: mounted.append(point))
    google = types.ModuleType("google")
    google.colab = types.ModuleType("google.colab")
    google.colab.drive = drive
    monkeypatch.setitem(sys.modules, "google", google)
    monkeypatch.setitem(sys.modules, "google.colab", google.colab)
    monkeypatch.setattr(colab, "in_colab", lambda: True)
    colab.mount_drive()
    assert mounted == [str(fake_drive)]
