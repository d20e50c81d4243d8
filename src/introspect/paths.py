"""Where things live: the benchmark data root, the model cache, the repository root."""

from __future__ import annotations

import os
from pathlib import Path

from .errors import UserError

DATA_ENV = "INTROSPECT_DATA"
CACHE_ENV = "INTROSPECT_CACHE"
REPO_ROOT = Path(__file__).resolve().parents[2]


def data_root(flag: str | os.PathLike[str] | None = None) -> Path:
    """The benchmark data folder: --data-root flag, else $INTROSPECT_DATA, else ../shared/data."""
    if flag is not None:
        root, origin = Path(flag), "--data-root"
    elif os.environ.get(DATA_ENV):
        root, origin = Path(os.environ[DATA_ENV]), f"${DATA_ENV}"
    else:
        candidates = [Path.cwd() / "../shared/data", REPO_ROOT / "../shared/data"]
        root = next((c for c in candidates if c.is_dir()), candidates[0])
        origin = "the default ../shared/data"
    if not root.is_dir():
        raise UserError(
            f"data root {root} (from {origin}) does not exist: pass --data-root DIR "
            f"or set {DATA_ENV}=DIR to the folder that holds mmlu/, aita/, wildguard/ ..."
        )
    return root.resolve()


def cache_dir() -> Path:
    """Where converted models are cached: $INTROSPECT_CACHE, else ~/.cache/introspect."""
    root = Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "introspect")
    root.mkdir(parents=True, exist_ok=True)
    return root
