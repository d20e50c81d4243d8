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


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = write_mmlu(tmp_path_factory.mktemp("data"))
    return write_mmlu(root, "dev", DEV)


@pytest.fixture(scope="session")
def tiny() -> Loaded:
    return load_model("tiny-random", seed=0)
