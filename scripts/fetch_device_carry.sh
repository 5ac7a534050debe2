#!/usr/bin/env bash
# Fetches what device calls carry and git does not keep (both folders are git-ignored, so a fresh
# checkout lacks them): .wheels/ (the packages the device image misses, for its Python 3.12) and
# .peer/ (mamba_ssm's sdist, built on the device for the same-run comparison). Run it here, then
# pass carry: [".wheels", ".peer"] to the device calls.
set -euo pipefail
cd "$(dirname "$0")/.."
# imageio-ffmpeg: the device's imageio has no FFMPEG plugin, which the mp4 tests need.
python -m pip download -q --no-deps --only-binary :all: --python-version 3.12 --platform manylinux2014_x86_64 \
  -d .wheels safetensors einops tqdm imageio-ffmpeg
python -m pip download -q --no-deps --no-binary :all: --no-build-isolation mamba-ssm==2.3.2.post1 -d .peer
ls .wheels .peer
