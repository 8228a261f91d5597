"""Architecture of the Wan2.1 text-to-video DiT, and its two on-disk spellings.

The official release (Wan-AI/Wan2.1-T2V-*) describes the DiT in `config.json` with Wan's own names
(`dim`, `num_heads`, ...); the diffusers release describes it in `transformer/config.json` with
diffusers' names (`num_attention_heads`, `attention_head_dim`, ...). Both map onto `WanConfig`.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import CheckpointError

# Keys of the official `config.json` that this engine reads. The official file has exactly the
# required ones (plus `_class_name`/`_diffusers_version`); the optional ones are WanModel arguments
# a hand-written config may spell out.
_OFFICIAL_REQUIRED = ("dim", "ffn_dim", "freq_dim", "in_dim", "out_dim", "num_heads", "num_layers",
                      "eps", "text_len", "model_type")
_OFFICIAL_OPTIONAL = ("text_dim", "patch_size", "qk_norm", "cross_attn_norm", "window_size")

_DIFFUSERS_REQUIRED = ("num_attention_heads", "attention_head_dim", "in_channels", "out_channels",
                       "text_dim", "freq_dim", "ffn_dim", "num_layers", "cross_attn_norm", "qk_norm",
                       "eps", "patch_size", "image_dim")
_DIFFUSERS_OPTIONAL = ("added_kv_proj_dim", "rope_max_seq_len", "pos_embed_seq_len")
# The only q/k normalisation diffusers' WanTransformer3DModel implements (RMSNorm over all heads).
_DIFFUSERS_QK_NORM = "rms_norm_across_heads"


def _check_keys(values: dict, required: tuple[str, ...], optional: tuple[str, ...], what: str) -> None:
    """Raise CheckpointError naming missing and unknown keys (keys starting with '_' are metadata)."""
    if not isinstance(values, dict):
        raise CheckpointError(f"{what} must be a JSON object, got {type(values).__name__}")
    missing = sorted(k for k in required if k not in values)
    unknown = sorted(k for k in values if not k.startswith("_") and k not in required + optional)
    if missing or unknown:
        raise CheckpointError(
            f"{what} does not describe a Wan2.1 text-to-video DiT: missing keys {missing}, unknown keys "
            f"{unknown}. Expected keys {sorted(required)} (optional: {sorted(optional)}); use the config "
            f"file that came with the weights.")


@dataclass(frozen=True)
class WanConfig:
    """Sizes of a Wan2.1 T2V DiT. Widths are channel counts; `patch_size` is (frames, height, width)
    in latent pixels; `text_len` is the number of (zero-padded) T5 tokens the cross-attention reads."""

    dim: int
    ffn_dim: int
    num_heads: int
    num_layers: int
    in_dim: int = 16
    out_dim: int = 16
    freq_dim: int = 256
    text_dim: int = 4096
    text_len: int = 512
    patch_size: tuple[int, int, int] = (1, 2, 2)
    eps: float = 1e-6
    qk_norm: bool = True
    cross_attn_norm: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "patch_size", tuple(self.patch_size))
        for name in ("dim", "ffn_dim", "num_heads", "num_layers", "in_dim", "out_dim", "freq_dim",
                     "text_dim", "text_len"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"WanConfig.{name} must be a positive int, got {value!r}")
        if len(self.patch_size) != 3 or any(
                isinstance(p, bool) or not isinstance(p, int) or p <= 0 for p in self.patch_size):
            raise ValueError(f"WanConfig.patch_size must be 3 positive ints (frames, height, width), "
                             f"got {self.patch_size!r}")
        if self.freq_dim % 2:
            raise ValueError(f"WanConfig.freq_dim must be even (cos and sin halves), got {self.freq_dim}")
        if not self.eps > 0:
            raise ValueError(f"WanConfig.eps must be > 0, got {self.eps!r}")
        if self.dim % self.num_heads:
            raise ValueError(f"WanConfig.dim ({self.dim}) must be divisible by num_heads ({self.num_heads})")
        head_dim = self.dim // self.num_heads
        if head_dim % 2 or head_dim < 6:
            raise ValueError(
                f"head_dim = dim / num_heads = {head_dim} must be even and >= 6, so that 3-axis RoPE can "
                f"split it into frame/height/width parts ({head_dim} - 4*({head_dim}//6), "
                f"2*({head_dim}//6), 2*({head_dim}//6))")

    @property
    def head_dim(self) -> int:
        """Channels per attention head."""
        return self.dim // self.num_heads

    @classmethod
    def from_official_json(cls, values: dict) -> "WanConfig":
        """From the official Wan2.1 `config.json` (dict as parsed from JSON); only model_type "t2v"."""
        what = "the official Wan2.1 config.json"
        _check_keys(values, _OFFICIAL_REQUIRED, _OFFICIAL_OPTIONAL, what)
        if values["model_type"] != "t2v":
            raise CheckpointError(
                f"{what} has model_type {values['model_type']!r}; this engine runs only text-to-video "
                f"('t2v') checkpoints such as Wan2.1-T2V-1.3B or Wan2.1-T2V-14B")
        window = values.get("window_size", [-1, -1])
        if list(window) != [-1, -1]:
            raise CheckpointError(f"{what} has window_size {window!r}; only global attention ([-1, -1]) "
                                  f"is supported")
        fields = {k: values[k] for k in _OFFICIAL_REQUIRED + _OFFICIAL_OPTIONAL
                  if k in values and k not in ("model_type", "window_size")}
        return cls(**fields)

    @classmethod
    def from_diffusers_json(cls, values: dict) -> "WanConfig":
        """From diffusers' `transformer/config.json` of WanTransformer3DModel (text-to-video only)."""
        what = "the diffusers transformer/config.json"
        _check_keys(values, _DIFFUSERS_REQUIRED, _DIFFUSERS_OPTIONAL, what)
        for key in ("image_dim", "added_kv_proj_dim", "pos_embed_seq_len"):
            if values.get(key) is not None:
                raise CheckpointError(
                    f"{what} sets {key}={values[key]!r}, which belongs to an image-conditioned (i2v/flf2v) "
                    f"model; this engine runs only text-to-video checkpoints ({key} must be null)")
        if values["qk_norm"] != _DIFFUSERS_QK_NORM:
            raise CheckpointError(f"{what} has qk_norm {values['qk_norm']!r}; only "
                                  f"{_DIFFUSERS_QK_NORM!r} (what WanTransformer3DModel implements) is supported")
        heads, head_dim = values["num_attention_heads"], values["attention_head_dim"]
        out_channels = values["out_channels"] if values["out_channels"] is not None else values["in_channels"]
        return cls(dim=heads * head_dim, ffn_dim=values["ffn_dim"], num_heads=heads,
                   num_layers=values["num_layers"], in_dim=values["in_channels"], out_dim=out_channels,
                   freq_dim=values["freq_dim"], text_dim=values["text_dim"], patch_size=values["patch_size"],
                   eps=values["eps"], qk_norm=True, cross_attn_norm=values["cross_attn_norm"])

    def to_official_json(self) -> dict:
        """The official `config.json` dict (WanModel arguments); `from_official_json` inverts it."""
        return {"_class_name": "WanModel", "model_type": "t2v", "dim": self.dim, "ffn_dim": self.ffn_dim,
                "num_heads": self.num_heads, "num_layers": self.num_layers, "in_dim": self.in_dim,
                "out_dim": self.out_dim, "freq_dim": self.freq_dim, "text_dim": self.text_dim,
                "text_len": self.text_len, "patch_size": list(self.patch_size), "eps": self.eps,
                "qk_norm": self.qk_norm, "cross_attn_norm": self.cross_attn_norm, "window_size": [-1, -1]}

    def to_diffusers_json(self) -> dict:
        """The diffusers `transformer/config.json` dict. diffusers fixes text_len at 512 and always
        normalises q/k, so other values cannot be written."""
        if not self.qk_norm:
            raise ValueError("diffusers' WanTransformer3DModel always applies q/k RMSNorm; a config with "
                             "qk_norm=False cannot be written in diffusers form")
        if self.text_len != 512:
            raise ValueError(f"diffusers' WanTransformer3DModel reads 512 text tokens; text_len={self.text_len} "
                             f"cannot be written in diffusers form")
        return {"_class_name": "WanTransformer3DModel", "patch_size": list(self.patch_size),
                "num_attention_heads": self.num_heads, "attention_head_dim": self.head_dim,
                "in_channels": self.in_dim, "out_channels": self.out_dim, "text_dim": self.text_dim,
                "freq_dim": self.freq_dim, "ffn_dim": self.ffn_dim, "num_layers": self.num_layers,
                "cross_attn_norm": self.cross_attn_norm, "qk_norm": _DIFFUSERS_QK_NORM, "eps": self.eps,
                "image_dim": None, "added_kv_proj_dim": None, "rope_max_seq_len": 1024,
                "pos_embed_seq_len": None}


WAN_1_3B = WanConfig(dim=1536, ffn_dim=8960, num_heads=12, num_layers=30)
WAN_14B = WanConfig(dim=5120, ffn_dim=13824, num_heads=40, num_layers=40)
# Test size: head_dim 16 splits into RoPE parts 8/4/4.
WAN_TINY = WanConfig(dim=64, ffn_dim=128, num_heads=4, num_layers=3, text_dim=32)

PRESETS = {"1.3B": WAN_1_3B, "14B": WAN_14B, "tiny": WAN_TINY}
