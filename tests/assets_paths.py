"""Checkpoints the tests load by path.

TINY_WAN: a tiny Wan2.1-architecture checkpoint with random weights in the diffusers layout, with a
real Wan VAE (16 latent channels, 4x time, 8x space); written by tools/make_demo_checkpoint.py. The
pipeline, graph, offload and preview tests use it for the Wan latent geometry; the shipped demo model
(pixel space) has its own tests in test_demo_model.py.
"""
from pathlib import Path

TINY_WAN = Path(__file__).resolve().parent / "assets" / "tiny-wan"
