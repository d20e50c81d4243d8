"""Checkpoints on disk: `RUN/train/checkpoints/step_NNNNNN/` with the weights (a LoRA adapter or full weights),
`meta.json` (step, config, losses, the inputs the run was made from) and, in the newest only by default,
`trainer_state.pt` (optimiser, scheduler and RNG states, so a resumed run continues bit for bit).

A checkpoint is complete when its meta.json exists: it is written into a `.step_*.tmp` directory that is renamed
into place, so a killed save never looks complete.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from safetensors.torch import load_file

from .errors import UserError
from .hashing import files_digest
from .models import peft_deprecation_silenced

STATE = "trainer_state.pt"


def complete(ckdir: Path) -> list[tuple[int, Path]]:
    """(step, path) of every complete checkpoint, oldest first: meta.json exists and every file it records has the
    recorded size (a truncated adapter or trainer state makes the checkpoint incomplete, so it is re-made)."""
    return sorted((int(p.name.split("_")[1]), p) for p in Path(ckdir).glob("step_*") if intact(p))


def intact(path: Path, deep: bool = False) -> bool:
    """meta.json present, and the files it lists (`files`: name -> bytes, since 2026-12-02) have those sizes (the
    optimiser state may be pruned from older checkpoints). `deep` also compares the weights' content hash with the
    one recorded at save (`weights_hash`), as loading a checkpoint does."""
    try:
        info = json.loads((path / "meta.json").read_text())
    except (OSError, ValueError):
        return False
    for name, size in info.get("files", {}).items():
        f = path / name
        present = f.is_file()
        if (not present and name != STATE) or (present and f.stat().st_size != size):
            return False
    return not deep or "weights_hash" not in info or checkpoint_hash(path, "") == info["weights_hash"]


def last(ckdir: Path) -> Path | None:
    done = complete(ckdir)
    return done[-1][1] if done else None


def meta(path: Path) -> dict[str, Any]:
    return json.loads((Path(path) / "meta.json").read_text())


def checkpoint_hash(path: Path | None, base_hash: str) -> str:
    """Content hash of a checkpoint's weights files (or of M0 itself, `base_hash`, when `path` is None)."""
    return base_hash if path is None else files_digest(sorted(Path(path).glob("*.safetensors")))


def rng_state() -> dict[str, Any]:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


def save(model: Any, opt: Any, sched: Any, ckdir: Path, step: int, info: dict[str, Any]) -> Path:
    """Write step `step` atomically (weights, trainer state with RNG, meta.json last)."""
    final = Path(ckdir) / f"step_{step:06d}"
    tmp = Path(ckdir) / f".step_{step:06d}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        model.save_pretrained(tmp)
        torch.save({"optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "step": step, "rng": rng_state()},
                   tmp / STATE)
        files = {f.name: f.stat().st_size for f in sorted(tmp.iterdir()) if f.is_file()}
        (tmp / "meta.json").write_text(json.dumps({**info, "files": files, "weights_hash": checkpoint_hash(tmp, "")},
                                                  indent=2))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # disk full or interrupted: no half-written checkpoint is left
        raise
    shutil.rmtree(final, ignore_errors=True)
    os.rename(tmp, final)
    return final


def prune(ckdir: Path, keep: int) -> int:
    """Drop optimiser state from all but the newest checkpoint, and whole checkpoints beyond the newest `keep`
    (0 keeps all). Returns the bytes the remaining checkpoints take."""
    done = complete(ckdir)
    for i, (_, path) in enumerate(done):
        newest = i == len(done) - 1
        if keep and i < len(done) - keep:
            shutil.rmtree(path)
        elif not newest and (path / STATE).exists():
            (path / STATE).unlink()
    return sum(f.stat().st_size for _, p in complete(ckdir) for f in p.iterdir())


def load_into(model: Any, opt: Any, sched: Any, path: Path, finetune: str) -> int:
    """Restore weights, optimiser, scheduler and RNG states from `path`; returns its step."""
    load_weights(model, path, finetune)
    if not (path / STATE).is_file():
        raise UserError(f"{path} has no {STATE} (only the newest checkpoint keeps it): cannot resume from it")
    try:
        state = torch.load(path / STATE, weights_only=False)
    except (OSError, RuntimeError, EOFError, ValueError) as e:
        raise UserError(f"{path / STATE} is truncated or corrupt ({e}): delete {path} and re-run training") from None
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    if "rng" in state:
        set_rng_state(state["rng"])
    return int(state["step"])


def _load(f: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(f)
    except Exception as e:  # safetensors raises its own SafetensorError on a truncated file
        raise UserError(f"{f} is truncated or corrupt ({type(e).__name__}: {e}): delete {f.parent} and re-run "
                        f"training (it resumes from the checkpoint before)") from None


def load_weights(model: Any, path: Path, finetune: str) -> None:
    """A checkpoint's trainable weights (LoRA adapter or full weights) into `model` (wrapped the same way)."""
    if not (Path(path) / "meta.json").is_file():
        raise UserError(f"{path} is not a complete checkpoint (no meta.json): name a RUN/train/checkpoints/step_N folder")
    if not intact(Path(path), deep=True):
        raise UserError(f"{path}: a weights file is missing, truncated or changed since it was saved (content hash): "
                        f"delete the checkpoint and re-run training")
    if finetune == "lora":
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(model, _load(path / "adapter_model.safetensors"))
    else:
        missing, unexpected = model.load_state_dict(_load(path / "model.safetensors"), strict=False)
        if unexpected or any("lm_head" not in k for k in missing):
            raise UserError(f"{path} does not match the model: missing {missing[:3]}, unexpected {unexpected[:3]}")
        model.tie_weights()


@contextmanager
def applied(base: Any, path: Path | None, finetune: str) -> Iterator[Any]:
    """M0 (`base.model`) with a checkpoint's weights for the duration of the block; a LoRA adapter is always
    unloaded afterwards, so `base.model` is M0 again whatever happens inside."""
    if path is None:
        yield base.model
        return
    if not intact(Path(path), deep=True):
        raise UserError(f"{path} is not a complete checkpoint: meta.json is missing, or a file it records is missing, "
                        f"truncated or changed (content hash); re-run training to re-make it")
    if finetune == "lora":
        from peft import PeftModel

        with peft_deprecation_silenced():
            model = PeftModel.from_pretrained(base.model, path).eval()
        try:
            yield model
        finally:
            base.model = model.unload()
        return
    from transformers import AutoModelForCausalLM

    yield AutoModelForCausalLM.from_pretrained(path).eval().to(next(base.model.parameters()).device)


def snapshot(model: Any, opt: Any, sched: Any, finetune: str) -> dict[str, Any]:
    """An in-memory copy of the trainable weights and the optimiser and scheduler states (the coupling monitor's last
    good state, restored by `restore` on rollback)."""
    import copy

    if finetune == "lora":
        from peft import get_peft_model_state_dict

        weights = get_peft_model_state_dict(model)
    else:
        weights = model.state_dict()
    return {"weights": {k: v.detach().clone() for k, v in weights.items()},
            "optimizer": copy.deepcopy(opt.state_dict()), "scheduler": copy.deepcopy(sched.state_dict())}


def restore(model: Any, opt: Any, sched: Any, snap: dict[str, Any], finetune: str) -> None:
    import copy

    if finetune == "lora":
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(model, snap["weights"])
    else:
        model.load_state_dict(snap["weights"])
    opt.load_state_dict(copy.deepcopy(snap["optimizer"]))
    sched.load_state_dict(copy.deepcopy(snap["scheduler"]))


def remove_after(ckdir: Path, step: int) -> list[int]:
    """Delete the complete checkpoints later than `step` (a rolled-back or stopped branch); their steps."""
    gone = [s for s, p in complete(ckdir) if s > step]
    for s in gone:
        shutil.rmtree(Path(ckdir) / f"step_{s:06d}")
    return gone


def clean_tmp(root: Path) -> list[Path]:
    """Remove what killed writes left under `root` (`.NAME.*.tmp` files, `.step_*.tmp` directories)."""
    gone = []
    for p in Path(root).rglob(".*.tmp"):
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        gone.append(p)
    return gone


def resume_point(ckdir: Path, wanted: dict[str, str], resume: bool, say: Any, config: dict[str, Any]) -> Path | None:
    """The checkpoint to resume from, after checking it was made from the same inputs (`wanted`, the run's
    `provenance.inputs`); None to start at step 0. `config` is the run's config as a dict, to name changed keys."""
    from . import provenance

    newest = last(ckdir)
    if not resume:
        if newest is not None:
            raise UserError(f"{ckdir} already holds checkpoints (newest {newest.name}): pass --resume to continue that "
                            f"run, or use a new out_dir (config key out_dir)")
        return None
    if newest is None:
        say(f"[train] --resume: nothing to resume in {ckdir} (no complete checkpoint): starting from step 0")
        return None
    diff = provenance.changed_keys(meta(newest).get("inputs"), wanted)
    if diff:
        old = meta(newest).get("config", {})
        keys = sorted(k for k in set(old) | set(config) if old.get(k) != config.get(k) and k != "keep_checkpoints")
        raise UserError(f"cannot resume from {newest}: it was made from other inputs (changed: {', '.join(diff)}"
                        f"{'; config keys ' + ', '.join(keys) if keys else ''}); use a new out_dir or delete {ckdir}")
    return newest
