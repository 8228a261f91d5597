"""Writing finished videos and images to disk atomically, and reading an mp4's basic facts back.

Every writer encodes into a temp file in the target's folder and renames it into place with `os.replace`, so a
reader sees either the old file, the complete new one, or none; on any error (a bad frame halfway, a full disk,
Ctrl-C) the temp file is deleted and the error re-raised.

mp4 encoding uses PyAV (`pip install av`, imported on first use): H.264 via libx264 at CRF 18, mb-tree off. Even sizes use
yuv420p, which every player decodes; 4:2:0 needs even sizes, so odd sizes use yuv444p (H.264 High 4:4:4), which
keeps the exact size instead of padding it. `lossless=True` writes RGB H.264 at QP 0 instead (libx264rgb): the
decoded frames equal the written ones exactly; for tiny videos (the demo model's 32x32), where 4:2:0 chroma would
smear neighbouring objects together. ffmpeg-based players (VLC, mpv, ffplay) play it; browsers may not, so the
engine writes an upscaled 4:2:0 preview beside it. The encoder runs with a fixed thread count, so the same
frames give the same bytes on every machine.
"""
from __future__ import annotations

import numbers
import os
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

MP4_CODEC = "libx264"
MP4_LOSSLESS_CODEC = "libx264rgb"
MP4_CRF = 18
MP4_PRESET = "medium"
MP4_THREADS = 4          # fixed: x264's output depends on its thread count, which otherwise follows the CPU count
# mb-tree off: with libx264's mb-tree rate control on, the same frames encoded to different bytes (decoding to
# different pixels) in about one run of five (PyAV 18, 32x32 and 64x64 clips), so videos of two identical runs
# differed; with it off every run gave the same bytes.
MP4_X264_PARAMS = "mbtree=0"

FramesLike = np.ndarray | torch.Tensor | Iterable[np.ndarray | torch.Tensor]


@contextmanager
def atomic_output(path: str | os.PathLike, suffix: str) -> Iterator[Path]:
    """Yield a fresh temp path beside `path`; move it onto `path` when the block succeeds, delete it otherwise.

    `suffix` is the temp file's extension (e.g. ".mp4"), for tools that look at it. The folder must exist.
    The result gets mode 0o644 (temp files start as 0o600).
    """
    target = Path(path)
    if not target.parent.is_dir():
        raise FileNotFoundError(f"cannot write {target}: folder {target.parent} does not exist")
    handle, temp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=f".tmp{suffix}")
    os.close(handle)
    temp = Path(temp_name)
    try:
        yield temp
        os.chmod(temp, 0o644)
        os.replace(temp, target)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def _import_av():
    try:
        import av
    except ImportError as error:
        raise ImportError("writing and reading mp4 needs PyAV: pip install av") from error
    return av


def _as_uint8_image(image: np.ndarray | torch.Tensor, what: str) -> np.ndarray:
    """A C-contiguous uint8 numpy array [H, W, 3] of `image`, or a ValueError/TypeError naming `what`."""
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().numpy()
    if not isinstance(image, np.ndarray):
        raise TypeError(f"{what} must be a numpy array or torch tensor, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise TypeError(f"{what} must be uint8, got {image.dtype}")
    if image.ndim != 3 or image.shape[2] != 3 or image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"{what} must have shape [H, W, 3] with H, W >= 1, got {tuple(image.shape)}")
    return np.ascontiguousarray(image)


def _frame_sequence(frames: FramesLike) -> Iterable[np.ndarray | torch.Tensor]:
    """Split a [T, H, W, 3] array/tensor into frames; pass any other iterable of frames through."""
    if isinstance(frames, (np.ndarray, torch.Tensor)):
        if frames.ndim != 4 or frames.shape[0] < 1:
            raise ValueError(f"frames must have shape [T, H, W, 3] with T >= 1, got {tuple(frames.shape)}")
        if isinstance(frames, torch.Tensor):
            frames = frames.detach().cpu()
        return iter(frames)
    if isinstance(frames, (str, bytes)) or not isinstance(frames, Iterable):
        raise TypeError(f"frames must be an array/tensor [T, H, W, 3] or an iterable of [H, W, 3] frames, "
                        f"got {type(frames).__name__}")
    return frames


def upscale_nearest(frames: np.ndarray, factor: int) -> np.ndarray:
    """uint8 [T, H, W, 3] -> [T, factor H, factor W, 3], each pixel a factor x factor block."""
    if factor < 1:
        raise ValueError(f"factor must be >= 1, got {factor}")
    return np.repeat(np.repeat(frames, factor, axis=1), factor, axis=2)


def write_mp4(path: str | os.PathLike, frames: FramesLike, fps: float = 16, *, lossless: bool = False) -> None:
    """Encode RGB frames to an H.264 mp4 at `path`, atomically (`lossless`: RGB at QP 0, exact).

    Args:
        path: the .mp4 to create or replace; its folder must exist.
        frames: uint8 RGB, either one array/tensor [T, H, W, 3] or an iterable of [H, W, 3] frames (all the
            size of the first one). Tensors may live on any device.
        fps: frames per second, > 0 (16 for Wan2.1).
    Raises ValueError/TypeError for bad frames (also when one turns up halfway: nothing is left on disk).
    """
    if isinstance(fps, bool) or not isinstance(fps, numbers.Real) or not 0 < fps < float("inf"):
        raise ValueError(f"fps must be a finite number > 0, got {fps!r}")
    rate = Fraction(fps).limit_denominator(1001)
    sequence = _frame_sequence(frames)
    av = _import_av()
    with atomic_output(path, ".mp4") as temp:
        with av.open(str(temp), mode="w", format="mp4", options={"movflags": "+faststart"}) as container:
            stream = None
            count = 0
            for frame in sequence:
                image = _as_uint8_image(frame, f"frame {count}")
                if stream is None:
                    height, width = image.shape[:2]
                    quality = {"qp": "0"} if lossless else {"crf": str(MP4_CRF)}
                    stream = container.add_stream(MP4_LOSSLESS_CODEC if lossless else MP4_CODEC, rate=rate,
                                                  options={**quality, "preset": MP4_PRESET,
                                                           "threads": str(MP4_THREADS),
                                                           "x264-params": MP4_X264_PARAMS})
                    stream.width, stream.height = width, height
                    if lossless:
                        stream.pix_fmt = "rgb24"
                    else:
                        stream.pix_fmt = "yuv420p" if height % 2 == 0 and width % 2 == 0 else "yuv444p"
                elif image.shape[:2] != (stream.height, stream.width):
                    raise ValueError(f"frame {count} is {image.shape[1]}x{image.shape[0]} but the video is "
                                     f"{stream.width}x{stream.height}")
                container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
                count += 1
            if stream is None:
                raise ValueError("frames is empty: a video needs at least one frame")
            container.mux(stream.encode(None))


def read_mp4_info(path: str | os.PathLike) -> tuple[int, int, int, float]:
    """(num_frames, height, width, fps) of the first video stream in `path`, counting frames by decoding them."""
    av = _import_av()
    with av.open(str(path), mode="r") as container:
        if not container.streams.video:
            raise ValueError(f"{path} has no video stream")
        stream = container.streams.video[0]
        num_frames = 0
        height = width = 0
        for frame in container.decode(stream):
            num_frames += 1
            height, width = frame.height, frame.width
        rate = stream.average_rate or stream.guessed_rate
        fps = float(rate) if rate else 0.0
    return num_frames, height, width, fps


def read_mp4_frames(path: str | os.PathLike) -> np.ndarray:
    """The decoded frames of the first video stream in `path`: uint8 RGB [T, H, W, 3]."""
    av = _import_av()
    with av.open(str(path), mode="r") as container:
        if not container.streams.video:
            raise ValueError(f"{path} has no video stream")
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(container.streams.video[0])]
    if not frames:
        raise ValueError(f"{path} has no frames")
    return np.stack(frames)
