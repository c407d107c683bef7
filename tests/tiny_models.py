"""Tiny random-weight instances of ComfyUI's real architectures, for host tests: each a tiny
checkpoint in the family's real key layout, detected and loaded by ComfyUI
(``tests/tiny_checkpoints.py``: the seeds, the hand values detection cannot give, the loader).

Widths are cut down; the block structure (U-Net input/middle/output blocks with
SpatialTransformers, MMDiT joint blocks, Flux double + single stacks) is the real one.
"""

from __future__ import annotations

import tiny_checkpoints
import torch
from tiny_checkpoints import CONTEXT  # noqa: F401  (the tests' text-context width)


def _init_weights(module, seed):
    """Deterministic weights for a module ComfyUI builds outside a checkpoint (ops leave them
    uninitialised): ``tiny_checkpoints.values`` by parameter name."""
    return tiny_checkpoints.fill(module, seed)


def _patcher(model_config, seed=0, dtype=torch.float32):
    """A CPU ModelPatcher of a hand-made model config (the benchmarks' sized models)."""
    return tiny_checkpoints.from_model_config(model_config, seed=seed, dtype=dtype)


def sd15(seed=0, dtype=torch.float32):
    """SD1.x: eps, non-linear transformer projections, transformers at every level."""
    return tiny_checkpoints.build("sd15", seed=seed, dtype=dtype)


def sd20(seed=0, dtype=torch.float32):
    """SD2.x: v-prediction, linear transformer projections (64 channels per head: SD2's config)."""
    return tiny_checkpoints.build("sd20", seed=seed, dtype=dtype)


def sdxl(seed=0, dtype=torch.float32):
    """SDXL: no transformers at the top level, depth 2 below, ADM (pooled + size) conditioning."""
    return tiny_checkpoints.build("sdxl", seed=seed, dtype=dtype)


def sd3(seed=0, dtype=torch.float32, x_block_self_attn_layers=(1,)):
    """SD3/3.5 MMDiT: joint text+image blocks; SD3.5 medium adds an image-only self-attention
    in some blocks (x_block_self_attn_layers)."""
    return tiny_checkpoints.build("sd3", seed=seed, dtype=dtype, x_block_self_attn_layers=x_block_self_attn_layers)


def flux(seed=0, dtype=torch.float32):
    """Flux: double (joint) stream blocks then single stream blocks, guidance embedding."""
    return tiny_checkpoints.build("flux", seed=seed, dtype=dtype)


def sd15_inpaint(seed=0, dtype=torch.float32):
    """An SD1.x inpainting U-Net: 9 input channels (latent + mask + masked image); ComfyUI's
    SD15 config sees in_channels > 4 and turns on its inpaint conditioning."""
    return tiny_checkpoints.build("sd15_inpaint", seed=seed, dtype=dtype)


def sd15_without_attention(seed=0, dtype=torch.float32):
    """An SD1.x-shaped U-Net with no transformer anywhere (transformer_depth 0, no middle
    transformer): a model with no self-attention for ASAG to reach."""
    return tiny_checkpoints.build("sd15_without_attention", seed=seed, dtype=dtype)


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
