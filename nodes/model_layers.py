"""What a loaded ComfyUI model offers ASAG: its family and its self-attention layers."""

from __future__ import annotations

import re
import weakref

import torch

from ..asag_core import DiTLayer, LayerCatalog
from . import comfy_internals as comfy

_UNET_BLOCK_RE = re.compile(comfy.UNET_TRANSFORMER_BLOCK_RE)


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
                part = comfy.UNET_PARTS[m.group(1) or m.group(3)]
                # ComfyUI numbers the middle block 0 in transformer_options["block"]
                block_id = 0 if part == "middle" else int(m.group(2))
                blocks[(part, block_id, int(m.group(4)))] = module
        _UNET_BLOCKS[diffusion_model] = blocks
    return blocks


def _unet_catalog(diffusion_model, family):
    per_block: dict = {}
    for (part, block_id, _), module in _unet_transformer_blocks(diffusion_model).items():
        if getattr(module, comfy.SELF_ATTENTION_DISABLED, False) or not hasattr(module, comfy.SELF_ATTENTION):
            continue
        per_block.setdefault(part, {}).setdefault(block_id, 0)
        per_block[part][block_id] += 1
    unet = {part: sorted(blocks.items()) for part, blocks in per_block.items()}
    return LayerCatalog(family, unet=unet)


def _stack_name(diffusion_model, names):
    for name in names:
        stack = getattr(diffusion_model, name, None)
        if isinstance(stack, torch.nn.ModuleList) and len(stack) > 0:
            return name
    return None


def _stack_len(diffusion_model, names):
    name = _stack_name(diffusion_model, names)
    return 0 if name is None else len(getattr(diffusion_model, name))


def _stack_names(stack: str):
    return comfy.DOUBLE_STACKS if stack == "double" else comfy.SINGLE_STACKS


def dit_block_path(diffusion_model, layer: DiTLayer) -> str:
    """The attribute path of a DiT block inside the diffusion model ("blocks.3", "single_blocks.10")."""
    return f"{_stack_name(diffusion_model, _stack_names(layer.stack))}.{layer.index}"


def dit_stack(diffusion_model, stack: str):
    """The ModuleList of ``stack`` ("double" | "single")."""
    return getattr(diffusion_model, _stack_name(diffusion_model, _stack_names(stack)))


def dit_block(diffusion_model, stack: str, index: int):
    """The module of DiT block ``index`` of ``stack`` ("double" | "single")."""
    return dit_stack(diffusion_model, stack)[index]


def layer_catalog(model_patcher) -> LayerCatalog:
    """The self-attention layers of this model that ASAG can perturb.

    U-Nets (ComfyUI's UNetModel) are read from their BasicTransformerBlocks;
    DiTs from their block stacks. A model with neither gets an empty catalog,
    which ``resolve_layers`` reports as "no self-attention ASAG can reach".
    """
    diffusion_model = comfy.uncompiled(comfy.diffusion_model(model_patcher.model))
    family = comfy.family_name(model_patcher)
    if all(hasattr(diffusion_model, part) for part in comfy.UNET_PARTS):
        return _unet_catalog(diffusion_model, family)
    dit = {}
    n_double = _stack_len(diffusion_model, comfy.DOUBLE_STACKS)
    n_single = _stack_len(diffusion_model, comfy.SINGLE_STACKS)
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
