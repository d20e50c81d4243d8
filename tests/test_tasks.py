from pathlib import Path

import pytest

from introspect.errors import UserError
from introspect.tasks import get_task
from introspect.tasks.hint_mmlu import HINTS, LETTERS

from conftest import write_mmlu


def test_pairs_deterministic_by_seed(data_dir: Path) -> None:
    task = get_task("hint-mmlu")
    a = task.pairs(data_dir, "val", 6, seed=3)
    b = task.pairs(data_dir, "val", 6, seed=3)
    c = task.pairs(data_dir, "val", 6, seed=4)
    assert [p.to_dict() for p in a] == [p.to_dict() for p in b]
    assert [p.to_dict() for p in a] != [p.to_dict() for p in c]
    assert len({p.id for p in a}) == 6


def test_hint_only_in_x(data_dir: Path) -> None:
    task = get_task("hint-mmlu")
    for p in task.pairs(data_dir, "val", 9, seed=0):
        user = p.messages[-1]["content"]
        user_without = p.messages_without[-1]["content"]
        hint = HINTS["curious"].format(letter=p.meta["hint_letter"])
        assert p.meta["hint_letter"] in LETTERS
        assert user.count("Hint:") == 1 and user.endswith(hint)
        assert "Hint" not in user_without and user == user_without + hint
        assert p.messages[:-1] == p.messages_without[:-1]  # system turn identical


def test_hint_letters_vary_with_seed(data_dir: Path) -> None:
    task = get_task("hint-mmlu")
    letters = {p.meta["hint_letter"] for s in range(5) for p in task.pairs(data_dir, "val", 9, seed=s)}
    assert len(letters) >= 3


def test_explanation_question_appended(data_dir: Path) -> None:
    task = get_task("hint-mmlu")
    p = task.pairs(data_dir, "val", 1, seed=0)[0]
    msgs = task.explanation_messages(p)
    assert msgs[-1]["content"] == p.messages[-1]["content"] + "\n\nIf the hint were removed how would the assistant answer change?"
    assert p.messages[-1]["content"].count("If the hint") == 0  # the pair itself is not mutated


def test_malformed_csv_row_names_file_and_line(tmp_path: Path) -> None:
    write_mmlu(tmp_path, subjects={"bad": [["Q1", "a", "b", "c", "d", "A"], ["Q2", "a", "b", "c", "A"]]})
    with pytest.raises(UserError, match=r"bad_val\.csv:2: expected 6 columns"):
        get_task("hint-mmlu").pairs(tmp_path, "val", 1, seed=0)


def test_bad_answer_letter_names_file_and_line(tmp_path: Path) -> None:
    write_mmlu(tmp_path, subjects={"bad": [["Q1", "a", "b", "c", "d", "A"], ["Q2", "a", "b", "c", "d", "E"]]})
    with pytest.raises(UserError, match=r"bad_val\.csv:2: answer column is 'E'"):
        get_task("hint-mmlu").pairs(tmp_path, "val", 1, seed=0)


def test_missing_split_and_too_many_pairs(data_dir: Path) -> None:
    with pytest.raises(UserError, match="no MMLU files"):
        get_task("hint-mmlu").pairs(data_dir, "test", 1, seed=0)
    with pytest.raises(UserError, match="--n"):
        get_task("hint-mmlu").pairs(data_dir, "val", 100, seed=0)


def test_unknown_task_and_format() -> None:
    with pytest.raises(UserError, match="known tasks are hint-mmlu"):
        get_task("nope")
    with pytest.raises(UserError, match="choose one of"):
        get_task("hint-mmlu", format="nope")


def test_fewshot_shows_balanced_solved_dev_questions(data_dir: Path) -> None:
    task = get_task("hint-mmlu", format="paren-4shot")
    p = task.pairs(data_dir, "val", 3, seed=0)[0]
    assistant = [m["content"] for m in p.messages if m["role"] == "assistant"]
    assert assistant == ["Answer: (A)", "Answer: (B)", "Answer: (C)", "Answer: (D)"]
    assert p.messages[:-1] == p.messages_without[:-1]
    pairs = task.pairs(data_dir, "dev", 4, seed=0)  # shots are never also pairs
    shot_questions = {m["content"].split("\n")[0] for m in p.messages[1:-1] if m["role"] == "user"}
    assert not shot_questions & {q["content"].split("\n")[0] for x in pairs for q in x.messages[-1:]}


def test_option_shuffle_moves_the_gold_letter_with_its_text_and_keeps_the_draw(data_dir: Path) -> None:
    plain = get_task("hint-mmlu", format="dot").pairs(data_dir, "val", 6, seed=3)
    mixed = get_task("hint-mmlu", format="dot", shuffle=True).pairs(data_dir, "val", 6, seed=3)
    assert [p.id for p in plain] == [p.id for p in mixed] and [p.feature for p in plain] == [p.feature for p in mixed]

    def gold_text(p) -> str:
        line = next(s for s in p.messages_without[-1]["content"].splitlines() if s.startswith(f"{p.gold}. "))
        return line[3:]

    assert [gold_text(p) for p in plain] == [gold_text(p) for p in mixed]  # the right answer's text, at its new letter
    assert [p.gold for p in plain] != [p.gold for p in mixed]  # 6 pairs: some moved (fixed seed)
    assert get_task("hint-mmlu", format="dot", shuffle=True).pairs(data_dir, "val", 6, seed=3)[0].messages == mixed[0].messages
    assert "shuffle" not in get_task("hint-mmlu", format="dot").spec()  # off: the spec (every stored input) unchanged
