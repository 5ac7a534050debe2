"""Data-parallel training: two gloo processes on the CPU take one DDP step together."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

from m4v.pipelines import M4VPipeline
from m4v.training import TrainConfig, Trainer


def _worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        config = TrainConfig(out_dir=out_dir, steps=1, batch_size=1, frames=9, precision="fp32", checkpoint_every=1,
                             log_every=1)
        trainer = Trainer(M4VPipeline.from_preset(seed=0), config)
        trainer.run(progress=False)
        save_file({f"{i}": p.detach().contiguous() for i, p in enumerate(trainer.params)},
                  os.path.join(out_dir, f"rank{rank}.safetensors"))
    finally:
        dist.destroy_process_group()


def test_two_process_gloo_step(tmp_path):
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    rank0, rank1 = (load_file(tmp_path / f"rank{r}.safetensors") for r in (0, 1))
    initial = [p.detach() for p in M4VPipeline.from_preset(seed=0).transformer.parameters()]
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0)      # averaged gradients: one model
    assert any(not torch.equal(rank0[str(i)], p) for i, p in enumerate(initial))  # and it moved
    state = load_file(tmp_path / "checkpoint" / "state.safetensors")
    assert {"generator.0", "generator.1"} <= set(state)             # both ranks can resume
    assert not torch.equal(state["generator.0"], state["generator.1"])  # and drew different batches
