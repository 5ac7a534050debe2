"""The ``m4v`` command line: ``python -m m4v <command>``."""

from __future__ import annotations

import argparse
import json
import sys


def _flops(args: argparse.Namespace) -> int:
    from m4v.flops import format_report, report

    result = report(frames=args.frames, height=args.height, width=args.width)
    print(json.dumps(result, indent=1) if args.json else format_report(result))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="m4v", description="M4V: fast multi-modal Mamba for text-to-video")
    commands = parser.add_subparsers(dest="command", required=True)
    flops = commands.add_parser("flops", help="mixer FLOPs of M4V vs attention (the paper's Table 4), on CPU")
    flops.add_argument("--frames", type=int, default=241)
    flops.add_argument("--height", type=int, default=768)
    flops.add_argument("--width", type=int, default=1280)
    flops.add_argument("--json", action="store_true", help="machine-readable output")
    flops.set_defaults(run=_flops)
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
