"""Training: flow matching on autoregressive units, with EMA and atomic, resumable checkpoints."""

from m4v.training.trainer import TrainConfig, Trainer

__all__ = ["Trainer", "TrainConfig"]
