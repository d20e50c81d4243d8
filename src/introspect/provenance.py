"""The one staleness rule: every stage output records the content hashes of all of its inputs, and one helper
decides "current or re-run" for every stage (behaviour tables, labels, checkpoints, evaluations, baselines).

    wanted = inputs(model=..., task_spec=..., seed=..., precision=...)   # {name: hash of the value}
    if is_current(out, wanted, "sampling"): return out                    # prints what it decided and why
    ... compute; write the output with {"inputs": wanted} in its metadata

Where an output keeps its inputs: a Parquet table's introspect metadata, a JSON file's top level, or a checkpoint
directory's meta.json. All three are read by `stored_inputs`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from .errors import UserError
from .hashing import stable_hash

INPUTS = "inputs"


def inputs(**values: Any) -> dict[str, str]:
    """{name: content hash} of every input a stage reads (dicts, lists, numbers, strings, hashes)."""
    return {k: stable_hash(v) for k, v in values.items()}


# Inputs added after outputs were made with earlier code, per stage (the back-compat of stored inputs, only here). Such
# an input enters an output's inputs only when it differs from the value every earlier output implicitly had, so those
# outputs stay current; set away from it, it is recorded and a change re-runs the stage as any input does.
ADDED_LATER: dict[str, tuple[str, ...]] = {
    "sampling": ("device",),
    "evaluation": ("device", "merged_adapter", "joint"),
    "training": ("device", "trees_per_row", "compile", "cache_bf16_weights", "init_from"),
}


def added_later(stage: str, values: dict[str, Any], earlier: dict[str, Any]) -> dict[str, Any]:
    """The inputs of ADDED_LATER[stage] that differ from `earlier` (what outputs made before them implicitly had)."""
    if set(values) != set(ADDED_LATER[stage]) or not set(values) <= set(earlier):
        raise ValueError(f"added_later({stage!r}): values {sorted(values)} and earlier {sorted(earlier)} must name "
                         f"{list(ADDED_LATER[stage])}")
    return {k: v for k, v in values.items() if v != earlier[k]}


def key_of(values: dict[str, str]) -> str:
    """One hash for a whole set of inputs: what a downstream stage records as this output's identity."""
    return stable_hash(values)


def stored_inputs(path: Path) -> dict[str, str] | None:
    """The inputs an existing output was made from, or None when there is no complete output at `path`."""
    path = Path(path)
    try:
        if path.is_dir():
            meta = path / "meta.json"
            return json.loads(meta.read_text()).get(INPUTS) if meta.is_file() else None
        if not path.is_file():
            return None
        if path.suffix == ".parquet":
            from .tables import read_meta  # pyarrow: loaded only for tables

            return read_meta(path).get(INPUTS)
        return json.loads(path.read_text()).get(INPUTS)
    except (OSError, ValueError, UserError):  # unreadable, truncated or not ours: not current
        return None


def changed_keys(stored: dict[str, str] | None, wanted: dict[str, str]) -> list[str]:
    """The input names whose hash differs (or that are new or gone); ['(no previous output)'] when none exists."""
    if stored is None:
        return ["(no previous output)"]
    return sorted(k for k in set(stored) | set(wanted) if stored.get(k) != wanted.get(k))


def is_current(path: Path, wanted: dict[str, str], stage: str, say: Any = print) -> bool:
    """True when `path` holds an output made from exactly `wanted`; says which inputs changed otherwise."""
    diff = changed_keys(stored_inputs(path), wanted)
    if not diff:
        say(f"[{stage}] {path} is current: skip")
        return True
    if diff != ["(no previous output)"]:
        say(f"[{stage}] {path} is stale (changed: {', '.join(diff)}): re-running")
    return False


KEEP_SETTINGS = 3  # outputs of the last 3 other settings are kept per folder (RUN/kept/), older ones deleted


def keep(folders: list[Path], made_from: dict[str, str] | None, store: Path) -> Path | None:
    """Move the stale outputs `folders` (made from `made_from`) into `store/HASH/` instead of deleting them, so a
    setting switched back to finds them again (`restore`). Keeps the KEEP_SETTINGS newest; returns where they went."""
    present = [f for f in folders if f.exists()]
    if not present or made_from is None:
        return None
    dest = Path(store) / key_of(made_from)
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    for f in present:
        shutil.move(str(f), str(dest / f.name))
    for old in sorted((d for d in Path(store).iterdir() if d.is_dir()), key=lambda d: d.stat().st_mtime)[:-KEEP_SETTINGS]:
        shutil.rmtree(old)
    return dest


def restore(folders: list[Path], wanted: dict[str, str], store: Path) -> bool:
    """Move back the outputs kept from a setting made from exactly `wanted` (see `keep`); False when none are."""
    src = Path(store) / key_of(wanted)
    if not (src / folders[0].name).exists():
        return False
    for f in folders:
        if (src / f.name).exists():
            if f.is_dir():
                shutil.rmtree(f)
            elif f.exists():
                f.unlink()
            shutil.move(str(src / f.name), str(f))
    shutil.rmtree(src)
    return True
