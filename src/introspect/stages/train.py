"""Stage `train` of a run: train, resume or skip (`introspect run`; `introspect train` runs the trainer on a train
config alone). Checkpoints made from other inputs are moved to RUN/kept/train/ (saying which input changed), and
those of this setting are taken back from there when a setting is switched back."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from .. import provenance
from ..checkpoints import STATE, complete, meta as checkpoint_meta
from ..run_config import RunConfig


def run(cfg: RunConfig) -> Path:
    """RUN/train/checkpoints/, complete up to the config's last step (or to where the coupling monitor stopped)."""
    from ..train.trainer import train, train_inputs  # torch, peft, accelerate: loaded only when training

    tc = cfg.train_config()
    ckdir = cfg.path("train", "checkpoints")
    outputs = [ckdir, cfg.path("train", "metrics.jsonl"), cfg.path("train", "monitor_stop.json")]
    wanted = train_inputs(tc)
    done = complete(ckdir)
    if done:
        made_from = checkpoint_meta(done[-1][1]).get("inputs")
        diff = provenance.changed_keys(made_from, wanted)
        if diff:
            kept = provenance.keep(outputs, made_from, cfg.path("kept", "train"))
            print(f"[train] checkpoints in {ckdir} are stale (changed: {', '.join(diff)}): moved to {kept}")
    if not complete(ckdir) and provenance.restore(outputs, wanted, cfg.path("kept", "train")):
        print(f"[train] took back the checkpoints of this setting from {cfg.path('kept', 'train')}")
    stopped = outputs[2]
    if stopped.is_file() and json.loads(stopped.read_text()).get("inputs") == wanted:
        print(f"[train] the coupling monitor stopped this run at step {json.loads(stopped.read_text())['step']}: skip")
        return ckdir
    done = complete(ckdir)
    if done and done[-1][0] == tc.steps:
        print(f"[train] {done[-1][1]} is the last step and current: skip")
        return ckdir
    if done and not (done[-1][1] / STATE).is_file():  # its newer successor was truncated; older ones keep no state
        print(f"[train] {done[-1][1]} keeps no optimiser state (only the newest checkpoint does, and a newer one is "
              f"missing or truncated): training from scratch (same seed, same numbers)")
        for _, path in done:
            shutil.rmtree(path)
        done = []
    if not done:
        print("[train] training from scratch")
    train(tc, resume=bool(done))
    return ckdir
