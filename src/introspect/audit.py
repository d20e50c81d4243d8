"""`introspect audit`: keep one frozen explanation set beside a model's versions and record, per version, whether the
explanations still describe what the model does (storage and tamper check: `ledger.py`).

    introspect audit init LEDGER --pairs B.parquet --labels L.parquet   freeze pairs + fixed labels (+ M0's behaviour)
    introspect audit add LEDGER MODEL_OR_CHECKPOINT --tag v2 [--note]   behaviour + explanations of one version
    introspect audit show LEDGER [--png F]                              history, figure, flagged versions
    introspect audit diff LEDGER v1 v2 [--csv F]                        per item: did behaviour and explanation move together?
    introspect audit verify LEDGER [--head N:HASH] [--witness F]       the hash chain, row by row; its head

A version is flagged "stopped tracking" when its behaviour moved away from the frozen labels (agreement below
validity.MIN_AGREEMENT) and its explanations did not follow (Self − Orig 95% CI reaches 0 or below); "explanations
degraded" when its Self Exact Match is more than validity.DEGRADED below the first version's (`validity.audit_flags`).
"""

from __future__ import annotations

import csv
import io
import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from . import ledger
from .defaults import VERIFY_MARGIN
from .errors import UserError
from .files import atomic_path
from .run_config import EvalConfig
from .validity import MIN_AGREEMENT, audit_flags



def init(path: Path, pairs_table: Path, labels_table: Path, n: int = 0) -> str:
    """Freeze the pairs of `pairs_table` (its first `n`, 0 = all) with their labels from `labels_table`."""
    from .tables import pairs_from_table, read_table, task_of

    beh, meta = read_table(pairs_table)
    if n < 0 or n > len(beh):
        raise UserError(f"--n {n}: {pairs_table} has {len(beh)} pairs")
    beh = beh.iloc[:n or len(beh)].reset_index(drop=True)
    lab, _ = read_table(labels_table)
    absent = [c for c in ("pair_id", "changed", "letter") if c not in lab.columns]
    if absent:
        raise UserError(f"{labels_table} has no column(s) {', '.join(absent)}: --labels takes a labels table from "
                        f"`introspect label --behavior B.parquet --out L.parquet`, not a BehaviorTable")
    missing = sorted(set(beh["pair_id"]) - set(lab["pair_id"]))
    if missing:
        raise UserError(f"{labels_table}: no label for {len(missing)} pair(s) of {pairs_table}, e.g. {missing[0]!r}")
    lab = lab.set_index("pair_id").loc[beh["pair_id"]].reset_index()
    task = task_of(meta)
    pairs = pairs_from_table(beh, task)
    items = [{"pair_id": p.id, "pair": json.dumps(p.to_dict(), sort_keys=True), "changed": int(bool(c)), "letter": str(ltr),
              "m0_answer": str(a), "m0_answer_without": str(aw)}
             for p, c, ltr, a, aw in zip(pairs, lab["changed"], lab["letter"], beh["answer"], beh["answer_without"])]
    info = {"task": task.name, "task_options": json.dumps(task.init_options()), "task_spec": json.dumps(task.spec()),
            "pairs_from": str(pairs_table), "labels_from": str(labels_table), "m0": meta.get("model_id", "?"),
            "created": _now()}
    h, created = ledger.init(path, items, info)
    print(f"[audit] {'froze' if created else 'already holds'} {len(items)} {task.name} pairs with their fixed labels in "
          f"{path} (set hash {h[:12]})")
    return h


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def add(path: Path, model: str, *, tag: str, note: str = "", precision: str = "bf16", verify_margin: float = VERIFY_MARGIN,
        seed: int = 0, n_boot: int = EvalConfig.n_boot, batch_size: int = EvalConfig.batch_size,
        max_new_tokens: int = EvalConfig.max_new_tokens,
        device: str = "auto", witness: Path | None = None) -> dict[str, Any]:
    """Sample the version's behaviour on the frozen pairs, generate its explanations, score, append to the ledger."""
    import pandas as pd

    from .checkpoints import applied, checkpoint_hash, meta as checkpoint_meta
    from .evaluate import evaluate_one
    from .models import load_model
    from .tasks import Pair, get_task

    for flag, value in (("--n-boot", n_boot), ("--batch-size", batch_size), ("--max-new-tokens", max_new_tokens)):
        if value < 1:
            raise UserError(f"{flag} must be >= 1, got {value}")
    with ledger.connect(path) as con:
        ledger.verify(con, str(path))
        if witness is not None and Path(witness).is_file():
            ledger.check_witness(con, Path(witness), str(path))
        info, rows = ledger.meta(con), ledger.items(con)
    task = get_task(info["task"], **json.loads(info["task_options"]))
    pairs = [Pair(**{**d, "choices": tuple(d["choices"])}) for d in (json.loads(r["pair"]) for r in rows)]
    m0 = pd.DataFrame({"pair_id": [r["pair_id"] for r in rows], "answer": [r["m0_answer"] for r in rows],
                       "answer_without": [r["m0_answer_without"] for r in rows]})
    fixed = pd.DataFrame({"pair_id": [r["pair_id"] for r in rows], "changed": [bool(r["changed"]) for r in rows],
                          "letter": [r["letter"] for r in rows]})
    ck = Path(model) if (Path(model) / "meta.json").is_file() else None
    base = load_model(checkpoint_meta(ck)["model_id"] if ck else model, device=device)
    finetune = checkpoint_meta(ck)["config"].get("finetune", "lora") if ck else "lora"
    print(f"[audit] {tag}: {model} on {len(pairs)} frozen {task.name} pairs")
    with applied(base, ck, finetune) as m:
        res, per_item = evaluate_one(m, base.tokenizer, task, pairs, m0, seed=seed, n_boot=n_boot, precision=precision,
                                     verify_margin=verify_margin, batch_size=batch_size, max_new_tokens=max_new_tokens,
                                     orig_labels=fixed, label=tag)
    d = res["self_minus_orig"]["exact_match"]
    version = {"tag": tag, "model": str(model), "checkpoint": str(ck) if ck else "", "note": note, "created": _now(),
               "model_hash": checkpoint_hash(ck, base.weights_hash), "n": res["n"],
               "self_em": res["self"]["exact_match"]["value"], "orig_em": res["orig"]["exact_match"]["value"],
               "self_minus_orig": d["value"], "ci_low": d["ci"][0], "ci_high": d["ci"][1],
               "agreement": res["agreement"], "drift": res["drift"], "n_label_differs": res["n_label_differs"],
               "result": json.dumps(res, sort_keys=True, default=float)}
    ok = lambda c, ltr: per_item["parsed_ok"] & (per_item["pred_changed"] == c) & (per_item["pred_letter"] == ltr)  # noqa: E731
    self_ok, orig_ok = ok(per_item["self_changed"], per_item["self_letter"]), ok(per_item["orig_changed"], per_item["orig_letter"])
    verdicts = [{"idx": i, "answer": str(r.answer), "answer_without": str(r.answer_without), "text": str(r.text),
                 "parsed_ok": int(bool(r.parsed_ok)), "pred_changed": int(bool(r.pred_changed)), "pred_letter": str(r.pred_letter),
                 "self_changed": int(bool(r.self_changed)), "self_letter": str(r.self_letter), "self_ok": int(bool(s)),
                 "orig_ok": int(bool(o)), "label_differs": int(bool(r.label_differs))}
                for i, (r, s, o) in enumerate(zip(per_item.itertuples(index=False), self_ok, orig_ok))]
    row = ledger.append(path, version, verdicts)
    print(f"[audit] added {tag}: Self EM {version['self_em']:.3f}, Orig EM {version['orig_em']:.3f}, Self−Orig "
          f"{d['value']:+.3f} [{d['ci'][0]:+.3f}, {d['ci'][1]:+.3f}], agreement {version['agreement']:.2f}, drift "
          f"{version['drift']:.2f}; head {row['head']}")
    if witness is not None:
        ledger.witness(Path(witness), path, row["head"], tag)
        print(f"[audit] recorded the head in the witness file {witness}")
    return row


def flags(rows: list[dict[str, Any]]) -> dict[str, list[str]]:
    """Per version tag: why it is flagged (empty: explanations still track behaviour)."""
    out: dict[str, list[str]] = {}
    first = rows[0]["self_em"] if rows else 0.0
    for r in rows:
        out[r["tag"]] = audit_flags(r, first)  # the rule lives in validity.py
    return out


def show(path: Path, png: Path | None = None) -> list[dict[str, Any]]:
    with ledger.connect(path) as con:
        n = ledger.verify(con, str(path))
        rows, info, n_items = ledger.versions(con), ledger.meta(con), len(ledger.items(con))
    print(f"[audit] {path}: {n_items} frozen {info['task']} pairs (set hash "
          f"{info['set_hash'][:12]}, labels from {info['m0']}); {n} version(s); hash chain verified")
    print(table(rows))
    for tag, why in flags(rows).items():
        for w in why:
            print(f"[audit] FLAG {tag}: {w}")
    if rows:
        figure(rows, png or Path(path).with_suffix(".png"))
        print(f"[audit] figure: {png or Path(path).with_suffix('.png')}")
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    fl = flags(rows)
    lines = ["| version | created | model hash | Self EM | Orig EM | Self − Orig [95% CI] | agreement | drift | flag |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['tag']} | {r['created']} | {r['model_hash']} | {r['self_em']:.3f} | {r['orig_em']:.3f} | "
                     f"{r['self_minus_orig']:+.3f} [{r['ci_low']:+.3f}, {r['ci_high']:+.3f}] | {r['agreement']:.2f} | "
                     f"{r['drift']:.2f} | {'; '.join(w.split(':')[0] for w in fl[r['tag']]) or '—'} |")
    return "\n".join(lines)


def figure(rows: list[dict[str, Any]], png: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = range(len(rows))
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(x, [r["self_em"] for r in rows], "o-", label="Self EM (vs the version's own behaviour)")
    ax.plot(x, [r["orig_em"] for r in rows], "s-", label="Orig EM (vs the frozen labels)")
    ax.plot(x, [r["agreement"] for r in rows], "^--", label="agreement of the frozen labels with the version")
    ax.axhline(MIN_AGREEMENT, ls=":", color="gray", lw=1)
    for i, r in enumerate(rows):
        if flags(rows)[r["tag"]]:
            ax.plot([i], [r["self_em"]], "x", ms=14, color="red")
    ax.set_xticks(list(x), [r["tag"] for r in rows], rotation=20)
    ax.set_ylim(-0.02, 1.02)
    ax.set_ylabel("fraction of frozen items")
    ax.set_title("explanations across model versions (red x: flagged)")
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.25), frameon=False)
    with atomic_path(png) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    plt.close(fig)
    return png


def diff(path: Path, a: str, b: str, csv_out: Path | None = None) -> dict[str, int]:
    """Per item between two versions: did the behaviour change, did the explanation change, and together?"""
    with ledger.connect(path) as con:
        ledger.verify(con, str(path))
        rows = {r["tag"]: r for r in ledger.versions(con)}
        for t in (a, b):
            if t not in rows:
                raise UserError(f"{path} has no version tagged {t!r} (it has: {', '.join(rows) or 'none'})")
        va, vb, items = ledger.verdicts(con, rows[a]["id"]), ledger.verdicts(con, rows[b]["id"]), ledger.items(con)
    out = []
    for it, x, y in zip(items, va, vb):
        beh = (x["answer"], x["answer_without"]) != (y["answer"], y["answer_without"])
        expl = (x["pred_changed"], x["pred_letter"], x["parsed_ok"]) != (y["pred_changed"], y["pred_letter"], y["parsed_ok"])
        out.append({"pair_id": it["pair_id"], f"answer_{a}": x["answer"], f"answer_without_{a}": x["answer_without"],
                    f"answer_{b}": y["answer"], f"answer_without_{b}": y["answer_without"], "behaviour_changed": int(beh),
                    f"explanation_{a}": x["text"], f"explanation_{b}": y["text"], "explanation_changed": int(expl),
                    f"self_ok_{a}": x["self_ok"], f"self_ok_{b}": y["self_ok"],
                    "together": int(beh == expl and (not beh or bool(y["self_ok"])))})
    counts = {"items": len(out), "behaviour_changed": sum(r["behaviour_changed"] for r in out),
              "explanation_followed": sum(r["behaviour_changed"] and r["explanation_changed"] and r[f"self_ok_{b}"] for r in out),
              "explanation_changed_alone": sum(r["explanation_changed"] and not r["behaviour_changed"] for r in out)}
    print(f"[audit] {a} -> {b}: behaviour changed on {counts['behaviour_changed']} of {counts['items']} items; the "
          f"explanation followed (changed and describes {b}'s behaviour) on {counts['explanation_followed']}; the "
          f"explanation changed without a behaviour change on {counts['explanation_changed_alone']}")
    if csv_out:
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=list(out[0]) if out else ["pair_id"])
        w.writeheader()
        w.writerows(out)
        with atomic_path(csv_out) as tmp:
            tmp.write_text(buf.getvalue())
        print(f"[audit] wrote {csv_out}")
    return counts


def verify(path: Path, head: str | None = None, witness: Path | None = None) -> int:
    """The hash chain from the genesis hash of meta, then any head recorded elsewhere; prints today's head."""
    with ledger.connect(path) as con:
        n = ledger.verify(con, str(path))
        if head:
            ledger.check_head(con, head, str(path))
        checked = ledger.check_witness(con, witness, str(path)) if witness is not None else 0
        now, info = ledger.head(con), ledger.meta(con)
    print(f"[audit] {path}: hash chain of {n} version(s) verified; the frozen set is unchanged")
    if int(info.get("schema", "1")) < 2:
        print("[audit] note: a schema-1 ledger: its chain does not cover meta (re-create it with `audit init` to "
              "have it covered)")
    if head:
        print(f"[audit] the recorded head {head.split(':')[0]}:{head.split(':')[1][:12]}… is in the chain")
    if witness is not None:
        print(f"[audit] all {checked} head(s) in {witness} are in the chain")
    print(f"[audit] head {now}  (keep it outside the ledger; `audit verify --head` checks it later)")
    return n
