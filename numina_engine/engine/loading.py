"""Find a Wan2.1 text-to-video checkpoint on disk and load its parts.

Two layouts are understood, with their real file names:

official (Wan-Video/Wan2.1 release folder)::

    config.json
    diffusion_pytorch_model.safetensors                 (1.3B) or
    diffusion_pytorch_model-0000i-of-0000n.safetensors
      + diffusion_pytorch_model.safetensors.index.json  (14B, sharded)
    models_t5_umt5-xxl-enc-bf16.pth
    Wan2.1_VAE.pth
    google/umt5-xxl/                                     (tokenizer folder)

diffusers (WanPipeline folder)::

    model_index.json (optional)
    transformer/  text_encoder/  tokenizer/  vae/  scheduler/

A checkpoint folder may also hold `numina_engine.json`, this engine's own sidecar with the model's
default video size, frame count, steps, a note shown to users, and NUMINA settings scaled to it.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import CheckpointError, UserInputError
from .config import WanConfig
from .model import WanDiT
from .pixel_space import CLASS_NAME as PIXEL_SPACE, PixelSpace
from .text_encoder import TextEncoder
from .vae import WanVAE
from .weights import diffusers_to_official, load_safetensors_state_dict

OFFICIAL_FILES = {
    "config": "config.json",
    "t5": "models_t5_umt5-xxl-enc-bf16.pth",
    "vae": "Wan2.1_VAE.pth",
    "tokenizer": "google/umt5-xxl",
}
DIFFUSERS_FOLDERS = ("transformer", "text_encoder", "tokenizer", "vae")
SIDECAR = "numina_engine.json"
EMBEDDED_DEFAULT = Path(__file__).resolve().parents[1] / "assets" / "counting-world"


@dataclass(frozen=True)
class LatentGeometry:
    """How a model's pixels map to its latents and tokens.

    channels: latent channels (16 for Wan2.1's VAE, 3 in pixel space); temporal_factor: frames per
    latent frame after the first (4 for Wan2.1, 1 in pixel space); spatial_factor: pixels per latent
    pixel along each side (8, or 1); patch: the DiT's (t, h, w) patch size in latent units.
    """
    channels: int = 16
    temporal_factor: int = 4
    spatial_factor: int = 8
    patch: tuple[int, int, int] = (1, 2, 2)

    @property
    def size_multiple(self) -> int:
        """Width and height must be multiples of this: one token's side in pixels."""
        return self.spatial_factor * max(self.patch[1], self.patch[2])


@dataclass
class ModelDefaults:
    """Settings a checkpoint is meant to run with (overridable per call)."""
    width: int = 832
    height: int = 480
    frames: int = 81
    steps: int = 50
    guide_scale: float = 5.0
    shift: float = 5.0
    note: str = ""
    numina: dict = field(default_factory=dict)   # NuminaConfig overrides scaled to this model
    # an exact object counter for this model's world (numina_engine/demo/counter.py COUNTERS), or None:
    # with one, report.json also says how many of each counted noun the finished video shows
    counter: str | None = None


@dataclass
class WanModel:
    """The loaded parts of one checkpoint, ready to generate with."""
    dit: WanDiT
    text_encoder: TextEncoder
    vae: WanVAE | PixelSpace
    defaults: ModelDefaults
    layout: str          # "official" or "diffusers"
    path: Path
    device: torch.device
    dtype: torch.dtype   # the DiT's compute dtype

    @property
    def geometry(self) -> LatentGeometry:
        """How this model's pixels map to latents and tokens (checked against each request)."""
        return LatentGeometry(channels=self.vae.z_dim, temporal_factor=self.vae.temporal_factor,
                              spatial_factor=self.vae.spatial_factor, patch=tuple(self.dit.config.patch_size))


def detect_layout(ckpt_dir: Path) -> str:
    """Return "official" or "diffusers"; raise CheckpointError saying what is missing otherwise."""
    if ckpt_dir.exists() and not ckpt_dir.is_dir():
        raise CheckpointError(
            f"--ckpt-dir {ckpt_dir} is a file, not a folder. Point --ckpt-dir at the top folder of a Wan2.1-T2V "
            f"checkpoint (official release or diffusers layout), or leave it out to use the embedded demo model.")
    if not ckpt_dir.is_dir():
        raise CheckpointError(
            f"checkpoint folder {ckpt_dir} does not exist. Point --ckpt-dir at a Wan2.1-T2V folder "
            f"(official release or diffusers layout), or leave it out to use the embedded demo model.")
    if (ckpt_dir / "transformer").is_dir() or (ckpt_dir / "model_index.json").is_file():
        return "diffusers"
    if (ckpt_dir / OFFICIAL_FILES["config"]).is_file():
        return "official"
    raise CheckpointError(
        f"{ckpt_dir} is neither an official Wan2.1 folder (expected {OFFICIAL_FILES['config']}, "
        f"diffusion_pytorch_model*.safetensors, {OFFICIAL_FILES['t5']}, {OFFICIAL_FILES['vae']}, "
        f"{OFFICIAL_FILES['tokenizer']}/) nor a diffusers WanPipeline folder (expected subfolders "
        f"{', '.join(DIFFUSERS_FOLDERS)}). Download the checkpoint completely and point --ckpt-dir at its top folder.")


def _read_json(path: Path, what: str) -> dict:
    if not path.is_file():
        raise CheckpointError(f"missing {path} ({what}). The checkpoint folder is incomplete: download it again.")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path} ({what}) is not valid JSON: {err}. Replace it with the original file.") from err


def read_defaults(ckpt_dir: Path) -> ModelDefaults:
    """The sidecar's defaults if present, else Wan2.1's own (832x480, 81 frames, 50 steps)."""
    sidecar = ckpt_dir / SIDECAR
    if not sidecar.is_file():
        return ModelDefaults()
    values = _read_json(sidecar, "numina-engine model defaults")
    known = set(ModelDefaults.__dataclass_fields__)
    unknown = sorted(set(values) - known)
    if unknown:
        raise CheckpointError(f"{sidecar} has unknown keys {unknown}; valid keys: {sorted(known)}")
    return ModelDefaults(**values)


def _load_dit(ckpt_dir: Path, layout: str, device: torch.device, dtype: torch.dtype) -> WanDiT:
    if layout == "official":
        config = WanConfig.from_official_json(_read_json(ckpt_dir / "config.json", "Wan2.1 DiT config"))
        state = load_safetensors_state_dict(ckpt_dir)
    else:
        folder = ckpt_dir / "transformer"
        config = WanConfig.from_diffusers_json(_read_json(folder / "config.json", "diffusers transformer config"))
        state = diffusers_to_official(load_safetensors_state_dict(folder))
    with torch.device("meta"):
        dit = WanDiT(config)
    try:
        dit.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as err:
        raise CheckpointError(
            f"the DiT weights in {ckpt_dir} do not fit the architecture its config describes ({err}). "
            f"Check that config.json belongs to these weights.") from err
    return dit.to(device=device).cast_weights(dtype).eval().requires_grad_(False)


def _load_diffusers_vae(folder: Path, device: torch.device) -> WanVAE | PixelSpace:
    """Wan's VAE (float32, as Wan runs it), or pixel space when `vae/config.json` names it."""
    config_path = folder / "config.json"
    if config_path.is_file() and _read_json(config_path, "VAE config").get("_class_name") == PIXEL_SPACE:
        return PixelSpace.from_config(_read_json(config_path, "VAE config"), config_path, device)
    return WanVAE.from_diffusers(folder, device=device, dtype=torch.float32)


def default_dtype(device: torch.device) -> torch.dtype:
    """Wan's own choice: bf16 on a GPU; fp32 on the CPU, where bf16 is slow."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def resolve_device(name: str | torch.device | None) -> torch.device:
    """`None`/"auto" picks CUDA when available; otherwise "cpu", "cuda" or "cuda:N". Any other device,
    or CUDA where PyTorch sees none, is a UserInputError that says why and what to do."""
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise UserInputError(f"--device {name} is not a device this engine runs on: use cpu, cuda or cuda:N")
    if device.type == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        if torch.version.cuda is None:
            raise UserInputError(
                f"--device {name}: this PyTorch ({torch.__version__}) is a CPU-only build. Use --device cpu, or "
                f"install a CUDA build of torch (README, Set up) to run on an NVIDIA GPU.")
        raise UserInputError(
            f"--device {name}: this PyTorch has CUDA {torch.version.cuda} but sees no GPU (no driver, no GPU, or "
            f"CUDA_VISIBLE_DEVICES hides them; `nvidia-smi` shows what the driver sees). Use --device cpu, or "
            f"run where a GPU is visible.")
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise UserInputError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                             f"cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    return device


def load_model(ckpt_dir: str | Path | None = None, device: str | torch.device | None = None,
               dtype: torch.dtype | None = None) -> WanModel:
    """Load a checkpoint (or the embedded demo model when `ckpt_dir` is None) onto `device`.

    The DiT and text encoder use `dtype` (default: bf16 on CUDA, fp32 on CPU); the VAE runs in fp32
    as Wan does.
    """
    path = EMBEDDED_DEFAULT if ckpt_dir is None else Path(ckpt_dir).expanduser().resolve()
    device = device if isinstance(device, torch.device) else resolve_device(device)
    dtype = dtype or default_dtype(device)
    layout = detect_layout(path)
    dit = _load_dit(path, layout, device, dtype)
    if layout == "official":
        text_encoder = TextEncoder.from_official(path, device=device, dtype=dtype)
        vae = WanVAE.from_official(path / OFFICIAL_FILES["vae"], device=device, dtype=torch.float32)
    else:
        text_encoder = TextEncoder.from_diffusers(path, device=device, dtype=dtype)
        vae = _load_diffusers_vae(path / "vae", device)
    return WanModel(dit=dit, text_encoder=text_encoder, vae=vae, defaults=read_defaults(path),
                    layout=layout, path=path, device=device, dtype=dtype)
