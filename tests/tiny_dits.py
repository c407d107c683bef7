"""Tiny random-weight instances of more of ComfyUI's DiT architectures, for host tests.

Each builder is a tiny checkpoint in the family's real key layout, detected and loaded by ComfyUI
(``tests/tiny_checkpoints.py``: the seeds, the hand values detection cannot give for tiny widths,
deterministic weights, the loader).

``conditioning`` and ``latent`` give each family's inputs in the format its model_base
class's ``extra_conds`` and its latent_format expect: video models take 5-D latents
(B, C, T, H, W); LTXV, Mochi and Lumina 2 read a text attention mask; HunyuanVideo and
HiDream a pooled text vector; HiDream a stack of Llama-3 hidden states.

For video workflows: the two Wan 2.2 14B experts, Wan 2.1 image-to-video, and the encoders its
nodes take (ComfyUI's own Wan 2.1 / 2.2 and LTXV VAEs and CLIP vision model at tiny widths).
"""

from __future__ import annotations

import json
import os
import tempfile
from unittest import mock

import tiny_checkpoints
import torch
from tiny_checkpoints import CONTEXT, HIDREAM_LLAMA_LAYERS, POOLED  # noqa: F401  (the tests' widths)
from tiny_models import _init_weights


def chroma(seed=0, dtype=torch.float32):
    """Chroma: Flux's double + single stream blocks, modulations from a distilled approximator."""
    return tiny_checkpoints.build("chroma", seed=seed, dtype=dtype)


def auraflow(seed=0, dtype=torch.float32):
    """AuraFlow: MMDiT double layers (joint text+image) then single layers."""
    return tiny_checkpoints.build("auraflow", seed=seed, dtype=dtype)


def hunyuan_dit(seed=0, dtype=torch.float32):
    """HunyuanDiT 1.2: self-attention + CLIP/mT5 cross-attention blocks with long skips."""
    return tiny_checkpoints.build("hunyuan_dit", seed=seed, dtype=dtype)


def lumina2(seed=0, dtype=torch.float32):
    """Lumina 2 (NextDiT): noise/context refiners, then joint transformer ``layers``."""
    return tiny_checkpoints.build("lumina2", seed=seed, dtype=dtype)


def qwen_image(seed=0, dtype=torch.float32):
    """Qwen-Image: MMDiT transformer_blocks, joint text+image attention, 3-axis RoPE."""
    return tiny_checkpoints.build("qwen_image", seed=seed, dtype=dtype)


def wan21(seed=0, dtype=torch.float32):
    """Wan 2.1 text-to-video: self-attention + text cross-attention blocks over 3-D patches."""
    return tiny_checkpoints.build("wan21", seed=seed, dtype=dtype)


def wan22(seed=0, dtype=torch.float32):
    """Wan 2.2 TI2V (5B layout): the Wan block stack on the 48-channel Wan 2.2 latent."""
    return tiny_checkpoints.build("wan22", seed=seed, dtype=dtype)


def hunyuan_video(seed=0, dtype=torch.float32):
    """HunyuanVideo: Flux-like double + single stream blocks over 3-D patches, token refiner."""
    return tiny_checkpoints.build("hunyuan_video", seed=seed, dtype=dtype)


def ltxv(seed=0, dtype=torch.float32):
    """LTX-Video: transformer_blocks with self-attention + cross-attention, 128-channel latent."""
    return tiny_checkpoints.build("ltxv", seed=seed, dtype=dtype)


def mochi(seed=0, dtype=torch.float32):
    """Genmo Mochi: asymmetric joint blocks (wide visual, narrow text stream). The block's
    visual MLP width is hard-wired to Mochi's 12288, so this is the largest tiny model."""
    return tiny_checkpoints.build("mochi", seed=seed, dtype=dtype)


def cosmos_predict2(seed=0, dtype=torch.float32):
    """Cosmos Predict2 text-to-image (MiniTrainDIT): self-attn + cross-attn + MLP ``blocks``."""
    return tiny_checkpoints.build("cosmos_predict2", seed=seed, dtype=dtype)


def hidream(seed=0, dtype=torch.float32):
    """HiDream-I1: MoE double_stream_blocks then single_stream_blocks, per-block Llama-3 features."""
    return tiny_checkpoints.build("hidream", seed=seed, dtype=dtype)


FAMILIES = {
    "chroma": chroma,
    "auraflow": auraflow,
    "hunyuan_dit": hunyuan_dit,
    "lumina2": lumina2,
    "qwen_image": qwen_image,
    "wan21": wan21,
    "wan22": wan22,
    "hunyuan_video": hunyuan_video,
    "ltxv": ltxv,
    "mochi": mochi,
    "cosmos_predict2": cosmos_predict2,
    "hidream": hidream,
}

# latent (C, T, H, W) per family; T None for image models (4-D latents)
LATENT = {
    "chroma": (16, None, 8, 8),
    "auraflow": (4, None, 8, 8),
    "hunyuan_dit": (4, None, 8, 8),
    "lumina2": (16, None, 8, 8),
    "qwen_image": (16, 1, 8, 8),  # Wan 2.1 latent format: 3 latent dimensions
    "wan21": (16, 2, 8, 8),
    "wan22": (48, 2, 8, 8),
    "hunyuan_video": (16, 2, 8, 8),
    "ltxv": (128, 2, 4, 4),  # patch size 1
    "mochi": (12, 2, 8, 8),
    "cosmos_predict2": (16, 1, 8, 8),
    "hidream": (16, None, 8, 8),
}


def conditioning(family, seed=0, batch=1, tokens=7):
    """Random positive/negative conditioning in each family's format (``extra_conds`` keys)."""
    g = torch.Generator().manual_seed(seed)

    def one():
        context = torch.randn(batch, tokens, CONTEXT, generator=g)
        extra = {}
        if family == "chroma":
            extra = {"pooled_output": None, "guidance": 0.0}
        elif family == "hunyuan_dit":
            extra = {
                "attention_mask": torch.ones(batch, tokens),
                "conditioning_mt5xl": torch.randn(batch, tokens, CONTEXT, generator=g),
                "attention_mask_mt5xl": torch.ones(batch, tokens),
            }
        elif family in ("lumina2", "ltxv", "mochi"):
            extra = {"attention_mask": torch.ones(batch, tokens, dtype=torch.long)}
        elif family == "hunyuan_video":
            extra = {"pooled_output": torch.randn(batch, POOLED, generator=g), "guidance": 6.0}
        elif family == "hidream":
            extra = {
                "pooled_output": torch.randn(batch, POOLED, generator=g),
                "conditioning_llama3": torch.randn(batch, HIDREAM_LLAMA_LAYERS, tokens, CONTEXT, generator=g),
            }
        return [[context, extra]]

    return one(), one()


def latent(family, batch=1):
    channels, frames, height, width = LATENT[family]
    shape = (batch, channels, height, width) if frames is None else (batch, channels, frames, height, width)
    return {"samples": torch.zeros(shape)}


def padded_conditioning(family, seed=0, batch=1, tokens=7, padding=3, left=False):
    """``conditioning`` whose text is ``tokens - padding`` real tokens padded to ``tokens``: the
    ``attention_mask`` ends (``left``: starts) with ``padding`` zeros, so the model builds a
    key-padding mask (Lumina 2, HunyuanVideo, LTXV: ``(mask - 1) * finfo(dtype).max``)."""
    if family not in ("lumina2", "hunyuan_video", "ltxv"):
        raise ValueError(f"padded_conditioning is for lumina2, hunyuan_video or ltxv, not {family!r}")
    keep = torch.ones(batch, tokens, dtype=torch.long)
    if left:
        keep[:, :padding] = 0
    else:
        keep[:, tokens - padding :] = 0
    pos, neg = conditioning(family, seed=seed, batch=batch, tokens=tokens)
    for cond in (pos, neg):
        cond[0][1]["attention_mask"] = keep.clone()
    return pos, neg


def wan22_14b_expert(noise, dtype=torch.float32):
    """One expert of Wan 2.2 14B text-to-video (``noise``: "high" | "low"): ComfyUI detects both
    checkpoints as WAN21_T2V, the Wan 2.1 layout on the 16-channel latent; they differ in weights."""
    return wan21(seed={"high": 1, "low": 2}[noise], dtype=dtype)


def wan21_i2v(seed=0, dtype=torch.float32):
    """Wan 2.1 image-to-video (WAN21_I2V): in_dim 36 = 16 latent + 4 mask + 16 start-image channels,
    the CLIP-vision embedding ``img_emb`` (1280 wide) and image+text cross-attention blocks."""
    return tiny_checkpoints.build("wan21_i2v", seed=seed, dtype=dtype)


CLIP_VISION_IMAGE = 28  # pixels: 2 x 2 patches of 14
CLIP_VISION_TOKENS = (CLIP_VISION_IMAGE // 14) ** 2 + 1  # + the class token


def clip_vision_h(seed=0):
    """A tiny CLIP ViT-H image encoder: ComfyUI's ClipVisionModel from a config file, as
    CLIPVisionLoader builds it, at the 1280 width Wan's img_emb expects, 2 layers, 28 px."""
    import comfy.clip_vision

    config = {"hidden_act": "gelu", "hidden_size": 1280, "image_size": CLIP_VISION_IMAGE, "intermediate_size": 256,
              "layer_norm_eps": 1e-05, "model_type": "clip_vision_model", "num_attention_heads": 16,
              "num_channels": 3, "num_hidden_layers": 2, "patch_size": 14, "projection_dim": 64}
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "clip_vision_tiny_h.json")
        with open(path, "w") as f:
            json.dump(config, f)
        clip_vision = comfy.clip_vision.ClipVisionModel(path)
    _init_weights(clip_vision.model, seed)
    clip_vision.model.requires_grad_(False)
    return clip_vision


def _comfy_vae(state_dict, metadata=None):
    """``comfy.sd.VAE`` built from ``state_dict`` (and safetensors ``metadata``) as VAELoader builds it."""
    import comfy.sd

    vae = comfy.sd.VAE(sd=state_dict, metadata=metadata)
    vae.first_stage_model.requires_grad_(False)  # as loaded weights are used: no autograd graph
    return vae


def _wan_vae(module, seed, **dims):
    """ComfyUI fixes the Wan VAEs' widths itself (dim 96 / 160: hundreds of MiB), so for the one
    ``VAE()`` call its Wan branch gets our tiny instance of the same ``module.WanVAE`` class."""
    tiny = module.WanVAE(dim_mult=[1, 2, 4, 4], num_res_blocks=1, attn_scales=[],
                         temperal_downsample=[False, True, True], dropout=0.0, **dims)
    _init_weights(tiny, seed)
    with torch.no_grad():  # RMS-norm gains of 1 (_init_weights draws ``gamma`` like a bias)
        for name, p in tiny.named_parameters():
            if name.endswith("gamma"):
                p.fill_(1.0)
    with mock.patch.object(module, "WanVAE", lambda **config: tiny):
        return _comfy_vae(tiny.state_dict())


def wan_vae(version, seed=0):
    """The Wan 2.1 VAE (``version`` "2.1": comfy.ldm.wan.vae, 16 channels, 8x spatial) or the Wan 2.2
    VAE ("2.2": comfy.ldm.wan.vae2_2, 48 channels, 16x spatial), both 4x temporal, at width 16."""
    import comfy.ldm.wan.vae
    import comfy.ldm.wan.vae2_2

    if version == "2.1":
        return _wan_vae(comfy.ldm.wan.vae, seed, dim=16, z_dim=16)
    return _wan_vae(comfy.ldm.wan.vae2_2, seed, dim=16, dec_dim=16, z_dim=48)


_COMPRESS = ["compress_all", {"multiplier": 1}]
LTXV_TINY_VAE = {
    "_class_name": "CausalVideoAutoencoder", "dims": 3, "in_channels": 3, "out_channels": 3, "latent_channels": 128,
    # 4x4 patches, then three 2x2x2 compressions: LTXV's 32x spatial, 8x temporal (1 + 8k frames)
    "encoder_blocks": [["res_x", 1], ["compress_all", 1], ["compress_all", 1], ["compress_all", 1]],
    # the decoder runs its blocks in reverse: up_blocks.0 must be a res_x, the key VAE() detects LTXV by
    "decoder_blocks": [_COMPRESS, _COMPRESS, _COMPRESS, ["res_x", 1]],
    "scaling_factor": 1.0, "norm_layer": "pixel_norm", "patch_size": 4, "latent_log_var": "uniform",
    "use_quant_conv": False, "causal_decoder": False,
}


def ltxv_vae(seed=0):
    """The LTX-Video VAE (CausalVideoAutoencoder), one block per stage: ComfyUI reads an LTXV VAE's
    config from the safetensors metadata (``{"vae": ...}``), the path a checkpoint with its own
    config takes."""
    import comfy.ldm.lightricks.vae.causal_video_autoencoder as ltx_vae

    tiny = ltx_vae.VideoVAE(config=LTXV_TINY_VAE)
    _init_weights(tiny, seed)
    with torch.no_grad():
        tiny.per_channel_statistics.get_buffer("mean-of-means").zero_()
        tiny.per_channel_statistics.get_buffer("std-of-means").fill_(1.0)
    return _comfy_vae(tiny.state_dict(), metadata={"config": json.dumps({"vae": LTXV_TINY_VAE})})


def video_frames(frames, height, width, seed=0):
    """A random IMAGE batch (frames, H, W, 3) in [0, 1], as LoadImage or a video loader gives it."""
    return torch.rand(frames, height, width, 3, generator=torch.Generator().manual_seed(seed))
