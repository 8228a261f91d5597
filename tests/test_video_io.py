"""Atomic mp4 writing and mp4 read-back."""
import os
import re

import numpy as np
import pytest
import torch

from numina_engine.engine.video_io import MP4_THREADS, read_mp4_frames, read_mp4_info, upscale_nearest, write_mp4
from full_stack import full_stack


@pytest.fixture
def av():
    return full_stack("av")


def random_frames(num_frames: int, height: int, width: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (num_frames, height, width, 3), dtype=np.uint8)


def smooth_frames(num_frames: int, height: int, width: int, seed: int) -> np.ndarray:
    """Random low-frequency content (what a codec is meant for): a random 3x3 grid, bilinearly upsampled."""
    coarse = torch.rand(num_frames, 3, 3, 3, generator=torch.Generator().manual_seed(seed)) * 195 + 30
    smooth = torch.nn.functional.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=True)
    return smooth.round().to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()


def decode_rgb(av, path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])


def leftovers(folder) -> list[str]:
    return sorted(os.listdir(folder))


@pytest.mark.parametrize("num_frames,height,width,fps", [
    (5, 16, 16, 16),
    (3, 15, 17, 16),     # odd both ways
    (4, 9, 6, 24),       # odd height only
    (2, 32, 48, 12.5),
    (1, 1, 1, 16),
])
def test_mp4_round_trip_keeps_count_size_and_fps(av, tmp_path, num_frames, height, width, fps):
    path = tmp_path / "video.mp4"
    write_mp4(path, random_frames(num_frames, height, width, seed=height * width), fps=fps)
    assert read_mp4_info(path) == (num_frames, height, width, pytest.approx(fps))
    assert leftovers(tmp_path) == ["video.mp4"]


@pytest.mark.parametrize("height,width,pix_fmt", [(48, 64, "yuv420p"), (33, 45, "yuv444p")])
def test_mp4_is_good_quality_and_playable_format(av, tmp_path, height, width, pix_fmt):
    frames = smooth_frames(6, height, width, seed=width)
    path = tmp_path / "smooth.mp4"
    write_mp4(path, torch.from_numpy(frames))
    decoded = decode_rgb(av, path)
    assert decoded.shape == frames.shape
    error = np.abs(decoded.astype(np.int16) - frames.astype(np.int16))
    assert error.mean() < 3.0 and error.max() <= 24, (error.mean(), error.max())
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264"
        assert stream.codec_context.pix_fmt == pix_fmt


def test_mp4_accepts_an_iterable_of_frames_and_replaces_existing_file(av, tmp_path):
    path = tmp_path / "video.mp4"
    write_mp4(path, random_frames(2, 16, 16, seed=1))
    frames = random_frames(7, 24, 32, seed=2)
    write_mp4(path, (torch.from_numpy(frame) for frame in frames), fps=8)
    assert read_mp4_info(path) == (7, 24, 32, 8.0)
    assert leftovers(tmp_path) == ["video.mp4"]


def test_mp4_bad_frame_halfway_leaves_old_file_and_no_temp(av, tmp_path):
    path = tmp_path / "video.mp4"
    write_mp4(path, random_frames(3, 16, 16, seed=3))
    good = random_frames(4, 16, 16, seed=4)
    frames = [good[0], good[1], random_frames(1, 16, 18, seed=5)[0], good[3]]
    with pytest.raises(ValueError, match="frame 2 is 18x16 but the video is 16x16"):
        write_mp4(path, frames)
    assert leftovers(tmp_path) == ["video.mp4"]
    assert read_mp4_info(path) == (3, 16, 16, 16.0)


def test_mp4_crash_halfway_leaves_nothing(av, tmp_path):
    path = tmp_path / "video.mp4"

    def crashing_frames():
        frames = random_frames(5, 16, 16, seed=6)
        yield frames[0]
        yield frames[1]
        raise RuntimeError("decoder died")

    with pytest.raises(RuntimeError, match="decoder died"):
        write_mp4(path, crashing_frames())
    assert leftovers(tmp_path) == []


def test_mp4_rejects_bad_input_without_leaving_files(av, tmp_path):
    path = tmp_path / "video.mp4"
    with pytest.raises(TypeError, match="uint8"):
        write_mp4(path, np.random.default_rng(0).random((2, 16, 16, 3)).astype(np.float32))
    with pytest.raises(ValueError, match=r"\[T, H, W, 3\]"):
        write_mp4(path, random_frames(2, 16, 16, seed=7)[0])
    with pytest.raises(ValueError, match=r"\[H, W, 3\]"):
        write_mp4(path, random_frames(2, 16, 16, seed=8)[..., :2])
    with pytest.raises(ValueError, match="at least one frame"):
        write_mp4(path, [])
    with pytest.raises(ValueError, match="fps"):
        write_mp4(path, random_frames(2, 16, 16, seed=9), fps=0)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        write_mp4(tmp_path / "missing" / "video.mp4", random_frames(2, 16, 16, seed=10))
    assert leftovers(tmp_path) == []


def test_lossless_mp4_decodes_to_exactly_the_frames(av, tmp_path):
    frames = random_frames(3, 32, 32, seed=21)
    write_mp4(tmp_path / "video.mp4", frames, lossless=True)
    np.testing.assert_array_equal(read_mp4_frames(tmp_path / "video.mp4"), frames)


def test_same_frames_give_the_same_bytes_whatever_the_cpu_count(av, tmp_path):
    """libx264 left to its default runs one slice thread per CPU it may use, and its bytes depend on the thread
    count; the encoder is opened with MP4_THREADS, so one CPU or all of them give the same bytes. 256 rows: x264
    caps slice threads by the frame's macroblock rows (64 rows would be one thread whatever was asked)."""
    if not hasattr(os, "sched_setaffinity"):
        pytest.skip("needs os.sched_setaffinity (Linux) to change the CPUs x264 sees")
    frames = smooth_frames(4, 256, 256, seed=3)
    all_cpus = os.sched_getaffinity(0)
    try:
        os.sched_setaffinity(0, {min(all_cpus)})
        write_mp4(tmp_path / "one_cpu.mp4", frames)
    finally:
        os.sched_setaffinity(0, all_cpus)
    one_cpu = (tmp_path / "one_cpu.mp4").read_bytes()
    settings = re.search(rb"x264 - core .*? threads=(\d+) ", one_cpu)    # x264's settings, written in the stream
    assert settings and int(settings.group(1)) == MP4_THREADS
    write_mp4(tmp_path / "all_cpus.mp4", frames)
    assert (tmp_path / "all_cpus.mp4").read_bytes() == one_cpu


def test_upscale_nearest_repeats_each_pixel_as_a_block():
    frames = random_frames(2, 3, 5, seed=4)
    big = upscale_nearest(frames, 4)
    assert big.shape == (2, 12, 20, 3)
    for y, x in [(0, 0), (5, 9), (11, 19)]:
        np.testing.assert_array_equal(big[:, y, x], frames[:, y // 4, x // 4])
