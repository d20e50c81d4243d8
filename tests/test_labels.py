import json

import numpy as np
import pandas as pd
import pytest

from introspect.errors import UserError
from introspect.labels import Parsed, add_noise, make_labels, parse_explanation, target_text
from introspect.tasks import get_task

CH = ("A", "B", "C", "D")


@pytest.mark.parametrize("changed", [True, False])
@pytest.mark.parametrize("letter", CH)
def test_round_trip_every_form(changed: bool, letter: str) -> None:
    text = target_text(changed, letter)
    assert parse_explanation(text, CH) == Parsed(changed, letter)


@pytest.mark.parametrize("text,expected", [
    ("the output would REMAIN UNCHANGED from <<<answer: c>>>.", Parsed(False, "C")),
    ("  The   most likely output\nwould change to\t<<< Answer :  B >>> .", Parsed(True, "B")),
    ("The output would change to <<<Answer: D>>>.", Parsed(True, "D")),
    ("THE MOST LIKELY OUTPUT WOULD CHANGE TO <<<ANSWER: A>>>.", Parsed(True, "A")),
    ("The output would remain unchanged from <<<Answer: A>>>. The most likely output would change to <<<Answer: B>>>.",
     Parsed(False, "A")),  # only the first tag counts
])
def test_parser_tolerates_case_and_whitespace(text: str, expected: Parsed) -> None:
    assert parse_explanation(text, CH) == expected


@pytest.mark.parametrize("garbage", [
    "", "B", "Answer: B", "The output would change to B.", "<<<Answer: B>>>",  # no verdict
    "The output would change to <<<Answer: E>>>.",  # letter outside the choices
    "The output would remain unchanged and would change to <<<Answer: B>>>.",  # both verdicts
    "asdf <<<>>> qwerty", "The most likely output would change to <<<Answer: >>>.",
])
def test_parser_rejects_garbage(garbage: str) -> None:
    assert parse_explanation(garbage, CH) is None


def test_parser_other_tags_and_choices() -> None:
    assert parse_explanation("The output would remain unchanged from <<<Verdict: nta>>>.", ("YTA", "NTA")) == Parsed(False, "NTA")


def _behavior(n: int = 40, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        a, b = rng.choice(CH), rng.choice(CH)
        msgs = [{"role": "user", "content": f"Q{i}\nHint: x"}]
        rows.append({"pair_id": f"p{i}", "messages": json.dumps(msgs), "messages_without": json.dumps([{"role": "user", "content": f"Q{i}"}]),
                     "feature": "Hint: x", "gold": None, "meta": "{}", "answer": a, "answer_without": b, "changed": a != b})
    return pd.DataFrame(rows)


def test_make_labels_targets_follow_behaviour() -> None:
    beh = _behavior()
    lab = make_labels(beh, get_task("hint-mmlu"))
    for r, b in zip(lab.itertuples(), beh.itertuples()):
        assert r.letter == b.answer_without and r.changed == b.changed
        assert parse_explanation(r.target, CH) == Parsed(b.changed, b.answer_without)
        assert json.loads(r.prompt)[-1]["content"].endswith("If the hint were removed how would the assistant answer change?")


@pytest.mark.parametrize("rate", [0.0, 0.1, 0.25, 0.5, 1.0])
def test_noise_rate_exact_and_seeded(rate: float) -> None:
    lab = make_labels(_behavior(200), get_task("hint-mmlu"))
    noisy = add_noise(lab, rate, seed=7, choices=CH)
    assert abs(noisy["noisy"].mean() - rate) <= 0.005
    flipped = noisy["noisy"].to_numpy()
    assert (noisy["letter"].to_numpy()[flipped] != lab["letter"].to_numpy()[flipped]).all()
    assert (noisy["letter"].to_numpy()[~flipped] == lab["letter"].to_numpy()[~flipped]).all()
    assert (noisy["changed"] == (noisy["letter"] != noisy["answer_with"])).all()  # still self-consistent
    assert all(parse_explanation(t, CH) == Parsed(c, ltr) for t, c, ltr in zip(noisy["target"], noisy["changed"], noisy["letter"]))
    assert add_noise(lab, rate, seed=7, choices=CH).equals(noisy)


def test_noise_rate_out_of_range() -> None:
    lab = make_labels(_behavior(5), get_task("hint-mmlu"))
    with pytest.raises(UserError, match="--noise"):
        add_noise(lab, 1.5, seed=0, choices=CH)
