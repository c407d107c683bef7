"""Tiny checkpoints: tiny random-weight models that come the way real checkpoints come.

A family's *seed* is a state dict in the real checkpoint key layout holding the keys ComfyUI's
detection reads (``comfy/model_detection.py``), at tiny widths and depths. From it:

1. ``model_config``: ComfyUI's ``detect_unet_config`` gives the unet_config with the host's own
   fields (a newer ComfyUI's new constructor fields come with it), and ComfyUI's own matching picks
   the supported_models class. Where detection sets a width as a constant instead of reading it
   (head widths of 128, Mochi's fixed sizes, U-Net classes matched by real widths) the family's
   ``Hand`` (``HAND_CONFIGS``, the one place for them) names the class and overrides those values.
2. ``complete_checkpoint``: that config's model gives every key and shape; each tensor not in the
   seed gets deterministic values from its key name, shape and ``seed`` (``values``).
3. ``load_tiny``: the complete checkpoint through ComfyUI's loader, on the CPU. A checkpoint that
   needs no hand values, loaded in float32, goes through ``comfy.sd.load_diffusion_model_state_dict``
   whole (detection included); otherwise through the same steps with the detected-and-amended
   config: ``get_model``, ``BaseModel.load_model_weights`` (the loader's own state-dict loading),
   a ModelPatcher. Either way a missing or unexpected key is an error.

``load_tiny`` takes a seed or a complete checkpoint (a seed is completed first), so a new family
needs only its seed (``seed_tensors`` of {key: shape}) and, where detection needs real sizes, a
``Hand``. ``SEEDS`` holds this pack's families; tests/tiny_models.py and tests/tiny_dits.py are
builders over them.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, field

import torch

CONTEXT = 64  # text-context width of the tiny models
POOLED = 32  # width of the pooled text vector where a family has one
HIDREAM_LLAMA_LAYERS = 4


# ---------------------------------------------------------------------------------------------
# deterministic values
# ---------------------------------------------------------------------------------------------

def values(key, shape, seed=0):
    """The tensor a tiny checkpoint holds at ``key``: drawn from a generator seeded by ``seed`` and
    the key's name, so it does not depend on which other keys a ComfyUI version's model has.
    Matrices randn/sqrt(fan_in); 1-D weights and scales 1 + 0.1 randn; biases 0.02 randn;
    ``pos_embed`` (SD3's positional embedding, a buffer a checkpoint fills) 0.02 randn."""
    g = torch.Generator().manual_seed(zlib.crc32(f"{seed}/{key}".encode()))  # the CPU generator keeps 32 bits
    shape = tuple(shape)
    draw = torch.randn(shape, generator=g)
    if key.endswith("pos_embed"):
        return 0.02 * draw
    if len(shape) >= 2:
        return draw / math.sqrt(math.prod(shape[1:]))
    if key.endswith(("weight", "scale")):
        return 1.0 + 0.1 * draw
    return 0.02 * draw


def seed_tensors(shapes, seed=0):
    """{key: shape} -> {key: tensor} with ``values``."""
    return {key: values(key, shape, seed) for key, shape in shapes.items()}


def fill(module, seed=0):
    """``module``'s parameters (and ``pos_embed`` buffers) set to ``values``; other floating buffers
    keep what the module built, zeroed where not finite (ComfyUI's ops leave memory uninitialised)."""
    with torch.no_grad():
        params = dict(module.named_parameters())
        for name, p in params.items():
            p.copy_(values(name, p.shape, seed))
        for name, b in module.named_buffers():
            if name in params or not b.is_floating_point():
                continue
            if name.endswith("pos_embed"):
                b.copy_(values(name, b.shape, seed))
            elif not torch.isfinite(b).all():
                b.zero_()
    return module


# ---------------------------------------------------------------------------------------------
# what detection cannot give
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Hand:
    """What a family's tiny checkpoint needs beyond ComfyUI's detection, and ``why``.

    ``config_class``: the supported_models class by name, where ComfyUI matches the family by real
    widths (its ``unet_config`` pins e.g. ``context_dim`` 768). ``overrides``: unet_config values
    that detection sets as constants (or leaves to real-size constructor defaults) instead of
    reading them from the tensors. ``model_type``: a ``comfy.model_base.ModelType`` name, where the
    config class decides it from real-checkpoint values."""

    why: str
    config_class: str | None = None
    overrides: dict = field(default_factory=dict)
    model_type: str | None = None


# ---------------------------------------------------------------------------------------------
# the stages
# ---------------------------------------------------------------------------------------------

def detect(state_dict, metadata=None):
    """ComfyUI's ``detect_unet_config`` on a diffusion-model state dict (no prefix); ``metadata``: a
    safetensors file's metadata, whose ``config`` JSON some families' detection reads (LTXV)."""
    import comfy.model_detection

    config = comfy.model_detection.detect_unet_config(state_dict, "", metadata=metadata)
    if config is None:
        raise ValueError(f"ComfyUI's detection recognises no diffusion model in the keys {sorted(state_dict)[:8]}...")
    return config


def detected_class(state_dict, metadata=None):
    """The supported_models class ComfyUI's matching picks for the detected config (None: none)."""
    import comfy.supported_models

    config = detect(state_dict, metadata)
    for cls in comfy.supported_models.models:
        if cls.matches(config, state_dict):
            return cls
    return None


def model_config(state_dict, hand=None, metadata=None):
    """ComfyUI's model config (a supported_models instance) for ``state_dict``: the detected
    unet_config, the class ComfyUI matches (or ``hand.config_class``), ``hand.overrides`` applied."""
    import comfy.model_base
    import comfy.supported_models

    unet_config = detect(state_dict, metadata)
    if hand is not None and hand.config_class is not None:
        cls = getattr(comfy.supported_models, hand.config_class)
    else:
        cls = detected_class(state_dict, metadata)
        if cls is None:
            raise ValueError(f"ComfyUI matches no supported model to the detected config {unet_config}; "
                             "a Hand with config_class names one")
    if hand is not None:
        unet_config.update(hand.overrides)
    config = cls(unet_config)
    if hand is not None and hand.model_type is not None:
        model_type = comfy.model_base.ModelType[hand.model_type]
        config.model_type = lambda state_dict, prefix="": model_type  # shadows the class's own rule
    return config


def complete_checkpoint(state_dict, hand=None, seed=0, metadata=None):
    """The full tiny checkpoint: ``state_dict`` (a seed, in the real key layout) plus every other
    key of the model ComfyUI builds from it, with ``values``. Tensors given keep their values; a
    given key the model lacks, or one of another shape, is an error."""
    config = model_config(state_dict, hand, metadata)
    config.set_inference_dtype(torch.float32, None)
    given = config.process_unet_state_dict(dict(state_dict))  # a checkpoint's names -> the model's
    model = config.get_model(given).diffusion_model
    target = model.state_dict()
    unexpected = sorted(set(given) - set(target))
    if unexpected:
        raise ValueError(f"seed keys the {type(config).__name__} model lacks: {unexpected[:8]}")
    return _checkpoint_of(model, given, seed)


def _checkpoint_of(model, given, seed):
    """``model``'s state dict as a checkpoint: ``given`` tensors, parameters and ``pos_embed`` from
    ``values``, other buffers as the model computed them (a frequency table), as a checkpoint saves them."""
    params = dict(model.named_parameters())
    out = {}
    for key, tensor in model.state_dict().items():
        if key in given:
            if tuple(given[key].shape) != tuple(tensor.shape):
                raise ValueError(f"seed key {key} has shape {tuple(given[key].shape)}; "
                                 f"ComfyUI's model has {tuple(tensor.shape)}")
            out[key] = given[key]
        elif not tensor.is_floating_point():
            out[key] = tensor.clone()
        elif key in params or key.endswith("pos_embed"):
            out[key] = values(key, tensor.shape, seed)
        else:
            out[key] = torch.where(torch.isfinite(tensor), tensor, torch.zeros_like(tensor))
    return out


def _check_keys(model, checkpoint):
    loaded = set(model.diffusion_model.state_dict())
    missing, unexpected = sorted(loaded - set(checkpoint)), sorted(set(checkpoint) - loaded)
    if missing or unexpected:
        raise ValueError(f"tiny checkpoint vs ComfyUI's {type(model.model_config).__name__} model: "
                         f"missing {missing[:8]}, unexpected {unexpected[:8]}")


def _same_config(config, expected):
    ours = {k: v for k, v in config.unet_config.items() if k != "dtype"}
    theirs = {k: v for k, v in expected.unet_config.items() if k != "dtype"}
    if type(config) is not type(expected) or ours != theirs:
        raise ValueError(f"the complete checkpoint detects as {type(config).__name__} {ours}, "
                             f"its seed as {type(expected).__name__} {theirs}")


def _loader_takes_metadata():
    import inspect

    import comfy.sd

    return "metadata" in inspect.signature(comfy.sd.load_diffusion_model_state_dict).parameters


def load_tiny(state_dict, dtype=torch.float32, hand=None, seed=0, metadata=None):
    """A CPU ModelPatcher of the tiny checkpoint ``state_dict`` (a seed or a complete checkpoint),
    loaded by ComfyUI (see the module docstring). ``dtype``: the weights' and the computation's
    dtype (ComfyUI's own loader on a CPU would compute half weights in float32, so half dtypes take
    the loader's steps with ``dtype`` as the inference dtype, as a GPU runs them). ``metadata``: the
    file's safetensors metadata, for hosts whose loader reads it (0.22: ``config`` JSON); a host whose
    loader takes none (0.3.64) gets it through the loader's steps, its detection reading it."""
    import comfy.model_management
    import comfy.model_patcher
    import comfy.sd

    checkpoint = complete_checkpoint(state_dict, hand, seed, metadata)
    expected = model_config(state_dict, hand, metadata)
    comfy.model_management.unload_all_models()
    if hand is None and dtype == torch.float32 and (metadata is None or _loader_takes_metadata()):
        extra = {} if metadata is None else {"metadata": metadata}
        patcher = comfy.sd.load_diffusion_model_state_dict(dict(checkpoint), model_options={"dtype": dtype}, **extra)
        if patcher is None:
            raise ValueError("ComfyUI's loader recognises no diffusion model in the tiny checkpoint")
        _same_config(patcher.model.model_config, expected)
        _check_keys(patcher.model, checkpoint)
        return patcher
    again = model_config(checkpoint, hand, metadata)
    _same_config(again, expected)
    again.set_inference_dtype(dtype, None)
    model = again.get_model(checkpoint)
    model.load_model_weights(dict(checkpoint), "")  # it pops what it loads
    _check_keys(model, checkpoint)
    cpu = torch.device("cpu")
    return comfy.model_patcher.ModelPatcher(model, load_device=cpu, offload_device=cpu)


def from_model_config(config, seed=0, dtype=torch.float32):
    """A CPU ModelPatcher of a model config made by hand (the benchmarks' sized architectures),
    its weights from ``values`` loaded through ``load_model_weights`` as ``load_tiny`` loads them."""
    import comfy.model_management
    import comfy.model_patcher

    config.set_inference_dtype(dtype, None)
    model = config.get_model({})
    checkpoint = _checkpoint_of(model.diffusion_model, {}, seed)
    model.load_model_weights(dict(checkpoint), "")
    _check_keys(model, checkpoint)
    comfy.model_management.unload_all_models()
    cpu = torch.device("cpu")
    return comfy.model_patcher.ModelPatcher(model, load_device=cpu, offload_device=cpu)


# ---------------------------------------------------------------------------------------------
# seeds: the keys ComfyUI's detection reads, in the real checkpoint layout, at tiny sizes
# ---------------------------------------------------------------------------------------------

def _unet_transformer(seed, prefix, channels, depth, context_dim, linear):
    seed[f"{prefix}proj_in.weight"] = (channels, channels) if linear else (channels, channels, 1, 1)
    for d in range(depth):
        seed[f"{prefix}transformer_blocks.{d}.attn2.to_k.weight"] = (channels, context_dim)


def unet_seed(*, model_channels=32, channel_mult=(1, 2), num_res_blocks=(1, 1), transformer_depth=(1, 1),
              transformer_depth_output=(1, 1, 1, 1), transformer_depth_middle=1, context_dim=CONTEXT, linear=False,
              in_channels=4, adm_in_channels=None):
    """An SD-style U-Net's input/middle/output blocks as a checkpoint lays them out: the convolution
    in, res blocks (``in_layers.0``, ``out_layers.3``), downsamplers (``op``), SpatialTransformers
    (``proj_in``, ``transformer_blocks.N.attn2.to_k``) where the depths ask for them, ``label_emb``
    for an ADM model, the convolution out. ``transformer_depth``: per input res block;
    ``transformer_depth_output``: in ComfyUI's order (the last entry is output block 0)."""
    seed = {"input_blocks.0.0.weight": (model_channels, in_channels, 3, 3),
            "out.2.weight": (4, model_channels, 3, 3)}
    if adm_in_channels is not None:
        seed["label_emb.0.0.weight"] = (4 * model_channels, adm_in_channels)
    depths = list(transformer_depth)
    block, ch, skips = 1, model_channels, [model_channels]
    for level, mult in enumerate(channel_mult):
        for _ in range(num_res_blocks[level]):
            seed[f"input_blocks.{block}.0.in_layers.0.weight"] = (ch,)
            ch = model_channels * mult
            seed[f"input_blocks.{block}.0.out_layers.3.weight"] = (ch, ch, 3, 3)
            depth = depths.pop(0)
            if depth:
                _unet_transformer(seed, f"input_blocks.{block}.1.", ch, depth, context_dim, linear)
            skips.append(ch)
            block += 1
        if level != len(channel_mult) - 1:
            seed[f"input_blocks.{block}.0.op.weight"] = (ch, ch, 3, 3)
            skips.append(ch)
            block += 1
    seed["middle_block.0.in_layers.0.weight"] = (ch,)
    if transformer_depth_middle > 0:
        _unet_transformer(seed, "middle_block.1.", ch, transformer_depth_middle, context_dim, linear)
    output_depths = list(transformer_depth_output)
    block = 0
    for level, mult in reversed(list(enumerate(channel_mult))):
        for _ in range(num_res_blocks[level] + 1):
            seed[f"output_blocks.{block}.0.in_layers.0.weight"] = (ch + skips.pop(),)
            ch = model_channels * mult
            depth = output_depths.pop()
            if depth:
                _unet_transformer(seed, f"output_blocks.{block}.1.", ch, depth, context_dim, linear)
            block += 1
    return seed


def _blocks(prefix, count, suffix, shape):
    return {f"{prefix}.{i}.{suffix}": shape for i in range(count)}


def sd3_seed(depth=3, x_block_self_attn_layers=(1,), context=CONTEXT, pooled=32, patches=256):
    """MMDiT: 64 channels per head and ``depth`` heads (detection: hidden = 64 x depth)."""
    hidden = 64 * depth
    seed = {"x_embedder.proj.weight": (hidden, 16, 2, 2), "final_layer.linear.weight": (64, hidden),
            "y_embedder.mlp.0.weight": (hidden, pooled), "context_embedder.weight": (hidden, context),
            "pos_embed": (1, patches, hidden), "joint_blocks.0.context_block.attn.ln_q.weight": (64,),
            **_blocks("joint_blocks", depth, "context_block.attn.qkv.weight", (3 * hidden, hidden))}
    for layer in x_block_self_attn_layers:
        seed[f"joint_blocks.{layer}.x_block.attn2.qkv.weight"] = (3 * hidden, hidden)
    return seed


def _flux_blocks(hidden, depth, single, mlp_ratio, head_dim):
    return {**_blocks("double_blocks", depth, "img_attn.norm.key_norm.scale", (head_dim,)),
            **_blocks("double_blocks", depth, "img_attn.qkv.weight", (3 * hidden, hidden)),
            **_blocks("single_blocks", single, "linear1.weight", (3 * hidden + int(hidden * mlp_ratio), hidden))}


def flux_seed(hidden=64, depth=3, single=4, context=CONTEXT, pooled=POOLED, mlp_ratio=2.0, head_dim=16):
    return {"img_in.weight": (hidden, 16 * 4), "txt_in.weight": (hidden, context),
            "vector_in.in_layer.weight": (hidden, pooled), "guidance_in.in_layer.weight": (hidden, 256),
            **_flux_blocks(hidden, depth, single, mlp_ratio, head_dim)}


def chroma_seed():
    return {"img_in.weight": (64, 64), "txt_in.weight": (64, CONTEXT),
            "distilled_guidance_layer.norms.0.scale": (32,), **_flux_blocks(64, 2, 2, 2.0, 16)}


def auraflow_seed():
    return {"positional_encoding": (1, 64, 64), "cond_seq_linear.weight": (64, CONTEXT),
            **_blocks("double_layers", 2, "attn.w1q.weight", (64, 64)),
            **_blocks("single_layers", 2, "attn.w1q.weight", (64, 64))}


def hunyuan_dit_seed():
    return {"mlp_t5.0.weight": (4 * CONTEXT, CONTEXT), "x_embedder.proj.weight": (64, 4, 2, 2),
            "extra_embedder.0.weight": (256, 1024), **_blocks("blocks", 4, "attn1.Wqkv.weight", (192, 64))}


def hunyuan_video_seed(hidden=64, depth=2, single=2, context=CONTEXT, pooled=POOLED, mlp_ratio=2.0, head_dim=16):
    return {"txt_in.individual_token_refiner.blocks.0.norm1.weight": (hidden,),
            "img_in.proj.weight": (hidden, 16, 1, 2, 2), "final_layer.linear.weight": (64, hidden),
            "vector_in.in_layer.weight": (hidden, pooled), "txt_in.input_embedder.weight": (hidden, context),
            "guidance_in.in_layer.weight": (hidden, 256), **_flux_blocks(hidden, depth, single, mlp_ratio, head_dim)}


def ltxv_seed(dim=64, layers=3, cross=64):
    return {"adaln_single.emb.timestep_embedder.linear_1.bias": (dim,),
            **_blocks("transformer_blocks", layers, "attn2.to_k.weight", (dim, cross))}


def lumina2_seed():
    return {"cap_embedder.1.weight": (64, CONTEXT), "noise_refiner.0.attention.k_norm.weight": (16,),
            **_blocks("layers", 3, "attention.qkv.weight", (128, 64))}


def qwen_image_seed(hidden=64, layers=3, context=CONTEXT, in_channels=64):
    return {"txt_norm.weight": (context,), "img_in.weight": (hidden, in_channels),
            **_blocks("transformer_blocks", layers, "attn.to_q.weight", (hidden, hidden))}


def wan_seed(in_dim=16, out_dim=16, image=False, dim=64, ffn=128, layers=3):
    """Wan 2.1 / 2.2: ``image`` adds the CLIP-vision embedding of image-to-video (``img_emb``)."""
    seed = {"head.modulation": (1, 2, dim), "head.head.weight": (out_dim * 4, dim),
            "patch_embedding.weight": (dim, in_dim, 1, 2, 2), **_blocks("blocks", layers, "ffn.0.weight", (ffn, dim))}
    if image:
        seed["img_emb.proj.0.bias"] = (1280,)
    return seed


def mochi_seed():
    return {"t5_yproj.weight": (32, CONTEXT)}


def cosmos_predict2_seed():
    return {"x_embedder.proj.1.weight": (64, (16 + 1) * 4), **_blocks("blocks", 3, "mlp.layer1.weight", (256, 64))}


def hidream_seed():
    return {"caption_projection.0.linear.weight": (64, CONTEXT)}


# ---------------------------------------------------------------------------------------------
# HAND_CONFIGS: the one place for what detection cannot read from a tiny checkpoint
# ---------------------------------------------------------------------------------------------

_UNET_CLASS = "ComfyUI matches the SD U-Nets by real widths (context_dim 768/1024/2048, model_channels 320)"
_FLUX_HEADS = {"axes_dim": [4, 6, 6], "num_heads": 4, "mlp_ratio": 2.0}

HAND_CONFIGS = {
    "sd15": Hand(_UNET_CLASS, config_class="SD15"),
    "sd15_inpaint": Hand(_UNET_CLASS, config_class="SD15"),
    "sd15_without_attention": Hand(
        _UNET_CLASS + "; a U-Net with no cross-attention holds no text width to read, and ComfyUI's "
        "UNetModel still wants one", config_class="SD15", overrides={"context_dim": CONTEXT}),
    "sd20": Hand(_UNET_CLASS + "; SD20 tells v-prediction by the values of output block 11, which a tiny "
                 "U-Net lacks", config_class="SD20", model_type="V_PREDICTION"),
    "sdxl": Hand(_UNET_CLASS, config_class="SDXL"),
    "flux": Hand("detection fixes 128 channels per head (axes_dim 16+56+56, num_heads = hidden/128) and MLP "
                 "ratio 4; ComfyUI 0.3.64 also fixes hidden_size 3072 and context_in_dim 4096",
                 overrides={**_FLUX_HEADS, "hidden_size": 64, "context_in_dim": CONTEXT}),
    "chroma": Hand("as Flux, and detection fixes the modulation approximator's sizes (5120 wide, 5 layers)",
                   overrides={**_FLUX_HEADS, "hidden_size": 64, "context_in_dim": CONTEXT, "out_dim": 64,
                              "hidden_dim": 32, "n_layers": 1}),
    "auraflow": Hand("ComfyUI matches AuraFlow by its real text width (cond_seq_dim 2048); detection reads only "
                     "depths, positions and the text width, the rest are real-size constructor defaults",
                     config_class="AuraFlow",
                     overrides={"dim": 64, "n_heads": 4, "global_conddim": 64, "in_channels": 4, "out_channels": 4,
                                "patch_size": 2}),
    "hunyuan_dit": Hand("detection reads only depth and hidden size; heads, text widths and lengths are "
                        "real-size constructor defaults",
                        overrides={"in_channels": 4, "input_size": 16, "patch_size": 2, "mlp_ratio": 2.0,
                                   "num_heads": 4, "text_states_dim": CONTEXT, "text_states_dim_t5": CONTEXT,
                                   "text_len": 7, "text_len_t5": 7}),
    "lumina2": Hand("detection sets heads and RoPE axes only for the real widths (2304 / 3840); ComfyUI 0.3.64 "
                    "also fixes dim 2304",
                    overrides={"dim": 64, "n_heads": 4, "n_kv_heads": 2, "multiple_of": 16, "n_refiner_layers": 1,
                               "axes_dims": [4, 6, 6], "axes_lens": [64, 32, 32]}),
    "qwen_image": Hand("detection reads only the input width and depth; the rest are real-size constructor "
                       "defaults (24 heads of 128, text width 3584)",
                       overrides={"patch_size": 2, "out_channels": 16, "attention_head_dim": 16,
                                  "num_attention_heads": 4, "joint_attention_dim": CONTEXT,
                                  "axes_dims_rope": [4, 6, 6]}),
    "wan": Hand("detection fixes 128 channels per head and the 256-wide time embedding; the text width is a "
                "real-size constructor default (4096)",
                overrides={"num_heads": 4, "freq_dim": 32, "text_dim": CONTEXT}),
    "hunyuan_video": Hand("detection fixes 128 channels per head, MLP ratio 4 and the pooled width 768",
                          overrides={**_FLUX_HEADS, "vec_in_dim": POOLED}),
    "ltxv": Hand("detection fixes 32 heads; the caption width is a real-size constructor default (4096)",
                 overrides={"attention_head_dim": 16, "num_attention_heads": 4, "caption_channels": CONTEXT}),
    "mochi": Hand("detection fixes every Mochi size (48 blocks, 3072/1536 wide); the block asserts the real "
                  "12288-wide visual MLP, so the MLP ratio keeps it",
                  overrides={"depth": 3, "num_heads": 4, "hidden_size_x": 64, "hidden_size_y": 32,
                             "mlp_ratio_x": 12288 / 64, "mlp_ratio_y": 2.0, "t5_feat_dim": CONTEXT,
                             "t5_token_length": 8}),
    "cosmos_predict2": Hand("detection sets depth and heads only for the real widths (2048 / 5120) and fixes the "
                            "text width 1024, the AdaLN-LoRA rank 256 and the 240x240x128 position range",
                            overrides={"num_blocks": 3, "num_heads": 4, "crossattn_emb_channels": CONTEXT,
                                       "adaln_lora_dim": 16, "max_img_h": 32, "max_img_w": 32, "max_frames": 8}),
    "hidream": Hand("detection fixes every HiDream size (16 + 32 blocks of 20 heads x 128, 4 experts, 4096-wide "
                    "text)",
                    overrides={"num_layers": 2, "num_single_layers": 2, "attention_head_dim": 16,
                               "num_attention_heads": 4, "caption_channels": [CONTEXT, CONTEXT],
                               "text_emb_dim": POOLED, "num_routed_experts": 2, "num_activated_experts": 1,
                               "axes_dims_rope": [4, 6, 6], "max_resolution": [16, 16],
                               "llama_layers": list(range(HIDREAM_LLAMA_LAYERS))}),
}

SEEDS = {
    "sd15": lambda: unet_seed(),
    "sd15_inpaint": lambda: unet_seed(in_channels=9),
    "sd15_without_attention": lambda: unet_seed(transformer_depth=(0, 0), transformer_depth_output=(0, 0, 0, 0),
                                                transformer_depth_middle=-1),
    "sd20": lambda: unet_seed(model_channels=64, linear=True),
    "sdxl": lambda: unet_seed(model_channels=64, linear=True, channel_mult=(1, 2, 2), num_res_blocks=(1, 1, 1),
                              transformer_depth=(0, 1, 2), transformer_depth_output=(0, 0, 1, 1, 2, 2),
                              transformer_depth_middle=2, adm_in_channels=2816),
    "sd3": sd3_seed,
    "flux": flux_seed,
    "chroma": chroma_seed,
    "auraflow": auraflow_seed,
    "hunyuan_dit": hunyuan_dit_seed,
    "lumina2": lumina2_seed,
    "qwen_image": qwen_image_seed,
    "wan21": lambda: wan_seed(),
    "wan22": lambda: wan_seed(in_dim=48, out_dim=48),
    "wan21_i2v": lambda: wan_seed(in_dim=36, image=True),
    "hunyuan_video": hunyuan_video_seed,
    "ltxv": ltxv_seed,
    "mochi": mochi_seed,
    "cosmos_predict2": cosmos_predict2_seed,
    "hidream": hidream_seed,
}
HAND_OF = {"wan21": "wan", "wan22": "wan", "wan21_i2v": "wan"}  # families sharing one Hand


def hand_for(family):
    """The family's Hand (None: ComfyUI's detection and matching need nothing more)."""
    return HAND_CONFIGS.get(HAND_OF.get(family, family))


def build(family, seed=0, dtype=torch.float32, **seed_args):
    """The tiny model of ``family`` (a key of SEEDS): its seed through ``load_tiny``."""
    if family not in SEEDS:
        raise ValueError(f"family must be one of {sorted(SEEDS)}, got {family!r}")
    shapes = SEEDS[family](**seed_args)
    return load_tiny(seed_tensors(shapes, seed), dtype=dtype, hand=hand_for(family), seed=seed)
