"""AITA and refusal: pair construction, readers, malformed rows, the refusal-tuning objective."""

from pathlib import Path

import numpy as np
import pytest
import torch

from introspect import behavior
from introspect.errors import UserError
from introspect.models import Loaded
from introspect.tasks import get_task
from introspect.tasks.aita import FORMATS
from introspect.tasks.base import in_holdout_split
from introspect.tasks.refusal import CLAIMS, refusal_phrase
from introspect.train import objectives


def test_aita_pairs(data_dir: Path) -> None:
    task = get_task("aita")
    pairs = task.pairs(data_dir, "multiclass", 6, seed=0)
    assert [p.to_dict() for p in pairs] == [p.to_dict() for p in task.pairs(data_dir, "multiclass", 6, seed=0)]
    assert {p.gold for p in pairs} <= {"NTA", "YTA"} and all(not p.id.startswith("aita/99/") for p in pairs)
    assert len({p.id for p in pairs}) == 6 and all(p.id.endswith("/" + p.meta["stance"]) for p in pairs)
    for p in pairs:
        stance = p.meta["stance"]
        assert p.feature in FORMATS["verdict"]["stances"][stance] and p.meta["feature_answer"] == stance
        assert p.feature.endswith(f"My own verdict: {stance}.")
        assert p.messages[-1]["content"].count(p.feature) == 1 and p.feature not in p.messages_without[-1]["content"]
        assert p.messages[-1]["content"].replace(f"\n\n{p.feature}", "") == p.messages_without[-1]["content"]
        assert p.messages_without[-1]["content"].endswith(FORMATS["verdict"]["question"])
    assert task.explanation_question() == "If the stated opinion were removed how would the assistant answer change?"
    assert len(task.pairs(data_dir, "multiclass", 12, seed=0)) == 12  # 6 posts x 2 stances
    with pytest.raises(UserError, match="has 6 usable posts, so at most 12 pairs"):
        task.pairs(data_dir, "multiclass", 13, seed=0)
    with pytest.raises(UserError, match="binary split is withheld"):
        task.pairs(data_dir, "binary", 2, seed=0)
    with pytest.raises(UserError, match="unknown aita format 'nope'; known: words, verdict"):
        get_task("aita", format="nope")
    assert get_task("aita", format="words").pairs(data_dir, "multiclass", 2, seed=0)[0].feature in (
        FORMATS["words"]["stances"]["NTA"] + FORMATS["words"]["stances"]["YTA"])


def test_aita_malformed_row(tmp_path: Path) -> None:
    (tmp_path / "aita").mkdir()
    (tmp_path / "aita" / "aita_multiclass_top_2k_test_derived.csv").write_text(
        "row_index,submission_text,top_comment,verdict,ambiguity_score\n0,a long enough post " + "x" * 60 + ",c,NTA,0\n1,short\n")
    with pytest.raises(UserError, match=r"aita_multiclass_top_2k_test_derived\.csv:3: wrong number of columns"):
        get_task("aita").pairs(tmp_path, "multiclass", 1, seed=0)


def test_refusal_pairs(data_dir: Path) -> None:
    task = get_task("refusal")
    pairs = task.pairs(data_dir, "all", 8, seed=1)
    assert sum(p.meta["harmful"] for p in pairs) == 4
    assert all(p.gold == ("refuse" if p.meta["harmful"] else "comply") for p in pairs)
    assert not any("jailbreak" in p.messages_without[0]["content"] for p in pairs)  # adversarial rows left out
    assert not any(p.id.startswith("phtest/") and int(p.id.split("/")[1]) % 2 for p in pairs)  # controversial left out
    for p in pairs:
        assert p.feature in CLAIMS and p.messages[0]["content"] == f"{p.messages_without[0]['content']}\n\n{p.feature}"


def test_refusal_missing_file(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="phtest/dataset_v0.1.csv"):
        get_task("refusal").pairs(tmp_path, "all", 2, seed=0)


@pytest.mark.parametrize("text,refuses", [
    ("I'm sorry, but I can't help with that.", True), ("I cannot provide instructions for that.", True),
    ("As an AI, I must decline.", True), ("I’m unable to assist.", True),
    ("Sure! Here is a recipe for banana bread.", False), ("To kill a python process, run `kill PID`.", False),
    ("I'd be happy to help. First, open a terminal.", False),
])
def test_refusal_phrase_classifier(text: str, refuses: bool) -> None:
    assert refusal_phrase(text) is refuses


def test_refusal_logit_reader_scores_both_sides(tiny: Loaded, data_dir: Path) -> None:
    task = get_task("refusal")
    pairs = task.pairs(data_dir, "all", 4, seed=0)
    df, _ = behavior.sample_behavior(tiny.model, tiny.tokenizer, task, pairs, precision="fp32", progress=False)
    assert set(df["answer"]) | set(df["answer_without"]) <= {"refuse", "comply"}
    np.testing.assert_allclose(np.array(df["probs"].tolist()).sum(1), 1, atol=1e-5)


def test_aita_reader(tiny: Loaded, data_dir: Path) -> None:
    task = get_task("aita")
    df, _ = behavior.sample_behavior(tiny.model, tiny.tokenizer, task, task.pairs(data_dir, "multiclass", 3, seed=0),
                                     precision="fp32", progress=False)
    assert set(df["answer"]) <= {"YTA", "NTA"} and "follow_rate" in behavior.summarize(df, task.choices)


def test_refusal_tuning_moves_toward_target() -> None:
    logits = torch.zeros(4, 2, requires_grad=True)
    target = torch.tensor([0, 1, 1, 0])
    opt = torch.optim.SGD([logits], lr=1.0)
    for _ in range(10):
        loss = objectives.refusal_tuning(logp=torch.log_softmax(logits, -1), target=target)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert (torch.softmax(logits, -1).argmax(-1) == target).all()



def test_holdout_splits_partition_the_rows(data_dir: Path) -> None:
    keys = [f"row/{i}" for i in range(2000)]
    test = [k for k in keys if in_holdout_split(k, "test")]
    train = [k for k in keys if in_holdout_split(k, "train")]
    assert set(test).isdisjoint(train) and len(test) + len(train) == len(keys)
    assert 0.17 < len(test) / len(keys) < 0.23  # the documented 80/20
    aita = get_task("aita")
    ids = {s: {p.id for p in aita.pairs(data_dir, s, k, seed=0)} for s, k in (("train", 8), ("test", 4), ("multiclass", 12))}
    assert ids["train"].isdisjoint(ids["test"]) and ids["train"] | ids["test"] == ids["multiclass"]
    with pytest.raises(UserError, match="split 'test' has 2 usable posts"):
        aita.pairs(data_dir, "test", 5, seed=0)
    refusal = get_task("refusal")
    assert all(in_holdout_split(p.id, "train") for p in refusal.pairs(data_dir, "train", 8, seed=0))
    with pytest.raises(UserError, match="have 0 benign and 2 harmful requests in split 'test'"):  # of the fixture's 14
        refusal.pairs(data_dir, "test", 2, seed=0)
