"""bench/memory_peak.py: a warm-up of each offload mode precedes that mode's first timed 1.3B run (the runs
themselves need CUDA; here the model, the warm-up and the timed runs are stand-ins that record the order)."""
from __future__ import annotations

import torch

from bench import memory_peak


def test_each_offload_mode_is_warmed_up_before_its_timed_runs(monkeypatch):
    calls = []
    monkeypatch.setattr(memory_peak, "random_wan", lambda *args, **kwargs: "model")

    def warm_up(model, configuration, request, *, force_modulation=False):
        calls.append(("warm-up", configuration.attention, configuration.offload, request.numina, force_modulation))

    def measured(config, numina, offload, model):
        calls.append(("timed", config, offload, numina))
        row = {"offload": offload, "mode": "NUMINA" if numina else "plain", "peak_allocated_gib": 1.0}
        return row, torch.zeros(2, 4, 4, 3, dtype=torch.uint8)

    monkeypatch.setattr(memory_peak, "timed_configuration_run", warm_up)
    monkeypatch.setattr(memory_peak, "measured", measured)
    rows = memory_peak.run_1_3b()
    assert calls == [("warm-up", "bf16", "none", True, True), ("timed", "1.3B", "none", False),
                     ("timed", "1.3B", "none", True),
                     ("warm-up", "bf16", "full", True, True), ("timed", "1.3B", "full", False),
                     ("timed", "1.3B", "full", True)]
    assert [row["video_equals_no_offload"] for row in rows if row["offload"] == "full"] == [True, True]
