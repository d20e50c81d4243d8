"""Coupling training (explanation SFT + behavioural regulariser + concurrent objectives).

The configs load without torch (`introspect --help` reads their defaults); `train` imports the trainer on first use."""

from typing import Any

from .config import LoraSpec, LossWeights, MonitorSpec, TrainConfig, load_config

__all__ = ["LoraSpec", "LossWeights", "MonitorSpec", "TrainConfig", "load_config", "train"]


def __getattr__(name: str) -> Any:
    if name == "train":
        from .trainer import train

        return train
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
