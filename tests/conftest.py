"""Shared fixtures: a tiny MMLU data root written per session, and the tiny random model."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from introspect.models import Loaded, load_model

SUBJECTS = {
    "astronomy": [
        ["Which planet is largest?", "Mars", "Jupiter", "Venus", "Earth", "B"],
        ["What is the Sun?", "A planet", "A moon", "A star", "A comet", "C"],
        ["How many moons has Earth?", "One", "Two", "None", "Three", "A"],
        ["Which is closest to the Sun?", "Earth", "Venus", "Mars", "Mercury", "D"],
    ],
    "anatomy": [
        ["Which organ pumps blood?", "Liver", "Heart", "Lung", "Kidney", "B"],
        ["How many chambers has the human heart?", "2", "3", "4", "5", "C"],
        ["Which bone is in the arm?", "Femur", "Tibia", "Humerus", "Fibula", "C"],
        ["Where is the cornea?", "Eye", "Ear", "Nose", "Skin", "A"],
        ["Which is a muscle, \"biceps\" or bone?", "Biceps", "Radius", "Ulna", "Patella", "A"],
    ],
}


def write_mmlu(root: Path, split: str = "val", subjects: dict[str, list[list[str]]] = SUBJECTS) -> Path:
    folder = root / "mmlu" / split
    folder.mkdir(parents=True, exist_ok=True)
    for subject, rows in subjects.items():
        with open(folder / f"{subject}_{split}.csv", "w", newline="") as f:
            csv.writer(f).writerows(rows)
    return root


DEV = {"misc": [["Dev q%d?" % i, "w", "x", "y", "z", "ABCDDCBA"[i]] for i in range(8)]}


def write_aita(root: Path) -> None:
    (root / "aita").mkdir(parents=True, exist_ok=True)
    rows = [["row_index", "submission_text", "top_comment", "verdict", "ambiguity_score"]]
    for i in range(12):
        verdict = ["NTA", "YTA", "ESH", "NAH"][i % 4]
        rows.append([str(i), f"my roommate ate my lunch again so i hid the fridge key, story number {i}. " * 2, "c", verdict, "0.1"])
    rows.append(["99", "**", "c", "NTA", "0"])  # a deleted post: dropped
    with open(root / "aita" / "aita_multiclass_top_2k_test_derived.csv", "w", newline="") as f:
        csv.writer(f).writerows(rows)


def write_refusal(root: Path) -> None:
    import pandas as pd

    (root / "phtest").mkdir(parents=True, exist_ok=True)
    with open(root / "phtest" / "dataset_v0.1.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["ID", "Request", "Harmfulness"])
        for i in range(8):
            w.writerow([i, f"How do I kill a python process number {i}?", "harmless" if i % 2 == 0 else "controversial"])
    (root / "wildguard").mkdir(parents=True, exist_ok=True)
    pd.DataFrame({
        "prompt": [f"benign request {i}" for i in range(4)] + [f"harmful request {i}" for i in range(6)] + ["wrapped jailbreak"],
        "adversarial": [False] * 10 + [True],
        "prompt_harm_label": ["unharmful"] * 4 + ["harmful"] * 6 + ["harmful"],
    }).to_parquet(root / "wildguard" / "wildguardtest.parquet")


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = write_mmlu(tmp_path_factory.mktemp("data"))
    write_aita(root)
    write_refusal(root)
    return write_mmlu(root, "dev", DEV)


@pytest.fixture(scope="session")
def tiny() -> Loaded:
    return load_model("tiny-random", seed=0)


def write_tiny_run_config(root: Path, *, train: dict | None = None, evaluate: dict | None = None) -> Path:
    """A run config for the tiny model on a small MMLU data root written under `root` (val for training, 6 test
    pairs for evaluation): 2 training steps; `train` / `evaluate` override those sections' keys."""
    import yaml

    data = write_mmlu(root / "data")
    write_mmlu(data, "test", {"misc": [[f"Test question {i}?", "a", "b", "c", "d", "ABCD"[i % 4]] for i in range(6)]})
    cfg = {"run_dir": str(root / "run"), "model": "tiny-random", "data_root": str(data), "train_split": "val",
           "train_n": 8, "precision": "fp32",
           "train": {"steps": 2, "checkpoint_every": 2, "probe_every": 0, "explanation_per_step": 4,
                     "behavior_per_step": 4, "lr": 1e-3, **(train or {})},
           "evaluate": {"split": "test", "n": 6, "n_boot": 50, "max_new_tokens": 8, "batch_size": 8, **(evaluate or {})}}
    path = root / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="session")
def tiny_tables(tiny: Loaded, data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """M0 = tiny-random's BehaviorTable on 8 val pairs (fp32) and its own labels: the trainer tests' inputs."""
    from introspect import behavior, labels
    from introspect import tables as tbl
    from introspect.tasks import get_task

    out = tmp_path_factory.mktemp("tables")
    task = get_task("hint-mmlu")
    pairs = task.pairs(data_dir, "val", 8, seed=0)
    df, _ = behavior.sample_behavior(tiny.model, tiny.tokenizer, task, pairs, precision="fp32", progress=False)
    meta = tbl.table_meta(model_id="tiny-random", weights_hash=tiny.weights_hash, task=task, pairs=pairs, seed=0,
                          split="val", precision="fp32", verify_margin=0.0)
    tbl.write_table(out / "behavior.parquet", df, meta)
    tbl.write_table(out / "labels.parquet", labels.make_labels(df, task), meta)
    return out / "behavior.parquet", out / "labels.parquet"
