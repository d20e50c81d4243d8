"""introspect: train language models to explain their own behaviour, and check that the explanations stay true as the
model changes (introspective coupling).

The public API (imported lazily, so `introspect --help` stays fast):

    load_model(name)                     a model by registry name, local folder or hub id  (introspect.models)
    get_task(name, **options)            a counterfactual task: hint-mmlu, aita, refusal  (introspect.tasks)
    load_run_config(path, overrides)     a run config from YAML                           (introspect.run_config)
    run(cfg)                             sample -> label -> train -> evaluate -> report  (introspect.pipeline)
    TrainConfig                          a training config; introspect.train.train(cfg) trains (introspect.train)
    evaluate_one(...)                    Self vs Orig of one model on a set of pairs      (introspect.evaluate)
    verdict(...)                         the validity verdict of a result                 (introspect.validity)

The command line is `introspect` (or `python -m introspect`); the stage flow is in src/introspect/pipeline.py.
"""

from __future__ import annotations

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version as _installed
from typing import Any

try:
    __version__ = _installed("introspect")
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0.0.0+unknown"

_PUBLIC = {"load_model": "models", "get_task": "tasks", "load_run_config": "run_config", "run": "pipeline",
           "TrainConfig": "train", "evaluate_one": "evaluate", "verdict": "validity"}
__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        return getattr(import_module(f".{_PUBLIC[name]}", __name__), name)
    raise AttributeError(f"module 'introspect' has no attribute {name!r}")
