"""Device setting: resolution and errors; the CPU path is the default one; behaviour sampling sharded over two CPU
processes (`accelerate launch`, gloo) equals single-process sampling."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from introspect import devices
from introspect import tables as tbl
from introspect.errors import UserError


def test_resolve_device() -> None:
    assert devices.resolve("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    assert devices.resolve("CPU") == "cpu"
    with pytest.raises(UserError, match="unknown device 'tpu'"):
        devices.resolve("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="no CUDA GPU"):
            devices.resolve("cuda:0")


def test_models_load_where_asked(tiny) -> None:
    from introspect.models import load_model

    m = load_model("tiny-random", device="cpu")
    assert devices.of(m.model).type == "cpu" and m.weights_hash == tiny.weights_hash


def test_no_hard_coded_cpu_in_the_package() -> None:
    src = Path(__file__).resolve().parents[1] / "src" / "introspect"
    bad = [f"{p.name}:{i}" for p in src.rglob("*.py") for i, line in enumerate(p.read_text().splitlines(), 1)
           if "cpu=True" in line or 'autocast("cpu"' in line or "autocast('cpu'" in line]
    assert bad == []


@pytest.mark.slow
def test_sharded_sampling_equals_single_process(data_dir: Path, tmp_path: Path) -> None:
    args = ["sample", "--model", "tiny-random", "--split", "val", "--n", "8", "--precision", "fp32", "--device", "cpu",
            "--data-root", str(data_dir), "--batch-size", "2"]
    one = subprocess.run([sys.executable, "-m", "introspect.cli", *args, "--out", str(tmp_path / "one.parquet")],
                         capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-2000:]
    accelerate = Path(sys.executable).parent / "accelerate"
    config = Path(__file__).resolve().parents[1] / "configs" / "accelerate" / "cpu2.yaml"  # the shipped config
    two = subprocess.run([str(accelerate), "launch", "--config_file", str(config), "-m", "introspect.cli", *args,
                          "--out", str(tmp_path / "two.parquet")], capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    assert "process 1 of 2" in two.stdout and "process 2 of 2" in two.stdout
    a, _ = tbl.read_table(tmp_path / "one.parquet")
    b, _ = tbl.read_table(tmp_path / "two.parquet")
    assert a["pair_id"].tolist() == b["pair_id"].tolist() and len(a) == 8
    for col in ("answer", "answer_without", "changed"):
        assert a[col].tolist() == b[col].tolist()
    np.testing.assert_allclose(np.array(a["probs"].tolist()), np.array(b["probs"].tolist()), atol=1e-5)
    np.testing.assert_allclose(np.array(a["probs_without"].tolist()), np.array(b["probs_without"].tolist()), atol=1e-5)


@pytest.mark.slow
def test_sharded_evaluation_equals_single_process(tmp_path: Path) -> None:
    """`accelerate launch ... evaluate RUN` over two CPU processes scores the same explanations as one process."""
    import json
    import shutil

    import yaml

    from conftest import write_mmlu
    from introspect.pipeline import run
    from introspect.run_config import load_run_config

    data = write_mmlu(tmp_path / "data")
    write_mmlu(data, "test", {"misc": [[f"Test question {i}?", "a", "b", "c", "d", "ABCD"[i % 4]] for i in range(7)]})
    cfg = {"run_dir": str(tmp_path / "run"), "model": "tiny-random", "data_root": str(data), "train_split": "val",
           "train_n": 8, "precision": "fp32", "device": "cpu",
           "train": {"steps": 2, "checkpoint_every": 2, "probe_every": 0, "lr": 1e-2},
           "evaluate": {"split": "test", "n": 7, "n_boot": 50, "max_new_tokens": 8, "baselines": False}}
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    run(load_run_config(tmp_path / "cfg.yaml"))
    copy = tmp_path / "copy"
    shutil.copytree(tmp_path / "run", copy)
    for d in copy.glob("eval/step_*"):
        shutil.rmtree(d)
    (copy / "eval" / "results.json").unlink()
    config = Path(__file__).resolve().parents[1] / "configs" / "accelerate" / "cpu2.yaml"
    two = subprocess.run([str(Path(sys.executable).parent / "accelerate"), "launch", "--config_file", str(config), "-m",
                          "introspect.cli", "evaluate", str(copy)], capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    a = json.loads((tmp_path / "run" / "eval" / "results.json").read_text())
    b = json.loads((copy / "eval" / "results.json").read_text())
    assert sorted(a["checkpoints"]) == sorted(b["checkpoints"]) == ["0", "2"]
    for step in a["checkpoints"]:
        for key in ("self", "orig"):
            assert a["checkpoints"][step][key]["exact_match"] == b["checkpoints"][step][key]["exact_match"]
        assert a["checkpoints"][step]["agreement"] == b["checkpoints"][step]["agreement"]
        ia, _ = tbl.read_table(tmp_path / "run" / "eval" / f"step_{int(step):06d}" / "items.parquet")
        ib, _ = tbl.read_table(copy / "eval" / f"step_{int(step):06d}" / "items.parquet")
        assert ia["text"].tolist() == ib["text"].tolist() and ia["pair_id"].tolist() == ib["pair_id"].tolist()
