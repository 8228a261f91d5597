"""HostFeatureCache (the VAE decoder's causal cache in CPU memory, --offload full): one host buffer per slot,
reused while writes keep its shape and dtype, replaced when they change, the values always exact.

On the CPU the device tensors are stand-ins (`DeviceLooking`: CPU data that says it is on CUDA) and the
allocation is injected; the GPU test writes real CUDA tensors into real pinned buffers.
"""
from __future__ import annotations

import pytest
import torch

from numina_engine.engine.vae import DroppedFeatureCache, HostFeatureCache


class DeviceLooking(torch.Tensor):
    """A CPU tensor that HostFeatureCache takes for a CUDA one (it copies only tensors that are on CUDA)."""

    @property
    def is_cuda(self) -> bool:
        return True


def written(shape, dtype=torch.float32, seed=0) -> torch.Tensor:
    """A cache write stand-in: random values [1, C, frames, H, W] that claim to be on CUDA."""
    values = torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(dtype)
    return values.as_subclass(DeviceLooking)


def counting_allocator():
    """(allocate, calls): plain CPU buffers, and the (shape, dtype) of each allocation made."""
    calls = []

    def allocate(shape, dtype):
        calls.append((tuple(shape), dtype))
        return torch.empty(shape, dtype=dtype)
    return allocate, calls


def test_a_slot_keeps_its_buffer_while_the_shape_and_dtype_stay():
    allocate, calls = counting_allocator()
    cache = HostFeatureCache([None] * 3, allocate=allocate)
    one_frame, two_frames = (1, 4, 1, 3, 5), (1, 4, 2, 3, 5)

    cache[0] = first = written(one_frame, seed=1)          # the first latent frame caches 1 frame
    assert type(cache[0]) is torch.Tensor and cache[0] is not first and torch.equal(cache[0], first)
    cache[0] = second = written(two_frames, seed=2)        # then 2: a new buffer
    buffer = cache[0]
    assert torch.equal(buffer, second) and len(calls) == 2
    for seed in (3, 4):                                    # the same shape again: copied into that buffer
        cache[0] = later = written(two_frames, seed=seed)
        assert cache[0] is buffer and torch.equal(buffer, later)
    assert calls == [(one_frame, torch.float32), (two_frames, torch.float32)]

    cache[0] = half = written(two_frames, torch.bfloat16, seed=5)     # another dtype: replaced, not converted
    assert cache[0] is not buffer and cache[0].dtype == torch.bfloat16 and torch.equal(cache[0], half)
    assert len(calls) == 3


def test_slots_never_share_a_buffer_and_other_entries_are_kept_as_written():
    allocate, calls = counting_allocator()
    cache = HostFeatureCache([None] * 3, allocate=allocate)
    shape = (1, 2, 2, 3, 3)
    cache[0], cache[2] = a, b = written(shape, seed=6), written(shape, seed=7)
    assert cache[0] is not cache[2] and torch.equal(cache[0], a) and torch.equal(cache[2], b)

    cache[1] = "Rep"                                       # the upsampler's marker: stored as it is
    on_cpu = torch.ones(shape)                             # a tensor already on the CPU: not copied
    cache[1] = on_cpu
    assert cache[1] is on_cpu and len(calls) == 2
    cache[1] = "Rep"
    cache[1] = c = written(shape, seed=8)
    assert torch.equal(cache[1], c) and torch.equal(cache[0], a) and torch.equal(cache[2], b) and len(calls) == 3

    dropped = DroppedFeatureCache(cache)                   # the last latent frame reads the same entries
    dropped[0] = written(shape, seed=9)
    assert dropped[0] is None and torch.equal(dropped[2], b)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_pinned_buffers_are_reused_and_exact_in_the_decoders_read_then_write_order():
    """As a convolution does: read the entry onto the GPU, then write the next frames (non_blocking copies
    into the buffer just read); every read sees exactly the last write."""
    cache = HostFeatureCache([None])
    shape = (1, 8, 2, 16, 24)
    cache[0] = torch.zeros(shape[:2] + (1,) + shape[3:], device="cuda")
    expected, buffers = cache[0].clone(), []
    for step in range(5):
        read = cache[0].to("cuda")
        assert torch.equal(read.cpu(), expected)
        new = torch.randn(shape, device="cuda", generator=torch.Generator("cuda").manual_seed(step)) + read[:, :, -1:]
        cache[0] = new
        expected = new.cpu()
        buffers.append(cache[0])
        assert cache[0].is_pinned() and not cache[0].is_cuda
    torch.cuda.synchronize()
    assert torch.equal(cache[0], expected)
    assert all(buffer is buffers[0] for buffer in buffers)
