"""The run config's train section is a TrainConfig: typed where it is read, the keys the run owns refused there,
run_config.json round-trips (and the older partial form still loads)."""

import json

import pytest

from introspect.errors import UserError
from introspect.run_config import RUN_SETS, config_of_run, load_run_config, stored
from introspect.train.config import TrainConfig


def write(tmp_path, train):
    path = tmp_path / "run.yaml"
    path.write_text(json.dumps({"run_dir": str(tmp_path / "run"), "task": "hint-mmlu", "train": train}))
    return path


def test_train_section_is_typed_and_filled_by_the_run(tmp_path):
    cfg = load_run_config(write(tmp_path, {"steps": 7, "weights": {"behavior_kl": 0.3}}), ["seed=5"])
    assert isinstance(cfg.train, TrainConfig) and cfg.train.steps == 7 and cfg.train.weights.behavior_kl == 0.3
    tc = cfg.train_config()
    assert tc.seed == 5 and tc.out_dir == str(tmp_path / "run" / "train") and tc.lr == TrainConfig.lr


@pytest.mark.parametrize("key, value", [("seed", 3), ("model", "x"), ("precision", "fp32")])
def test_keys_the_run_sets_are_refused_in_the_train_section(tmp_path, key, value):
    with pytest.raises(UserError, match=f"config key train.{key} is set by the run"):
        load_run_config(write(tmp_path, {key: value}))


def test_a_wrong_type_names_the_dotted_key(tmp_path):
    with pytest.raises(UserError, match="train.steps"):
        load_run_config(write(tmp_path, {"steps": "many"}))


def test_run_config_json_round_trips_and_the_older_form_loads(tmp_path):
    cfg = load_run_config(write(tmp_path, {"steps": 7, "monitor": {"every": 2}}), ["monitor_split=dev"])
    run = tmp_path / "run"
    run.mkdir()
    data = stored(cfg)
    assert not set(RUN_SETS) & set(data["train"])
    (run / "run_config.json").write_text(json.dumps(data))
    again = config_of_run(run)
    assert again.train == cfg.train and again.train_config() == cfg.train_config()
    assert again.train_config().monitor.pairs.endswith("monitor_behavior.parquet")
    data["train"] = {"steps": 7, "monitor": {"every": 2}}  # written before the section was typed: only the keys set
    (run / "run_config.json").write_text(json.dumps(data))
    assert config_of_run(run).train_config() == cfg.train_config()
