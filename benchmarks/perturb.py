"""Layer-matched baselines for the quality benchmark: perturbed-attention guidance on
exactly the self-attention layers ASAG perturbs.

ComfyUI's built-in ``PerturbedAttentionGuidance`` node is fixed to the middle block, so a
comparison with ASAG on any other layer would compare layers, not methods.  These
baselines are built the way ``comfy_extras/nodes_pag.py`` builds PAG (a post-CFG function
that runs one extra ``calc_cond_batch`` on a copy of the model options carrying attn1
replace patches), but on a list of layers resolved by the pack itself from the same
``layers`` string ASAG gets, so both methods touch the same modules:

- ``"pag"``: attention output = V (PAG: the identity attention map);
- ``"zero"``: attention output = 0 (a plan whose rows sum to 1/N instead of 1, scaled
  by N -> 0, which is what the other ComfyUI ASAG port's plan amounts to).

Benchmark code, not a product node.  U-Nets only (attn1 replace patches): a DiT has no
such patch point, and the quality benchmark says so instead of silently using other layers.
"""

from __future__ import annotations

import sys

import comfy.model_patcher
import comfy.samplers
import torch

PERTURBATIONS = ("pag", "zero")


def _attention_v(q, k, v, extra_options, mask=None):
    return v


def _attention_zero(q, k, v, extra_options, mask=None):
    return torch.zeros_like(v)


_REPLACEMENTS = {"pag": _attention_v, "zero": _attention_zero}


def resolve_unet_layers(host, model, layers: str) -> list[tuple]:
    """``layers`` (ASAG's grammar) -> ComfyUI attn1 patch keys (part, block id, transformer index),
    resolved by the loaded pack exactly as the ASAG nodes resolve it."""
    pack = host.pack_module_name
    catalog = sys.modules[f"{pack}.nodes.model_layers"].layer_catalog(model)
    if not catalog.is_unet:
        raise SystemExit(f"layer-matched PAG needs a U-Net (attn1 replace patches); this is a {catalog.family} DiT")
    resolved = sys.modules[f"{pack}.nodes.plan"].resolve(model, layers)
    return [layer.patch_key for layer in resolved]


def perturbed_guidance(model, scale: float, keys: list[tuple], perturbation: str):
    """A clone of ``model`` adding ``scale·(x_c − x_perturbed)`` after CFG, with ``perturbation``
    in the attn1 layers ``keys`` of the extra pass only."""
    if perturbation not in _REPLACEMENTS:
        raise ValueError(f"perturbation {perturbation!r}: valid values are {PERTURBATIONS}")
    replacement = _REPLACEMENTS[perturbation]
    m = model.clone()
    if scale == 0:
        return m

    def post_cfg_function(args):
        options = args["model_options"].copy()
        for part, block_id, index in keys:
            options = comfy.model_patcher.set_model_options_patch_replace(
                options, replacement, "attn1", part, block_id, index
            )
        (perturbed,) = comfy.samplers.calc_cond_batch(args["model"], [args["cond"]], args["input"], args["sigma"],
                                                      options)
        return args["denoised"] + (args["cond_denoised"] - perturbed) * scale

    m.set_model_sampler_post_cfg_function(post_cfg_function)
    return m
