"""Video files: mp4 through imageio-ffmpeg, and GIF, written atomically."""

from __future__ import annotations

import os
import tempfile
from typing import Sequence

import numpy as np


def _as_uint8_frames(frames) -> np.ndarray:
    """(F, H, W, 3) uint8 from uint8 arrays, float arrays in [0, 1], or a list of PIL images."""
    array = np.stack([np.asarray(f) for f in frames]) if isinstance(frames, Sequence) else np.asarray(frames)
    if array.ndim != 4 or array.shape[-1] != 3:
        raise ValueError(f"frames must be (frames, height, width, 3), got shape {array.shape}")
    if array.dtype != np.uint8:
        array = (np.clip(array, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    return array


def export_to_video(frames, path: str | os.PathLike, fps: int = 8) -> str:
    """Writes frames to ``path`` (.mp4 or .gif); returns the path.

    The file is written to a temporary name in the same folder and renamed into place, so a failed
    write never leaves a partial file behind.
    """
    import imageio.v2 as imageio

    path = os.fspath(path)
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in (".mp4", ".gif"):
        raise ValueError(f"export_to_video: path must end in .mp4 or .gif, got {path!r}")
    if fps <= 0:
        raise ValueError(f"export_to_video: fps must be positive, got {fps}")
    array = _as_uint8_frames(frames)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    handle, temporary = tempfile.mkstemp(suffix=suffix, dir=folder, prefix=".m4v-")
    os.close(handle)
    try:
        if suffix == ".mp4":
            # Even sizes for yuv420p; no resizing by ffmpeg (macro_block_size=1).
            if array.shape[1] % 2 or array.shape[2] % 2:
                array = np.pad(array, ((0, 0), (0, array.shape[1] % 2), (0, array.shape[2] % 2), (0, 0)), mode="edge")
            with imageio.get_writer(temporary, format="FFMPEG", fps=fps, codec="libx264", macro_block_size=1,
                                    pixelformat="yuv420p") as writer:
                for frame in array:
                    writer.append_data(frame)
        else:
            imageio.mimsave(temporary, list(array), format="GIF", duration=1000.0 / fps, loop=0)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise
    return path


__all__ = ["export_to_video"]
