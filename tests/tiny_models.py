"""Tiny random-weight instances of ComfyUI's real architectures, built from ComfyUI's own
model classes (supported_models configs → model_base → ModelPatcher), for host tests.

Widths are cut down; the block structure (U-Net input/middle/output blocks with
SpatialTransformers, MMDiT joint blocks, Flux double + single stacks) is the real one.
"""

from __future__ import annotations

import math

import torch

CONTEXT = 64  # text-context width of the tiny models


def _init_weights(module, seed):
    """ComfyUI's ops leave weights uninitialised: fill them deterministically."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.ndim >= 2:
                fan_in = math.prod(p.shape[1:])
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(fan_in))
            elif name.endswith("weight") or name.endswith("scale"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.02 * torch.randn(p.shape, generator=g))
        for name, b in module.named_buffers():
            if not b.is_floating_point():
                continue
            if name.endswith("pos_embed"):
                # SD3's positional embedding is a buffer ComfyUI leaves uninitialised (a checkpoint
                # fills it): memory garbage there made sampling NaN now and then
                b.copy_(0.02 * torch.randn(b.shape, generator=g))
            elif not torch.isfinite(b).all():
                b.zero_()


def _patcher(model_config, model_type=None, seed=0, dtype=torch.float32):
    import comfy.model_management
    import comfy.model_patcher

    model_config.set_inference_dtype(dtype, None)
    if model_type is None:
        model = model_config.get_model({})
    else:
        import comfy.model_base

        model = comfy.model_base.BaseModel(model_config, model_type=model_type)
    _init_weights(model.diffusion_model, seed)
    model.diffusion_model.to(dtype)
    cpu = torch.device("cpu")
    comfy.model_management.unload_all_models()
    return comfy.model_patcher.ModelPatcher(model, load_device=cpu, offload_device=cpu)


def _unet_config(**overrides):
    cfg = {
        "use_checkpoint": False,
        "image_size": 32,
        "out_channels": 4,
        "use_spatial_transformer": True,
        "legacy": False,
        "in_channels": 4,
        "model_channels": 32,
        "num_res_blocks": [1, 1],
        "channel_mult": [1, 2],
        "transformer_depth": [1, 1],
        "transformer_depth_middle": 1,
        "transformer_depth_output": [1, 1, 1, 1],
        "context_dim": CONTEXT,
        "num_head_channels": 16,
        "num_heads": -1,
        "adm_in_channels": None,
        "use_temporal_attention": False,
        "use_temporal_resblock": False,
    }
    cfg.update(overrides)
    return cfg


def sd15(seed=0, dtype=torch.float32):
    """SD1.x: eps, non-linear transformer projections, transformers at every level."""
    import comfy.supported_models

    cfg = _unet_config(use_linear_in_transformer=False, num_head_channels=-1, num_heads=2)
    return _patcher(comfy.supported_models.SD15(cfg), seed=seed, dtype=dtype)


def sd20(seed=0, dtype=torch.float32):
    """SD2.x: v-prediction, linear transformer projections."""
    import comfy.model_base
    import comfy.supported_models

    # SD2's config fixes 64 channels per head
    cfg = _unet_config(use_linear_in_transformer=True, model_channels=64)
    return _patcher(comfy.supported_models.SD20(cfg), model_type=comfy.model_base.ModelType.V_PREDICTION, seed=seed,
                    dtype=dtype)


def sdxl(seed=0, dtype=torch.float32):
    """SDXL: no transformers at the top level, depth 2 below, ADM (pooled + size) conditioning."""
    import comfy.supported_models

    cfg = _unet_config(
        use_linear_in_transformer=True,
        model_channels=64,  # SDXL's config fixes 64 channels per head
        num_res_blocks=[1, 1, 1],
        channel_mult=[1, 2, 2],
        transformer_depth=[0, 1, 2],
        transformer_depth_middle=2,
        transformer_depth_output=[0, 0, 1, 1, 2, 2],
        adm_in_channels=2816,
        num_classes="sequential",
    )
    return _patcher(comfy.supported_models.SDXL(cfg), seed=seed, dtype=dtype)


def sd3(seed=0, dtype=torch.float32, x_block_self_attn_layers=(1,)):
    """SD3/3.5 MMDiT: joint text+image blocks; SD3.5 medium adds an image-only self-attention
    in some blocks (x_block_self_attn_layers)."""
    import comfy.supported_models

    depth = 3
    cfg = {
        "in_channels": 16,
        "out_channels": 16,
        "patch_size": 2,
        "depth": depth,
        "input_size": None,
        "adm_in_channels": 32,
        "context_embedder_config": {"target": "torch.nn.Linear",
                                    "params": {"in_features": CONTEXT, "out_features": 64 * depth}},
        "num_patches": 256,
        "pos_embed_max_size": 16,
        "pos_embed_scaling_factor": None,
        "x_block_self_attn_layers": list(x_block_self_attn_layers),
        "qk_norm": "rms",
    }
    return _patcher(comfy.supported_models.SD3(cfg), seed=seed, dtype=dtype)


def flux(seed=0, dtype=torch.float32):
    """Flux: double (joint) stream blocks then single stream blocks, guidance embedding."""
    import comfy.supported_models

    cfg = {
        "image_model": "flux",
        "guidance_embed": True,
        "in_channels": 16,
        "out_channels": 16,
        "patch_size": 2,
        "vec_in_dim": 32,
        "context_in_dim": CONTEXT,
        "hidden_size": 64,
        "mlp_ratio": 2.0,
        "num_heads": 4,
        "depth": 3,
        "depth_single_blocks": 4,
        "axes_dim": [4, 6, 6],
        "theta": 10000,
        "qkv_bias": True,
    }
    return _patcher(comfy.supported_models.Flux(cfg), seed=seed, dtype=dtype)


def _sd15_config(**overrides):
    return _unet_config(use_linear_in_transformer=False, num_head_channels=-1, num_heads=2, **overrides)


def sd15_inpaint(seed=0, dtype=torch.float32):
    """An SD1.x inpainting U-Net: 9 input channels (latent + mask + masked image); ComfyUI's
    SD15 config sees in_channels > 4 and turns on its inpaint conditioning."""
    import comfy.supported_models

    return _patcher(comfy.supported_models.SD15(_sd15_config(in_channels=9)), seed=seed, dtype=dtype)


def sd15_without_attention(seed=0, dtype=torch.float32):
    """An SD1.x-shaped U-Net with no transformer anywhere (transformer_depth 0, no middle
    transformer): a model with no self-attention for ASAG to reach."""
    import comfy.supported_models

    cfg = _sd15_config(transformer_depth=[0, 0], transformer_depth_middle=-1, transformer_depth_output=[0, 0, 0, 0])
    return _patcher(comfy.supported_models.SD15(cfg), seed=seed, dtype=dtype)


def sd15_controlnet(model_patcher, seed=1):
    """A ControlNet for a tiny SD1.x model, built as ComfyUI's loader builds one
    (comfy.cldm.cldm.ControlNet from the U-Net's config, wrapped in comfy.controlnet.ControlNet),
    with random weights (its zero convolutions are not zero, so the control has an effect)."""
    import comfy.cldm.cldm
    import comfy.controlnet
    import comfy.ops

    config = dict(model_patcher.model.model_config.unet_config)
    for key in ("out_channels", "dtype", "device", "operations"):
        config.pop(key, None)
    dtype = model_patcher.model.get_dtype()
    cpu = torch.device("cpu")
    control_model = comfy.cldm.cldm.ControlNet(
        hint_channels=3, operations=comfy.ops.disable_weight_init, dtype=dtype, device=cpu, **config
    )
    _init_weights(control_model, seed)
    return comfy.controlnet.ControlNet(control_model, load_device=cpu)


FAMILIES = {
    "sd15": sd15,
    "sd20": sd20,
    "sdxl": sdxl,
    "sd3": sd3,
    "flux": flux,
}


def conditioning(family, seed=0, batch=1, tokens=7):
    """Random positive/negative conditioning in each family's format."""
    g = torch.Generator().manual_seed(seed)

    def one():
        extra = {}
        if family == "sdxl":
            extra = {"pooled_output": torch.randn(batch, 1280, generator=g), "width": 64, "height": 64,
                     "crop_w": 0, "crop_h": 0, "target_width": 64, "target_height": 64}
        elif family == "sd3":
            extra = {"pooled_output": torch.randn(batch, 32, generator=g)}
        elif family == "flux":
            extra = {"pooled_output": torch.randn(batch, 32, generator=g), "guidance": 3.5}
        return [[torch.randn(batch, tokens, CONTEXT, generator=g), extra]]

    return one(), one()


def latent(family, batch=1, size=16, seed=0):
    channels = 16 if family in ("sd3", "flux") else 4
    return {"samples": torch.zeros(batch, channels, size, size)}
