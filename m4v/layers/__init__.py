"""Model layers: the Mamba mixer, MM-DiM, MM-DiT, the attention baseline and embeddings."""

from m4v.layers.attention import SingleStreamAttentionBlock
from m4v.layers.context import TokenContext
from m4v.layers.embeddings import PatchEmbed, PooledTextEmbedding, TimestepEmbedding, unpatchify
from m4v.layers.mixer import MambaMixer
from m4v.layers.mm_dim import MMDiMBlock, MultiModalMamba
from m4v.layers.mm_dit import MMDiTBlock
from m4v.layers.temporal import TemporalBranch

__all__ = ["MambaMixer", "MMDiMBlock", "MultiModalMamba", "MMDiTBlock",
           "SingleStreamAttentionBlock", "TemporalBranch", "TokenContext", "TimestepEmbedding",
           "PooledTextEmbedding", "PatchEmbed", "unpatchify"]
