"""enstack.config: schema defaults, the shipped YAML files, composition, overrides,
validation (all problems at once, cross-field rules), paths and fingerprints."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

import enstack
from enstack.config import ENSTACK5_LABELS, Config, load_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
PRESETS = ["vram-4gb", "vram-6gb", "vram-8gb", "vram-16gb", "safe"]
MODELS = ["codebert", "graphcodebert", "unixcoder"]
# A minimal valid config (files need not exist: ingestion checks them).
BASE = {"data": {"train": "train.jsonl", "validation": "val.jsonl"}}


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def nested(dotted: dict) -> dict:
    tree: dict = json.loads(json.dumps(BASE))
    for key, value in dotted.items():
        node = tree
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return tree


def problems(**dotted) -> dict:
    """key -> message of every problem of BASE with dotted overrides (keys use __ for dots)."""
    d = nested({k.replace("__", "."): v for k, v in dotted.items()})
    try:
        lines = Config.from_dict(d, validate=False).problems()
    except enstack.ConfigError as e:  # wrong types and unknown keys are raised while parsing
        lines = [line[4:] for line in str(e).splitlines() if line.startswith("  - ")]
    return dict(line.split(": ", 1) for line in lines)


# ---------------------------------------------------------------- defaults and shipped files


def test_defaults_are_the_papers_setup():
    c = Config()
    t = c.train
    assert (t.batch_size, t.grad_accum, t.epochs, t.learning_rate, t.weight_decay) == (16, 1, 10, 2e-5, 0.01)
    assert (t.lr_schedule, t.warmup_ratio, t.warmup_steps, t.max_grad_norm) == ("linear", 0.0, 0, 1.0)
    assert (t.metric_for_best, t.eval_strategy, t.logging_steps) == ("f1_weighted", "epoch", 50)
    assert t.save_total_limit == 2
    assert t.precision == "auto" and t.metric_greater_is_better()
    assert (c.model.max_length, c.model.name_or_path) == (512, "microsoft/codebert-base")
    assert (c.run.seed, c.run.num_threads, c.run.device) == (42, 0, "auto")
    assert (c.data.label_policy, c.data.format, c.data.label_columns) == ("enstack5", "auto", ENSTACK5_LABELS)
    assert c.data.split is None and c.data.downsample is None and not c.data.trust_pickle


def test_defaults_yaml_matches_the_schema_defaults():
    c = load_config(CONFIGS / "defaults.yaml")
    assert c.train == Config().train
    assert c.model == Config().model
    assert c.run.output_dir == str((CONFIGS.parent / "runs" / "enstack"))
    assert c.data.train == str(CONFIGS.parent / "data" / "VDISC_train.hdf5")
    # defaults.yaml lists every key of the schema.
    raw = yaml.safe_load((CONFIGS / "defaults.yaml").read_text())
    assert raw.keys() == Config().to_dict().keys()
    for section, values in Config().to_dict().items():
        assert raw[section].keys() == values.keys(), section


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("model", MODELS)
def test_presets_compose_with_defaults_and_each_model(preset, model):
    c = load_config([CONFIGS / "defaults.yaml", CONFIGS / "models" / f"{model}.yaml", CONFIGS / f"{preset}.yaml"])
    assert c.model.name_or_path == f"microsoft/{model}-base"
    raw = yaml.safe_load((CONFIGS / f"{preset}.yaml").read_text())
    assert set(raw) <= {"train", "model"}, "presets only set train/model keys and include nothing"
    assert (c.train.batch_size, c.train.grad_accum) == (raw["train"]["batch_size"], raw["train"].get("grad_accum", 1))
    expected = {"vram-4gb": (6, 2, "fp16", 512), "vram-6gb": (8, 2, "fp16", 512), "vram-8gb": (16, 1, "fp16", 512),
                "vram-16gb": (32, 1, "auto", 512), "safe": (4, 4, "fp16", 384)}[preset]
    assert (c.train.batch_size, c.train.grad_accum, c.train.precision, c.model.max_length) == expected


def test_demo_yaml_is_small_and_self_contained():
    c = load_config(CONFIGS / "demo.yaml")
    assert c.data.train == "demo" and c.data.split == (0.8, 0.1, 0.1) and c.data.format == "jsonl"
    assert c.model.from_scratch and c.model.name_or_path == str(CONFIGS / "models" / "tiny-roberta.json")
    # The tokenizer trained from scratch must fit the model's embedding table.
    model_vocab = json.loads((CONFIGS / "models" / "tiny-roberta.json").read_text())["vocab_size"]
    assert (c.model.tokenizer.kind, c.model.tokenizer.vocab_size) == ("sentencepiece", model_vocab)
    assert (c.model.max_length, c.train.batch_size, c.train.epochs, c.train.learning_rate) == (256, 16, 2, 5e-4)
    t = c.train
    assert (t.eval_strategy, t.eval_steps, t.save_steps, t.logging_steps) == ("steps", 50, 50, 10)
    assert (c.train.precision, c.run.device, c.train.warmup_ratio) == ("fp32", "cpu", 0.1)
    assert c.run.output_dir == str(CONFIGS.parent / "runs" / "demo")


def test_every_shipped_yaml_is_covered_and_loads():
    shipped = {p.relative_to(CONFIGS).as_posix() for p in CONFIGS.rglob("*.yaml")}
    demos = {"demo.yaml", "demo-sp2000.yaml", "demo-deep.yaml"}  # the EnStack demo's base models
    covered = {"defaults.yaml", "demo-stack.yaml"} | demos | {f"{p}.yaml" for p in PRESETS} | {f"models/{m}.yaml" for m in MODELS}
    assert shipped == covered
    for name in sorted(shipped - {"demo-stack.yaml"}):
        standalone = name in {"defaults.yaml"} | demos
        load_config([CONFIGS / name] if standalone else [CONFIGS / "defaults.yaml", CONFIGS / name])
    from enstack.stacking import load_stack_config  # a stacking config, not a training one

    assert list(load_stack_config(CONFIGS / "demo-stack.yaml").base_configs()) == ["demo", "demo-sp2000", "demo-deep"]


# ---------------------------------------------------------------- composition


def test_files_compose_left_to_right_with_deep_merge_and_list_replacement(tmp_path):
    a = write(tmp_path / "a.yaml", "train: {epochs: 3, batch_size: 8}\ndata: {train: t.jsonl, validation: v.jsonl,"
              " label_columns: [a, b, c]}\n")
    b = write(tmp_path / "b.yaml", "train: {epochs: 5}\ndata: {label_columns: [x, y], label_policy: multilabel}\n")
    c = load_config([a, b])
    assert (c.train.epochs, c.train.batch_size) == (5, 8)
    assert c.data.label_columns == ("x", "y")
    assert load_config([b, a]).train.epochs == 3


def test_includes_come_first_and_resolve_relative_to_the_including_file(tmp_path):
    write(tmp_path / "base" / "common.yaml", "train: {epochs: 3, batch_size: 8, grad_accum: 2}\n")
    write(tmp_path / "base" / "more.yaml", "train: {batch_size: 4}\n")
    write(tmp_path / "base" / "mid.yaml", "include: [common.yaml, more.yaml]\ntrain: {grad_accum: 3}\n")
    top = write(tmp_path / "top.yaml", "include: base/mid.yaml\ntrain: {epochs: 7}\n"
                "data: {train: t.jsonl, validation: v.jsonl}\n")
    t = load_config(top).train
    assert (t.epochs, t.batch_size, t.grad_accum) == (7, 4, 3)


def test_include_cycles_and_missing_files_are_config_errors(tmp_path):
    write(tmp_path / "a.yaml", "include: b.yaml\n")
    write(tmp_path / "b.yaml", "include: [a.yaml]\n")
    with pytest.raises(enstack.ConfigError, match="include cycle"):
        load_config(tmp_path / "a.yaml")
    write(tmp_path / "c.yaml", "include: nowhere.yaml\n")
    with pytest.raises(enstack.ConfigError, match="nowhere.yaml"):
        load_config(tmp_path / "c.yaml")
    with pytest.raises(enstack.ConfigError, match="missing.yaml.*does not exist"):
        load_config(tmp_path / "missing.yaml")


def test_yaml_syntax_error_names_file_line_and_column(tmp_path):
    bad = write(tmp_path / "bad.yaml", "train:\n  epochs: 3\n  batch_size: [16\nmodel: {}\n")
    with pytest.raises(enstack.ConfigError, match=r"bad\.yaml.*line \d+, column \d+") as info:
        load_config(bad)
    assert isinstance(info.value, enstack.Error)
    dup = write(tmp_path / "dup.yaml", "train:\n  epochs: 3\n  epochs: 4\n")
    with pytest.raises(enstack.ConfigError, match=r"line 3.*duplicate key 'epochs'"):
        load_config(dup)


# ---------------------------------------------------------------- overrides and types


def test_overrides_in_both_forms_parse_types_and_apply_last(tmp_path):
    f = write(tmp_path / "c.yaml", "train: {epochs: 9}\ndata: {train: t.jsonl, validation: v.jsonl}\n")
    c = load_config(f, {"train.epochs": 3, "train.learning_rate": "1e-4", "run.name": "x"})
    assert (c.train.epochs, c.train.learning_rate, c.run.name) == (3, 1e-4, "x")
    c = load_config(f, ["train.epochs=3", "train.learning_rate=2e-5", "data.validation=null",
                        "data.split=[0.8,0.1,0.1]", "train.swa.enabled=true", "run.name=2024"])
    assert isinstance(c.train.epochs, int) and c.train.epochs == 3
    assert c.train.learning_rate == 2e-5 and c.data.split == (0.8, 0.1, 0.1)
    assert c.train.swa.enabled is True and c.run.name == "2024" and c.data.validation is None
    with pytest.raises(enstack.ConfigError, match="key=value"):
        load_config(f, ["train.epochs"])
    assert Config.from_dict(BASE).with_overrides(["train.epochs=2"]).train.epochs == 2


def test_yaml_1_1_float_strings_and_integral_values_are_accepted():
    c = Config.from_dict(nested({"train.learning_rate": "2e-5", "train.weight_decay": 0, "train.epochs": 4.0,
                                 "data.label_columns": "label", "data.label_policy": "class"}))
    assert c.train.learning_rate == 2e-5 and isinstance(c.train.weight_decay, float)
    assert c.train.epochs == 4 and isinstance(c.train.epochs, int)
    assert c.data.label_columns == ("label",)


def test_all_problems_are_reported_at_once_with_dotted_keys_and_suggestions():
    d = nested({"train.lerning_rate": 1e-5, "train.batch_size": 0, "train.epochs": "ten",
                "train.precision": "FP16", "train.max_length": 256, "model.dropout": 1.5,
                "data.label_policy": "binry", "train.early_stopping.patiense": 3, "colour": "blue"})
    with pytest.raises(enstack.ConfigError) as info:
        Config.from_dict(d)
    message = str(info.value)
    assert "9 problems" in message
    for line in ["train.lerning_rate: unknown key; did you mean 'learning_rate'?",
                 "train.batch_size: must be >= 1, got 0",
                 "train.epochs: expected an integer, got 'ten'",
                 "train.precision: must be one of 'auto', 'fp32', 'bf16', 'fp16'; got 'FP16' (did you mean 'fp16'?)",
                 "train.max_length: unknown key here; did you mean 'model.max_length'?",
                 "model.dropout: must be in [0, 1) or null",
                 "data.label_policy: must be one of",
                 "train.early_stopping.patiense: unknown key; did you mean 'patience'?",
                 "colour: unknown key"]:
        assert line in message, line


@pytest.mark.parametrize("dotted, key, fragment", [
    ({"train.batch_size": 0}, "train.batch_size", ">= 1"),
    ({"train.learning_rate": 1.0}, "train.learning_rate", "(0, 1)"),
    ({"train.warmup_ratio": 1.0}, "train.warmup_ratio", "[0, 1)"),
    ({"train.epochs": 0}, "train.epochs", ">= 1"),
    ({"train.grad_accum": 0}, "train.grad_accum", ">= 1"),
    ({"model.max_length": 4}, "model.max_length", "8..4096"),
    ({"train.save_total_limit": 0}, "train.save_total_limit", ">= 1 or null"),
    ({"train.early_stopping.patience": 0}, "train.early_stopping.patience", ">= 1 or null"),
    ({"run.device": "gpu"}, "run.device", "cuda:N"),
    ({"train.swa.start_epoch": 11}, "train.swa.start_epoch", "1..epochs"),
    ({"data.downsample": {"CWE-120": 0}}, "data.downsample.CWE-120", ">= 1"),
    ({"data.downsample": "all"}, "data.downsample", "'paper'"),
])
def test_ranges_and_enums(dotted, key, fragment):
    found = problems(**{k.replace(".", "__"): v for k, v in dotted.items()})
    assert key in found and fragment in found[key], found


# ---------------------------------------------------------------- cross-field rules


def test_steps_strategy_needs_eval_steps_and_save_steps_are_free():
    assert "required with eval_strategy steps" in problems(train__eval_strategy="steps")["train.eval_steps"]
    # Frequent saves with rare evaluations (the Colab setup): best/ is written at evaluation time.
    assert problems(train__eval_strategy="steps", train__eval_steps=50, train__save_steps=5) == {}
    assert problems(train__eval_strategy="steps", train__eval_steps=50, train__save_steps=75,
                    train__early_stopping__patience=2) == {}
    found = problems(train__eval_strategy="steps", train__eval_steps=50, train__save_steps=75,
                     train__metric_for_best=None, train__early_stopping__patience=2)
    assert "train.early_stopping.patience" in found  # patience needs a metric


def test_fp16_is_accepted_on_every_device_where_torch_can_run_it(monkeypatch):
    from enstack.config import validate as _config_validate

    assert problems(train__precision="fp16", run__device="cpu") == {}  # torch >= 2.4: CPU autocast in float16
    monkeypatch.setattr(_config_validate, "cpu_fp16_autocast_available", lambda: False)
    assert "CPU autocast supports float16" in problems(train__precision="fp16", run__device="cpu")["train.precision"]
    for device in ("auto", "cuda", "cuda:1"):
        assert problems(train__precision="fp16", run__device=device) == {}
    assert problems(train__precision="bf16", run__device="cpu") == {}


def test_warmup_ratio_and_steps_are_exclusive():
    assert "set one to 0" in problems(train__warmup_ratio=0.1, train__warmup_steps=100)["train.warmup_steps"]
    assert problems(train__warmup_ratio=0.0, train__warmup_steps=100) == {}


def test_split_ratios_and_the_files_they_replace():
    assert "sum to 1" in problems(data__split=[0.8, 0.1, 0.2], data__validation=None)["data.split"]
    assert "three ratios" in problems(data__split=[0.9, 0.1], data__validation=None)["data.split"]
    assert "must be null when data.split" in problems(data__split=[0.8, 0.1, 0.1])["data.validation"]
    assert problems(data__split=[0.8, 0.1, 0.1], data__validation=None) == {}
    assert "required" in problems(data__train=None)["data.train"]
    assert "required" in problems(data__validation=None)["data.validation"]
    assert "required with data.train: demo" in problems(data__train="demo", data__validation=None)["data.split"]


def test_pickle_needs_trust():
    assert "arbitrary code" in problems(data__format="pickle")["data.trust_pickle"]
    assert "data.trust_pickle" in problems(data__train="train.pkl")
    assert problems(data__format="pickle", data__trust_pickle=True) == {}


def test_labels_agree_with_the_policy():
    assert "5 classes" in problems(model__num_labels=3)["model.num_labels"]
    assert "3 names for 5 classes" in problems(data__label_names=["a", "b", "c"])["data.label_names"]
    assert "one column" in problems(data__label_policy="class")["data.label_columns"]
    assert problems(data__label_policy="binary", model__num_labels=2) == {}


@pytest.mark.parametrize("model_type, positions, pad, limit", [
    ("roberta", 514, 1, 512), ("roberta", 1026, 1, 1024), ("bert", 512, 0, 512)])
def test_max_length_is_limited_by_a_local_model_config(tmp_path, model_type, positions, pad, limit):
    write(tmp_path / "m" / "config.json", json.dumps(
        {"model_type": model_type, "max_position_embeddings": positions, "pad_token_id": pad}))
    model = str(tmp_path / "m")
    assert problems(model__name_or_path=model, model__max_length=limit) == {}
    found = problems(model__name_or_path=model, model__max_length=limit + 1)
    assert f"use at most {limit}" in found["model.max_length"]


def test_max_length_is_limited_for_the_papers_model_ids():
    assert problems(model__name_or_path="microsoft/unixcoder-base", model__max_length=1024) == {}
    assert "at most 512" in problems(model__name_or_path="microsoft/codebert-base",
                                     model__max_length=1024)["model.max_length"]


def test_a_config_json_needs_from_scratch_and_a_tokenizer_kind():
    tiny = str(CONFIGS / "models" / "tiny-roberta.json")
    found = problems(model__name_or_path=tiny)
    assert "model.from_scratch" in found and "model.tokenizer.kind" in found
    assert "required to train a bpe" in problems(model__name_or_path=tiny, model__from_scratch=True,
                                    model__tokenizer={"kind": "bpe"})["model.tokenizer.vocab_size"]
    assert problems(model__name_or_path=tiny, model__from_scratch=True,
                    model__tokenizer={"kind": "bpe", "vocab_size": 1000}) == {}
    assert "does not exist" in problems(model__name_or_path="./no/such/model")["model.name_or_path"]


# ---------------------------------------------------------------- round trip, paths, fingerprint


def test_round_trip_through_dict_and_yaml():
    c = load_config(CONFIGS / "demo.yaml", ["data.downsample={b: 10}", "data.label_names=[a,b,c,d,e]"])
    d = c.to_dict()
    assert isinstance(d["data"]["split"], list) and d["train"]["swa"]["enabled"] is False
    assert Config.from_dict(d) == c
    assert Config.from_dict(yaml.safe_load(c.to_yaml())) == c
    assert str(c) == c.to_yaml() and str(c.train).startswith("epochs: 2")
    assert Config.from_dict(json.loads(json.dumps(d))) == c


def test_relative_paths_resolve_against_the_top_level_file(tmp_path, monkeypatch):
    (tmp_path / "cfg" / "local-model").mkdir(parents=True)
    write(tmp_path / "cfg" / "sub" / "inc.yaml", "run: {output_dir: out}\n")
    top = write(tmp_path / "cfg" / "top.yaml", "include: sub/inc.yaml\n"
                "run: {mirror_dir: ~/mirror}\n"
                "model: {name_or_path: local-model, tokenizer: {path: tok}}\n"
                "data: {train: ../data/t.jsonl, validation: v.jsonl}\n")
    monkeypatch.chdir(tmp_path / "cfg" / "sub")
    c = load_config(top)
    assert c.run.output_dir == str(tmp_path / "cfg" / "out")
    assert c.run.mirror_dir == os.path.expanduser("~/mirror")
    assert c.model.name_or_path == str(tmp_path / "cfg" / "local-model")
    assert c.model.tokenizer.path == str(tmp_path / "cfg" / "tok")
    assert c.data.train == str(tmp_path / "data" / "t.jsonl")
    assert c.data.validation == str(tmp_path / "cfg" / "v.jsonl")
    hub = load_config(top, {"model.name_or_path": "microsoft/unixcoder-base", "data.validation": Path("w.jsonl")})
    assert hub.model.name_or_path == "microsoft/unixcoder-base"  # not a local path: left as an id
    assert hub.data.validation == str(tmp_path / "cfg" / "sub" / "w.jsonl")  # overrides: current directory


def test_fingerprint_is_stable_and_tracks_result_changing_fields():
    d = nested({"train.epochs": 3, "run.seed": 1})
    reordered = {k: dict(reversed(list(v.items()))) for k, v in reversed(list(d.items()))}
    a = Config.from_dict(d)
    assert a.fingerprint() == Config.from_dict(reordered).fingerprint() == Config.from_dict(a.to_dict()).fingerprint()
    assert len(a.fingerprint()) == 64
    assert a.with_overrides({"train.learning_rate": 3e-5}).fingerprint() != a.fingerprint()
    assert a.with_overrides({"run.seed": 2}).fingerprint() != a.fingerprint()
    same = a.with_overrides({"run.output_dir": "/elsewhere", "train.logging_steps": 1, "run.device": "cpu"})
    assert same.fingerprint() == a.fingerprint()


def test_configs_are_immutable():
    c = Config()
    with pytest.raises(AttributeError):
        c.train.epochs = 3  # type: ignore[misc]


def test_label_names_and_log_levels_have_one_definition():
    from enstack import _logging
    from enstack.data import ingest, synthetic

    # The YAML lists every key for reading, so it repeats the default: it must equal it.
    raw = yaml.safe_load((CONFIGS / "defaults.yaml").read_text())
    assert tuple(raw["data"]["label_columns"]) == Config().data.label_columns == ENSTACK5_LABELS
    assert ingest.VDISC_LABELS == synthetic.CLASSES == list(ENSTACK5_LABELS)
    for level in _logging.LOG_LEVELS:
        assert Config.from_dict({"run": {"log_level": level}}, validate=False).run.log_level == level
        enstack.set_log_level(level)
    enstack.set_log_level("info")
    with pytest.raises(enstack.ConfigError, match="log_level"):
        Config.from_dict({"run": {"log_level": "verbose"}}, validate=False)
