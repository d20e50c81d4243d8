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
