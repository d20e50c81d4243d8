"""Tables on disk: Parquet with our provenance (model, task, pairs, inputs) in the schema metadata.

Every table a stage writes (BehaviorTables, labels, per-item evaluation) goes through `write_table` (atomic) and
is read back by `read_table`, which names the file in every error. `pairs_from_table` and `task_of` rebuild the
pairs and the task a table was made from.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from .errors import UserError
from .files import atomic_path
from .hashing import stable_hash
from .tasks import Pair, Task, get_task

META_KEY = b"introspect"


def table_meta(*, model_id: str, weights_hash: str, task: Task, pairs: Sequence[Pair], seed: int, split: str,
               precision: str, verify_margin: float, inputs: dict[str, str] | None = None,
               sources: dict[str, str] | None = None) -> dict[str, Any]:
    """A BehaviorTable's provenance; `inputs` (provenance.inputs) is what the staleness rule compares."""
    return {
        "inputs": inputs or {},
        "sources": sources or {},
        "model_id": model_id,
        "weights_hash": weights_hash,
        "task": task.name,
        "task_options": task.init_options(),
        "task_spec": task.spec(),
        "task_spec_hash": stable_hash(task.spec()),
        "pairs_hash": stable_hash([p.to_dict() for p in pairs]),
        "seed": seed,
        "split": split,
        "n": len(pairs),
        "precision": precision,
        "verify_margin": verify_margin,
        "choices": list(task.choices),
    }


def write_table(path: str | Path, df: pd.DataFrame, meta: dict[str, Any]) -> None:
    """Write a table to Parquet with our provenance in the schema metadata (atomically)."""
    table = pa.Table.from_pandas(df, preserve_index=False)
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), META_KEY: json.dumps(meta).encode()})
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def task_of(meta: dict[str, Any]) -> Task:
    """The task a table was made with, rebuilt from its metadata."""
    return get_task(meta["task"], **meta.get("task_options", {}))


def read_table(path: str | Path) -> tuple[pd.DataFrame, dict[str, Any]]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} does not exist (run `introspect sample` first, or check the path)")
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException) as e:
        raise UserError(f"{path} is not a readable Parquet file ({e}); delete it and re-run the stage that writes it") from None
    raw = (table.schema.metadata or {}).get(META_KEY)
    if raw is None:
        raise UserError(f"{path} has no introspect metadata: it was not written by introspect")
    return table.to_pandas(), json.loads(raw)


def read_meta(path: str | Path) -> dict[str, Any]:
    """A table's provenance alone (the Parquet schema metadata), without reading its rows."""
    path = Path(path)
    try:
        raw = (pq.read_schema(path).metadata or {}).get(META_KEY)
    except (OSError, pa.ArrowException) as e:
        raise UserError(f"{path} is not a readable Parquet file ({e}); delete it and re-run the stage that writes it") from None
    if raw is None:
        raise UserError(f"{path} has no introspect metadata: it was not written by introspect")
    return json.loads(raw)


def pairs_from_table(df: pd.DataFrame, task: Task) -> list[Pair]:
    """The pairs a BehaviorTable holds, in its row order."""
    return [Pair(r.pair_id, json.loads(r.messages), json.loads(r.messages_without), r.feature, tuple(task.choices),
                 r.gold, json.loads(r.meta)) for r in df.itertuples(index=False)]
