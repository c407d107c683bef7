"""The full-size architectures of the cost table: ComfyUI's configs, latents and text inputs.

``SEEDS[key]`` (``benchmarks/cost_seeds.py``) is the named checkpoint's key layout where ComfyUI's detection reads it
(``tests/tiny_checkpoints.py``'s seeds at full size, meta tensors): the config comes from the running
ComfyUI's own ``detect_unet_config`` (so a newer ComfyUI's new constructor fields come with it) and
its class from ComfyUI's own match. ``unet_config`` is what ComfyUI 0.3.64's detection returns for the
checkpoint; every host must detect those values (newer hosts may add fields), so every host counts
the same architecture. ``benchmarks.cost`` checks the config both ways: detection run on the state
dict of the model built from it gives the config back, the class included. LTXV: detection without
the checkpoint's metadata (it only adds positional-embedding settings, no widths).

Each architecture is counted on one ComfyUI (``host``): the models ComfyUI 0.3.64 has on 0.3.64; the
rows added for the models new in ComfyUI 0.22 (FLUX.2, Z-Image, HunyuanVideo 1.5, LTX-2, Kandinsky 5),
and Qwen-Image-Edit at its template's shapes, on 0.22, from that ComfyUI's own model classes. ``since``
is the first of the two that has the architecture at all; :func:`available` asks the running ComfyUI.
For the newer rows ``unet_config`` holds the published dimensions in ComfyUI's names (``source`` cites
where they come from; the comment above each config says more), which the counting ComfyUI's detection
must give back from the seed; the resolution and frame count are the official template's (``template``:
comfyui-workflow-templates 0.11.97).

Text context lengths are what ComfyUI's text encoders hand over for a prompt of up to 77 tokens
(``comfy/text_encoders``): CLIP pads to 77; SD3's T5 pads to at least 77 and is concatenated after
CLIP's 77; Flux's T5 pads to 256 (ComfyUI's ``min_length``; diffusers uses 512); Wan's umT5 to 512;
LTXV's T5 to 128. HunyuanVideo (Llama 3) and Qwen-Image (Qwen2.5-VL) are not padded and the system
template is cropped, so their length is the prompt's: 128 tokens here, a long descriptive prompt.
The newer rows: FLUX.2's text is padded to 512 tokens (``model_base.Flux2``), LTX-2's Gemma 3 to 1024
(``comfy/text_encoders/lt.py``); Z-Image's Qwen3 and the Qwen2.5-VL of HunyuanVideo 1.5, Kandinsky 5 and
Qwen-Image-Edit are not padded: 128 prompt tokens, as above (Qwen-Image-Edit adds the reference image's
vision tokens).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import torch

from .cost_seeds import LTX2_TRANSFORMER, SEEDS

OLDEST, NEWEST = "0.3.64", "0.22.0"  # the ComfyUIs that count the table's rows

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
    latent: tuple  # (channels, [frames,] height, width), or several such (packed as the sampler packs them)
    resolution: str
    text: str
    conds: dict  # extra_conds inputs: name -> shape (a tensor of zeros), a list of shapes, or a plain value
    extra_layers: tuple = ()  # (layer spec, why) beyond auto / first / middle / last
    notes: list = field(default_factory=list)
    #: where the full-size dimensions come from
    source: str = "comfy/model_detection.py detect_unet_config (ComfyUI 0.3.64), checked both ways"
    template: str = ""  # the official template (comfyui-workflow-templates 0.11.97) the row's shapes follow
    host: str = OLDEST  # the ComfyUI that counts the row
    since: str = OLDEST  # the first of the hosts whose ComfyUI has the architecture
    metadata: dict | None = None  # the checkpoint's safetensors metadata, where detection reads it (LTX-2)


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
    # --- the models new in ComfyUI 0.22, counted there -------------------------------------------------------
    # FLUX.2 [dev]: black-forest-labs/flux2 src/flux2/model.py Flux2Params (commit ab7cca6, 2025-12-01):
    # in_channels 128, context_in_dim 15360 (three Mistral-3 layers of 5120), hidden_size 6144 (48 heads of 128),
    # depth 8, depth_single_blocks 48, mlp_ratio 3, a guidance embedding (guidance_in).
    Architecture(
        "flux2_dev", "flux2_dev_fp8mixed.safetensors",
        {"image_model": "flux2", "in_channels": 128, "context_in_dim": 15360, "hidden_size": 6144, "num_heads": 48,
         "depth": 8, "depth_single_blocks": 48, "mlp_ratio": 3.0, "guidance_embed": True},
        (128, 64, 64), "1024x1024", "512 Mistral-3 tokens (model_base.Flux2 pads the text to 512)",
        {"cross_attn": (1, 512, 15360)},
        notes=["template: EmptyFlux2LatentImage 1024x1024 (128 x 64 x 64, patch 1), BasicGuider (cfg 1, the "
               "guidance embedding in the model), 20 steps"],
        source="black-forest-labs/flux2 src/flux2/model.py Flux2Params (commit ab7cca6)",
        template="image_flux2_text_to_image", host=NEWEST, since=NEWEST),
    # FLUX.2 [klein] 4B and 9B: modelscope/DiffSynth-Studio diffsynth/configs/model_configs.py (commit 000ba47),
    # the entries for black-forest-labs/FLUX.2-klein-4B and -9B (their transformer/*.safetensors): 4B
    # joint_attention_dim 7680 (three Qwen3-4B layers of 2560), 24 heads of 128 (3072), 5 double + 20 single
    # blocks; 9B joint_attention_dim 12288 (three Qwen3-8B layers of 4096), 32 heads of 128 (4096), 8 double +
    # 24 single blocks; both without a guidance embedding. FLUX.2's in_channels 128 and mlp_ratio 3 as dev's.
    Architecture(
        "flux2_klein_4b", "flux-2-klein-4b.safetensors (distilled) and flux-2-klein-base-4b.safetensors",
        {"image_model": "flux2", "in_channels": 128, "context_in_dim": 7680, "hidden_size": 3072, "num_heads": 24,
         "depth": 5, "depth_single_blocks": 20, "mlp_ratio": 3.0, "guidance_embed": False},
        (128, 64, 64), "1024x1024", "512 Qwen3-4B tokens (ComfyUI's Klein tokenizer pads to 512)",
        {"cross_attn": (1, 512, 7680)},
        notes=["template: EmptyFlux2LatentImage 1024x1024; the base checkpoint with CFGGuider 5 (20 steps), the "
               "distilled one at cfg 1 (4 steps)",
               "the published config is the distilled checkpoint's (FLUX.2-klein-4B); the template runs the base "
               "checkpoint through the same nodes, its config was not found"],
        source="modelscope/DiffSynth-Studio diffsynth/configs/model_configs.py, black-forest-labs/FLUX.2-klein-4B",
        template="image_flux2_klein_text_to_image", host=NEWEST, since=NEWEST),
    Architecture(
        "flux2_klein_9b", "flux-2-klein-base-9b-fp8.safetensors",
        {"image_model": "flux2", "in_channels": 128, "context_in_dim": 12288, "hidden_size": 4096, "num_heads": 32,
         "depth": 8, "depth_single_blocks": 24, "mlp_ratio": 3.0, "guidance_embed": False},
        (128, 64, 64), "1024x1024", "512 Qwen3-8B tokens (ComfyUI's Klein tokenizer pads to 512)",
        {"cross_attn": (1, 512, 12288)},
        notes=["template: EmptyFlux2LatentImage 1024x1024, CFGGuider 5, 20 steps",
               "the published config is the distilled checkpoint's (FLUX.2-klein-9B); the template's base "
               "checkpoint's config was not found"],
        source="modelscope/DiffSynth-Studio diffsynth/configs/model_configs.py, black-forest-labs/FLUX.2-klein-9B",
        template="image_flux2_text_to_image_9b", host=NEWEST, since=NEWEST),
    # Z-Image-Turbo: Tongyi-MAI/Z-Image-Turbo transformer/config.json
    # (https://huggingface.co/Tongyi-MAI/Z-Image-Turbo/blob/main/transformer/config.json): dim 3840, n_layers 30,
    # n_refiner_layers 2, n_heads 30 (of 128), cap_feat_dim 2560 (Qwen3-4B), in_channels 16, patch 2; ComfyUI's
    # detection fixes the rest for dim 3840 (RoPE axes, the Z-Image modulation, 32-token padding).
    Architecture(
        "zimage_turbo", "z_image_turbo_bf16.safetensors",
        {"image_model": "lumina2", "dim": 3840, "n_layers": 30, "n_heads": 30, "n_kv_heads": 30,
         "cap_feat_dim": 2560, "in_channels": 16, "patch_size": 2},
        (16, 128, 128), "1024x1024", "128 Qwen3-4B tokens", {"cross_attn": (1, 128, 2560)},
        notes=["template: EmptySD3LatentImage 1024x1024, KSampler cfg 1, 8 steps: ASAG is the only guidance"],
        source="https://huggingface.co/Tongyi-MAI/Z-Image-Turbo/blob/main/transformer/config.json",
        template="image_z_image_turbo", host=NEWEST, since=NEWEST),
    # Qwen-Image-Edit: Qwen/Qwen-Image-Edit transformer/config.json
    # (https://huggingface.co/Qwen/Qwen-Image-Edit/blob/main/transformer/config.json): Qwen-Image's transformer,
    # 60 layers, 24 heads of 128, joint_attention_dim 3584, in_channels 64, patch 2.
    Architecture(
        "qwen_image_edit", "qwen_image_edit_fp8_e4m3fn.safetensors",
        {"image_model": "qwen_image", "in_channels": 64, "num_layers": 60},
        (16, 1, 128, 128), "1024x1024 (+ a 1024x1024 reference)",
        "128 prompt tokens + 1369 Qwen2.5-VL tokens of the reference image",
        {"cross_attn": (1, 128 + 1369, 3584), "reference_latents": [(1, 16, 1, 128, 128)]},
        notes=["template: the input image is VAE-encoded at its own size (the template's ImageScaleToTotalPixels "
               "is not wired in); counted for a 1024x1024 input, which TextEncodeQwenImageEdit also hands the "
               "model as its reference latent (scaled to 1024x1024 pixels) and to Qwen2.5-VL (1036x1036 after "
               "its 28-pixel rounding: 37 x 37 = 1369 tokens); cfg 2.5 (20 steps), or cfg 1 with the Lightning LoRA",
               "one joint attention over 1497 text + 4096 image + 4096 reference tokens"],
        source="https://huggingface.co/Qwen/Qwen-Image-Edit/blob/main/transformer/config.json",
        template="image_qwen_image_edit", host=NEWEST),
    # HunyuanVideo 1.5 (720p T2V): tencent/HunyuanVideo-1.5 transformer/720p_t2v/config.json
    # (https://huggingface.co/tencent/HunyuanVideo-1.5/tree/main/transformer/720p_t2v): hidden_size 2048,
    # heads_num 16, mm_double_blocks_depth 54, mm_single_blocks_depth 0, in_channels 32 with concat_condition
    # (ComfyUI concatenates 32 image + 1 mask channels: 65 in), out_channels 32, patch [1, 1, 1],
    # text_states_dim 3584 (Qwen2.5-VL), vision_states_dim 1152, glyph_byT5_v2, no guidance embedding.
    Architecture(
        "hunyuan_video15", "hunyuanvideo1.5_720p_t2v_fp16.safetensors",
        {"image_model": "hunyuan_video", "hidden_size": 2048, "num_heads": 16, "depth": 54, "depth_single_blocks": 0,
         "in_channels": 65, "out_channels": 32, "patch_size": [1, 1, 1], "context_in_dim": 3584,
         "vision_in_dim": 1152, "byt5": True, "guidance_embed": False},
        (32, 31, 45, 80), "1280x720, 121 frames", "128 Qwen2.5-VL tokens (no quoted text: no byT5 tokens)",
        {"cross_attn": (1, 128, 3584), "pooled_output": None},
        notes=["template: EmptyHunyuanVideo15Latent 1280x720, 121 frames (32 x 31 x 45 x 80, patch 1: 111600 "
               "tokens), CFGGuider 6, 20 steps; its 1080p super-resolution stage runs another checkpoint "
               "(hunyuanvideo1.5_1080p_sr_distilled) at cfg 1, not counted here"],
        source="https://huggingface.co/tencent/HunyuanVideo-1.5 transformer/720p_t2v/config.json",
        template="video_hunyuan_video_1.5_720p_t2v", host=NEWEST, since=NEWEST),
    # LTX-2 (19B, audio + video): huggingface/diffusers scripts/convert_ltx2_to_diffusers.py, version "2.0"
    # (model_id Lightricks/LTX-2): 48 layers, 32 heads of 128 (4096), cross_attention_dim 4096, audio 32 heads of
    # 64 (2048), audio cross-attention 2048, caption_channels 3840 (Gemma 3 12B), no gated attention, no
    # cross-attention AdaLN; text connectors of 30 heads of 128, 2 layers, 128 learnable registers. One config
    # for the dev (full) and the distilled checkpoint. A checkpoint carries it in its safetensors metadata
    # ("config" -> "transformer"), which ComfyUI's detection reads: LTX2_METADATA below, in LTX-2's own names.
    Architecture(
        "ltx2", "ltx-2-19b-dev-fp8.safetensors and ltx-2-19b-distilled.safetensors (one architecture)",
        {"image_model": "ltxav", "num_layers": 48, "attention_head_dim": 128, "cross_attention_dim": 4096,
         "audio_num_attention_heads": 32, "audio_attention_head_dim": 64, "audio_cross_attention_dim": 2048},
        ((128, 16, 11, 20), (8, 127, 16)), "640x360, 121 frames + audio",
        "1024 Gemma-3 tokens (ComfyUI pads them to 1024), through the video and audio connectors",
        {"cross_attn": (1, 1024, 2 * 3840), "frame_rate": 24},
        (("b29", "LTX-2's own STG block (Lightricks/LTX-2 ltx-pipelines: stg_blocks=[29])"),),
        notes=["templates video_ltx2_t2v (dev: CFGGuider 4, 20 steps) and video_ltx2_t2v_distilled (cfg 1, 8 "
               "steps): both sample 1280x720 / 2 first (EmptyLTXVLatentVideo: 128 x 16 x 11 x 20 = 3520 video "
               "tokens) with the audio latent of 121 frames at 24 fps (LTXVEmptyLatentAudio: 8 x 127 x 16, 127 "
               "audio tokens), then upsample the latent x2 for 3 cfg-1 steps (the ltx2_hires row)",
               "the block's video self-attention (3520 tokens) and audio self-attention (127 tokens) both get "
               "the plan"],
        source="huggingface/diffusers scripts/convert_ltx2_to_diffusers.py (version 2.0, Lightricks/LTX-2)",
        template="video_ltx2_t2v, video_ltx2_t2v_distilled", host=NEWEST, since=NEWEST,
        metadata={"config": {"transformer": LTX2_TRANSFORMER}}),
    Architecture(
        "ltx2_hires", "ltx-2-19b-dev-fp8.safetensors with the distilled LoRA, or ltx-2-19b-distilled.safetensors",
        {"image_model": "ltxav", "num_layers": 48, "attention_head_dim": 128, "cross_attention_dim": 4096,
         "audio_num_attention_heads": 32, "audio_attention_head_dim": 64, "audio_cross_attention_dim": 2048},
        ((128, 16, 22, 40), (8, 127, 16)), "1280x704, 121 frames + audio",
        "1024 Gemma-3 tokens (ComfyUI pads them to 1024), through the video and audio connectors",
        {"cross_attn": (1, 1024, 2 * 3840), "frame_rate": 24},
        (("b29", "LTX-2's own STG block (Lightricks/LTX-2 ltx-pipelines: stg_blocks=[29])"),),
        notes=["the templates' second stage: the first stage's latent upsampled x2 (LTXVLatentUpsampler: 128 x "
               "16 x 22 x 40 = 14080 video tokens) and the same audio latent, 3 steps at cfg 1"],
        source="huggingface/diffusers scripts/convert_ltx2_to_diffusers.py (version 2.0, Lightricks/LTX-2)",
        template="video_ltx2_t2v, video_ltx2_t2v_distilled", host=NEWEST, since=NEWEST,
        metadata={"config": {"transformer": LTX2_TRANSFORMER}}),
    # Kandinsky 5.0 Video Lite (T2V, sft 5s): ai-forever/Kandinsky-5 configs/config_5s_sft.yaml: model_dim 1792,
    # ff_dim 7168, 2 text blocks, 32 visual blocks, time_dim 512, patch (1, 2, 2), axes_dims (16, 24, 24) (heads
    # of 64), in_visual_dim 16 with visual_cond (16 image + 1 mask channels more: 33 x 4 = 132 per patch), text
    # 3584 (Qwen2.5-VL) and 768 (CLIP-L pooled).
    Architecture(
        "kandinsky5", "kandinsky5lite_t2v_sft_5s.safetensors",
        {"image_model": "kandinsky5", "model_dim": 1792, "ff_dim": 7168, "num_text_blocks": 2,
         "num_visual_blocks": 32, "time_dim": 512, "visual_embed_dim": 132},
        (16, 31, 64, 96), "768x512, 121 frames", "128 Qwen2.5-VL tokens + CLIP-L pooled",
        {"cross_attn": (1, 128, 3584), "pooled_output": (1, 768)},
        notes=["template: Kandinsky5ImageToVideo 768x512, 121 frames (16 x 31 x 64 x 96, 1x2x2 patches: 47616 "
               "visual tokens), KSampler cfg 5, 50 steps"],
        source="ai-forever/Kandinsky-5 configs/config_5s_sft.yaml",
        template="video_kandinsky5_t2v", host=NEWEST, since=NEWEST),
    # Kandinsky 5.0 Image Lite (T2I): kandinskylab/kandinsky-5 configs/config_t2i.yaml: model_dim 2560, ff_dim
    # 10240, 2 text blocks, 50 visual blocks, time_dim 512, patch (1, 2, 2), axes_dims (32, 48, 48) (heads of
    # 128), in_visual_dim 16 (no visual_cond: 64 per patch), text 3584 and 768.
    Architecture(
        "kandinsky5_image", "kandinsky5lite_t2i.safetensors",
        {"image_model": "kandinsky5", "model_dim": 2560, "ff_dim": 10240, "num_text_blocks": 2,
         "num_visual_blocks": 50, "time_dim": 512, "visual_embed_dim": 64},
        (16, 128, 128), "1024x1024", "128 Qwen2.5-VL tokens + CLIP-L pooled",
        {"cross_attn": (1, 128, 3584), "pooled_output": (1, 768)},
        notes=["template: EmptyLatentImage 1024x1024 (the Flux latent, 16 x 128 x 128), KSampler cfg 3.5, 50 steps"],
        source="kandinskylab/kandinsky-5 configs/config_t2i.yaml",
        template="image_kandinsky5_t2i", host=NEWEST, since=NEWEST),
)

BY_KEY = {a.key: a for a in ARCHITECTURES}

#: each row's name in the README's cost table
NAMES = {
    "sd15": "SD1.5", "sdxl": "SDXL", "sd35_large": "SD3.5 Large", "sd35_medium": "SD3.5 Medium", "flux_dev": "Flux dev",
    "qwen_image": "Qwen-Image", "wan22_14b": "Wan 2.2 14B (each expert)", "wan22_5b": "Wan 2.2 5B",
    "ltxv": "LTXV 2B 0.9.x", "hunyuan_video": "HunyuanVideo", "flux2_dev": "FLUX.2 [dev]",
    "flux2_klein_4b": "FLUX.2 [klein] 4B", "flux2_klein_9b": "FLUX.2 [klein] 9B", "zimage_turbo": "Z-Image-Turbo",
    "qwen_image_edit": "Qwen-Image-Edit", "hunyuan_video15": "HunyuanVideo 1.5 (720p T2V)",
    "ltx2": "LTX-2 19B (dev, distilled), first stage", "ltx2_hires": "LTX-2 19B, second stage",
    "kandinsky5": "Kandinsky 5 Video Lite", "kandinsky5_image": "Kandinsky 5 Image Lite",
}


def _metadata(arch: Architecture):
    """The checkpoint's safetensors metadata as a loader hands it to detection (values as JSON text)."""
    if arch.metadata is None:
        return None
    return {k: json.dumps(v) for k, v in arch.metadata.items()}


def _detect(arch: Architecture, state_dict) -> dict:
    import comfy.model_detection

    return comfy.model_detection.detect_unet_config(state_dict, "", metadata=_metadata(arch)) or {}


def _differs(arch: Architecture, config: dict) -> dict:
    return {k: (config.get(k), v) for k, v in arch.unet_config.items() if config.get(k) != v}


def seed(arch: Architecture) -> dict:
    """The checkpoint's keys detection reads, as meta tensors."""
    return {k: torch.empty(shape, device="meta") for k, shape in SEEDS[arch.key]().items()}


def detected_config(arch: Architecture) -> dict:
    """The running ComfyUI's ``detect_unet_config`` on the checkpoint's seed (meta tensors); an error
    where it differs from ``arch.unet_config`` in a value they share."""
    config = _detect(arch, seed(arch))
    differs = _differs(arch, config)
    if differs:
        raise RuntimeError(f"{arch.key}: this ComfyUI detects another architecture (detected, expected): {differs}")
    return config


def _version_tuple(version: str) -> tuple:
    return tuple(int(p) for p in version.split("."))


def has(arch: Architecture, version: str) -> bool:
    """Whether ComfyUI ``version`` has the architecture (it is ``arch.since`` or newer)."""
    return _version_tuple(version) >= _version_tuple(arch.since)


def available(arch: Architecture) -> bool:
    """Whether the running ComfyUI has the architecture: its detection gives ``arch.unet_config`` back
    from the seed and its matching finds a config class for it. A ComfyUI that predates the model
    detects something else (FLUX.1 for a FLUX.2 seed, no reference method for Edit-2511) or nothing."""
    import comfy.model_detection

    config = _detect(arch, seed(arch))
    return not _differs(arch, config) and comfy.model_detection.model_config_from_unet_config(config) is not None


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
    detected = _detect(arch, sd)
    diffs = [f"{k}: {detected.get(k)!r} != {expected.get(k)!r}"
             for k in sorted(set(detected) | set(expected)) if detected.get(k) != expected.get(k)]
    again = comfy.model_detection.model_config_from_unet_config(detected, sd)
    if type(again) is not type(config):
        diffs.append(f"config class {type(again).__name__} != {type(config).__name__}")
    return diffs


def sdpa_transformer_options(override_key: str) -> dict:
    """transformer_options that route every ComfyUI attention call of a forward through
    ComfyUI's PyTorch SDPA function (what GPUs run), whatever backend this process picked: the
    ``optimized_attention_override`` key (``override_key``, from ``nodes/comfy_contract``) that
    ComfyUI's ``wrap_attn`` honours for every caller passing transformer_options, as all the
    families here do. On the meta device SDPA decomposes into matmuls the FLOP counter sees."""
    from comfy.ldm.modules.attention import attention_pytorch

    def to_sdpa(func, *args, **kwargs):
        return attention_pytorch(*args, **kwargs)

    return {override_key: to_sdpa}


def _zeros(value):
    if isinstance(value, tuple):
        return torch.zeros(value)
    if isinstance(value, list):
        return [torch.zeros(shape) for shape in value]
    return value


def _noise(arch: Architecture):
    """(the latent of one row, extra_conds inputs it needs): several latents (LTX-2's video and audio)
    packed into one tensor as ComfyUI's sampler packs a NestedTensor, with their shapes."""
    if not isinstance(arch.latent[0], tuple):
        return torch.zeros((1, *arch.latent)), {}
    import comfy.utils

    noise, shapes = comfy.utils.pack_latents([torch.zeros((1, *shape)) for shape in arch.latent])
    return noise, {"latent_shapes": shapes}


def model_inputs(arch: Architecture, model, device):
    """(x, sigma, conds) of one conditional row: ComfyUI's extra_conds on CPU zeros of the text
    encoders' shapes, each cond processed for a batch of 1 as calc_cond_batch does, moved to ``device``."""
    cpu = torch.device("cpu")
    noise, packing = _noise(arch)
    kwargs = {k: _zeros(v) for k, v in arch.conds.items()} | packing
    conds = model.extra_conds(device=cpu, noise=noise, **kwargs)
    processed = {k: c.process_cond(batch_size=1, area=None).cond for k, c in conds.items()}
    processed = {k: _to(v, device) for k, v in processed.items()}
    return noise.to(device), torch.ones(1, device=device), processed


def _to(value, device):
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, list):
        return [_to(v, device) for v in value]
    return value
