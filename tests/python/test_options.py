"""The native trainer's options and the config schema describe one set of options.

The C++ defaults (TrainerOptions) must equal what the config's defaults translate to,
and the two validators (the config's, and TrainerOptions::validate / from_json) must
give the same verdict on the same values, so neither can drift from the other.
"""

from __future__ import annotations

import pytest

import enstack
from enstack._C import train as _train
from enstack.config import trainer_options

# Options that describe the run, not a default: where it writes, its fingerprint and classes.
RUN_SPECIFIC = {"output_dir", "config_fingerprint", "label_names"}


def defaults():
    return enstack.load_config("configs/defaults.yaml")


def native(cfg):
    return trainer_options(cfg, "cpu", 1, ["a", "b"])


def test_the_cpp_defaults_are_the_config_defaults():
    ours = _train.trainer_options(native(defaults()))
    theirs = _train.default_trainer_options()
    assert set(ours) == set(theirs)
    differing = {k: (ours[k], theirs[k]) for k in ours if k not in RUN_SPECIFIC and ours[k] != theirs[k]}
    assert differing == {}


def test_off_is_explicit_not_a_sentinel():
    cfg = enstack.load_config("configs/defaults.yaml", overrides={
        "train.save_total_limit": None, "train.metric_for_best": None, "train.save_minutes": None})
    options = native(cfg)
    assert options["save_total_limit"] is None and options["metric_for_best"] is None
    read = _train.trainer_options(options)
    assert read["save_total_limit"] is None and read["metric_for_best"] is None and read["save_minutes"] is None


def test_unknown_option_keys_are_refused():
    options = dict(native(defaults()), learning_rat=0.1)
    with pytest.raises(enstack.ConfigError, match="unknown training option 'learning_rat'"):
        _train.trainer_options(options)


# (config key, value, option key): values each validator must refuse, and one each must accept.
BAD = [
    ("train.epochs", 0, "epochs"),
    ("train.batch_size", 0, "batch_size"),
    ("train.grad_accum", 0, "grad_accum"),
    ("train.learning_rate", 0.0, "learning_rate"),
    ("train.learning_rate", 1.5, "learning_rate"),
    ("train.precision", "fp8", "precision"),
    ("train.save_total_limit", 0, "save_total_limit"),
    ("train.save_minutes", -1.0, "save_minutes"),
    ("train.early_stopping.patience", -1, "patience"),
    ("train.best_model_dtype", "bf16", "best_model_dtype"),
    ("train.swa.lr", 1.5, "swa_lr"),
    ("train.loss_scale", 0.0, "loss_scale"),
    ("run.mirror_lease_seconds", 0.0, "mirror_lease_seconds"),
    ("train.epochs", "three", "epochs"),
]
GOOD = [
    ("train.epochs", 3, "epochs"),
    ("train.batch_size", 4, "batch_size"),
    ("train.save_total_limit", 1, "save_total_limit"),
    ("train.swa.lr", 0.01, "swa_lr"),
]


def verdicts(key, value, option):
    try:
        enstack.load_config("configs/defaults.yaml", overrides={key: value})
        config_ok = True
    except enstack.ConfigError:
        config_ok = False
    try:
        _train.trainer_options(dict(native(defaults()), **{option: value}))
        native_ok = True
    except enstack.ConfigError:
        native_ok = False
    return config_ok, native_ok


@pytest.mark.parametrize("key, value, option", BAD, ids=[f"{k}={v}" for k, v, _ in BAD])
def test_both_validators_refuse_the_same_bad_value(key, value, option):
    assert verdicts(key, value, option) == (False, False)


@pytest.mark.parametrize("key, value, option", GOOD, ids=[f"{k}={v}" for k, v, _ in GOOD])
def test_both_validators_accept_the_same_good_value(key, value, option):
    assert verdicts(key, value, option) == (True, True)
