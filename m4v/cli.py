"""The ``m4v`` command line: ``python -m m4v <command>``."""

from __future__ import annotations

import argparse
import json
import os
import sys

# The trained m4v-shapes pipeline that ships inside the package (configs/ and the README give the
# command that made it).
SHIPPED_MODEL = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets", "m4v-shapes")


def _flops(args: argparse.Namespace) -> int:
    from m4v.flops import format_report, report

    result = report(frames=args.frames, height=args.height, width=args.width)
    print(json.dumps(result, indent=1) if args.json else format_report(result))
    return 0


def _guidance_pair(text: str) -> tuple[float, float]:
    try:
        first, later = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"guidance must be FIRST,LATER (two numbers), got {text!r}") from None
    if first < 1 or later < 1:
        raise argparse.ArgumentTypeError(f"guidance scales must be >= 1 (1 = off), got {text!r}")
    return first, later


def _integers(text: str, what: str, minimum: int) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{what} must be comma-separated integers, got {text!r}") from None
    if any(v < minimum for v in values):
        raise argparse.ArgumentTypeError(f"{what} must be >= {minimum}, got {text!r}")
    return values


def _steps(text: str) -> tuple[int, ...]:
    return _integers(text, "steps", 1)


def _stages(text: str) -> tuple[int, ...]:
    return _integers(text, "stages", 0)


def _generate(args: argparse.Namespace) -> int:
    import time

    import torch

    from m4v.io import export_to_video
    from m4v.pipelines import M4VPipeline

    if args.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda but no CUDA device is visible")
    model = args.model or SHIPPED_MODEL
    if args.model is None and not os.path.isdir(model):
        raise ValueError(f"the shipped model is missing from {model}; pass --model DIR")
    # The shipped weights are stored in bf16; a CPU computes fastest (and exactly) in fp32.
    pipe = M4VPipeline.from_pretrained(model, device=args.device,
                                       dtype=torch.float32 if args.device == "cpu" else torch.bfloat16)
    generator = torch.Generator(device=args.device).manual_seed(args.seed)
    start = time.perf_counter()
    frames = pipe(args.prompt, negative_prompt=args.negative_prompt, num_frames=args.frames, height=args.height,
                  width=args.width, num_inference_steps=args.steps, video_num_inference_steps=args.video_steps,
                  guidance_scale=args.guidance, video_guidance_scale=args.video_guidance, generator=generator,
                  progress=not args.quiet)
    seconds = time.perf_counter() - start
    export_to_video(frames[0], args.out, fps=args.fps)
    print(f"wrote {args.out}: {args.frames} frames {args.height}x{args.width} in {seconds:.2f} s")
    return 0


def _create_tiny(args: argparse.Namespace) -> int:
    from m4v.pipelines import M4VPipeline

    M4VPipeline.from_preset(seed=args.seed).save_pretrained(args.directory)
    print(f"wrote a random m4v-tiny pipeline to {args.directory}")
    return 0


def _stage_expert(args: argparse.Namespace) -> int:
    import os

    import torch

    from m4v.models import M4VTransformer, load_transformer
    from m4v.pipelines import M4VPipeline
    from m4v.text import load_text_encoder

    base = M4VPipeline.from_pretrained(args.model)
    text_dir = os.path.join(args.expert, "text_encoder")
    if os.path.isdir(text_dir):  # a pipeline directory: its text encoder must be the base's
        theirs, ours = load_text_encoder(text_dir).state_dict(), base.text_encoder.state_dict()
        if theirs.keys() != ours.keys() or any(not torch.equal(theirs[k].float(), ours[k].float()) for k in ours):
            raise ValueError(f"{args.expert} has another text encoder than {args.model}: train the expert with "
                             "train_text_encoder false from that pipeline")
        expert_dir = os.path.join(args.expert, "transformer")
    else:
        expert_dir = args.expert
    expert = load_transformer(expert_dir)
    if not isinstance(expert, M4VTransformer):
        raise ValueError(f"{expert_dir} holds stage experts already; give one transformer")
    pipe = base.with_stage_expert(expert, args.stages)
    pipe.save_pretrained(args.out)
    print(f"wrote {args.out}: stages {list(range(pipe.scheduler.num_stages))} run experts "
          f"{list(pipe.transformer.route)}")
    return 0


def _train(args: argparse.Namespace) -> int:
    import dataclasses

    import torch

    from m4v.pipelines import M4VPipeline
    from m4v.training import TrainConfig, Trainer, initial_pipeline

    config = TrainConfig.from_json(args.config)
    if args.device:
        config = dataclasses.replace(config, device=args.device)
    # fp32 master weights, whatever dtype the starting pipeline was stored in.
    pipe = M4VPipeline.from_pretrained(args.model, dtype=torch.float32) if args.model else initial_pipeline(config)
    trainer = Trainer(pipe, config)
    if trainer.load_checkpoint():
        print(f"resuming from step {trainer.step} ({trainer.checkpoint_dir()})")
    records = trainer.run(progress=not args.quiet)
    if records:
        print(f"step {records[-1]['step']}: loss {records[-1]['loss']:.4f}; pipeline in "
              f"{trainer.checkpoint_dir()}/pipeline")
    return 0


def _reward_tune(args: argparse.Namespace) -> int:
    import dataclasses

    from m4v.training.reward import RewardTuneConfig, run_reward_tuning

    config = RewardTuneConfig.from_json(args.config)
    if args.device:
        config = dataclasses.replace(config, device=args.device)
    trainer, records = run_reward_tuning(config, progress=not args.quiet)
    if records:
        last = records[-1]
        print(f"step {last['step']}: reward {last['reward']:.4f}, flow {last['flow']:.4f}; pipeline in "
              f"{trainer.checkpoint_dir()}/pipeline")
    return 0


def _eval(args: argparse.Namespace) -> int:
    import dataclasses

    from m4v.eval import EvalConfig, Judges, evaluate
    from m4v.eval.quality import evaluate_real, evaluate_reconstruction
    from m4v.pipelines import M4VPipeline

    config = dataclasses.replace(EvalConfig(), num_videos=args.num_videos, train_frames=args.train_frames,
                                 judge_steps=args.judge_steps, critic_steps=args.judge_steps)
    judges = Judges(config, device=args.device)
    results = {"real videos (dataset)": evaluate_real(judges)}
    scales = args.guidance or [(config.guidance, config.video_guidance)]
    for index, directory in enumerate(args.model):
        pipe = M4VPipeline.from_pretrained(directory, device=args.device)
        if index == 0:  # the ceiling the (first model's) autoencoder sets
            results["real videos through the autoencoder"] = evaluate_reconstruction(judges, pipe.autoencoder)
        for first, later in scales:
            name = f"{directory} @ cfg {first:g}/{later:g}" if args.guidance else directory
            results[name] = evaluate(pipe, judges, guidance=(first, later), progress=not args.quiet)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    print(format_eval(results))
    return 0


def _probe_text(args: argparse.Namespace) -> int:
    from m4v.eval.conditioning import caption_sensitivity, format_sensitivity
    from m4v.pipelines import M4VPipeline

    reports = {directory: caption_sensitivity(M4VPipeline.from_pretrained(directory, device=args.device),
                                              num_scenes=args.num_scenes)
               for directory in args.model}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(reports, f, indent=1)
    print(format_sensitivity(reports))
    return 0


def format_eval(results: dict) -> str:
    """The eval table: attribute accuracy on the first frames, then each drift statistic as
    "early -> late" in the rollout."""
    lines = ["| videos | colour | shape | direction | all three | critic | critic in view | "
             "background error | sharpness | sharpness in view | attribute conf. | attribute conf. in view | "
             "objects in view |", "|---|" + "---|" * 12]
    for name, r in results.items():
        acc, early, late = r["attributes"]["accuracy"], r["drift"]["early"], r["drift"]["late"]
        drift = " | ".join(f"{_number(early.get(k))} -> {_number(late.get(k))}"
                           for k in ("critic", "critic_in_view", "background", "sharpness", "sharpness_in_view",
                                     "attributes", "attributes_in_view", "presence"))
        lines.append(f"| {name} | {acc['colour']:.3f} | {acc['shape']:.3f} | {acc['direction']:.3f} | "
                     f"{r['attributes']['all_correct']:.3f} | {drift} |")
    counts = [r["videos"] for r in results.values() if "videos" in r]
    if counts:  # a binomial share: at most 0.5 / sqrt(n), at p = 0.5
        lines.append(f"\nan accuracy over {min(counts)} videos has a standard error of at most "
                     f"±{0.5 / min(counts) ** 0.5:.3f}")
    reference = next((r for r in results.values() if "critic_check" in r), None)
    if reference is not None:
        check = reference["critic_check"]
        lines.append(f"\nquality critic on held-out real frames: P(real) {check['real']:.3f}; on degraded copies of "
                     f"them: {check['degraded']:.3f}")
        lines.append("\nlate frames against the real videos' late frames (model - real):")
        lines.append("| videos | " + " | ".join(_GAP_NAMES.values()) + " |")
        lines.append("|---|" + "---|" * len(_GAP_NAMES))
        real_late = reference["drift"]["late"]
        for name, r in results.items():
            if r is reference:
                continue
            late = r["drift"]["late"]
            gaps = [None if late.get(k) is None or real_late.get(k) is None else late[k] - real_late[k]
                    for k in _GAP_NAMES]
            lines.append(f"| {name} | " + " | ".join(_signed(g) for g in gaps) + " |")
    return "\n".join(lines)


_GAP_NAMES = {"critic": "critic", "critic_in_view": "critic in view", "background": "background error",
              "sharpness_in_view": "sharpness in view", "attributes_in_view": "attribute conf. in view",
              "presence": "objects in view"}


def _signed(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.3f}"


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _info(args: argparse.Namespace) -> int:
    import torch

    import m4v
    from m4v.kernels import available_backends

    print(f"m4v {m4v.__version__}, torch {torch.__version__}")
    for name, status in available_backends().items():
        print(f"  backend {name:9} {'usable' if status.usable else 'unusable'}: {status.reason}")
    devices = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    print(f"  devices: cpu{''.join(f', cuda:{i} {n}' for i, n in enumerate(devices))}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="m4v", description="M4V: fast multi-modal Mamba for text-to-video")
    commands = parser.add_subparsers(dest="command", required=True)
    gen = commands.add_parser("generate", help="text to video")
    gen.add_argument("prompt")
    gen.add_argument("--negative-prompt", default=None)
    gen.add_argument("--frames", type=int, default=33)
    gen.add_argument("--height", type=int, default=64)
    gen.add_argument("--width", type=int, default=64)
    gen.add_argument("--steps", type=_steps, default=None,
                     help="first frame, per stage, e.g. 10,10,10 (default: the model's own)")
    gen.add_argument("--video-steps", type=_steps, default=None,
                     help="later frames, per stage, e.g. 5,5,5 (default: the model's own)")
    gen.add_argument("--guidance", type=float, default=4.0)
    gen.add_argument("--video-guidance", type=float, default=3.0)
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--fps", type=int, default=8)
    gen.add_argument("--out", default="m4v.mp4", help=".mp4 or .gif")
    gen.add_argument("--model", default=None, help="a pipeline directory (default: the shipped m4v-shapes model)")
    gen.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    gen.add_argument("--quiet", action="store_true", help="no progress bar")
    gen.set_defaults(run=_generate)
    tiny = commands.add_parser("create-tiny", help="write a random m4v-tiny pipeline directory (for trying things)")
    tiny.add_argument("directory")
    tiny.add_argument("--seed", type=int, default=0)
    tiny.set_defaults(run=_create_tiny)
    expert = commands.add_parser("stage-expert", help="a pipeline whose given pyramid stages run another transformer")
    expert.add_argument("--model", required=True, help="the base pipeline directory")
    expert.add_argument("--expert", required=True,
                        help="a pipeline directory trained from the base with train_text_encoder false, or a "
                             "transformer directory")
    expert.add_argument("--stages", type=_stages, required=True, help="the stages it serves, e.g. 1,2")
    expert.add_argument("--out", required=True, help="where to write the combined pipeline")
    expert.set_defaults(run=_stage_expert)
    train = commands.add_parser("train", help="flow-matching training (resumes from out_dir/checkpoint)")
    train.add_argument("--config", required=True, help="a JSON file of m4v.training.TrainConfig fields")
    train.add_argument("--model", default=None,
                       help="start from this pipeline directory (default: from scratch, the config's preset)")
    train.add_argument("--device", choices=("cpu", "cuda"), default=None, help="overrides the config's device")
    train.add_argument("--quiet", action="store_true")
    train.set_defaults(run=_train)
    tune = commands.add_parser("reward-tune", help="reward fine-tuning on rollouts (resumes from out_dir/checkpoint)")
    tune.add_argument("--config", required=True, help="a JSON file of m4v.training.reward.RewardTuneConfig fields")
    tune.add_argument("--device", choices=("cpu", "cuda"), default=None, help="overrides the config's device")
    tune.add_argument("--quiet", action="store_true")
    tune.set_defaults(run=_reward_tune)
    evaluate = commands.add_parser("eval", help="attribute accuracy and rollout drift of pipelines")
    evaluate.add_argument("--model", action="append", required=True, help="a pipeline directory (repeatable)")
    evaluate.add_argument("--num-videos", type=int, default=48)
    evaluate.add_argument("--train-frames", type=int, default=17, help="rollouts run twice this long")
    evaluate.add_argument("--judge-steps", type=int, default=900, help="training steps of the judge and the critic")
    evaluate.add_argument("--guidance", type=_guidance_pair, action="append", default=None, metavar="FIRST,LATER",
                          help="CFG scales of the first / later frames (repeatable: each model at each; "
                               "default 4,3 as `m4v generate`)")
    evaluate.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    evaluate.add_argument("--json", default=None, help="also write the results here")
    evaluate.add_argument("--quiet", action="store_true")
    evaluate.set_defaults(run=_eval)
    probe = commands.add_parser("probe-text", help="per pyramid stage: how far each caption word moves the "
                                                   "model's estimate, against what the attribute is worth")
    probe.add_argument("--model", action="append", required=True, help="a pipeline directory (repeatable)")
    probe.add_argument("--num-scenes", type=int, default=8)
    probe.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    probe.add_argument("--json", default=None, help="also write the results here")
    probe.set_defaults(run=_probe_text)
    info = commands.add_parser("info", help="version, kernel backends and devices")
    info.set_defaults(run=_info)
    flops = commands.add_parser("flops", help="mixer FLOPs of M4V vs attention (the paper's Table 4), on CPU")
    flops.add_argument("--frames", type=int, default=241)
    flops.add_argument("--height", type=int, default=768)
    flops.add_argument("--width", type=int, default=1280)
    flops.add_argument("--json", action="store_true", help="machine-readable output")
    flops.set_defaults(run=_flops)
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, FileNotFoundError) as exc:  # bad arguments: one line, no traceback
        print(f"m4v {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
