"""Reading a video's frames back for counting."""
from __future__ import annotations

import os

import numpy as np


def read_video_frames(path: str | os.PathLike) -> np.ndarray:
    """uint8 RGB [T, H, W, 3]: every frame of the first video stream of `path` (PyAV), in order; T may be 0
    for a file with no decodable frame."""
    try:
        import av
    except ImportError as error:
        raise ImportError("reading mp4 needs PyAV: pip install av") from error
    with av.open(str(path), mode="r") as container:
        if not container.streams.video:
            return np.zeros((0, 0, 0, 3), dtype=np.uint8)
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(container.streams.video[0])]
    if not frames:
        return np.zeros((0, 0, 0, 3), dtype=np.uint8)
    return np.stack(frames)
