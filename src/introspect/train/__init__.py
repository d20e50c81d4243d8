"""Coupling training (explanation SFT + behavioural regulariser + concurrent objectives)."""

from .config import LoraSpec, LossWeights, TrainConfig, load_config
from .trainer import train

__all__ = ["LoraSpec", "LossWeights", "TrainConfig", "load_config", "train"]
