"""Reading a video's frames back for counting: an mp4 (PyAV) or a .npy of frames (`batch --video-format npy`)."""
from __future__ import annotations

import os

import numpy as np


def read_video_frames(path: str | os.PathLike) -> np.ndarray:
    """uint8 RGB [T, H, W, 3]: every frame of the first video stream of `path` (PyAV), in order, or the frames
    a .npy holds; T may be 0 for a file with no decodable frame."""
    if str(path).endswith(".npy"):
        frames = np.load(path)
        if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(f"{path} holds {frames.dtype} {list(frames.shape)}, not uint8 frames [T, H, W, 3]")
        return frames
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
