"""Content hashes, one home for each kind: a JSON-able value (`stable_hash`), a file or a set of files (`file_digest`,
`files_digest`, streamed, remembered per path/size/mtime), a model's tensors in memory (`weights_hash`).

Every hash a stage records among its inputs comes from here; the algorithms are those earlier runs recorded, so their
stored inputs stay current (a task's source files: sha256; model files and checkpoints: blake2b, 8 bytes).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

if TYPE_CHECKING:  # torch loads on first use: `introspect --help` starts in well under a second
    import torch

_CHUNK = 1 << 24
_DIGESTS: dict[tuple[str, int, int, str], str] = {}


def _hasher(algo: str) -> Any:
    return hashlib.blake2b(digest_size=8) if algo == "blake2b" else hashlib.new(algo)


def stable_hash(obj: Any) -> str:
    """Short content hash of a JSON-serialisable object (key order does not matter)."""
    blob = json.dumps(obj, sort_keys=True, ensure_ascii=False, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _update(h: Any, path: Path) -> None:
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)


def file_digest(path: str | Path, algo: str = "blake2b") -> str:
    """16 hex characters of a file's content hash, read in chunks; remembered while the file's size and mtime hold."""
    path = Path(path)
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns, algo)
    if key not in _DIGESTS:
        h = _hasher(algo)
        _update(h, path)
        _DIGESTS[key] = h.hexdigest()[:16]
    return _DIGESTS[key]


def files_digest(paths: Iterable[str | Path], algo: str = "blake2b") -> str:
    """One hash of several files: each file's name, then its content, in the order given."""
    h = _hasher(algo)
    for p in paths:
        p = Path(p)
        h.update(p.name.encode())
        _update(h, p)
    return h.hexdigest()[:16]


def weights_hash(model: torch.nn.Module) -> str:
    """Content hash of a model's parameters and buffers (names, shapes, dtypes, values)."""
    import torch

    h = hashlib.blake2b(digest_size=8)
    for name, t in sorted(model.state_dict().items()):
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
