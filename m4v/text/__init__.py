"""Text encoders: one interface returning token states, a mask and a pooled vector."""

from m4v.text.encoders import (HashingTextEncoder, HFTextEncoder, TextEmbeddings, TextEncoder, load_text_encoder,
                               minilm_text_encoder)

__all__ = ["TextEncoder", "TextEmbeddings", "HashingTextEncoder", "HFTextEncoder", "load_text_encoder",
           "minilm_text_encoder"]
