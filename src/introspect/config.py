"""Shared plumbing: data root, cache dir, seeding, hashing, atomic writes, typed errors."""

from __future__ import annotations

import hashlib
import json
import os
import random
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

if TYPE_CHECKING:  # torch and numpy load on first use: `introspect --help` starts in well under a second
    import torch

DATA_ENV = "INTROSPECT_DATA"
CACHE_ENV = "INTROSPECT_CACHE"
REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_MODEL = "smollm2-135m-instruct"  # M0 when a config or flag names none (the bundled SmolLM2)
VERIFY_MARGIN = 0.015  # bf16 near-ties closer than this (nats) are re-scored in fp32; see docs/benchmarks.md


class UserError(Exception):
    """An error the user can fix; the message says what to change (file:line, flag, config key)."""


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


def seed_everything(seed: int) -> None:
    """One seed for Python, NumPy and torch."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def set_threads() -> int:
    """Use every core this process may run on."""
    import torch

    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    torch.set_num_threads(n)
    return n


def stable_hash(obj: Any) -> str:
    """Short content hash of a JSON-serialisable object (key order does not matter)."""
    blob = json.dumps(obj, sort_keys=True, ensure_ascii=False, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def weights_hash(model: torch.nn.Module) -> str:
    """Content hash of a model's parameters and buffers (names, shapes, dtypes, values)."""
    import torch

    h = hashlib.blake2b(digest_size=8)
    for name, t in sorted(model.state_dict().items()):
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temp path beside `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; the file gets the mode any other write would
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)



def writable(out: Path) -> None:
    """Fail before any work when the file `out` cannot be written (not after an hour of sampling)."""
    if out.is_dir():
        raise UserError(f"{out} is a directory: name a file to write (flag --out / the config key naming it)")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        # a unique name: the processes of one `accelerate launch` probe the same folder at once
        fd, probe = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".probe.tmp", dir=out.parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise UserError(f"cannot write {out} ({e.strerror}): choose another output path (flag --out / config key run_dir)") from None

def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_jsonl(path: str | os.PathLike[str], rows: list[dict[str, Any]]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def read_yaml(path: str | os.PathLike[str], flag: str = "--config") -> dict[str, Any]:
    """A YAML mapping from a file; a missing file or bad YAML is a UserError naming the file (and line)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise UserError(f"config {path} does not exist ({flag})")
    class StrictLoader(yaml.SafeLoader):
        """SafeLoader that refuses a key written twice in one mapping (YAML would silently keep the last)."""

    def mapping(loader: Any, node: Any, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = loader.construct_object(key_node, deep=deep)
            if key in seen:
                raise UserError(f"{path}:{key_node.start_mark.line + 1}: config key {key!r} is written twice (first on "
                                f"line {seen[key]}): keep one")
            seen[key] = key_node.start_mark.line + 1
        return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)

    StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, mapping)
    try:
        data = yaml.load(path.read_text(), Loader=StrictLoader) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        raise UserError(f"{path}{line}: invalid YAML ({getattr(e, 'problem', e)})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping of config keys, got {type(data).__name__}")
    return data


def read_jsonl(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise UserError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
    return rows
