import math

import numpy as np

from introspect import metrics
from introspect.labels import target_text

CH = ("A", "B", "C", "D")


def test_hand_computed_case() -> None:
    texts = [
        target_text(True, "B"),    # right verdict, right letter
        target_text(False, "C"),   # right verdict, wrong letter
        target_text(True, "A"),    # wrong verdict, right letter
        "garbage",                 # unparseable: wrong everywhere, left out of F1
    ]
    gold_changed = [True, False, False, True]
    gold_letter = ["B", "A", "A", "D"]
    r = metrics.point(metrics.items(texts, gold_changed, gold_letter, CH))
    assert r["exact_match"] == 1 / 4
    assert r["content_match"] == 2 / 4
    assert r["parse_rate"] == 3 / 4
    assert r["pred_changed_rate"] == 2 / 3
    # parseable: pred (T, F, T) vs gold (T, F, F): changed tp=1 fp=1 fn=0 -> 2/3; unchanged tp=1 fp=0 fn=1 -> 2/3
    assert math.isclose(r["has_changed_f1"], 2 / 3)


def test_f1_skips_absent_class() -> None:
    it = metrics.items([target_text(False, "A")] * 3, [False] * 3, ["A"] * 3, CH)
    assert metrics.point(it)["has_changed_f1"] == 1.0


def test_bootstrap_ci_deterministic_and_brackets_point() -> None:
    rng = np.random.default_rng(0)
    gold_c = rng.random(80) < 0.4
    gold_l = rng.choice(CH, 80)
    texts = [target_text(bool(c) ^ (rng.random() < 0.3), ltr) for c, ltr in zip(gold_c, gold_l)]
    it = metrics.items(texts, gold_c, gold_l, CH)
    a = metrics.score(it, seed=1, n_boot=300)
    b = metrics.score(it, seed=1, n_boot=300)
    c = metrics.score(it, seed=2, n_boot=300)
    assert a == b
    assert a["exact_match"]["ci"] != c["exact_match"]["ci"]
    for m in metrics.METRICS:
        lo, hi = a[m]["ci"]
        assert lo <= a[m]["value"] <= hi
    assert a["parse_rate"]["ci"] == [1.0, 1.0]  # every text parses: no spread
    assert a["exact_match"]["ci"][0] < a["exact_match"]["ci"][1]


def test_paired_difference() -> None:
    texts = [target_text(True, "B")] * 10
    self_gold = metrics.items(texts, [True] * 10, ["B"] * 10, CH)
    orig_gold = metrics.items(texts, [True] * 5 + [False] * 5, ["B"] * 5 + ["C"] * 5, CH)
    d = metrics.paired_difference(self_gold, orig_gold, seed=0, n_boot=200)
    assert d["exact_match"]["value"] == 0.5
    lo, hi = d["exact_match"]["ci"]
    assert 0 < lo <= 0.5 <= hi <= 1
