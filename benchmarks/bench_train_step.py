"""Where a training step of the tiny shapes model spends its time on the GPU, and how the step
rate scales with the batch size.

For each batch size: steps per second and videos per second of ``Trainer.train_step`` (one
process), and the step split into drawing the batch, the loss's forward and the backward plus
optimizer update (synchronised between parts). Then one torch.profiler window at the first batch
size: CUDA kernels per step and the share of the step's wall time the GPU is busy (its floor: a
step that waited on nothing but its kernels), with the top operators. The peer is the first batch
size (the shipped recipe's 64): every row's videos/s is given as a ratio to it.

    python benchmarks/bench_train_step.py --model m4v/assets/m4v-shapes \
        --config configs/shapes-train-one-stage.json [--batch-sizes 64,128,256,512] [--json out.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import torch
from _report import emit_records


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def synced(fn):
    sync()
    start = time.perf_counter()
    result = fn()
    sync()
    return result, time.perf_counter() - start


def make_trainer(model: str, config_path: str, batch_size: int, device: str):
    from m4v.pipelines import M4VPipeline
    from m4v.training.trainer import TrainConfig, Trainer

    config = dataclasses.replace(TrainConfig.from_json(config_path), batch_size=batch_size, device=device,
                                 out_dir="/tmp/bench-train-step", time_limit_s=0.0)
    return Trainer(M4VPipeline.from_pretrained(model), config)


def split_step(trainer) -> dict:
    """One step in three synchronised parts (seconds)."""
    stage = trainer.objective.draw_stage(trainer.generator)
    (video, captions, coarse), draw = synced(lambda: trainer.batch(stage))
    loss, forward = synced(lambda: trainer.loss(video, captions, coarse, stage))
    _, update = synced(lambda: trainer.optimize(loss))
    return {"draw": draw, "forward": forward, "update": update}


def time_batch_size(model: str, config_path: str, batch_size: int, steps: int, device: str):
    """(the batch size's record, its trainer)."""
    trainer = make_trainer(model, config_path, batch_size, device)
    for _ in range(5):  # warm-up: kernels' first launches, allocator growth
        trainer.train_step()
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    _, seconds = synced(lambda: [trainer.train_step() for _ in range(steps)])
    parts = [split_step(trainer) for _ in range(steps // 2)]
    mean = {k: sum(p[k] for p in parts) / len(parts) * 1e3 for k in parts[0]}
    return {"batch_size": batch_size, "steps_per_s": round(steps / seconds, 2),
            "videos_per_s": round(steps * batch_size / seconds, 1),
            "ms_draw": round(mean["draw"], 1), "ms_forward": round(mean["forward"], 1),
            "ms_update": round(mean["update"], 1),
            "peak_gib": round(torch.cuda.max_memory_allocated() / 2 ** 30, 2) if cuda else None}, trainer


def profile_steps(trainer, steps: int) -> dict:
    from torch.profiler import ProfilerActivity, profile

    sync()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with profile(activities=activities) as prof:
        start = time.perf_counter()
        for _ in range(steps):
            trainer.train_step()
        sync()
        wall = time.perf_counter() - start
    events = prof.key_averages()
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    busy = sum(e.time_range.elapsed_us() for e in kernels) / 1e6  # one stream: kernels barely overlap
    print(events.table(sort_by="cpu_time_total", row_limit=20))
    print(events.table(sort_by="device_time_total", row_limit=15))
    return {"profiled_steps": steps, "kernels_per_step": round(len(kernels) / steps),
            "gpu_busy_share": round(busy / wall, 3), "ms_per_step_profiled": round(wall / steps * 1e3, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="pipeline directory to train from")
    parser.add_argument("--config", required=True, help="training config (JSON)")
    parser.add_argument("--batch-sizes", default="64,128,256,512")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--profile-steps", type=int, default=5)
    parser.add_argument("--device", default="cuda", help="cpu only to check the script itself")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    sizes = [int(s) for s in args.batch_sizes.split(",")]
    records, first_trainer = [], None
    for size in sizes:
        record, trainer = time_batch_size(args.model, args.config, size, args.steps, args.device)
        records.append(record)
        if first_trainer is None:
            first_trainer = trainer
        else:
            del trainer
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    base = records[0]["videos_per_s"]
    print(f"{'batch':>6} {'steps/s':>8} {'videos/s':>9} {'x peer':>7} {'draw ms':>8} {'fwd ms':>7} {'upd ms':>7} {'GiB':>6}")
    for r in records:
        r["videos_per_s_vs_peer"] = round(r["videos_per_s"] / base, 2)
        print(f"{r['batch_size']:>6} {r['steps_per_s']:>8} {r['videos_per_s']:>9} {r['videos_per_s_vs_peer']:>7} "
              f"{r['ms_draw']:>8} {r['ms_forward']:>7} {r['ms_update']:>7} {str(r['peak_gib']):>6}")
    profiled = {"batch_size": sizes[0], **profile_steps(first_trainer, args.profile_steps)}
    print(f"batch {sizes[0]}: {profiled['kernels_per_step']} kernels per step, GPU busy "
          f"{profiled['gpu_busy_share']:.1%} of the step (the floor: a step bound by its kernels alone)")
    emit_records(records + [profiled], args.json)


if __name__ == "__main__":
    main()
