"""LoRA adapters: start as the identity change, train only themselves, merge exactly."""

from __future__ import annotations

import torch

from m4v.pipelines import M4VPipeline
from m4v.training import TrainConfig, Trainer
from m4v.training.lora import LoRALinear, add_lora, merge_lora


def _inputs(pipe, batch=2):
    g = torch.Generator().manual_seed(3)
    c = pipe.transformer.config
    text = pipe.text_encoder.encode(["a red circle moving left", "a blue square moving up"][:batch])
    latent = torch.randn(batch, c.latent_channels, 8, 8, generator=g)
    history = [torch.randn(batch, c.latent_channels, 8, 8, generator=g)]
    return (latent, torch.full((batch,), 0.7), text.states, text.mask, text.pooled), {"history": history}


def test_lora_starts_as_the_base_model_and_merges_exactly():
    pipe = M4VPipeline.from_preset(seed=0)
    args, kwargs = _inputs(pipe)
    with torch.no_grad():
        before = pipe.transformer(*args, **kwargs)
        params = add_lora(pipe.transformer, rank=4)
        assert torch.equal(pipe.transformer(*args, **kwargs), before)  # up starts at zero
        for p in params:
            p.normal_(0, 0.05)
        adapted = pipe.transformer(*args, **kwargs)
        assert not torch.allclose(adapted, before)
        merge_lora(pipe.transformer)
        assert not any(isinstance(m, LoRALinear) for m in pipe.transformer.modules())
        torch.testing.assert_close(pipe.transformer(*args, **kwargs), adapted, atol=1e-5, rtol=1e-5)


def test_trainer_with_lora_trains_only_the_adapters_and_exports_a_plain_pipeline(tmp_path):
    pipe = M4VPipeline.from_preset(seed=0)
    frozen = {n: p.detach().clone() for n, p in pipe.transformer.named_parameters()}
    adapters = add_lora(pipe.transformer, rank=2)
    pipe.text_encoder.requires_grad_(False)
    trainer = Trainer(pipe, TrainConfig(out_dir=str(tmp_path), steps=2, batch_size=2, frames=9, precision="fp32",
                                        ema_decay=0.0))
    assert {id(p) for p in trainer.params} == {id(p) for p in adapters}
    trainer.run(progress=False)
    for name, p in pipe.transformer.named_parameters():
        if ".down." not in name and ".up." not in name:
            assert torch.equal(p, frozen[name.replace(".base.", ".")])
    exported = M4VPipeline.from_pretrained(str(tmp_path / "checkpoint" / "pipeline"))  # loads: plain layers
    args, kwargs = _inputs(pipe)
    with torch.no_grad():
        torch.testing.assert_close(exported.transformer(*args, **kwargs), pipe.transformer(*args, **kwargs),
                                   atol=1e-5, rtol=1e-5)
