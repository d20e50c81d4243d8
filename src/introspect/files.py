"""Files on disk: atomic writes (a temp file renamed into place: nothing half-written), a writability check before
any work, and the readers of YAML configs and of row files (CSV / JSONL) with errors that name the file and line."""

from __future__ import annotations

import csv
import json
import os
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator

from .errors import UserError


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


def read_rows(path: str | os.PathLike[str], *, need: Iterable[str] = (), what: str = "") -> list[tuple[int, dict[str, Any]]]:
    """(line number, record) for every row of a CSV file (with a header) or else a JSONL file (blank lines skipped): the one
    reader of users' row files. `need`: columns every record must have (a CSV header, each JSONL object); `what`: the
    flag or option that named the file, put into each error. A missing file, non-UTF-8 text, bad quoting, bad JSON, a
    row with the wrong number of columns or a missing column is a UserError naming the file and line."""
    path, need = Path(path), tuple(need)
    hint = f" ({what})" if what else ""
    if not path.is_file():
        raise UserError(f"{path} does not exist{hint}")
    csv.field_size_limit(sys.maxsize)  # a long cell is the caller's rule to apply (e.g. max_chars), not a csv error
    try:
        if path.suffix.lower() == ".csv":
            with open(path, newline="", encoding="utf-8-sig") as f:  # -sig: a byte-order mark is not part of a key
                reader = csv.DictReader(f)
                missing = [c for c in need if c not in (reader.fieldnames or [])]
                if missing:
                    raise UserError(f"{path}:1: header must contain {', '.join(need)} (missing {', '.join(missing)})")
                rows = []
                for rec in reader:
                    if None in rec or any(v is None for v in rec.values()):
                        raise UserError(f"{path}:{reader.line_num}: wrong number of columns (the header has "
                                        f"{len(reader.fieldnames or [])})")
                    rows.append((reader.line_num, rec))
                return rows
        rows = []  # anything but .csv is read as JSON Lines (callers that allow only .csv/.jsonl check the suffix)
        with open(path, encoding="utf-8-sig") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as e:
                    raise UserError(f"{path}:{lineno}: not valid JSON ({e.msg} at column {e.colno})") from None
                missing = [c for c in need if not isinstance(rec, dict) or c not in rec]
                if missing:
                    raise UserError(f"{path}:{lineno}: expected an object with fields {', '.join(need)} "
                                    f"(missing {', '.join(missing)})")
                rows.append((lineno, rec))
        return rows
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start}); re-save it as UTF-8") from None
    except csv.Error as e:
        raise UserError(f"{path}: not readable as CSV ({e}); check its quoting") from None


def read_jsonl(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The records of a JSONL file the tool wrote (metrics.jsonl, results): read_rows without the line numbers."""
    return [rec for _, rec in read_rows(path)]
