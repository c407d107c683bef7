"""The full-size architectures of the cost table: ComfyUI's configs, latents and text inputs.

``SEEDS[key]`` is the named checkpoint's key layout where ComfyUI's detection reads it
(``tests/tiny_checkpoints.py``'s seeds at full size, meta tensors): the config comes from the running
ComfyUI's own ``detect_unet_config`` (so a newer ComfyUI's new constructor fields come with it) and
its class from ComfyUI's own match. ``unet_config`` is what ComfyUI 0.3.64's detection returns for the
checkpoint; every host must detect those values (newer hosts may add fields), so every host counts
the same architecture. ``benchmarks.cost`` checks the config both ways: detection run on the state
dict of the model built from it gives the config back, the class included. LTXV: detection without
the checkpoint's metadata (it only adds positional-embedding settings, no widths).

Text context lengths are what ComfyUI's text encoders hand over for a prompt of up to 77 tokens
(``comfy/text_encoders``): CLIP pads to 77; SD3's T5 pads to at least 77 and is concatenated after
CLIP's 77; Flux's T5 pads to 256 (ComfyUI's ``min_length``; diffusers uses 512); Wan's umT5 to 512;
LTXV's T5 to 128. HunyuanVideo (Llama 3) and Qwen-Image (Qwen2.5-VL) are not padded and the system
template is cropped, so their length is the prompt's: 128 tokens here, a long descriptive prompt.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

import torch

from .host import TESTS

_UNET = {"use_checkpoint": False, "image_size": 32, "use_spatial_transformer": True, "legacy": False}
_WAN = {"image_model": "wan2.1", "patch_size": (1, 2, 2), "freq_dim": 256, "window_size": (-1, -1), "qk_norm": True,
        "cross_attn_norm": True, "eps": 1e-6, "model_type": "t2v"}
_SD3 = {"in_channels": 16, "patch_size": 2, "out_channels": 16, "input_size": None, "adm_in_channels": 2048,
        "qk_norm": "rms", "pos_embed_scaling_factor": None}


@dataclass(frozen=True)
class Architecture:
    key: str
    checkpoint: str
    unet_config: dict
    latent: tuple  # (channels, [frames,] height, width)
    resolution: str
    text: str
    conds: dict  # extra_conds inputs: name -> shape (a tensor of zeros) or a plain value
    extra_layers: tuple = ()  # (layer spec, why) beyond auto / first / middle / last
    notes: list = field(default_factory=list)


def _sdxl_size(px):
    return {"width": px, "height": px, "crop_w": 0, "crop_h": 0, "target_width": px, "target_height": px}


ARCHITECTURES = (
    Architecture(
        "sd15", "v1-5-pruned-emaonly.safetensors",
        {**_UNET, "adm_in_channels": None, "in_channels": 4, "out_channels": 4, "model_channels": 320,
         "num_res_blocks": [2, 2, 2, 2], "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0],
         "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0], "channel_mult": [1, 2, 4, 4],
         "transformer_depth_middle": 1, "use_linear_in_transformer": False, "context_dim": 768,
         "use_temporal_resblock": False, "use_temporal_attention": False},
        (4, 64, 64), "512x512", "77 CLIP-L tokens", {"cross_attn": (1, 77, 768)}),
    Architecture(
        "sdxl", "sd_xl_base_1.0.safetensors",
        {**_UNET, "num_classes": "sequential", "adm_in_channels": 2816, "in_channels": 4, "out_channels": 4,
         "model_channels": 320, "num_res_blocks": [2, 2, 2], "transformer_depth": [0, 0, 2, 2, 10, 10],
         "transformer_depth_output": [0, 0, 0, 2, 2, 2, 10, 10, 10], "channel_mult": [1, 2, 4],
         "transformer_depth_middle": 10, "use_linear_in_transformer": True, "context_dim": 2048,
         "use_temporal_resblock": False, "use_temporal_attention": False},
        (4, 128, 128), "1024x1024", "77 CLIP-L+G tokens",
        {"cross_attn": (1, 77, 2048), "pooled_output": (1, 1280), **_sdxl_size(1024)}),
    Architecture(
        "sd35_large", "sd3.5_large.safetensors",
        {**_SD3, "depth": 38, "context_embedder_config": {"target": "torch.nn.Linear",
                                                          "params": {"in_features": 4096, "out_features": 2432}},
         "num_patches": 36864, "pos_embed_max_size": 192, "x_block_self_attn_layers": []},
        (16, 128, 128), "1024x1024", "77 CLIP-L+G + 77 T5 tokens",
        {"cross_attn": (1, 154, 4096), "pooled_output": (1, 2048)}, (("b7-b9", "SLG / STG choice for SD3.5"),)),
    Architecture(
        "sd35_medium", "sd3.5_medium.safetensors",
        {**_SD3, "depth": 24, "context_embedder_config": {"target": "torch.nn.Linear",
                                                          "params": {"in_features": 4096, "out_features": 1536}},
         "num_patches": 147456, "pos_embed_max_size": 384, "x_block_self_attn_layers": list(range(13))},
        (16, 128, 128), "1024x1024", "77 CLIP-L+G + 77 T5 tokens",
        {"cross_attn": (1, 154, 4096), "pooled_output": (1, 2048)}, (("b7-b9", "SLG / STG choice for SD3.5"),),
        ["blocks 0-12 hold a second, image-only self-attention beside the joint one: ASAG replaces both"]),
    Architecture(
        "flux_dev", "flux1-dev.safetensors",
        {"image_model": "flux", "in_channels": 16, "patch_size": 2, "out_channels": 16, "vec_in_dim": 768,
         "context_in_dim": 4096, "hidden_size": 3072, "mlp_ratio": 4.0, "num_heads": 24, "depth": 19,
         "depth_single_blocks": 38, "axes_dim": [16, 56, 56], "theta": 10000, "qkv_bias": True,
         "guidance_embed": True},
        (16, 128, 128), "1024x1024", "256 T5 tokens",
        {"cross_attn": (1, 256, 4096), "pooled_output": (1, 768), "guidance": 3.5},
        (("single30", "a late single block"),)),
    Architecture(
        "qwen_image", "qwen_image_fp8_e4m3fn.safetensors",
        {"image_model": "qwen_image", "in_channels": 64, "num_layers": 60},
        (16, 1, 166, 166), "1328x1328", "128 Qwen2.5-VL tokens", {"cross_attn": (1, 128, 3584)}),
    Architecture(
        "wan22_14b", "wan2.2_t2v_high_noise_14B_fp8_scaled.safetensors (and _low_noise_: the same architecture)",
        {**_WAN, "dim": 5120, "out_dim": 16, "num_heads": 40, "ffn_dim": 13824, "num_layers": 40, "in_dim": 16},
        (16, 21, 60, 104), "832x480, 81 frames", "512 umT5 tokens", {"cross_attn": (1, 512, 4096)},
        (("b2", "STG's published Wan 2.1 block"), ("b9", "community STG choice"), ("b10", "community STG choice")),
        ["two experts of this architecture (high noise, then low noise): each step runs one of them, so one row "
         "covers both"]),
    Architecture(
        "wan22_5b", "wan2.2_ti2v_5B_fp16.safetensors",
        {**_WAN, "dim": 3072, "out_dim": 48, "num_heads": 24, "ffn_dim": 14336, "num_layers": 30, "in_dim": 48},
        (48, 31, 44, 80), "1280x704, 121 frames", "512 umT5 tokens", {"cross_attn": (1, 512, 4096)},
        (("b2", "STG's published Wan 2.1 block"), ("b9", "community STG choice"), ("b10", "community STG choice"))),
    Architecture(
        "ltxv", "ltx-video-2b-v0.9.5.safetensors",
        {"image_model": "ltxv", "num_layers": 28, "attention_head_dim": 64, "cross_attention_dim": 2048},
        (128, 13, 16, 24), "768x512, 97 frames", "128 T5 tokens",
        {"cross_attn": (1, 128, 4096), "attention_mask": (1, 128), "frame_rate": 25},
        (("b14", "STG's published LTXV block"), ("b19", "STG's published LTXV block"))),
    Architecture(
        "hunyuan_video", "hunyuan_video_t2v_720p_bf16.safetensors",
        {"image_model": "hunyuan_video", "in_channels": 16, "patch_size": [1, 2, 2], "out_channels": 16,
         "vec_in_dim": 768, "axes_dim": [16, 56, 56], "meanflow": False, "context_in_dim": 4096,
         "hidden_size": 3072, "mlp_ratio": 4.0, "num_heads": 24, "depth": 20, "depth_single_blocks": 40,
         "theta": 256, "qkv_bias": True, "byt5": False, "guidance_embed": True},
        (16, 33, 90, 160), "1280x720, 129 frames", "128 Llama-3 tokens",
        {"cross_attn": (1, 128, 4096), "pooled_output": (1, 768), "guidance": 6.0},
        (("double2", "STG's published HunyuanVideo block (its b2)"),)),
)

BY_KEY = {a.key: a for a in ARCHITECTURES}


def _layouts():
    """tests/tiny_checkpoints.py: the seed layouts at any size (the host tests' tiny models use them too)."""
    if TESTS not in sys.path:
        sys.path.insert(0, TESTS)
    import tiny_checkpoints

    return tiny_checkpoints


_SD3_SEED = {"context": 4096, "pooled": 2048}
_BIG_FLUX = {"hidden": 3072, "context": 4096, "pooled": 768, "mlp_ratio": 4.0, "head_dim": 128}
SEEDS = {  # the checkpoints' keys that ComfyUI's detection reads: name -> shape
    "sd15": lambda: _layouts().unet_seed(
        model_channels=320, channel_mult=(1, 2, 4, 4), num_res_blocks=(2, 2, 2, 2), context_dim=768,
        transformer_depth=(1, 1, 1, 1, 1, 1, 0, 0), transformer_depth_output=(1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0)),
    "sdxl": lambda: _layouts().unet_seed(
        model_channels=320, channel_mult=(1, 2, 4), num_res_blocks=(2, 2, 2), context_dim=2048, linear=True,
        transformer_depth=(0, 0, 2, 2, 10, 10), transformer_depth_output=(0, 0, 0, 2, 2, 2, 10, 10, 10),
        transformer_depth_middle=10, adm_in_channels=2816),
    "sd35_large": lambda: _layouts().sd3_seed(depth=38, x_block_self_attn_layers=(), patches=36864, **_SD3_SEED),
    "sd35_medium": lambda: _layouts().sd3_seed(depth=24, x_block_self_attn_layers=range(13), patches=147456,
                                               **_SD3_SEED),
    "flux_dev": lambda: _layouts().flux_seed(depth=19, single=38, **_BIG_FLUX),
    "qwen_image": lambda: _layouts().qwen_image_seed(hidden=3072, layers=60, context=3584),
    "wan22_14b": lambda: _layouts().wan_seed(dim=5120, ffn=13824, layers=40),
    "wan22_5b": lambda: _layouts().wan_seed(in_dim=48, out_dim=48, dim=3072, ffn=14336, layers=30),
    "ltxv": lambda: _layouts().ltxv_seed(dim=2048, layers=28, cross=2048),
    "hunyuan_video": lambda: _layouts().hunyuan_video_seed(depth=20, single=40, **_BIG_FLUX),
}


def detected_config(arch: Architecture) -> dict:
    """The running ComfyUI's ``detect_unet_config`` on the checkpoint's seed (meta tensors); an error
    where it differs from ``arch.unet_config`` (ComfyUI 0.3.64's detection) in a value they share."""
    import comfy.model_detection

    seed = {k: torch.empty(shape, device="meta") for k, shape in SEEDS[arch.key]().items()}
    config = comfy.model_detection.detect_unet_config(seed, "") or {}
    differs = {k: (config.get(k), v) for k, v in arch.unet_config.items() if config.get(k) != v}
    if differs:
        raise RuntimeError(f"{arch.key}: this ComfyUI detects another architecture (detected, 0.3.64's): {differs}")
    return config


def model_config(arch: Architecture, dtype=torch.bfloat16):
    """ComfyUI's config class for the architecture, chosen by ComfyUI's own matching."""
    import comfy.model_detection

    unet_config = detected_config(arch)
    config = comfy.model_detection.model_config_from_unet_config(dict(unet_config))
    if config is None:
        raise RuntimeError(f"{arch.key}: ComfyUI matches no model config to {unet_config}")
    config.set_inference_dtype(dtype, None)
    return config


def build_on(arch: Architecture, device, dtype=torch.bfloat16):
    """(config, BaseModel) with the diffusion model's weights on ``device`` (meta: no memory)."""
    config = model_config(arch, dtype)
    model = config.get_model({}, device=device)
    model.model_sampling.to(device)
    return config, model


def detection_round_trip(arch: Architecture, config, model) -> list:
    """What ComfyUI's detection reads back from the model's state dict, where it differs from the
    config detected from the checkpoint's seed (and the config class); [] when the config is a fixed point."""
    import comfy.model_detection

    expected = detected_config(arch)
    sd = model.diffusion_model.state_dict()
    detected = comfy.model_detection.detect_unet_config(sd, "")
    diffs = [f"{k}: {detected.get(k)!r} != {expected.get(k)!r}"
             for k in sorted(set(detected) | set(expected)) if detected.get(k) != expected.get(k)]
    again = comfy.model_detection.model_config_from_unet_config(detected, sd)
    if type(again) is not type(config):
        diffs.append(f"config class {type(again).__name__} != {type(config).__name__}")
    return diffs


def sdpa_transformer_options(override_key: str) -> dict:
    """transformer_options that route every ComfyUI attention call of a forward through
    ComfyUI's PyTorch SDPA function (what GPUs run), whatever backend this process picked: the
    ``optimized_attention_override`` key (``override_key``, from ``nodes/comfy_internals``) that
    ComfyUI's ``wrap_attn`` honours for every caller passing transformer_options, as all the
    families here do. On the meta device SDPA decomposes into matmuls the FLOP counter sees."""
    from comfy.ldm.modules.attention import attention_pytorch

    def to_sdpa(func, *args, **kwargs):
        return attention_pytorch(*args, **kwargs)

    return {override_key: to_sdpa}


def model_inputs(arch: Architecture, model, device):
    """(x, sigma, conds) of one conditional row: ComfyUI's extra_conds on CPU zeros of the text
    encoders' shapes, each cond processed for a batch of 1 as calc_cond_batch does, moved to ``device``."""
    cpu = torch.device("cpu")
    noise = torch.zeros((1, *arch.latent))
    kwargs = {k: (torch.zeros(v) if isinstance(v, tuple) else v) for k, v in arch.conds.items()}
    conds = model.extra_conds(device=cpu, noise=noise, **kwargs)
    processed = {k: c.process_cond(batch_size=1, area=None).cond for k, c in conds.items()}
    processed = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in processed.items()}
    return noise.to(device), torch.ones(1, device=device), processed
