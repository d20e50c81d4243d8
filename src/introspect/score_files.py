"""Files for `introspect score`: outside predictions and gold labels, checked row by row.

Predictions: JSONL, one {"pair_id": "...", "text": "<raw explanation>"} per line.
Gold: JSONL or CSV with columns pair_id, changed (true/false, 1/0, changed/unchanged) and letter (the answer
without C), or a labels Parquet from `introspect label`. The choices come from --choices, or the Parquet's
metadata, or else the set of gold letters (sorted).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from .errors import UserError
from .files import read_rows

TRUE, FALSE = {"true", "1", "changed", "yes"}, {"false", "0", "unchanged", "no"}


def _check_ids(path: Path, rows: list[tuple[int, dict[str, Any]]], fields: tuple[str, ...]) -> None:
    seen: dict[str, int] = {}
    for line, r in rows:
        if not isinstance(r, dict):
            raise UserError(f"{path}:{line}: expected an object with fields {', '.join(fields)}")
        for f in fields:
            if f not in r or r[f] is None:
                raise UserError(f"{path}:{line}: missing field {f!r} (needs {', '.join(fields)})")
        if not isinstance(r["pair_id"], str):
            raise UserError(f"{path}:{line}: pair_id must be a string, got {r['pair_id']!r}")
        if r["pair_id"] in seen:
            raise UserError(f"{path}:{line}: pair_id {r['pair_id']!r} repeats line {seen[r['pair_id']]}")
        seen[r["pair_id"]] = line


def read_predictions(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    rows = read_rows(path)
    _check_ids(path, rows, ("pair_id", "text"))
    for line, r in rows:
        if not isinstance(r["text"], str):
            raise UserError(f"{path}:{line}: text must be a string")
    return pd.DataFrame([r for _, r in rows], columns=["pair_id", "text"])


def read_gold(path: str | Path, choices: list[str] | None) -> tuple[pd.DataFrame, list[str]]:
    """Gold (pair_id, changed, letter) and the choice set."""
    path = Path(path)
    if path.suffix.lower() == ".parquet":
        from .tables import read_table

        df, meta = read_table(path)
        for col in ("pair_id", "changed", "letter"):
            if col not in df.columns:
                raise UserError(f"{path}: column {col!r} missing (gold needs pair_id, changed, letter)")
        return df[["pair_id", "changed", "letter"]], choices or meta["choices"]
    rows = read_rows(path)
    _check_ids(path, rows, ("pair_id", "changed", "letter"))
    out = []
    for line, r in rows:
        c = str(r["changed"]).strip().lower()
        if c not in TRUE | FALSE:
            raise UserError(f"{path}:{line}: changed must be true/false (or 1/0, changed/unchanged), got {r['changed']!r}")
        out.append({"pair_id": r["pair_id"], "changed": c in TRUE, "letter": str(r["letter"]).strip()})
    df = pd.DataFrame(out, columns=["pair_id", "changed", "letter"])
    found = sorted(set(df["letter"]))
    if choices:
        bad = sorted(set(found) - set(choices))
        if bad:
            raise UserError(f"{path}: letter {bad[0]!r} is not one of --choices {','.join(choices)}")
    return df, choices or found
