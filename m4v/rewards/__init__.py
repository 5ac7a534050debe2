"""Per-frame rewards for reward fine-tuning: any callable (frames, prompts) -> (batch, frames) scores.

``frames`` is (batch, frames, 3, H, W) in [0, 1]; higher scores are better.
"""

from m4v.rewards.builtin import AttributeReward, RealismCritic, RealismReward, train_realism_critic
from m4v.rewards.clip import ClipLikeReward, clip_score_reward, hpsv2_reward
from m4v.rewards.translation import TranslationReward

__all__ = ["AttributeReward", "RealismCritic", "RealismReward", "train_realism_critic", "ClipLikeReward",
           "clip_score_reward", "hpsv2_reward", "TranslationReward"]
