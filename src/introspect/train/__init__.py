"""Coupling training (explanation SFT + behavioural regulariser + concurrent objectives)."""

from .config import LoraSpec, LossWeights, MonitorSpec, TrainConfig, load_config
from .trainer import train

__all__ = ["LoraSpec", "LossWeights", "MonitorSpec", "TrainConfig", "load_config", "train"]
