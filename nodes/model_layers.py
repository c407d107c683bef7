"""What a loaded model offers ASAG, read through its family record: its layers, the module of a layer,
and the modules that run before the first perturbed one."""

from __future__ import annotations

import re

import torch

from ..asag_core import DiTLayer, LayerCatalog, UNetLayer
from . import comfy_contract as contract
from .families import family_of

# ComfyUI's image U-Net: input_blocks / middle_block / output_blocks, each block a TimestepEmbedSequential whose
# children run in order; a SpatialTransformer child has norm, proj_in and transformer_blocks (BasicTransformerBlocks,
# each with attn1: self-attention unless disable_self_attn).
_UNET_PARTS = {"input_blocks": "input", "middle_block": "middle", "output_blocks": "output"}
_UNET_RANK = {"input": 0, "middle": 1, "output": 2}
_UNET_TRANSFORMER = re.compile(
    r"^(?:(input_blocks|output_blocks)\.(\d+)|(middle_block))\.\d+\.transformer_blocks\.(\d+)$")


def _attribute(module, path: str):
    for name in path.split("."):
        module = getattr(module, name, None)
    return module


def stacks(diffusion_model, family) -> dict:
    """{grammar stack: ModuleList} of a DiT, in run order (the first existing, non-empty path of each)."""
    found = {}
    for stack in family.stacks:
        for path in stack.paths:
            blocks = _attribute(diffusion_model, path)
            if isinstance(blocks, torch.nn.ModuleList) and len(blocks) > 0:
                found[stack.grammar] = (path, blocks)
                break
    return found


def _unet_transformer_blocks(diffusion_model) -> dict:
    """Every BasicTransformerBlock of a U-Net by its attn1 patch key (part, block id, transformer index)."""
    blocks = {}
    for name, module in diffusion_model.named_modules():
        m = _UNET_TRANSFORMER.match(name)
        if m:
            part = _UNET_PARTS[m.group(1) or m.group(3)]
            # ComfyUI numbers the middle block 0 in transformer_options["block"]
            blocks[(part, 0 if part == "middle" else int(m.group(2)), int(m.group(4)))] = module
    return blocks


def layer_catalog(model_patcher) -> LayerCatalog:
    """The self-attention layers of this model that ASAG can perturb (empty when it has none)."""
    dm = contract.uncompiled(contract.diffusion_model(model_patcher.model))
    family, name = family_of(dm), contract.config_name(model_patcher)
    if family.unet:
        per_block = {}
        (self_attention,) = family.own
        for (part, block_id, _), module in _unet_transformer_blocks(dm).items():
            if getattr(module, "disable_self_attn", False) or not hasattr(module, self_attention):
                continue
            per_block.setdefault(part, {}).setdefault(block_id, 0)
            per_block[part][block_id] += 1
        return LayerCatalog(name, unet={part: sorted(blocks.items()) for part, blocks in per_block.items()})
    return LayerCatalog(name, dit={grammar: len(blocks) for grammar, (_, blocks) in stacks(dm, family).items()})


def auto_spec(family, catalog: LayerCatalog) -> str | None:
    """The family's default layer in the layer grammar, for this model (None: it has no layer)."""
    if family.unet:
        for part, letter in (("middle", "m"), ("input", "d")):
            blocks = catalog.unet.get(part, [])
            if blocks:  # the middle block; U-Nets without a middle transformer: the deepest input block
                return f"{letter}{len(blocks) - 1 if part == 'input' else 0}"
        return None
    stack = family.auto.stack if family.auto.stack in catalog.dit else next(iter(catalog.dit), None)
    if stack is None:
        return None
    return f"{stack}{min(catalog.dit[stack] - 1, int(family.auto.at * catalog.dit[stack]))}"


def block_path(diffusion_model, layer: DiTLayer) -> str:
    """The attribute path of a DiT block inside the diffusion model ("blocks.3", "single_blocks.10")."""
    path, _ = stacks(diffusion_model, family_of(diffusion_model))[layer.stack]
    return f"{path}.{layer.index}"


def layer_module(diffusion_model, layer):
    """The module whose forward runs the self-attention ``layer`` names (U-Net or DiT)."""
    if isinstance(layer, DiTLayer):
        return stacks(diffusion_model, family_of(diffusion_model))[layer.stack][1][layer.index]
    blocks = _unet_transformer_blocks(diffusion_model)
    if layer.patch_key not in blocks:
        raise LookupError(f"no transformer block {layer.patch_key} in this U-Net")
    return blocks[layer.patch_key]


def _is_image_unet(diffusion_model) -> bool:
    """Video U-Nets (SVD) are left out: their temporal layers mix the rows of a chunk and take
    frame-shaped extra inputs."""
    if getattr(diffusion_model, "use_temporal_resblocks", False):
        return False
    return not any(type(m).__name__ == "SpatialVideoTransformer" for m in diffusion_model.modules())


def _unet_prefix(diffusion_model, layers):
    first = min(layers, key=lambda lay: (_UNET_RANK[lay.part], lay.block_id, lay.transformer_index))
    blocks = []
    for attribute, part in _UNET_PARTS.items():  # input, middle, output: the order they run in
        stack = getattr(diffusion_model, attribute)
        if part == "middle":
            blocks += [] if stack is None else [(part, 0, stack)]
        else:
            blocks += [(part, i, blk) for i, blk in enumerate(stack)]
    modules = []
    for part, block_id, block in blocks:
        if (part, block_id) != (first.part, first.block_id):
            modules.extend(block.children())
            continue
        for child in block.children():
            if hasattr(child, "transformer_blocks"):
                modules += [child.norm, child.proj_in, *list(child.transformer_blocks)[: first.transformer_index]]
                return modules
            modules.append(child)
        return []  # the perturbed transformer is not where the catalog said: share nothing
    return []


def prefix_modules(diffusion_model, layers) -> list:
    """The modules that run entirely before the first of ``layers``, in order; [] when the family's
    prefix is not known to be shareable exactly."""
    layers = list(layers)
    family = family_of(diffusion_model)
    if not layers or not family.prefix:
        return []
    if family.unet:
        if not all(isinstance(lay, UNetLayer) for lay in layers) or not _is_image_unet(diffusion_model):
            return []
        return [m for m in _unet_prefix(diffusion_model, layers) if isinstance(m, torch.nn.Module)]
    found = stacks(diffusion_model, family)
    first = min(layers, key=lambda lay: (list(found).index(lay.stack), lay.index))
    modules = []
    for grammar, (_, blocks) in found.items():
        if grammar == first.stack:
            return modules + list(blocks[: first.index])
        modules += list(blocks)
    return modules
