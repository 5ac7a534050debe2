"""The M4V transformer and its configs."""

from m4v.models.configs import PRESETS, M4VConfig, get_config
from m4v.models.m4v import M4VTransformer, history_stages
from m4v.models.stage_experts import StageExperts, load_transformer

__all__ = ["M4VTransformer", "M4VConfig", "PRESETS", "get_config", "history_stages", "StageExperts", "load_transformer"]
