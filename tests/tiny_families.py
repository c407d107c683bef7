"""Tiny instances of the model families new in ComfyUI 0.22, loaded the way their checkpoints load.

Each family is a *seed* (``{key: shape}``): the keys ComfyUI's detection reads
(``comfy/model_detection.py`` of 0.22) in the real checkpoint layout, at tiny widths and depths.
``tiny_checkpoints.load_tiny`` completes it into a whole checkpoint and loads it with ComfyUI's own
detection, class matching and loader. Where detection does not read a size but fixes the real one
(Z-Image is recognised by its 3840 width, Omnigen2's and Ernie-Image's sizes are all constants,
HiDream-O1 is Qwen3-VL-8B ...), or where a real checkpoint carries its config in the safetensors
metadata (LTX-2, causal Wan), the family's :class:`tiny_checkpoints.Hand` names what it sets, and why.

Per family: its inputs in the format its model_base class's ``extra_conds`` and its latent format
expect (:func:`conditioning`, :func:`latent`), and :attr:`Family.attention`: the (queries, keys) of
every attention the chosen block itself runs per model evaluation, computed from the latent, patch
and text sizes below and the model code (never read from a run). :attr:`Family.auto` is the block
``auto`` perturbs in the tiny model.

A family exists only where the running ComfyUI has its supported_models class: :func:`available`,
:data:`NEW_IN_0_22` (the ones 0.3.64 lacks).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable

import tiny_checkpoints as tc
import torch

TEXT = 7  # text tokens of the tiny prompts
WIDTH = tc.CONTEXT  # text width where detection reads it from a shape


@dataclass(frozen=True)
class Family:
    config: str  # the supported_models class ComfyUI must end up with
    seed: Callable[[], dict]  # {key: shape}
    latent: tuple  # latent shape without the batch
    attention: tuple  # ((queries, keys), ...): the chosen block's own attention calls per model evaluation
    hand: tc.Hand | None = None
    cond: Callable | None = None  # generator -> (context, extra) of one conditioning
    auto: tuple = ("double_block", 1)  # the patch key of the block ``auto`` perturbs here
    #: what the family's distinguishing input is, where the tiny conditioning feeds one
    feeds: str = ""
    #: a feature of the running ComfyUI the family needs beyond its config class (None: the class suffices)
    needs: Callable[[], bool] | None = None


def _blocks(prefix, count, suffix, shape):
    return {f"{prefix}.{i}.{suffix}": shape for i in range(count)}


def _context(g, width=WIDTH, tokens=TEXT):
    return torch.randn(1, tokens, width, generator=g)


def _plain(g):
    return _context(g), {}


def _joint(tokens):
    """Joint attention over every token of the sequence: as many keys as queries."""
    return ((tokens, tokens),)


# ---------------------------------------------------------------------------------------------
# image families
# ---------------------------------------------------------------------------------------------

# FLUX.2: detection fixes 128 channels per head (axes 4 x 32) and reads the width: 256 = 2 heads
FLUX2_HIDDEN = 256
FLUX2_TEXT = 512  # model_base.Flux2.extra_conds pads the text to 512 tokens
FLUX2_LATENT = (128, 4, 4)  # 128 channels (2x2 packed in the VAE), patch 1: 16 tokens
FLUX2_REFERENCE = (128, 2, 4)  # Klein edit: the reference image's latent, 8 tokens


def _flux2_seed(guidance=False):
    h = FLUX2_HIDDEN
    seed = {"img_in.weight": (h, 128), "txt_in.weight": (h, WIDTH),
            "double_stream_modulation_img.lin.weight": (6 * h, h),
            **_blocks("double_blocks", 2, "img_attn.norm.key_norm.scale", (128,)),
            **_blocks("single_blocks", 2, "norm.key_norm.scale", (128,))}
    if guidance:  # FLUX.2 dev has a guidance embedding; Klein (distilled) has none
        seed["guidance_in.in_layer.weight"] = (h, 256)
    return seed


def _flux2_edit_cond(g):
    # ReferenceLatent: the edit's input image rides in the conditioning
    return _context(g), {"reference_latents": [torch.randn(1, *FLUX2_REFERENCE, generator=g)]}


def _tokens(latent, patch):
    return (latent[-2] // patch) * (latent[-1] // patch)


FLUX2_TOKENS = FLUX2_TEXT + _tokens(FLUX2_LATENT, 1)
FLUX2_EDIT_TOKENS = FLUX2_TOKENS + _tokens(FLUX2_REFERENCE, 1)  # the reference joins the image stream


# Z-Image (Lumina 2's NextDiT): ComfyUI recognises it only at its real width (dim 3840 sets 30 heads of 128,
# RoPE axes 32+48+48, the Z-Image modulation, 32-token padding). Its modulation takes a 256-wide time
# embedding, so 256 (2 heads of 128) is the narrowest Z-Image.
ZIMAGE_DIM = 256
_ZIMAGE = {"n_heads": 2, "n_kv_heads": 2, "axes_dims": [32, 48, 48], "axes_lens": [1536, 512, 512],
           "rope_theta": 256.0, "ffn_dim_multiplier": 8.0 / 3.0, "z_image_modulation": True, "time_scale": 1000.0,
           "pad_tokens_multiple": 32, "multiple_of": 16, "n_refiner_layers": 1}
ZIMAGE_HAND = tc.Hand("ComfyUI tells Z-Image from Lumina 2 only by the real width (dim 3840), which then fixes "
                      "30 heads of 128, the RoPE axes, the Z-Image modulation and 32-token padding",
                      config_class="ZImage", overrides=_ZIMAGE)
ZIMAGE_PIXEL_HAND = tc.Hand(ZIMAGE_HAND.why + "; and only there does it read the pixel decoder's sizes (4x4 RGB "
                            "patches, decoder 32 wide, 1 res block, 2 frequencies)", config_class="ZImagePixelSpace",
                            overrides={**_ZIMAGE, "image_model": "zimage_pixel", "patch_size": 4, "in_channels": 3,
                                       "decoder_in_channels": 48, "decoder_hidden_size": 32,
                                       "decoder_num_res_blocks": 1, "decoder_max_freqs": 2})


def _zimage_seed(pixel=False):
    d = ZIMAGE_DIM
    patch_in = 3 * 4 * 4 if pixel else 16 * 2 * 2
    seed = {"cap_embedder.1.weight": (d, WIDTH), "noise_refiner.0.attention.k_norm.weight": (128,),
            "cap_pad_token": (1, d), "x_embedder.weight": (d, patch_in),
            **_blocks("layers", 3, "ffn_norm1.weight", (d,))}
    if pixel:  # the decoder's sizes come from its weights: 4x4 RGB patches, 32 wide, 1 res block, 2 frequencies
        seed.update({"dec_net.cond_embed.weight": (32, d), "dec_net.final_layer.linear.weight": (patch_in, 32),
                     "dec_net.input_embedder.embedder.0.weight": (32, patch_in + 2 * 2),
                     "dec_net.res_blocks.0.in_ln.weight": (32,)})
    return seed


def _padded(n, multiple=32):
    return -(-n // multiple) * multiple


ZIMAGE_LATENT = (16, 8, 8)  # patch 2: 16 tokens, padded to 32
ZIMAGE_PIXEL_LATENT = (3, 32, 32)  # raw RGB, 4x4 patches: 64 tokens
# one joint attention over the text padded to 32 and the image padded to 32 (single stream)
ZIMAGE_TOKENS = _padded(TEXT) + _padded(_tokens(ZIMAGE_LATENT, 2))
ZIMAGE_PIXEL_TOKENS = _padded(TEXT) + _padded(_tokens(ZIMAGE_PIXEL_LATENT, 4))


# Qwen-Image(-Edit): detection reads the input width and depth; the rest are real-size constructor defaults
QWEN_HAND = tc.Hand("detection reads only the input width and depth; heads (24 of 128) and the text width "
                    "(3584) are real-size constructor defaults",
                    overrides={"attention_head_dim": 16, "num_attention_heads": 4, "joint_attention_dim": WIDTH,
                               "axes_dims_rope": [4, 6, 6]})
QWEN_LATENT = (16, 1, 8, 8)  # Wan 2.1 latent format (3 latent dims); 2x2 patches: 16 tokens
QWEN_REFERENCE = (16, 1, 8, 6)  # TextEncodeQwenImageEdit's reference latent: 12 tokens


def _qwen_seed(index_timestep_zero=False):
    seed = {"txt_norm.weight": (WIDTH,), "img_in.weight": (64, 64),
            **_blocks("transformer_blocks", 3, "img_mod.1.weight", (6 * 64, 64))}
    if index_timestep_zero:  # Qwen-Image-Edit-2511 marks its reference method with this key
        seed["__index_timestep_zero__"] = (0,)
    return seed


def _knows_index_timestep_zero():
    """ComfyUI's Qwen-Image model has Edit-2511's reference method (0.3.64's has none: it lacks the marker)."""
    import comfy.ldm.qwen_image.model as qwen

    return "default_ref_method" in inspect.signature(qwen.QwenImageTransformer2DModel.__init__).parameters


def _qwen_edit_cond(g):
    return _context(g), {"reference_latents": [torch.randn(1, *QWEN_REFERENCE, generator=g)]}


# text + target + reference tokens: one joint sequence
QWEN_EDIT_TOKENS = TEXT + _tokens(QWEN_LATENT, 2) + _tokens(QWEN_REFERENCE, 2)


# HunyuanImage 2.1 and HunyuanVideo 1.5: HunyuanVideo's double + single stream blocks. Detection fixes 128
# channels per head and reads the width: 128 = 1 head.
def _hunyuan_seed(patch, in_channels, out_channels, video15=False):
    h = 128
    seed = {"txt_in.individual_token_refiner.blocks.0.norm1.weight": (h,),
            "img_in.proj.weight": (h, in_channels, *patch),
            "final_layer.linear.weight": (out_channels * int(torch.tensor(patch).prod()), h),
            "txt_in.input_embedder.weight": (h, WIDTH),
            **_blocks("double_blocks", 2, "img_attn_qkv.weight", (3 * h, h)),
            **_blocks("single_blocks", 2, "linear1.weight", (3 * h + 4 * h, h))}
    if video15:  # HunyuanVideo 1.5: the SigLIP image projection (1152 wide) and the condition-type embedding
        seed.update({"vision_in.proj.0.weight": (1152,), "cond_type_embedding.weight": (3, h)})
    return seed


def _no_pooled(g):
    # these text encoders give no pooled vector (HunyuanVideo's model_base reads the key)
    return _context(g), {"pooled_output": None}


HUNYUAN_IMAGE_LATENT = (64, 4, 4)  # 64 channels, 32x spatial; patch 1: 16 tokens
HUNYUAN_REFINER_LATENT = (64, 1, 4, 4)  # the refiner's 3-D latent, concatenated with the input: in 128
HUNYUAN15_LATENT = (32, 2, 4, 4)  # 32 channels, patch 1x1x1: 32 tokens


# Kandinsky 5: the visual blocks' self-attention spans the visual tokens only; text enters by cross-attention
KANDINSKY_HEADS = {"axes_dims": (16, 24, 24)}  # 64 channels per head: 2 heads of the 128-wide tiny model
KANDINSKY_IMAGE_HAND = tc.Hand(
    "ComfyUI matches Kandinsky 5 Image by its real width (model_dim 2560); detection sets the head width "
    "(axes_dims) only for the real widths", config_class="Kandinsky5Image",
    overrides={**KANDINSKY_HEADS, "rope_scale_factor": (1.0, 1.0, 1.0)})
KANDINSKY_VIDEO_HAND = tc.Hand("detection sets the head width (axes_dims) only for the real widths",
                               overrides=KANDINSKY_HEADS)
KANDINSKY_TEXT_WIDTH = 3584  # in_text_dim, in_text_dim2: real-size constructor defaults detection never reads
KANDINSKY_POOLED = 768


def _kandinsky_seed(visual_embed_dim):
    d = 128
    return {"visual_transformer_blocks.0.cross_attention.key_norm.weight": (64,),
            "visual_embeddings.in_layer.bias": (d,), "visual_embeddings.in_layer.weight": (d, visual_embed_dim),
            "time_embeddings.in_layer.bias": (32,),
            **_blocks("visual_transformer_blocks", 3, "feed_forward.in_layer.weight", (128, d)),
            **_blocks("text_transformer_blocks", 1, "feed_forward.in_layer.weight", (128, d))}


def _kandinsky_cond(g):
    return _context(g, KANDINSKY_TEXT_WIDTH), {"pooled_output": torch.randn(1, KANDINSKY_POOLED, generator=g)}


KANDINSKY_IMAGE_LATENT = (16, 8, 8)  # Flux latent; patch 1x2x2: 16 tokens
KANDINSKY_VIDEO_LATENT = (16, 2, 8, 8)  # 32 tokens; the model adds 16 image + 1 mask channels (132 = 33 x 4)


# LongCat-Image: Flux blocks; ComfyUI recognises it by its Qwen2.5-VL text width (3584) and no pooled vector
LONGCAT_TEXT_WIDTH = 3584


def _longcat_seed():
    h = 128  # detection: 128 channels per head
    return {"img_in.weight": (h, 64), "txt_in.weight": (h, LONGCAT_TEXT_WIDTH),
            **_blocks("double_blocks", 2, "img_attn.norm.key_norm.weight", (h,)),
            **_blocks("single_blocks", 2, "linear1.weight", (3 * h + 4 * h, h))}


# Ernie-Image: detection returns {"image_model": "ernie"}; every size is a constructor default
ERNIE_HAND = tc.Hand("detection reads nothing but the model's presence: 36 layers of 4096 (32 heads) and the "
                     "3072-wide text are constructor defaults",
                     overrides={"hidden_size": 256, "num_attention_heads": 2, "num_layers": 3,
                                "ffn_hidden_size": 128, "text_in_dim": WIDTH})
ERNIE_LATENT = (128, 4, 4)  # FLUX.2 latent format, patch 1: 16 tokens, then the text in the same sequence


# Chroma Radiance: Chroma in pixel space. 0.22's detection reads the width from txt_in (128 per head);
# 0.3.64's fixes Flux's 3072; both fix the approximator's and the NeRF head's real sizes.
CHROMA_RADIANCE_HAND = tc.Hand(
    "detection fixes the modulation approximator (5120 wide, 5 layers, out 3072) and NeRF head sizes; "
    "ComfyUI 0.3.64 also fixes Flux's widths (3072, 24 heads, text 4096) and the 16-pixel patch",
    overrides={"hidden_size": 128, "num_heads": 1, "context_in_dim": WIDTH, "patch_size": 16, "out_dim": 128,
               "hidden_dim": 32, "n_layers": 1, "nerf_hidden_size": 16, "nerf_depth": 1, "nerf_max_freqs": 2,
               "nerf_tile_size": 16})


def _chroma_radiance_seed():
    h = 128
    return {"txt_in.weight": (h, WIDTH), "img_in_patch.weight": (h, 3, 16, 16),
            "distilled_guidance_layer.norms.0.scale": (32,), "nerf_blocks.0.norm.scale": (16,),
            **_blocks("double_blocks", 2, "img_attn.norm.key_norm.scale", (h,)),
            **_blocks("single_blocks", 2, "linear1.weight", (3 * h + 4 * h, h))}


CHROMA_RADIANCE_LATENT = (3, 64, 64)  # pixels, 16x16 patches: 16 tokens


# HiDream-O1: Qwen3-VL-8B as a pixel-space DiT. Detection returns {"image_model": "hidream_o1"}.
HIDREAM_O1_HAND = tc.Hand(
    "detection reads nothing but the model's presence: it is Qwen3-VL-8B (36 layers of 4096) with its "
    "27-layer vision tower; the vocabulary stays real, the prompt template's special tokens index it",
    overrides={"text_config_overrides": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 3,
                                         "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 32,
                                         "rope_dims": [6, 5, 5]},
               "vision_config_overrides": {"hidden_size": 32, "num_heads": 2, "intermediate_size": 64, "depth": 1,
                                           "num_position_embeddings": 16}})
# HiDreamO1Tokenizer's template: <|im_start|>user\n {prompt} <|im_end|>\n<|im_start|>assistant\n<|boi|><|tms|>
HIDREAM_O1_PREFIX, HIDREAM_O1_SUFFIX = [151644, 872, 198], [151645, 198, 151644, 77091, 198, 151669, 151673]
HIDREAM_O1_PROMPT = 3  # prompt tokens
HIDREAM_O1_LATENT = (3, 64, 64)  # raw RGB, 32x32 patches: 4 tokens


def _hidream_o1_seed():
    return {"t_embedder1.mlp.0.weight": (64, 256), "x_embedder.proj1.weight": (16, 3 * 32 * 32)}


def _hidream_o1_cond(g):
    prompt = torch.randint(1000, 100000, (HIDREAM_O1_PROMPT,), generator=g).tolist()
    ids = torch.tensor([HIDREAM_O1_PREFIX + prompt + HIDREAM_O1_SUFFIX])
    # HiDreamO1TE passes the token ids through; the diffusion model embeds them itself
    return ids.unsqueeze(-1).float(), {"text_input_ids": ids}


def _hidream_o1_attention():
    text = len(HIDREAM_O1_PREFIX) + HIDREAM_O1_PROMPT + len(HIDREAM_O1_SUFFIX)
    image = _tokens(HIDREAM_O1_LATENT, 32)
    ar_len = text - 1  # the causal text prefix runs in raw SDPA, outside ComfyUI's attention functions
    # the generated rows, <|tms|> and the image, attend to the whole sequence (one optimized_attention call)
    return ((text - ar_len + image, text + image),)


# Omnigen2: detection fixes every size (32 layers of 2520, 21 heads)
OMNIGEN2_HAND = tc.Hand("detection fixes every size: 32 layers of 2520 wide, 21 heads, text width 2048",
                        overrides={"hidden_size": 96, "num_attention_heads": 2, "num_kv_heads": 1,
                                   "axes_dim_rope": [16, 16, 16], "num_layers": 3, "num_refiner_layers": 1,
                                   "multiple_of": 16, "text_feat_dim": WIDTH})
OMNIGEN2_LATENT = (16, 8, 8)  # 2x2 patches: 16 tokens
OMNIGEN2_REFERENCE = (16, 8, 6)  # the edit's reference latent: 12 tokens


def _omnigen2_seed():
    return {"time_caption_embed.timestep_embedder.linear_1.bias": (96,)}


def _omnigen2_cond(g):
    # the Qwen2.5-VL encoder's attention mask becomes num_tokens; the edit's reference image rides along
    return _context(g), {"attention_mask": torch.ones(1, TEXT, dtype=torch.long),
                         "reference_latents": [torch.randn(1, *OMNIGEN2_REFERENCE, generator=g)]}


# Anima: Cosmos-Predict2's MiniTrainDIT with an LLM adapter
ANIMA_HAND = tc.Hand("detection sets depth and heads only for the real widths (2048 / 5120) and fixes the "
                     "AdaLN-LoRA rank 256", overrides={"num_blocks": 3, "num_heads": 2, "adaln_lora_dim": 16})
ANIMA_LATENT = (16, 1, 8, 8)  # Wan 2.1 latent format; 2x2 patches: 16 tokens
ANIMA_TEXT_WIDTH = 1024  # the cross-attention width ComfyUI fixes (the LLM adapter's output)


def _anima_seed():
    return {"x_embedder.proj.1.weight": (128, (16 + 1) * 4),  # 16 channels + the padding mask, 2x2 patches
            "llm_adapter.blocks.0.cross_attn.q_proj.weight": (1024, 1024),
            **_blocks("blocks", 3, "mlp.layer1.weight", (512, 128))}


def _anima_cond(g):
    # without T5 token ids the context goes to the cross-attention as given (the adapter runs in extra_conds,
    # before the model call ASAG guides)
    return _context(g, ANIMA_TEXT_WIDTH), {}


# ---------------------------------------------------------------------------------------------
# video families
# ---------------------------------------------------------------------------------------------

# LTX-2: real checkpoints carry their transformer config in the safetensors metadata
LTXAV_CONFIG = {
    "num_layers": 3, "num_attention_heads": 2, "attention_head_dim": 32, "cross_attention_dim": 64,
    "audio_num_attention_heads": 2, "audio_attention_head_dim": 16, "audio_cross_attention_dim": 32,
    "caption_channels": 64, "connector_attention_head_dim": 16, "connector_num_attention_heads": 2,
    "connector_num_layers": 1,
}
LTXAV_HAND = tc.Hand("an LTX-2 checkpoint carries its transformer config in its safetensors metadata, which "
                     "ComfyUI's detection reads (tiny_checkpoints loads no metadata)", overrides=LTXAV_CONFIG)
LTXAV_VIDEO = (128, 2, 4, 4)  # patch 1: 32 video tokens
LTXAV_AUDIO = (8, 32, 16)  # 8 channels x 32 latent frames x 16 mel bins: 32 audio tokens, as many as video


def _ltxav_seed():
    return {"adaln_single.emb.timestep_embedder.linear_1.bias": (64,),
            "audio_adaln_single.linear.weight": (6 * 32, 32),
            "transformer_blocks.0.attn2.to_k.weight": (64, 64),
            **_blocks("transformer_blocks", 3, "attn1.to_q.weight", (64, 64))}


def _ltxav_cond(g):
    # LTX-2's text conditioning after its embedding connectors: the video and the audio caption side by side
    return _context(g, 2 * LTXAV_CONFIG["caption_channels"]), {}


def ltxav_latent(batch=1, audio=LTXAV_AUDIO):
    """LTXVConcatAVLatent's packing of a video and an audio latent."""
    import comfy.nested_tensor

    return comfy.nested_tensor.NestedTensor((torch.zeros(batch, *LTXAV_VIDEO), torch.zeros(batch, *audio)))


def ltxav_attention(audio=LTXAV_AUDIO):
    """Video self-attention (attn1) then audio self-attention (audio_attn1): one call each."""
    video = LTXAV_VIDEO[1] * LTXAV_VIDEO[2] * LTXAV_VIDEO[3]
    return ((video, video), (audio[1], audio[1]))


# Wan variants: detection reads the width (128 = 1 head of 128) and picks the variant by its extra weights
WAN_DIM = 128
WAN_TEXT_WIDTH = 4096  # text_dim: a real-size constructor default detection never reads (umT5-XXL)
WAN_LATENT = (16, 2, 8, 8)  # 1x2x2 patches: 16 tokens per frame, 32 in all
WAN_REFERENCE = (16, 1, 8, 8)  # one reference frame: 16 tokens
HUMO_AUDIO = (8, 5, 1280)  # per latent frame: HuMo's audio window x Whisper blocks x channels
SCAIL_POSE = (16, 2, 4, 4)  # the pose video's latent at half the spatial size: 8 tokens


def _wan_seed(in_dim=16, layers=3, **extra):
    d = WAN_DIM
    return {"head.modulation": (1, 2, d), "head.head.weight": (16 * 4, d),
            "patch_embedding.weight": (d, in_dim, 1, 2, 2), **_blocks("blocks", layers, "ffn.0.weight", (128, d)),
            **extra}


def _wan_cond(g):
    return _context(g, WAN_TEXT_WIDTH), {}


def _wan_reference_cond(g):
    return _context(g, WAN_TEXT_WIDTH), {"reference_latents": [torch.randn(1, *WAN_REFERENCE, generator=g)]}


def _humo_cond(g):
    # WanHuMoImageToVideo: audio features per latent frame and the reference image (the 1.7B's layout)
    context, extra = _wan_reference_cond(g)
    extra["audio_embed"] = torch.randn(1, WAN_LATENT[1], *HUMO_AUDIO, generator=g)
    return context, extra


def _scail_cond(g):
    context, extra = _wan_reference_cond(g)
    extra["pose_video_latent"] = torch.randn(1, *SCAIL_POSE, generator=g)
    return context, extra


def _video_tokens(latent, patch=(1, 2, 2)):
    t, h, w = latent[-3:]
    return (t // patch[0]) * (h // patch[1]) * (w // patch[2])


WAN_TOKENS = _video_tokens(WAN_LATENT)
WAN_WITH_REFERENCE = WAN_TOKENS + _video_tokens(WAN_REFERENCE)  # the reference frame's tokens join the video's
CAUSAL_WAN_HAND = tc.Hand("ComfyUI knows a causal (autoregressive) Wan only from its checkpoint's metadata "
                          "({\"transformer\": {\"causal_ar\": true}}); tiny_checkpoints loads no metadata",
                          config_class="WAN21_CausalAR_T2V")


def _cogvideo_seed(in_channels):
    dim = 128  # detection: 64 channels per head: 2 heads
    return {"blocks.0.norm1.linear.weight": (6 * dim, 64), "patch_embed.proj.weight": (dim, in_channels, 2, 2),
            "patch_embed.text_proj.weight": (dim, WIDTH), **_blocks("blocks", 3, "norm2.linear.weight", (6 * dim, 64))}


COGVIDEO_LATENT = (16, 2, 8, 8)  # 2x2 patches: 32 tokens, joined with the text in one attention


FAMILIES = {
    "flux2_klein": Family("Flux2", _flux2_seed, FLUX2_LATENT, _joint(FLUX2_TOKENS)),
    "flux2_klein_edit": Family("Flux2", _flux2_seed, FLUX2_LATENT, _joint(FLUX2_EDIT_TOKENS), cond=_flux2_edit_cond,
                               feeds="a reference image"),
    "flux2_dev": Family("Flux2", lambda: _flux2_seed(guidance=True), FLUX2_LATENT, _joint(FLUX2_TOKENS)),
    "zimage": Family("ZImage", _zimage_seed, ZIMAGE_LATENT, _joint(ZIMAGE_TOKENS), hand=ZIMAGE_HAND),
    "zimage_pixel": Family("ZImagePixelSpace", lambda: _zimage_seed(pixel=True), ZIMAGE_PIXEL_LATENT,
                           _joint(ZIMAGE_PIXEL_TOKENS), hand=ZIMAGE_PIXEL_HAND),
    "qwen_image_edit": Family("QwenImage", _qwen_seed, QWEN_LATENT, _joint(QWEN_EDIT_TOKENS), hand=QWEN_HAND,
                              cond=_qwen_edit_cond, feeds="a reference image"),
    "qwen_image_edit_2511": Family("QwenImage", lambda: _qwen_seed(index_timestep_zero=True), QWEN_LATENT,
                                   _joint(QWEN_EDIT_TOKENS), hand=QWEN_HAND, cond=_qwen_edit_cond,
                                   feeds="a reference image (its tokens at timestep 0)",
                                   needs=_knows_index_timestep_zero),
    "hunyuan_image21": Family("HunyuanImage21", lambda: _hunyuan_seed((1, 1), 64, 64), HUNYUAN_IMAGE_LATENT,
                              _joint(TEXT + _tokens(HUNYUAN_IMAGE_LATENT, 1))),
    "hunyuan_image21_refiner": Family("HunyuanImage21Refiner", lambda: _hunyuan_seed((1, 1, 1), 128, 64),
                                      HUNYUAN_REFINER_LATENT, _joint(TEXT + _video_tokens(HUNYUAN_REFINER_LATENT,
                                                                                          (1, 1, 1)))),
    "kandinsky5_image": Family("Kandinsky5Image", lambda: _kandinsky_seed(64), KANDINSKY_IMAGE_LATENT,
                               _joint(_tokens(KANDINSKY_IMAGE_LATENT, 2)), hand=KANDINSKY_IMAGE_HAND,
                               cond=_kandinsky_cond),
    "longcat_image": Family("LongCatImage", _longcat_seed, (16, 8, 8), _joint(TEXT + _tokens((16, 8, 8), 2)),
                            cond=lambda g: (_context(g, LONGCAT_TEXT_WIDTH), {})),
    "ernie_image": Family("ErnieImage", lambda: _blocks("layers", 3, "mlp.linear_fc2.weight", (256, 128)),
                          ERNIE_LATENT, _joint(_tokens(ERNIE_LATENT, 1) + TEXT), hand=ERNIE_HAND),
    "chroma_radiance": Family("ChromaRadiance", _chroma_radiance_seed, CHROMA_RADIANCE_LATENT,
                              _joint(TEXT + _tokens(CHROMA_RADIANCE_LATENT, 16)), hand=CHROMA_RADIANCE_HAND,
                              cond=lambda g: (_context(g), {"pooled_output": None, "guidance": 0.0})),
    "hidream_o1": Family("HiDreamO1", _hidream_o1_seed, HIDREAM_O1_LATENT, _hidream_o1_attention(),
                         hand=HIDREAM_O1_HAND, cond=_hidream_o1_cond),
    "omnigen2": Family("Omnigen2", _omnigen2_seed, OMNIGEN2_LATENT,
                       _joint(TEXT + _tokens(OMNIGEN2_REFERENCE, 2) + _tokens(OMNIGEN2_LATENT, 2)),
                       hand=OMNIGEN2_HAND, cond=_omnigen2_cond, feeds="a reference image"),
    "anima": Family("Anima", _anima_seed, ANIMA_LATENT, _joint(_video_tokens(ANIMA_LATENT)), hand=ANIMA_HAND,
                    cond=_anima_cond),
    "ltxav": Family("LTXAV", _ltxav_seed, LTXAV_VIDEO, ltxav_attention(), hand=LTXAV_HAND, cond=_ltxav_cond,
                    feeds="an audio latent"),
    "hunyuan_video15": Family("HunyuanVideo15", lambda: _hunyuan_seed((1, 1, 1), 65, 32, video15=True),
                              HUNYUAN15_LATENT, _joint(TEXT + _video_tokens(HUNYUAN15_LATENT, (1, 1, 1))),
                              cond=_no_pooled),
    "hunyuan_video15_sr": Family("HunyuanVideo15_SR_Distilled", lambda: _hunyuan_seed((1, 1, 1), 98, 32, True),
                                 HUNYUAN15_LATENT, _joint(TEXT + _video_tokens(HUNYUAN15_LATENT, (1, 1, 1))),
                                 cond=_no_pooled),
    "kandinsky5": Family("Kandinsky5", lambda: _kandinsky_seed(132), KANDINSKY_VIDEO_LATENT,
                         _joint(_video_tokens(KANDINSKY_VIDEO_LATENT)), hand=KANDINSKY_VIDEO_HAND,
                         cond=_kandinsky_cond),
    "cogvideox_t2v": Family("CogVideoX_T2V", lambda: _cogvideo_seed(16), COGVIDEO_LATENT,
                            _joint(TEXT + _video_tokens(COGVIDEO_LATENT))),
    "cogvideox_i2v": Family("CogVideoX_I2V", lambda: _cogvideo_seed(32), COGVIDEO_LATENT,
                            _joint(TEXT + _video_tokens(COGVIDEO_LATENT))),
    "wan21_vace": Family("WAN21_Vace", lambda: _wan_seed(**{"vace_patch_embedding.weight": (WAN_DIM, 96, 1, 2, 2),
                                                            "vace_blocks.0.after_proj.weight": (WAN_DIM, WAN_DIM)}),
                         WAN_LATENT, _joint(WAN_TOKENS), cond=_wan_cond),
    # S2V and HuMo append the reference frame's tokens to the video's, in the same self-attention
    "wan22_s2v": Family("WAN22_S2V", lambda: _wan_seed(**{"casual_audio_encoder.encoder.final_linear.weight":
                                                          (WAN_DIM, WAN_DIM)}),
                        WAN_LATENT, _joint(WAN_WITH_REFERENCE), cond=_wan_reference_cond, feeds="a reference frame"),
    # 16 video tokens per frame = HuMo's 16 audio tokens per frame: its per-frame audio cross-attention inside
    # the block has as many keys as queries, in a batch of frames
    "wan21_humo": Family("WAN21_HuMo", lambda: _wan_seed(**{"audio_proj.audio_proj_glob_1.layer.bias": (512,)}),
                         WAN_LATENT, _joint(WAN_WITH_REFERENCE), cond=_humo_cond,
                         feeds="audio and a reference frame"),
    # Animate's face adapter needs 5 blocks (one fuser per 5): auto is the middle one, b2
    "wan22_animate": Family("WAN22_Animate", lambda: _wan_seed(layers=5, **{
        "face_adapter.fuser_blocks.0.k_norm.weight": (WAN_DIM,)}), WAN_LATENT, _joint(WAN_TOKENS), cond=_wan_cond,
        auto=("double_block", 2)),
    # SCAIL: 16 latent + 4 mask channels; the reference frame leads, the pose tokens trail
    "wan21_scail": Family("WAN21_SCAIL",
                          lambda: _wan_seed(20, **{"patch_embedding_pose.weight": (WAN_DIM, 20, 1, 2, 2)}), WAN_LATENT,
                          _joint(WAN_WITH_REFERENCE + _video_tokens(SCAIL_POSE)), cond=_scail_cond,
                          feeds="a reference frame and a pose video"),
    "wan22_wandancer": Family("WAN22_WanDancer", lambda: _wan_seed(36, **{
        "patch_embedding_global.weight": (WAN_DIM, 36, 1, 2, 2)}), WAN_LATENT, _joint(WAN_TOKENS), cond=_wan_cond),
    "wan21_causal_ar": Family("WAN21_CausalAR_T2V", _wan_seed, WAN_LATENT, _joint(WAN_TOKENS), hand=CAUSAL_WAN_HAND,
                              cond=_wan_cond),
}

#: families ComfyUI 0.3.64 lacks (read in its comfy/supported_models.py; Edit-2511's reference method in its
#: comfy/ldm/qwen_image/model.py)
NEW_IN_0_22 = frozenset({
    "anima", "cogvideox_i2v", "cogvideox_t2v", "ernie_image", "flux2_dev", "flux2_klein", "flux2_klein_edit",
    "hidream_o1", "hunyuan_video15", "hunyuan_video15_sr", "kandinsky5", "kandinsky5_image", "longcat_image",
    "ltxav", "qwen_image_edit_2511", "wan21_causal_ar", "wan21_scail", "wan22_wandancer", "zimage", "zimage_pixel",
})


def available() -> list:
    """The families whose supported_models class the running ComfyUI has."""
    import comfy.supported_models

    return [name for name, family in FAMILIES.items()
            if hasattr(comfy.supported_models, family.config) and (family.needs is None or family.needs())]


def build(name, seed=0, dtype=torch.float32):
    """The tiny model of family ``name``, loaded by ComfyUI from its tiny checkpoint."""
    family = FAMILIES[name]
    model = tc.load_tiny(tc.seed_tensors(family.seed(), seed), dtype=dtype, hand=family.hand, seed=seed)
    found = type(model.model.model_config).__name__
    if found != family.config:
        raise AssertionError(f"{name}: ComfyUI loaded the tiny checkpoint as {found}, expected {family.config}")
    return model


def conditioning(name, seed=0):
    """Positive and negative conditioning of family ``name`` (its ``extra_conds`` keys)."""
    g = torch.Generator().manual_seed(seed)
    make = FAMILIES[name].cond or _plain
    return [list(make(g))], [list(make(g))]


def latent(name, batch=1):
    if name == "ltxav":
        return {"samples": ltxav_latent(batch)}
    return {"samples": torch.zeros((batch, *FAMILIES[name].latent))}
