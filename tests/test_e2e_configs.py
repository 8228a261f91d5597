"""bench/e2e.py's configurations without a GPU: names, argument parsing, the warm-up plan, where each
offload mode's runs find the model's parts, and which runs a configuration times."""
from __future__ import annotations

import types

import pytest
import torch

from bench import e2e
from bench.e2e_configs import (CONFIGURATIONS, Configuration, configuration_name, configurations_from_args,
                               named_configuration, warmup_plan)
from numina_engine.kernels.dispatch import KernelChoice


def configs(*names: str) -> list[Configuration]:
    return [named_configuration(name) for name in names]


def test_names_map_to_their_triples():
    expected = {"bf16": ("bf16", "off", "none"), "cache-all": ("bf16", "all", "none"), "fp8": ("fp8", "off", "none"),
                "offload-full": ("bf16", "off", "full"), "fp8-cache-all": ("fp8", "all", "none"),
                "offload-text-encoder": ("bf16", "off", "text-encoder")}
    assert CONFIGURATIONS == expected
    for name, (attention, cache_steps, offload) in expected.items():
        assert named_configuration(name) == Configuration(name, attention, cache_steps, offload)
        assert configuration_name(attention, cache_steps, offload) == name     # the flags name theirs the same way


def test_a_triple_outside_the_choices_is_refused():
    with pytest.raises(ValueError, match="offload 'some'"):
        Configuration("x", "bf16", "off", "some")


def test_parse_configs_in_the_order_given():
    _, parsed = e2e.parse_args(["--configs", "offload-full", "bf16", "cache-all"])
    assert parsed == configs("offload-full", "bf16", "cache-all")


@pytest.mark.parametrize("argv, triple", [([], ("bf16", "off", "none")),
                                          (["--cache-steps", "all"], ("bf16", "all", "none")),
                                          (["--offload", "text-encoder", "--cache-steps", "plain"],
                                           ("bf16", "plain", "text-encoder"))])
def test_without_configs_the_single_flags_make_one(argv, triple):
    args, parsed = e2e.parse_args(argv)
    assert parsed == [Configuration(configuration_name(*triple), *triple)]
    assert args.configs is None


@pytest.mark.parametrize("argv, message", [
    (["--configs", "bf16", "bf17"], "unknown configuration 'bf17'; known: bf16, cache-all, fp8"),
    (["--configs", "bf16", "--offload", "full"], "--configs names whole configurations: leave out --offload"),
    (["--configs", "fp8", "bf16", "fp8"], "--configs names fp8 more than once"),
])
def test_bad_configs_are_refused_with_a_clear_message(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        e2e.parse_args(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="refused only where there are no FP8 tensor cores")
def test_fp8_is_refused_before_the_model_is_built_without_fp8_tensor_cores(capsys):
    with pytest.raises(SystemExit):
        e2e.parse_args(["--configs", "bf16", "fp8"])
    assert "--attention fp8:" in capsys.readouterr().err


def test_one_warm_up_per_new_attention_kind_or_offload_mode():
    assert warmup_plan(configs("bf16", "cache-all", "fp8", "offload-full")) == [
        ("bf16", "none"), None, ("fp8", "none"), ("bf16", "full")]
    assert warmup_plan(configs("fp8-cache-all", "fp8", "cache-all", "bf16")) == [("fp8", "none"), None, ("bf16", "none"), None]
    assert warmup_plan(configs("offload-full", "bf16", "offload-text-encoder")) == [
        ("bf16", "full"), ("bf16", "none"), ("bf16", "text-encoder")]
    assert warmup_plan(configs("offload-full", "fp8")) == [("bf16", "full"), ("fp8", "none")]
    assert warmup_plan(configurations_from_args(None, "fp8", "all", "full")) == [("fp8", "full")]


class FakePart:
    """A model part that says where it is (`at`; the DiT's kernel choice too); `to` moves it."""
    def __init__(self):
        self.kernels = KernelChoice()
        self.at = torch.device("cpu")

    def to(self, device):
        self.at = torch.device(device)
        return self


def fake_model() -> types.SimpleNamespace:
    """A stand-in WanModel: parts on the CPU, 'the GPU' is the meta device."""
    return types.SimpleNamespace(device=torch.device("meta"), dit=FakePart(),
                                 text_encoder=types.SimpleNamespace(model=FakePart()))


@pytest.mark.parametrize("offload, encoder, dit", [("none", "meta", "meta"), ("text-encoder", "cpu", "meta"),
                                                   ("full", "cpu", "cpu")])
def test_each_offload_mode_finds_the_parts_where_its_last_video_left_them(offload, encoder, dit):
    model = fake_model()
    for before in ("none", "full", "text-encoder"):       # whatever ran before
        e2e.place_as_between_videos(model, before)
        e2e.place_as_between_videos(model, offload)
        assert model.text_encoder.model.at.type == encoder
        assert model.dit.at.type == dit


def test_a_configuration_times_plain_then_numina_with_its_own_settings(monkeypatch):
    model = fake_model()
    calls = []

    def fake_timed_run(model_, request, *, cuda_graphs, force_modulation=False, offload="none"):
        calls.append((request.numina, request.cache_steps, cuda_graphs, force_modulation, offload,
                      model_.dit.kernels.attention, model_.dit.at.type))
        return {"total_s": 1.0}

    monkeypatch.setattr(e2e, "timed_run", fake_timed_run)
    common = dict(prompt=e2e.PROMPT, seed=1, width=832, height=480, frames=81, counts=e2e.COUNTS)
    runs = e2e.time_configuration(model, named_configuration("fp8-cache-all"), common, 50, force_modulation=True,
                                  graphs_off=True)
    assert list(runs) == ["plain", "plain, graphs off", "NUMINA"]
    assert calls == [(False, "all", True, False, "none", "fp8", "meta"), (False, "all", False, False, "none", "fp8", "meta"),
                     (True, "all", True, True, "none", "fp8", "meta")]
    calls.clear()
    runs = e2e.time_configuration(model, named_configuration("offload-full"), common, 50, force_modulation=False,
                                  graphs_off=False)
    assert list(runs) == ["plain", "NUMINA"]
    assert calls == [(False, "off", True, False, "full", "bf16", "cpu"), (True, "off", True, False, "full", "bf16", "cpu")]
