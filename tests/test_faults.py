"""Faults and bad input, tried as a careful user and an adversary would: every writer locks, a rejected run leaves
the run directory as it was, users' files with repeated ids are refused, optimiser values are checked where they are
defined, a full disk is one line and resumes bit-identically, a truncated checkpoint is not current."""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

import pytest
import yaml

from conftest import write_tiny_run_config
from introspect import checkpoints, cli
from introspect.errors import UserError
from introspect.files import atomic_path
from introspect.locking import locked
from introspect.pipeline import run
from introspect.run_config import load_run_config
from introspect.tasks import get_task
from introspect.typed import to_dict
from introspect.train import TrainConfig


@pytest.fixture(scope="module")
def tables(tiny_tables: tuple[Path, Path]) -> tuple[Path, Path]:
    return tiny_tables


def _config(tables: tuple[Path, Path], out: Path, path: Path, **kw) -> Path:
    cfg = TrainConfig(behavior=str(tables[0]), labels=str(tables[1]), out_dir=str(out), model="tiny-random", steps=4,
                      lr=5e-3, warmup_steps=0, schedule="constant", explanation_per_step=4, behavior_per_step=4,
                      checkpoint_every=2, probe_every=0, precision="fp32")
    path.write_text(yaml.safe_dump({**to_dict(cfg), **kw}))
    return path


def test_a_second_trainer_on_one_out_dir_is_refused(tables, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = _config(tables, tmp_path / "out", tmp_path / "c.yaml")
    with locked(tmp_path / "out"):  # the first trainer, still running
        assert cli.main(["train", str(cfg)]) == 2
    assert "is in use by another introspect process" in capsys.readouterr().err
    assert not (tmp_path / "out" / "checkpoints").exists()


@pytest.mark.parametrize("key, value, message", [
    ("max_grad_norm", -1, "max_grad_norm must be > 0"),
    ("warmup_steps", -5, "warmup_steps must be >= 0"),
    ("weight_decay", -1, "weight_decay must be >= 0"),
    ("seed", -3, "seed must be >= 0"),
    ("weights", {"explanation": 0, "behavior_kl": 0}, "every loss weight is 0"),
])
def test_optimiser_values_are_checked_before_training(tables, tmp_path: Path, key, value, message,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    cfg = _config(tables, tmp_path / "out", tmp_path / "c.yaml", **{key: value})
    assert cli.main(["train", str(cfg)]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out" / "metrics.jsonl").exists()


def test_a_lora_target_that_matches_nothing_names_the_modules(tables, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    cfg = _config(tables, tmp_path / "out", tmp_path / "c.yaml", lora={"target_modules": ["qproj"]})
    assert cli.main(["train", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "matches no module" in err and "q_proj" in err


def test_a_key_written_twice_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("run_dir: x\ntrain:\n  lr: 1.0e-4\n  steps: 3\n  lr: 0.5\n")
    assert cli.main(["run", str(cfg)]) == 2
    assert "c.yaml:5: config key 'lr' is written twice (first on line 3)" in capsys.readouterr().err


@pytest.mark.slow
def test_disk_full_while_saving_is_one_line_and_resumes_bit_identically(tables, tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    full = _config(tables, tmp_path / "full", tmp_path / "full.yaml")
    assert cli.main(["train", str(full)]) == 0
    cfg = _config(tables, tmp_path / "out", tmp_path / "c.yaml")
    real = checkpoints.torch.save

    def no_space(obj, f, *a, **k):
        if "step_000004" in str(f):
            raise OSError(errno.ENOSPC, "No space left on device", str(f))
        return real(obj, f, *a, **k)

    monkeypatch.setattr(checkpoints.torch, "save", no_space)
    capsys.readouterr()
    assert cli.main(["train", str(cfg)]) == 2
    stderr = capsys.readouterr().err
    err = [ln for ln in stderr.splitlines() if ln.startswith("introspect")]  # the rest is the progress bar
    assert "Traceback" not in stderr and len(err) == 1
    assert "No space left on device: free disk space" in err[0] and "step_000004" in err[0]
    ck = tmp_path / "out" / "checkpoints"
    assert [p.name for p in ck.iterdir()] == ["step_000002"]  # no half-written .tmp left
    monkeypatch.setattr(checkpoints.torch, "save", real)  # space freed
    assert cli.main(["train", str(cfg), "--resume"]) == 0
    assert (checkpoints.checkpoint_hash(ck / "step_000004", "")
            == checkpoints.checkpoint_hash(tmp_path / "full" / "checkpoints" / "step_000004", ""))


def test_a_truncated_checkpoint_is_not_current(tables, tmp_path: Path) -> None:
    cfg = _config(tables, tmp_path / "out", tmp_path / "c.yaml")
    assert cli.main(["train", str(cfg)]) == 0
    ck = tmp_path / "out" / "checkpoints"
    adapter = ck / "step_000004" / "adapter_model.safetensors"
    adapter.write_bytes(adapter.read_bytes()[:100])
    assert [s for s, _ in checkpoints.complete(ck)] == [2]
    with pytest.raises(UserError, match="truncated or corrupt"):
        checkpoints._load(adapter)


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("finished")
    run(load_run_config(write_tiny_run_config(root, evaluate={"n_boot": 20, "max_new_tokens": 6, "baselines": False})))
    return root / "cfg.yaml", root / "run"


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_rejected_run_leaves_a_finished_run_byte_identical(finished, capsys: pytest.CaptureFixture[str]) -> None:
    cfg, run_dir = finished
    before = _snapshot(run_dir)
    assert cli.main(["run", str(cfg), "--set", f"run_dir={run_dir}", "evaluate.n=5000", "train.lr=0.5"]) == 2
    assert "evaluate.n" in capsys.readouterr().err
    assert _snapshot(run_dir) == before


def test_report_waits_for_no_run(finished, capsys: pytest.CaptureFixture[str]) -> None:
    _, run_dir = finished
    with locked(run_dir):
        assert cli.main(["report", str(run_dir)]) == 2
    assert "in use by another introspect process" in capsys.readouterr().err


@pytest.mark.parametrize("name, text, message", [
    ("dup.csv", "id,request,label\nr1,Help me a,benign\nr2,Help me b,harmful\nr1,Help me c,harmful\n",
     "dup.csv:4: id 'r1' is used again (first on line 2)"),
    ("num.jsonl", "".join(json.dumps({"id": 7, "request": f"req {i}", "label": "benign"}) + "\n" for i in range(3)),
     "num.jsonl:2: id '7' is used again (first on line 1)"),
    ("broken.jsonl", json.dumps({"id": 1, "request": "a", "label": "benign"}) + "\n\n{\"id\": 2, \"request\": \n",
     "broken.jsonl:3: not valid JSON"),
])
def test_users_files_with_repeated_ids_or_broken_lines_are_refused(data_dir: Path, tmp_path: Path, name, text,
                                                                   message) -> None:
    f = tmp_path / name
    f.write_text(text)
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        get_task("refusal", file=str(f)).pairs(data_dir, "all", 2, 0)


def test_bom_and_long_fields_are_read(data_dir: Path, tmp_path: Path) -> None:
    f = tmp_path / "bom.csv"
    f.write_bytes("\ufeffid,request,label\n".encode() + b"a,short one,benign\nb," + b"x" * 200_000 + b",harmful\n"
                  + b"c,another,harmful\n")
    task = get_task("refusal", file=str(f))
    assert task.available(data_dir, "all") == 2  # the 200,000-character request is dropped by max_chars, not a crash
    assert task.too_long == 1


def test_score_json_is_valid_json_and_n_boot_is_checked(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gold, pred = tmp_path / "g.jsonl", tmp_path / "p.jsonl"
    gold.write_text(json.dumps({"pair_id": "a", "changed": False, "letter": "A"}) + "\n")
    pred.write_text(json.dumps({"pair_id": "a", "text": "nothing parseable"}) + "\n")
    assert cli.main(["score", "--gold", str(gold), "--pred", str(pred), "--json", "--n-boot", "10"]) == 0
    parsed = json.loads(capsys.readouterr().out)  # no bare NaN: undefined metrics are null
    assert parsed["has_changed_f1"]["value"] is None or isinstance(parsed["has_changed_f1"]["value"], float)
    assert cli.main(["score", "--gold", str(gold), "--pred", str(pred), "--n-boot", "0"]) == 2
    assert "--n-boot must be >= 1" in capsys.readouterr().err


def test_os_faults_are_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                capsys: pytest.CaptureFixture[str]) -> None:
    def read_only(args):
        raise OSError(errno.EROFS, "Read-only file system", "/runs/demo/report.html")

    monkeypatch.setattr(cli, "cmd_report", read_only)
    assert cli.main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["introspect report: error: /runs/demo/report.html: Read-only file system: the folder is read-only: "
                   "choose a writable run directory (config key run_dir / flag --out)"]

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "cmd_report", interrupted)
    assert cli.main(["report", str(tmp_path)]) == 130
    assert "interrupted" in capsys.readouterr().err


def test_written_files_follow_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        with atomic_path(tmp_path / "f.json") as tmp:
            tmp.write_text("{}")
    finally:
        os.umask(old)
    assert (tmp_path / "f.json").stat().st_mode & 0o777 == 0o644
    shutil.rmtree(tmp_path)


def test_a_task_option_of_the_wrong_type_is_named() -> None:
    with pytest.raises(UserError, match=r"task option min_chars of 'aita' takes a int \(default 50\), got 'abc'"):
        get_task("aita", min_chars="abc")
    assert get_task("aita", min_chars=20).min_chars == 20
    with pytest.raises(UserError, match="takes a int"):
        get_task("refusal", max_chars=True)


@pytest.mark.slow
def test_sigint_during_a_run_is_one_line_and_the_run_resumes(finished, tmp_path: Path) -> None:
    import signal
    import subprocess
    import sys
    import time

    cfg, _ = finished
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "introspect.cli", "run", str(cfg), "--set", f"run_dir={run_dir}",
           "train.steps=100000", "train.checkpoint_every=5"]
    # a job started in the background of a non-interactive shell (as CI may start us) inherits SIGINT ignored, and
    # Python then installs no KeyboardInterrupt handler: give the child the default disposition, as a terminal would
    log = open(tmp_path / "stdout.log", "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 300
    while time.time() < deadline and not (run_dir / "train" / "checkpoints" / "step_000005").is_dir():
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    log.close()
    assert proc.returncode == 130 and "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.startswith("introspect")]
    assert lines == ["introspect run: interrupted. Finished stages and saved checkpoints are kept: run the same "
                     "command again to resume."]
    assert checkpoints.complete(run_dir / "train" / "checkpoints")  # what was saved is still there, complete


def test_a_run_rejected_for_its_lora_targets_writes_nothing(finished, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    cfg, _ = finished
    assert cli.main(["run", str(cfg), "--set", f"run_dir={tmp_path / 'new'}", "train.lora.target_modules=[foo]"]) == 2
    assert "matches no module of tiny-random" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()


@pytest.mark.slow
def test_a_truncated_last_checkpoint_retrains_from_scratch(finished, tmp_path: Path) -> None:
    cfg, src = finished
    run_dir = tmp_path / "run"
    shutil.copytree(src, run_dir)
    ck = run_dir / "train" / "checkpoints" / "step_000002"
    good = checkpoints.checkpoint_hash(ck, "")
    (ck / "adapter_model.safetensors").write_bytes(b"\0" * 10)
    assert cli.main(["run", str(cfg), "--set", f"run_dir={run_dir}"]) == 0
    assert checkpoints.checkpoint_hash(ck, "") == good  # re-made, same seed, same numbers


@pytest.mark.slow
def test_a_same_size_corrupted_adapter_is_refused_when_loaded(tables, tmp_path: Path) -> None:
    cfg = _config(tables, tmp_path / "out", tmp_path / "c.yaml")
    assert cli.main(["train", str(cfg)]) == 0
    ck = tmp_path / "out" / "checkpoints" / "step_000004"
    adapter = ck / "adapter_model.safetensors"
    raw = bytearray(adapter.read_bytes())
    raw[-1] ^= 0xFF  # one flipped byte: same size, different content
    adapter.write_bytes(bytes(raw))
    assert checkpoints.intact(ck) and not checkpoints.intact(ck, deep=True)
    from introspect.models import load_model

    with pytest.raises(UserError, match="changed"):
        with checkpoints.applied(load_model("tiny-random"), ck, "lora"):
            pass
