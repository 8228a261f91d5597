"""Countable layouts and the torch mean shift: numina_engine.numina.layout / .meanshift."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from numina_engine.numina.config import NuminaConfig
from numina_engine.numina.layout import (assign_instances, build_layouts, count_instances, focus_clusters,
                                         focus_clusters_sklearn, focus_masks, focus_masks_sklearn, layout_features,
                                         uses_self_maps)
from numina_engine.numina.meanshift import (estimate_bandwidth, estimate_bandwidth_sklearn, mean_shift,
                                            mean_shift_sklearn)

CONFIG = NuminaConfig(mode="engine")        # every point a seed, bandwidth from all points
AUTHORS = NuminaConfig(mode="authors")      # bin seeding, bandwidth from min(1000, N) sampled points


def planted_frame(h: int, w: int, k: int, g: torch.Generator, noise: float = 0.05):
    """A frame with k separated rectangular blobs (one per quadrant, >= 6 tokens each).

    Every row attends to 4 small anchor sets of background tokens: blob j with weights near
    simplex vertex j, background tokens near the centre with a smooth positional drift, so the
    rows span three principal directions and the blobs are distinct points in them.
    Returns (self map [N, N] float32, noun map [N] float32 peaked on the blobs, blob id [N]).
    """
    n, qh, qw = h * w, h // 2, w // 2
    blob = torch.zeros(h, w, dtype=torch.long)
    for j, cell in enumerate(torch.randperm(4, generator=g)[:k].tolist()):
        bh = int(torch.randint(2, qh - 2, (1,), generator=g))
        bw = int(torch.randint(3, qw - 2, (1,), generator=g))
        y = (cell // 2) * qh + 1 + int(torch.randint(0, qh - bh - 1, (1,), generator=g))
        x = (cell % 2) * qw + 1 + int(torch.randint(0, qw - bw - 1, (1,), generator=g))
        blob[y:y + bh, x:x + bw] = j + 1
    blob_id = blob.flatten()
    background = torch.nonzero(blob_id == 0)[:, 0]
    anchors = background[torch.randperm(len(background), generator=g)[:24]].reshape(4, 6)
    anchor_of = torch.full((n,), -1)
    for a in range(4):
        anchor_of[anchors[a]] = a
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    drift = torch.stack([ys, xs, -ys, -xs], dim=-1).reshape(n, 4) * 0.08 + 0.25
    vertex = torch.eye(4)[torch.randperm(4, generator=g)] * 0.8 + 0.05
    weights = torch.where((blob_id > 0)[:, None], vertex[(blob_id - 1).clamp_min(0)], drift)
    logits = torch.full((n, n), -12.0)
    is_anchor = anchor_of >= 0
    logits[:, is_anchor] = torch.log(weights[:, anchor_of[is_anchor]])
    self_map = torch.softmax(logits + noise * torch.randn(n, n, generator=g), dim=-1)
    noun = torch.where(blob_id > 0, 1.0, 0.01) * (1 + 0.3 * torch.rand(n, generator=g))
    return self_map, noun / noun.sum(), blob_id


def blob_features(frames: int, n: int, d: int, clusters: int, spread: float, g: torch.Generator) -> torch.Tensor:
    """float64 [frames, n, d]: points around `clusters` random centres in the unit cube."""
    centres = torch.rand(frames, clusters, d, generator=g, dtype=torch.float64)
    pick = torch.randint(0, clusters, (frames, n), generator=g)
    points = centres.gather(1, pick[..., None].expand(frames, n, d))
    return points + spread * torch.randn(frames, n, d, generator=g, dtype=torch.float64)


def same_partition(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether two label vectors [n] are equal up to a relabelling."""
    pairs = torch.unique(torch.stack([a, b]), dim=1).shape[1]
    return pairs == torch.unique(a).numel() == torch.unique(b).numel()


def test_planted_blobs_give_exactly_k_instances():
    g = torch.Generator().manual_seed(0)
    h, w = 11, 15
    frames = [planted_frame(h, w, f % 4 + 1, g) for f in range(24)]
    self_maps = torch.stack([f[0] for f in frames])
    noun_maps = torch.stack([f[1] for f in frames])[None]
    expected = torch.tensor([f % 4 + 1 for f in range(24)])
    labels = build_layouts(self_maps, noun_maps, (h, w), CONFIG, backend="torch")
    assert labels.shape == (1, 24, h, w) and labels.dtype == torch.int32
    assert torch.equal(count_instances(labels)[0], expected)
    for f, (_, _, blob_id) in enumerate(frames):
        for j in range(1, expected[f] + 1):             # each blob is covered by one instance
            assert torch.unique(labels[0, f].flatten()[blob_id == j]).numel() == 1
    # the scikit-learn reference gives the same layouts (a frame per K keeps the test fast)
    reference = build_layouts(self_maps[:4], noun_maps[:, :4], (h, w), CONFIG, backend="sklearn")
    assert torch.equal(reference, labels[:, :4])


def test_mean_shift_matches_sklearn_on_random_frames():
    """Equal up to relabelling on >= 95% of frames (reached: 100% of 40 frames, labels identical)."""
    g = torch.Generator().manual_seed(1)
    groups = [blob_features(10, 50, 5, 4, 0.08, g), blob_features(10, 61, 2, 3, 0.12, g),
              blob_features(10, 45, 3, 6, 0.05, g)]
    maps = torch.softmax(torch.randn(10, 7 * 9, 7 * 9, generator=g) * 2.0, dim=-1)
    groups.append(layout_features(maps, (7, 9)))            # features of random attention maps
    agree = exact = total = 0
    for quantile, features in zip((0.2, 0.3, 0.25, 0.2), groups):
        bandwidth = estimate_bandwidth(features, quantile)
        labels = mean_shift(features, bandwidth)
        reference = mean_shift_sklearn(features, bandwidth)
        assert labels.shape == features.shape[:2] and labels.dtype == torch.int64
        agree += sum(same_partition(a, b) for a, b in zip(labels, reference))
        exact += int((labels == reference).all(dim=1).sum())
        total += features.shape[0]
    assert agree / total >= 0.95, f"torch MeanShift equals sklearn on {agree}/{total} frames"
    assert exact >= agree - 1                                # numbering follows sklearn's too


def test_mean_shift_single_frame_and_fixed_bandwidth():
    g = torch.Generator().manual_seed(2)
    features = blob_features(1, 40, 3, 3, 0.05, g)[0].float()
    labels = mean_shift(features, 0.25)
    assert labels.shape == (40,)
    assert same_partition(labels, mean_shift_sklearn(features.double(), 0.25))
    with pytest.raises(ValueError, match="bandwidth must be > 0"):
        mean_shift(features, 0.0)
    with pytest.raises(ValueError, match="one value per frame"):
        mean_shift(features[None].expand(3, -1, -1), torch.tensor([0.2, 0.3]))


@pytest.mark.parametrize("quantile", [0.0, 0.013, 0.2, 0.5, 1.0])
def test_estimate_bandwidth_matches_sklearn(quantile):
    g = torch.Generator().manual_seed(3)
    features = blob_features(4, 77, 5, 3, 0.1, g)
    ours = estimate_bandwidth(features, quantile)
    torch.testing.assert_close(ours, estimate_bandwidth_sklearn(features, quantile), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(estimate_bandwidth(features[1], quantile), ours[1], rtol=1e-12, atol=0.0)


@pytest.mark.parametrize("eps, min_samples, ratio", [(3.0, 5, 0.05), (1.5, 3, 0.3), (2.2, 6, 0.5), (0.5, 1, 0.6)])
def test_focus_masks_equal_dbscan(eps, min_samples, ratio):
    g = torch.Generator().manual_seed(int(eps * 10) + min_samples)
    h, w = 13, 17
    field = torch.nn.functional.interpolate(torch.randn(2, 12, 4, 5, generator=g), size=(h, w), mode="bicubic")
    noun_maps = torch.softmax(3.0 * field.reshape(2, 12, h * w), dim=-1)
    config = CONFIG.with_overrides(dbscan_eps=eps, dbscan_min_samples=min_samples, cross_attn_peak_ratio=ratio)
    ours = focus_masks(noun_maps, (h, w), config)
    assert ours.shape == (2, 12, h, w) and ours.dtype == torch.bool
    assert torch.equal(ours, focus_masks_sklearn(noun_maps, (h, w), config))


def same_partition_where(a: torch.Tensor, b: torch.Tensor, where: torch.Tensor) -> bool:
    """Whether label vectors a, b [n] partition the pixels `where` (bool [n]) alike."""
    return bool(where.sum() == 0) or same_partition(a[where], b[where])


@pytest.mark.parametrize("eps, min_samples, ratio", [(1.5, 3, 0.3), (1.0, 1, 0.5), (2.2, 5, 0.2), (3.0, 5, 0.05)])
def test_focus_clusters_are_the_dbscan_clusters(eps, min_samples, ratio):
    """Support = focus_masks; core pixels partitioned as scikit-learn's DBSCAN does; every pixel as
    scikit-learn assigns it except border pixels within eps of two clusters; numbered by first pixel."""
    from sklearn.cluster import DBSCAN

    g = torch.Generator().manual_seed(int(eps * 10) + min_samples + 100)
    h, w = 13, 17
    field = torch.nn.functional.interpolate(torch.randn(2, 6, 4, 5, generator=g), size=(h, w), mode="bicubic")
    noun_maps = torch.softmax(3.0 * field.reshape(2, 6, h * w), dim=-1)
    config = CONFIG.with_overrides(dbscan_eps=eps, dbscan_min_samples=min_samples, cross_attn_peak_ratio=ratio)
    ours = focus_clusters(noun_maps, (h, w), config)
    reference = focus_clusters_sklearn(noun_maps, (h, w), config)
    assert ours.shape == (2, 6, h * w) and ours.dtype == torch.int64
    assert torch.equal(ours > 0, focus_masks(noun_maps, (h, w), config).flatten(-2))
    several = 0
    for s in range(2):
        for f in range(6):
            frame = noun_maps[s, f].numpy()
            pixels = np.flatnonzero(frame >= ratio * frame.max())
            coords = np.stack([pixels // w, pixels % w], axis=1)
            fitted = DBSCAN(eps=eps, min_samples=min_samples).fit(coords)
            core = torch.zeros(h * w, dtype=torch.bool)
            core[pixels[fitted.core_sample_indices_]] = True
            assert same_partition_where(ours[s, f], reference[s, f], core)
            # border pixels reached by one cluster only are assigned alike
            distances = np.sqrt(((coords[:, None] - coords[None]) ** 2).sum(-1))
            reach = [set(fitted.labels_[(distances[i] <= eps) & np.isin(np.arange(len(pixels)),
                                                                       fitted.core_sample_indices_)])
                     for i in range(len(pixels))]
            plain = torch.zeros(h * w, dtype=torch.bool)
            plain[pixels[[len(r) == 1 for r in reach]]] = True
            assert same_partition_where(ours[s, f], reference[s, f], plain | core)
            firsts = [int(torch.nonzero(ours[s, f] == k)[0]) for k in range(1, int(ours[s, f].max()) + 1)]
            assert set(ours[s, f].tolist()) - {0} == set(range(1, len(firsts) + 1)) and firsts == sorted(firsts)
            several += len(firsts) > 1
    assert several > 0                      # some maps do have several clusters


def test_focus_clusters_give_the_planted_blobs():
    g = torch.Generator().manual_seed(7)
    h, w = 11, 15
    config = CONFIG.with_overrides(layout_instances="focus_clusters", cross_attn_peak_ratio=0.3,
                                   dbscan_eps=1.5, dbscan_min_samples=3)
    for k in (1, 2, 3, 4):
        self_map, noun, blob_id = planted_frame(h, w, k, g)
        labels = build_layouts(self_map[None], noun[None, None], (h, w), config)
        assert same_partition(labels.flatten(), blob_id)
        assert torch.equal(labels, build_layouts(self_map[None], noun[None, None], (h, w), config, backend="sklearn"))
        assert torch.equal(labels, build_layouts(None, noun[None, None], (h, w), config))     # not read
    assert AUTHORS.layout_instances == "meanshift"
    assert not uses_self_maps(config) and uses_self_maps(CONFIG) and uses_self_maps(AUTHORS)
    with pytest.raises(ValueError, match="needs the self-attention maps"):
        build_layouts(None, noun[None, None], (h, w), CONFIG)
    with pytest.raises(ValueError, match="noun_maps must be"):
        build_layouts(None, noun[None], (h, w), config)


def test_assign_instances_matches_per_frame_loop():
    g = torch.Generator().manual_seed(4)
    frames, n, nouns, tau = 6, 40, 3, CONFIG.semantic_overlap_tau
    clusters = torch.randint(0, 7, (frames, n), generator=g)
    focus = torch.rand(nouns, frames, n, generator=g) < 0.3
    ours = assign_instances(clusters, focus, tau)
    for s in range(nouns):
        for f in range(frames):
            expected = torch.zeros(n, dtype=torch.int64)
            instance = 0
            for c in sorted(set(clusters[f].tolist())):
                region = clusters[f] == c
                if int((region & focus[s, f]).sum()) / int(region.sum()) >= tau:
                    instance += 1
                    expected[region] = instance
            assert torch.equal(ours[s, f], expected)


def test_count_instances_counts_distinct_positive_labels():
    g = torch.Generator().manual_seed(5)
    labels = torch.randint(-1, 6, (2, 5, 4, 7), generator=g, dtype=torch.int32)
    labels[0, 1] = torch.where(labels[0, 1] > 3, 100 + labels[0, 1], labels[0, 1])   # added instances
    labels[1, 2] = 0
    counts = count_instances(labels)
    expected = torch.tensor([[int((torch.unique(frame) > 0).sum()) for frame in noun] for noun in labels])
    assert torch.equal(counts, expected) and counts[1, 2] == 0


def test_backends_agree_on_random_attention():
    g = torch.Generator().manual_seed(6)
    h, w, frames = 8, 11, 3
    q, k = (torch.randn(frames, h * w, 8, generator=g) for _ in range(2))
    self_maps = torch.softmax(q @ k.mT * (3.0 / math.sqrt(8)), dim=-1)
    noun_maps = torch.softmax(torch.randn(2, frames, h * w, generator=g) * 2.0, dim=-1)
    for config in (CONFIG, CONFIG.with_overrides(meanshift_bandwidth=0.35)):
        ours = build_layouts(self_maps, noun_maps, (h, w), config, backend="torch")
        assert torch.equal(ours, build_layouts(self_maps, noun_maps, (h, w), config, backend="sklearn"))
        assert torch.equal(ours, build_layouts(self_maps, noun_maps, (h, w), config))     # "auto" is torch


def test_bin_seeded_mean_shift_matches_sklearn_with_the_subsampled_bandwidth():
    """The authors' MeanShift: bin_seeding=True, bandwidth from estimate_bandwidth(quantile,
    n_samples=min(1000, N), random_state=0). Equal up to relabelling on >= 95% of frames."""
    g = torch.Generator().manual_seed(11)
    groups = [blob_features(8, 50, 5, 4, 0.08, g), blob_features(8, 61, 2, 3, 0.12, g),
              blob_features(4, 1234, 5, 5, 0.06, g)]                 # N > 1000: the subsample matters
    maps = torch.softmax(torch.randn(8, 7 * 9, 7 * 9, generator=g) * 2.0, dim=-1)
    groups.append(layout_features(maps, (7, 9)))
    agree = total = 0
    for quantile, features in zip((0.2, 0.3, 0.2, 0.2), groups):
        samples = min(1000, features.shape[1])
        bandwidth = estimate_bandwidth(features, quantile, samples)
        torch.testing.assert_close(bandwidth, estimate_bandwidth_sklearn(features, quantile, samples),
                                   rtol=1e-12, atol=1e-14)
        labels = mean_shift(features, bandwidth, bin_seeding=True)
        reference = mean_shift_sklearn(features, bandwidth, bin_seeding=True)
        agree += sum(same_partition(a, b) for a, b in zip(labels, reference))
        total += features.shape[0]
    assert agree / total >= 0.95, f"bin-seeded torch MeanShift equals sklearn on {agree}/{total} frames"


def test_bin_seeds_follow_sklearn_get_bin_seeds():
    from sklearn.cluster import get_bin_seeds

    from numina_engine.numina.meanshift import bin_seeds

    g = torch.Generator().manual_seed(12)
    features = blob_features(3, 40, 3, 3, 0.1, g)
    bw = torch.tensor([0.3, 0.05, 1e-4], dtype=torch.float64)           # the last: every point its own bin
    seeds, valid = bin_seeds(features, bw)
    for f in range(3):
        ours = seeds[f][valid[f]] if int(valid[f].sum()) < features.shape[1] else seeds[f]
        expected = torch.from_numpy(get_bin_seeds(features[f].numpy(), float(bw[f])).astype("float64"))
        key = lambda t: sorted(map(tuple, t.tolist()))
        assert ours.shape == expected.shape
        torch.testing.assert_close(torch.tensor(key(ours)), torch.tensor(key(expected)), rtol=1e-6, atol=1e-9)


def test_subsampled_bandwidth_uses_sklearn_subsample():
    g = torch.Generator().manual_seed(13)
    features = blob_features(2, 300, 5, 3, 0.1, g)
    for samples in (1, 17, 299, 300, 1000):
        torch.testing.assert_close(estimate_bandwidth(features, 0.2, samples),
                                   estimate_bandwidth_sklearn(features, 0.2, samples), rtol=1e-12, atol=1e-14)
    with pytest.raises(ValueError, match="n_samples"):
        estimate_bandwidth(features, 0.2, 0)


def test_backends_agree_in_authors_mode():
    g = torch.Generator().manual_seed(14)
    h, w, frames = 8, 11, 3
    q, k = (torch.randn(frames, h * w, 8, generator=g) for _ in range(2))
    self_maps = torch.softmax(q @ k.mT * (3.0 / math.sqrt(8)), dim=-1)
    noun_maps = torch.softmax(torch.randn(2, frames, h * w, generator=g) * 2.0, dim=-1)
    ours = build_layouts(self_maps, noun_maps, (h, w), AUTHORS, backend="torch")
    assert torch.equal(ours, build_layouts(self_maps, noun_maps, (h, w), AUTHORS, backend="sklearn"))


def test_bad_input_raises():
    self_maps = torch.softmax(torch.randn(2, 12, 12), dim=-1)
    noun_maps = torch.rand(1, 2, 12)
    with pytest.raises(ValueError, match="backend must be one of"):
        build_layouts(self_maps, noun_maps, (3, 4), CONFIG, backend="cupy")
    with pytest.raises(ValueError, match="noun_maps must be"):
        build_layouts(self_maps, noun_maps[:, :1], (3, 4), CONFIG)
    with pytest.raises(ValueError, match="does not match N=12"):
        build_layouts(self_maps, noun_maps, (2, 5), CONFIG)
    with pytest.raises(ValueError, match="meanshift_bandwidth must be > 0"):
        build_layouts(self_maps, noun_maps, (3, 4), CONFIG.with_overrides(meanshift_bandwidth=-1.0))
    with pytest.raises(ValueError, match="integer tensor"):
        count_instances(torch.rand(2, 3, 4))
    with pytest.raises(ValueError, match="quantile"):
        estimate_bandwidth(torch.rand(5, 2), 1.5)
    assert np.isfinite(float(estimate_bandwidth(torch.rand(5, 2), 0.5)))
