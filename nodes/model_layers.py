"""What a loaded ComfyUI model offers ASAG: its family and its self-attention layers."""

from __future__ import annotations

import re
import weakref

import torch

from ..asag_core import DiTLayer, LayerCatalog

# Attribute names of the block stacks of ComfyUI's DiTs: the main (double/joint) stack
# first, then Flux-style single stacks. Numbering matches patches_replace["dit"] keys
# ("double_block", i) / ("single_block", i) where a model has them.
_DOUBLE_STACKS = (
    "double_blocks", "double_layers", "joint_blocks", "double_stream_blocks", "transformer_blocks", "blocks", "layers"
)
_SINGLE_STACKS = ("single_blocks", "single_layers", "single_stream_blocks")

# input_blocks.<id>.<layer>.transformer_blocks.<t>, middle_block.<layer>.transformer_blocks.<t>
_UNET_BLOCK_RE = re.compile(
    r"^(?:(input_blocks|output_blocks)\.(\d+)|(middle_block))\.\d+\.transformer_blocks\.(\d+)$"
)
_UNET_PARTS = {"input_blocks": "input", "middle_block": "middle", "output_blocks": "output"}


def family_name(model_patcher) -> str:
    """A readable family for messages: the model config's class (SD15, SDXL, Flux...)."""
    model = model_patcher.model
    config = getattr(model, "model_config", None)
    return type(config).__name__ if config is not None else type(model.diffusion_model).__name__


_UNET_BLOCKS = weakref.WeakKeyDictionary()  # UNetModel -> {patch key: BasicTransformerBlock}


def _unet_transformer_blocks(diffusion_model) -> dict:
    """Every BasicTransformerBlock of a U-Net by its attn1 patch key (part, block id, transformer
    index); read once per model, as a U-Net has thousands of modules."""
    blocks = _UNET_BLOCKS.get(diffusion_model)
    if blocks is None:
        blocks = {}
        for name, module in diffusion_model.named_modules():
            m = _UNET_BLOCK_RE.match(name)
            if m:
                part = _UNET_PARTS[m.group(1) or m.group(3)]
                # ComfyUI numbers the middle block 0 in transformer_options["block"]
                block_id = 0 if part == "middle" else int(m.group(2))
                blocks[(part, block_id, int(m.group(4)))] = module
        _UNET_BLOCKS[diffusion_model] = blocks
    return blocks


def _unet_catalog(diffusion_model, family):
    per_block: dict = {}
    for (part, block_id, _), module in _unet_transformer_blocks(diffusion_model).items():
        if getattr(module, "disable_self_attn", False) or not hasattr(module, "attn1"):
            continue
        per_block.setdefault(part, {}).setdefault(block_id, 0)
        per_block[part][block_id] += 1
    unet = {part: sorted(blocks.items()) for part, blocks in per_block.items()}
    return LayerCatalog(family, unet=unet)


def _stack(diffusion_model, names):
    for name in names:
        stack = getattr(diffusion_model, name, None)
        if isinstance(stack, torch.nn.ModuleList) and len(stack) > 0:
            return stack
    return None


def _stack_len(diffusion_model, names):
    stack = _stack(diffusion_model, names)
    return 0 if stack is None else len(stack)


def dit_block(diffusion_model, stack: str, index: int):
    """The module of DiT block ``index`` of ``stack`` ("double" | "single")."""
    return _stack(diffusion_model, _DOUBLE_STACKS if stack == "double" else _SINGLE_STACKS)[index]


def layer_catalog(model_patcher) -> LayerCatalog:
    """The self-attention layers of this model that ASAG can perturb.

    U-Nets (ComfyUI's UNetModel) are read from their BasicTransformerBlocks;
    DiTs from their block stacks. A model with neither gets an empty catalog,
    which ``resolve_layers`` reports as "no self-attention ASAG can reach".
    """
    diffusion_model = model_patcher.model.diffusion_model
    family = family_name(model_patcher)
    if hasattr(diffusion_model, "input_blocks") and hasattr(diffusion_model, "output_blocks"):
        return _unet_catalog(diffusion_model, family)
    dit = {}
    n_double = _stack_len(diffusion_model, _DOUBLE_STACKS)
    n_single = _stack_len(diffusion_model, _SINGLE_STACKS)
    if n_double:
        dit["double"] = n_double
    if n_single:
        dit["single"] = n_single
    return LayerCatalog(family, dit=dit)


def unet_transformer_block(diffusion_model, layer):
    """The BasicTransformerBlock of a U-Net layer (part, block id, transformer index)."""
    blocks = _unet_transformer_blocks(diffusion_model)
    if layer.patch_key not in blocks:
        raise LookupError(f"no transformer block {layer.patch_key} in this U-Net")
    return blocks[layer.patch_key]


def layer_module(diffusion_model, layer):
    """The module whose forward runs the self-attention ``layer`` names (U-Net or DiT)."""
    if isinstance(layer, DiTLayer):
        return dit_block(diffusion_model, layer.stack, layer.index)
    return unet_transformer_block(diffusion_model, layer)


def _is_cross_attention(name: str, module) -> bool:
    # ComfyUI's DiTs name their text cross-attention cross_attn (Wan, Cosmos, PixArt, ACE) or
    # attn2 built from a CrossAttention class (LTXV, HunyuanDiT); SD3.5's attn2 is an image-only
    # SelfAttention and LTXV's attn1 a CrossAttention class used for self-attention.
    last = name.rsplit(".", 1)[-1].lower()
    return last.startswith("cross") or (last == "attn2" and "CrossAttention" in type(module).__name__)


def cross_attention_modules(block) -> list:
    """The outermost cross-attention modules inside a DiT block (their keys are a text context)."""
    found = []
    for name, module in block.named_modules():
        if name and _is_cross_attention(name, module) and not any(name.startswith(f + ".") for f, _ in found):
            found.append((name, module))
    return [module for _, module in found]
