"""The checkpoints' key layouts that ComfyUI's detection reads for the cost table's architectures.

``SEEDS[key]()`` gives name -> shape for the row ``key`` of ``benchmarks.cost_models.ARCHITECTURES``:
the layouts of ``tests/tiny_checkpoints.py`` at full size for the families the host tests also build,
and the keys ``comfy/model_detection.py`` (ComfyUI 0.22) reads for the newer families. The shapes are
the published dimensions; ``benchmarks.cost_models.detected_config`` checks that the running ComfyUI
detects the expected architecture from them.
"""

from __future__ import annotations

import sys

from .host import TESTS

# LTX-2's transformer config as its checkpoints' metadata carries it (LTX-2's own names, as ComfyUI reads them):
# the sizes of diffusers' conversion config "2.0" (see the ltx2 row)
LTX2_TRANSFORMER = {
    "num_layers": 48, "num_attention_heads": 32, "attention_head_dim": 128, "cross_attention_dim": 4096,
    "audio_num_attention_heads": 32, "audio_attention_head_dim": 64, "audio_cross_attention_dim": 2048,
    "caption_channels": 3840, "connector_num_attention_heads": 30, "connector_attention_head_dim": 128,
    "connector_num_layers": 2, "apply_gated_attention": False, "cross_attention_adaln": False,
    "caption_proj_before_connector": False,
}


def _layouts():
    """tests/tiny_checkpoints.py: the seed layouts at any size (the host tests' tiny models use them too)."""
    if TESTS not in sys.path:
        sys.path.insert(0, TESTS)
    import tiny_checkpoints

    return tiny_checkpoints


def _blocks(prefix, count, suffix, shape):
    return {f"{prefix}.{i}.{suffix}": shape for i in range(count)}


# the keys comfy/model_detection.py (ComfyUI 0.22) reads for the newer families, in the checkpoints' layout
def _flux2_seed(hidden, context, depth, single, guidance=False, head_dim=128):
    seed = {"img_in.weight": (hidden, 128), "txt_in.weight": (hidden, context),
            "double_stream_modulation_img.lin.weight": (6 * hidden, hidden),
            **_blocks("double_blocks", depth, "img_attn.norm.key_norm.scale", (head_dim,)),
            **_blocks("single_blocks", single, "norm.key_norm.scale", (head_dim,))}
    if guidance:
        seed["guidance_in.in_layer.weight"] = (hidden, 256)
    return seed


def _zimage_seed(dim, layers, context, head_dim=128):
    return {"cap_embedder.1.weight": (dim, context), "noise_refiner.0.attention.k_norm.weight": (head_dim,),
            "cap_pad_token": (1, dim), "x_embedder.weight": (dim, 16 * 2 * 2),
            **_blocks("layers", layers, "ffn_norm1.weight", (dim,))}


def _hunyuan_video15_seed(hidden, depth, context, head_dim=128):
    return {"txt_in.individual_token_refiner.blocks.0.norm1.weight": (hidden,),
            "img_in.proj.weight": (hidden, 65, 1, 1, 1), "final_layer.linear.weight": (32, hidden),
            "txt_in.input_embedder.weight": (hidden, context), "byt5_in.fc1.weight": (2048, 1472),
            "vision_in.proj.0.weight": (1152,), "cond_type_embedding.weight": (3, hidden),
            **_blocks("double_blocks", depth, "img_attn_qkv.weight", (3 * hidden, hidden))}


def _ltx2_seed(config):
    dim = config["num_attention_heads"] * config["attention_head_dim"]
    audio = config["audio_num_attention_heads"] * config["audio_attention_head_dim"]
    return {**_layouts().ltxv_seed(dim=dim, layers=config["num_layers"], cross=config["cross_attention_dim"]),
            "audio_adaln_single.linear.weight": (6 * audio, audio)}


def _kandinsky5_seed(dim, ff, visual, text, time, embed, head):
    return {"visual_transformer_blocks.0.cross_attention.key_norm.weight": (head,),
            "visual_embeddings.in_layer.bias": (dim,), "visual_embeddings.in_layer.weight": (dim, embed),
            "time_embeddings.in_layer.bias": (time,),
            **_blocks("visual_transformer_blocks", visual, "feed_forward.in_layer.weight", (ff, dim)),
            **_blocks("text_transformer_blocks", text, "feed_forward.in_layer.weight", (ff, dim))}


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
    "flux2_dev": lambda: _flux2_seed(hidden=6144, context=15360, depth=8, single=48, guidance=True),
    "flux2_klein_4b": lambda: _flux2_seed(hidden=3072, context=7680, depth=5, single=20),
    "flux2_klein_9b": lambda: _flux2_seed(hidden=4096, context=12288, depth=8, single=24),
    "zimage_turbo": lambda: _zimage_seed(dim=3840, layers=30, context=2560),
    "qwen_image_edit": lambda: _layouts().qwen_image_seed(hidden=3072, layers=60, context=3584),
    "hunyuan_video15": lambda: _hunyuan_video15_seed(hidden=2048, depth=54, context=3584),
    "ltx2": lambda: _ltx2_seed(LTX2_TRANSFORMER),
    "ltx2_hires": lambda: _ltx2_seed(LTX2_TRANSFORMER),
    "kandinsky5": lambda: _kandinsky5_seed(dim=1792, ff=7168, visual=32, text=2, time=512, embed=132, head=64),
    "kandinsky5_image": lambda: _kandinsky5_seed(dim=2560, ff=10240, visual=50, text=2, time=512, embed=64,
                                                  head=128),
}
