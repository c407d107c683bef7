"""A tiny class-conditional pixel-space diffusion model in a real ComfyUI architecture.

The network is ComfyUI's own SD-style ``UNetModel``
(``comfy.ldm.modules.diffusionmodules.openaimodel``) with ``SpatialTransformer`` blocks,
whose ``BasicTransformerBlock`` has ``attn1`` (self-attention) and ``attn2``
(cross-attention), wrapped as a ``comfy.model_base.BaseModel`` (EPS prediction, ComfyUI's
default discrete SD schedule: 1000 steps, "linear" betas 0.00085..0.012) inside a
``comfy.model_patcher.ModelPatcher``.  So ``comfy.sample.sample``, ``comfy.samplers``
guiders and model patches (attn1/attn2 patches and replacements, wrappers,
``optimized_attention_override``) all work on it like on SD1.5.

It works directly on 1x16x16 pixels in [-1, 1] (latent_channels=1, scale_factor 1.0),
trained on scikit-learn's 8x8 digits upsampled to 16x16 (see ``benchmarks.tiny.classifier``
and ``benchmarks.tiny.train``).

Two trained models are committed (``MODELS``): ``main`` (the one every benchmark uses by
default) and ``small``, the same layers at a third of the width (32 channels everywhere,
2 heads) trained for far fewer steps: a weaker model with visible room for guidance to
improve it.  Both have the same seven self-attention layers at the same resolutions.

Class conditioning goes through cross-attention: a learned table
``class_embedding`` of shape (11, T=4, 64) -- rows 0..9 for the digits, row 10 the
null / unconditional embedding (trained with class dropout, for CFG).  The conditioning
handed to ComfyUI is the standard ``[[tensor(1, T, 64), {}]]``.

Usage::

    from benchmarks.tiny.model import load_tiny_model
    import comfy.sample, torch
    tiny = load_tiny_model()
    latent = tiny.empty_latent(16)
    noise = comfy.sample.prepare_noise(latent, seed=0)
    out = comfy.sample.sample(tiny.model_patcher, noise, 20, 3.0, "euler", "karras",
                              tiny.conditioning(7), tiny.unconditional(), latent)
    images = tiny.to_images(out)          # (16, 1, 16, 16) in [0, 1]
    # or simply: images = tiny.sample(7, batch=16, seed=0, cfg=3.0)

Importing this module imports ComfyUI: if ``comfy`` is not importable yet, the
directory ``$COMFYUI_PATH`` (else ``~/comfy/ComfyUI``) is put on ``sys.path``; if
``comfy.cli_args`` has not been imported yet, argument parsing is disabled and, with
no CUDA device, ComfyUI is put in CPU mode.  Inside a running ComfyUI nothing is changed.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass

import torch


def _bootstrap_comfy() -> None:
    if "comfy.model_management" in sys.modules:
        return
    if importlib.util.find_spec("comfy") is None:
        path = os.environ.get("COMFYUI_PATH") or os.path.expanduser("~/comfy/ComfyUI")
        if path not in sys.path:
            sys.path.insert(0, path)
    if "comfy.cli_args" not in sys.modules:
        import comfy.options

        comfy.options.enable_args_parsing(False)
        import comfy.cli_args

        if not torch.cuda.is_available():
            comfy.cli_args.args.cpu = True


_bootstrap_comfy()

import comfy.latent_formats  # noqa: E402
import comfy.model_base  # noqa: E402
import comfy.model_management  # noqa: E402
import comfy.model_patcher  # noqa: E402
import comfy.sample  # noqa: E402
import comfy.supported_models_base  # noqa: E402

from .classifier import IMAGE_SIZE, NUM_CLASSES, WEIGHTS_DIR, load_digit_images  # noqa: E402,F401

DEFAULT_WEIGHTS = os.path.join(WEIGHTS_DIR, "tiny_digits_unet.safetensors")
SMALL_WEIGHTS = os.path.join(WEIGHTS_DIR, "tiny_digits_small_unet.safetensors")

CONTEXT_TOKENS = 4  # T: context tokens per class
CONTEXT_DIM = 64  # width of each context token
NULL_CLASS = NUM_CLASSES  # row 10 of the embedding table: unconditional
UNET_PREFIX = "model.diffusion_model."  # key prefix of the UNet in the safetensors file
EMBEDDING_KEY = "class_embedding"  # (11, T, CONTEXT_DIM) table in the safetensors file

# The UNet, ComfyUI's openaimodel.UNetModel.  Resolutions 16x16 -> 8x8 -> 4x4.
UNET_CONFIG = {
    "image_size": IMAGE_SIZE,  # informational for UNetModel
    "in_channels": 1,  # grey pixels, no VAE
    "out_channels": 1,  # eps prediction
    "model_channels": 32,  # channels: 32 @16x16, 64 @8x8, 64 @4x4 (GroupNorm(32) needs multiples of 32)
    "channel_mult": [1, 2, 2],
    "num_res_blocks": [1, 1, 1],  # one ResBlock per level (SD has 2) to keep CPU training short
    # One SpatialTransformer (depth 1: attn1 self-attention, attn2 cross-attention, ff)
    # after each ResBlock at 8x8 and 4x4 and in the middle block, none at 16x16 (SD1.5
    # instead leaves out its lowest resolution).  transformer_depth is consumed from the
    # front per input ResBlock; transformer_depth_output from the back per output ResBlock.
    # That gives 7 attn1 layers, by ComfyUI's transformer_options["block"]:
    #   ("input", 3) 8x8 = 64 tokens, ("input", 5) 4x4 = 16, ("middle", 0) 16,
    #   ("output", 0) 16, ("output", 1) 16, ("output", 2) 64, ("output", 3) 64;
    # 64 channels each, 4 heads of 16.
    "transformer_depth": [0, 1, 1],
    "transformer_depth_output": [0, 0, 1, 1, 1, 1],
    "transformer_depth_middle": 1,  # middle block: ResBlock, SpatialTransformer, ResBlock
    "use_spatial_transformer": True,
    "use_linear_in_transformer": True,  # proj_in / proj_out Linear (SD2/SDXL style)
    "context_dim": CONTEXT_DIM,
    "num_head_channels": 16,  # 64 channels -> 4 heads of 16 in every transformer
    "num_heads": -1,
    "legacy": False,
    "adm_in_channels": None,
    "use_temporal_attention": False,
    "use_temporal_resblock": False,
    "dtype": torch.float32,
}

# The weaker second model: 32 channels at every level (2 heads of 16), same layers.
SMALL_UNET_CONFIG = {**UNET_CONFIG, "channel_mult": [1, 1, 1]}

MODELS = {"main": (UNET_CONFIG, DEFAULT_WEIGHTS), "small": (SMALL_UNET_CONFIG, SMALL_WEIGHTS)}


class DigitsLatentFormat(comfy.latent_formats.LatentFormat):
    """Pixel space: one channel, no scaling."""

    scale_factor = 1.0
    latent_channels = 1
    latent_dimensions = 2


class TinyDigitsConfig(comfy.supported_models_base.BASE):
    """Model config, like the entries of comfy/supported_models.py."""

    unet_config = {"context_dim": CONTEXT_DIM, "in_channels": 1, "model_channels": 32}
    unet_extra_config = {}  # keep our head settings (BASE would force num_head_channels=64)
    sampling_settings = {}  # ComfyUI default: discrete, linear 0.00085..0.012, 1000 steps
    latent_format = DigitsLatentFormat
    memory_usage_factor = 1.0
    supported_inference_dtypes = [torch.float32]


def _init_torch_module(module: torch.nn.Module) -> None:
    """comfy.ops layers skip initialisation; run torch's own init, SD-style zero init."""
    from comfy.ldm.modules.attention import SpatialTransformer
    from comfy.ldm.modules.diffusionmodules.openaimodel import ResBlock

    for m in module.modules():
        for base in (torch.nn.Linear, torch.nn.Conv2d, torch.nn.GroupNorm, torch.nn.LayerNorm):
            if isinstance(m, base):
                base.reset_parameters(m)
                break
    for m in module.modules():  # zero_module() of the original LDM code
        if isinstance(m, ResBlock):
            torch.nn.init.zeros_(m.out_layers[-1].weight)
            torch.nn.init.zeros_(m.out_layers[-1].bias)
        elif isinstance(m, SpatialTransformer):
            torch.nn.init.zeros_(m.proj_out.weight)
            torch.nn.init.zeros_(m.proj_out.bias)
    out = module.out[-1]
    torch.nn.init.zeros_(out.weight)
    torch.nn.init.zeros_(out.bias)


def build_base_model(device: torch.device | str | None = None, unet_config: dict = UNET_CONFIG
                     ) -> comfy.model_base.BaseModel:
    """A fresh ``BaseModel`` (EPS, uninitialised weights) with ``unet_config``."""
    config = TinyDigitsConfig(unet_config)
    config.set_inference_dtype(torch.float32, None)
    return config.get_model({}, "", device=device)


def new_class_embedding(generator: torch.Generator | None = None) -> torch.Tensor:
    """Initial (11, T, CONTEXT_DIM) table, N(0, 1)."""
    return torch.randn(NUM_CLASSES + 1, CONTEXT_TOKENS, CONTEXT_DIM, generator=generator)


def new_training_model(seed: int = 0, unet_config: dict = UNET_CONFIG
                       ) -> tuple[comfy.model_base.BaseModel, torch.nn.Parameter]:
    """``(base_model, class_embedding)`` initialised for training, on CPU."""
    torch.manual_seed(seed)
    base = build_base_model(device="cpu", unet_config=unet_config)
    _init_torch_module(base.diffusion_model)
    emb = torch.nn.Parameter(new_class_embedding(torch.Generator().manual_seed(seed + 1)))
    return base, emb


def alphas_cumprod(base: comfy.model_base.BaseModel) -> torch.Tensor:
    """(1000,) alpha-bar of ComfyUI's discrete schedule, from the model's own sigmas."""
    sigmas = base.model_sampling.sigmas.float()
    return 1.0 / (1.0 + sigmas**2)


def save_weights(path: str, unet_state: dict, class_embedding: torch.Tensor, metadata: dict | None = None,
                 unet_config: dict = UNET_CONFIG) -> None:
    from safetensors.torch import save_file

    sd = {UNET_PREFIX + k: v.detach().float().contiguous().cpu() for k, v in unet_state.items()}
    sd[EMBEDDING_KEY] = class_embedding.detach().float().contiguous().cpu()
    meta = {"unet_config": json.dumps({k: v for k, v in unet_config.items() if k != "dtype"})}
    meta.update({k: str(v) for k, v in (metadata or {}).items()})
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    save_file(sd, path, metadata=meta)


@dataclass
class TinyDigits:
    """The loaded model: a ComfyUI ModelPatcher plus its class-embedding table."""

    model_patcher: comfy.model_patcher.ModelPatcher
    class_embedding: torch.Tensor  # (11, T, CONTEXT_DIM), CPU float32
    image_size: int = IMAGE_SIZE
    num_classes: int = NUM_CLASSES

    @property
    def base_model(self) -> comfy.model_base.BaseModel:
        return self.model_patcher.model

    @property
    def diffusion_model(self) -> torch.nn.Module:
        return self.model_patcher.model.diffusion_model

    def context(self, digits: int | Sequence[int] | torch.Tensor) -> torch.Tensor:
        """Raw context tokens: (1, T, C) for an int, (len, T, C) for a sequence."""
        if isinstance(digits, int):
            return self.class_embedding[digits].unsqueeze(0).clone()
        idx = torch.as_tensor(list(digits) if not torch.is_tensor(digits) else digits, dtype=torch.long)
        return self.class_embedding[idx].clone()

    def conditioning(self, digits: int | Sequence[int] | torch.Tensor) -> list:
        """ComfyUI conditioning ``[[emb, {}]]`` for one digit (emb (1, T, C), used for the
        whole batch) or for one digit per batch item (emb (B, T, C); B must equal the
        batch size -- ComfyUI repeats or truncates a cond batch to the latent batch)."""
        return [[self.context(digits), {}]]

    def unconditional(self, batch: int = 1) -> list:
        """ComfyUI conditioning with the null embedding (row 10), (batch, T, C)."""
        return [[self.class_embedding[NULL_CLASS].unsqueeze(0).repeat(batch, 1, 1).clone(), {}]]

    def empty_latent(self, batch: int) -> torch.Tensor:
        """Zeros (batch, 1, H, W): the "latent_image" for txt2img-style sampling."""
        return torch.zeros(batch, 1, self.image_size, self.image_size)

    @staticmethod
    def to_images(samples: torch.Tensor) -> torch.Tensor:
        """Model space ([-1, 1]) -> images in [0, 1], (B, 1, H, W), float32 CPU."""
        return ((samples.detach().float().cpu() + 1.0) / 2.0).clamp(0.0, 1.0)

    @staticmethod
    def from_images(images: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] -> model space [-1, 1]."""
        return images.float() * 2.0 - 1.0

    def sample(
        self,
        digits: int | Sequence[int] | None,
        batch: int | None = None,
        seed: int = 0,
        steps: int = 20,
        cfg: float = 3.0,
        sampler_name: str = "euler",
        scheduler: str = "karras",
        model_patcher: comfy.model_patcher.ModelPatcher | None = None,
        positive: list | None = None,
        negative: list | None = None,
    ) -> torch.Tensor:
        """Sample through ``comfy.sample.sample``; returns images in [0, 1].

        digits: an int (``batch`` images of that digit), a sequence (one image per
        entry), or None (unconditional).  ``model_patcher`` lets a patched clone
        (e.g. with guidance patches) be sampled instead; ``positive``/``negative``
        override the conditioning.
        """
        if digits is None or isinstance(digits, int):
            batch = batch or 1
        else:
            digits = list(digits)
            batch = len(digits)
        if positive is None:
            positive = self.unconditional(batch) if digits is None else self.conditioning(digits)
        if negative is None:
            negative = self.unconditional(batch)
        latent = self.empty_latent(batch)
        noise = comfy.sample.prepare_noise(latent, seed)
        out = comfy.sample.sample(
            model_patcher or self.model_patcher,
            noise,
            steps,
            cfg,
            sampler_name,
            scheduler,
            positive,
            negative,
            latent,
            disable_pbar=True,
            seed=seed,
        )
        return self.to_images(out)


def load_tiny_model(path: str = DEFAULT_WEIGHTS) -> TinyDigits:
    """Load trained weights into a ComfyUI ``ModelPatcher`` (device per ComfyUI); the UNet
    config comes from the file's metadata, so ``MODELS["small"][1]`` loads the same way."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(path, "pt") as f:
        stored = json.loads((f.metadata() or {}).get("unet_config", "null")) or {}
    unet_config = {**UNET_CONFIG, **stored, "dtype": torch.float32}
    sd = load_file(path)
    emb = sd.pop(EMBEDDING_KEY).float()
    unet_sd = {k[len(UNET_PREFIX) :]: v for k, v in sd.items() if k.startswith(UNET_PREFIX)}
    load_device = comfy.model_management.get_torch_device()
    offload_device = comfy.model_management.unet_offload_device()
    base = build_base_model(device=offload_device, unet_config=unet_config)
    missing, unexpected = base.diffusion_model.load_state_dict(unet_sd, strict=True)
    del missing, unexpected
    base.eval()
    patcher = comfy.model_patcher.ModelPatcher(base, load_device=load_device, offload_device=offload_device)
    return TinyDigits(model_patcher=patcher, class_embedding=emb)
