"""The one staleness rule on a real (tiny) run: changing each input re-runs exactly the stages it feeds; runs are
locked; a copied run evaluates into the copy; typed config errors name their key."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import write_mmlu, write_tiny_run_config
from introspect import cli
from introspect.errors import UserError
from introspect.locking import locked
from introspect.pipeline import run
from introspect.run_config import load_run_config

OUTPUTS = {  # stage -> the file whose rewrite shows the stage ran
    "sample train": "train/behavior.parquet",
    "label": "train/labels.parquet",
    "train": "train/checkpoints/step_000002/meta.json",
    "sample eval": "eval/m0_behavior.parquet",
    "eval M0": "eval/step_000000/result.json",
    "eval step 2": "eval/step_000002/result.json",
    "baselines": "eval/baselines.json",
}
ALL = set(OUTPUTS)
TRAINED = {"train", "eval step 2", "baselines"}


@pytest.fixture(scope="module")
def base_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("stale")
    path = write_tiny_run_config(root)
    write_mmlu(root / "data", "dev", {"misc": [[f"Dev question {i}?", "w", "x", "y", "z", "ABCD"[i % 4]] for i in range(8)]})
    run(load_run_config(path))
    return path, root / "run"


def _rerun(base_run: tuple[Path, Path], tmp_path: Path, *overrides: str) -> set[str]:
    """Copy the finished run, re-run it with `overrides`, and return the stages that rewrote their output."""
    cfg_path, src = base_run
    copy = tmp_path / "copy"
    shutil.copytree(src, copy)
    before = {k: (copy / v).stat().st_mtime_ns for k, v in OUTPUTS.items()}
    run(load_run_config(cfg_path, [f"run_dir={copy}", *overrides]))
    return {k for k, v in OUTPUTS.items() if (copy / v).stat().st_mtime_ns != before[k]}


@pytest.mark.slow
@pytest.mark.parametrize("overrides, expected", [
    ((), set()),
    (("label_noise=0.5",), {"label"} | TRAINED),
    (("train_n=7",), {"sample train", "label"} | TRAINED),
    (("train_split=dev",), {"sample train", "label"} | TRAINED),
    (("train.lr=0.002",), TRAINED),
    (("train.weights.behavior_kl=0",), TRAINED),
    (("evaluate.max_new_tokens=6",), {"eval M0", "eval step 2", "baselines"}),
    (("evaluate.n_boot=60",), {"eval M0", "eval step 2", "baselines"}),
    (("task_options={format: dot}",), ALL),
    (("precision=bf16",), ALL),
    (("verify_margin=0.5", "precision=bf16"), ALL),
])
def test_each_input_reruns_exactly_what_it_feeds(base_run, tmp_path: Path, overrides, expected) -> None:
    assert _rerun(base_run, tmp_path, *overrides) == expected


@pytest.mark.slow
def test_changed_verify_margin_alone_reruns_bf16_sampling(base_run, tmp_path: Path) -> None:
    cfg_path, _ = base_run
    first = _rerun(base_run, tmp_path, "precision=bf16")
    assert first == ALL
    again = tmp_path / "copy"
    before = (again / OUTPUTS["sample train"]).stat().st_mtime_ns
    run(load_run_config(cfg_path, [f"run_dir={again}", "precision=bf16", "verify_margin=0.3"]))
    assert (again / OUTPUTS["sample train"]).stat().st_mtime_ns != before


def test_evaluate_on_a_copied_run_writes_into_the_copy(base_run, tmp_path: Path) -> None:
    _, src = base_run
    copy = tmp_path / "copied"
    shutil.copytree(src, copy)
    (copy / "eval" / "step_000002" / "result.json").unlink()
    original = (src / "eval" / "results.json").stat().st_mtime_ns
    assert cli.main(["evaluate", str(copy)]) == 0
    assert (copy / "eval" / "step_000002" / "result.json").is_file()
    assert (src / "eval" / "results.json").stat().st_mtime_ns == original


def test_second_process_on_a_locked_run_dir_exits_2(base_run, capsys: pytest.CaptureFixture[str]) -> None:
    cfg_path, src = base_run
    with locked(src):
        assert cli.main(["run", str(cfg_path)]) == 2
        assert cli.main(["evaluate", str(src)]) == 2
    err = capsys.readouterr().err
    assert "is in use by another introspect process" in err and "pid" in err


def test_killed_write_leftovers_are_removed(base_run, tmp_path: Path) -> None:
    cfg_path, src = base_run
    copy = tmp_path / "c"
    shutil.copytree(src, copy)
    stale = [copy / "train" / ".labels.parquet.abc.tmp", copy / "train" / "checkpoints" / ".step_000004.tmp"]
    stale[0].write_text("half")
    stale[1].mkdir()
    run(load_run_config(cfg_path, [f"run_dir={copy}"]))
    assert not any(p.exists() for p in stale)


def test_wrong_type_names_the_dotted_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("run_dir: r\ntrain: {steps: ten}\n")
    assert cli.main(["run", str(cfg)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "config key train.steps must be int, got 'ten'" in err
    cfg.write_text("run_dir: r\nevaluate: {n: 2.5}\n")
    with pytest.raises(UserError, match="evaluate.n must be int"):
        load_run_config(cfg)
    cfg.write_text("run_dir: r\ntrain: {weights: {behavior_kl: high}}\n")
    with pytest.raises(UserError, match="train.weights.behavior_kl must be float"):
        load_run_config(cfg)
    cfg.write_text("run_dir: r\ntrain: {lora: {rnk: 3}}\n")
    with pytest.raises(UserError, match="unknown config key train.lora.rnk"):
        load_run_config(cfg)


def test_set_reaches_nested_keys(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("run_dir: r\ntrain: {weights: {explanation: 1.0, behavior_kl: 1.0}}\n")
    rc = load_run_config(cfg, ["train.weights.behavior_kl=0", "evaluate.n=7", "selection.min_margin=0.5"])
    assert rc.train_config().weights.behavior_kl == 0 and rc.train_config().weights.explanation == 1.0
    assert rc.evaluate.n == 7 and rc.selection.min_margin == 0.5
    with pytest.raises(UserError, match="--set takes KEY=VALUE"):
        load_run_config(cfg, ["train.steps"])


def test_oversized_sizes_fail_before_any_model_work(base_run, tmp_path: Path) -> None:
    cfg_path, _ = base_run
    with pytest.raises(UserError, match="evaluate.n .* asks for 60 hint-mmlu pairs but split 'test' has 6"):
        run(load_run_config(cfg_path, [f"run_dir={tmp_path / 'new'}", "evaluate.n=60"]))
    assert not (tmp_path / "new" / "train").exists()


def test_results_carry_the_validity_verdict(base_run) -> None:
    _, src = base_run
    res = json.loads((src / "eval" / "results.json").read_text())
    v = res["checkpoints"]["2"]["verdict"]
    assert v["valid"] is False and any("agreement" in f or "differ" in f for f in v["failures"])
    assert "not a valid test" in (src / "summary.md").read_text()
    assert "Not a valid test of coupling" in (src / "report.html").read_text()


@pytest.mark.slow
def test_run_prints_stage_lines(base_run, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _rerun(base_run, tmp_path, "train_n=7")
    out = capsys.readouterr().out
    names = ["sample", "label", "train", "evaluate", "report"]
    at = [out.index(f"[stage {k}/5 {name}]") for k, name in enumerate(names, 1)]
    assert at == sorted(at)


def test_run_estimate_from_the_sampling_speed(base_run, monkeypatch: pytest.MonkeyPatch) -> None:
    from introspect import progress

    cfg = load_run_config(base_run[0], ["selection.pool=100", "train.steps=10", "evaluate.n=20"])
    units = progress.run_units(cfg)
    assert units["sample"] == 200 and units["label"] == 0
    assert units["train"] == 10 * 8 * progress.PRICE["train_example"]
    clock = iter([0.0, 0.0, 20.0, 20.0])  # start of run, start of sampling, end of sampling, estimate
    monkeypatch.setattr(progress.time, "time", lambda: next(clock))
    lines: list[str] = []
    p = progress.RunProgress(units, say=lines.append)
    p.start("sample")
    p.done("sample", prompts=200)  # 0.1 s per prompt on this pretend machine
    left = sum(v for k, v in units.items() if k != "sample") * 0.1
    assert lines[0] == "[stage 1/5 sample]"
    assert f"~{left / 60:.0f} min left" in lines[1] and "10.0 prompts/s" in lines[1]
    p.done("label")  # the estimate is printed once
    assert len(lines) == 2


@pytest.mark.parametrize("command", [["train", "c.yaml"], ["run", "c.yaml"], ["demo"]])
def test_repeated_set_flags_all_apply(command: list[str]) -> None:
    """`--set a=1 --set b=2 c=3` keeps all three (argparse's default would keep only the last --set)."""
    from introspect.cli import build_parser

    args = build_parser().parse_args([*command, "--set", "train.steps=24", "--set", "seed=1", "train.lr=0.1"])
    assert args.set == ["train.steps=24", "seed=1", "train.lr=0.1"]


def test_inputs_added_later_enter_only_away_from_what_earlier_outputs_had() -> None:
    from introspect import provenance

    earlier = {"device": "cpu", "merged_adapter": False, "joint": False}
    assert provenance.added_later("evaluation", dict(earlier), earlier) == {}
    assert provenance.added_later("evaluation", {**earlier, "joint": True}, earlier) == {"joint": True}
    with pytest.raises(ValueError, match="must name"):  # a new input must be listed in provenance.ADDED_LATER
        provenance.added_later("evaluation", {**earlier, "new_key": 1}, earlier)
