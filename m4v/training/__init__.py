"""Training: flow matching on autoregressive units, with EMA and atomic, resumable checkpoints;
reward fine-tuning (m4v.training.reward) and LoRA adapters (m4v.training.lora)."""

from m4v.training.trainer import TrainConfig, Trainer, initial_pipeline

__all__ = ["Trainer", "TrainConfig", "initial_pipeline"]
