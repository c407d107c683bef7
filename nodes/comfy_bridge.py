"""What the pack takes from ComfyUI itself: its functions, classes and ModelPatcher methods.

The only module of the pack that imports ComfyUI (``tests/test_comfy_contract.py`` checks it);
keys, literals and argument layouts are in ``comfy_contract.py``. Versions read: 0.3.64, 0.22.0
and the 0.38-era files named there; every entry holds in all of them.
"""

from __future__ import annotations

import inspect

import comfy.patcher_extension
import comfy.samplers
from comfy.ldm.modules import attention as _attention
from comfy_api.latest import ComfyExtension, io  # the V3 node API (public): schemas and the extension

from . import comfy_contract as contract

__all__ = ["ComfyExtension", "io"]

# the contract's wrapper kinds must be the host's
for _name in ("APPLY_MODEL", "OUTER_SAMPLE"):
    if getattr(comfy.patcher_extension.WrappersMP, _name) != getattr(contract, _name):
        raise ImportError(f"ASAG: this ComfyUI names the {_name} wrapper kind differently; the pack needs an update")


def calc_cond_batch(model, conds, x, sigma, model_options):
    """ComfyUI's batched model evaluation: one prediction per cond list (0.38 may run it on per-device
    model copies when model_options holds "multigpu_clones")."""
    return comfy.samplers.calc_cond_batch(model, conds, x, sigma, model_options)


def sampling_function(model, x, timestep, uncond, cond, cfg, model_options, seed):
    """ComfyUI's CFG step: batch hook, pre-CFG, CFG and post-CFG functions in ComfyUI's order."""
    return comfy.samplers.sampling_function(model, x, timestep, uncond, cond, cfg, model_options=model_options,
                                            seed=seed)


#: the guider ASAGGuider extends; relies on outer_sample(...), predict_noise(x, timestep, model_options, seed),
#: and the attributes inner_model, conds, cfg, model_patcher
CFGGuider = comfy.samplers.CFGGuider


def plain_attention(q, k, v, heads, attn_precision, transformer_options):
    """The attention ComfyUI would run for an attn1 layer without a replace patch."""
    return _attention.optimized_attention(q, k, v, heads, attn_precision=attn_precision,
                                          transformer_options=transformer_options)


def attention_functions() -> frozenset:
    """ComfyUI's attention functions, as a module that calls one of them by a global name sees it."""
    return frozenset(value for name, value in vars(_attention).items()
                     if callable(value) and contract.is_attention_function_name(name))


def takes_transformer_options(module) -> bool:
    """Whether a module's forward accepts transformer_options (HunyuanDiT's attention does not, nor
    does 0.22's Ernie-Image)."""
    try:
        parameters = inspect.signature(type(module).forward).parameters
    except (TypeError, ValueError):
        return True
    return contract.TRANSFORMER_OPTIONS in parameters or any(p.kind is p.VAR_KEYWORD for p in parameters.values())


# ModelPatcher methods. clone() copies model_options: 0.3.64 with copy.deepcopy, 0.38 with a
# list/dict-only deep copy that shares every other object between the clones, so what the pack
# keeps there (functions, frozen plans) is immutable or safe to share.

def add_outer_sample_wrapper(model_patcher, key, wrapper) -> None:
    model_patcher.add_wrapper_with_key(contract.OUTER_SAMPLE, key, wrapper)


def set_post_cfg_function(model_patcher, function) -> None:
    model_patcher.set_model_sampler_post_cfg_function(function)


def set_calc_cond_batch_function(model_patcher, function) -> None:
    model_patcher.set_model_sampler_calc_cond_batch_function(function)


def add_object_patch(model_patcher, key, value) -> None:
    """An attribute of the model (dotted path from the BaseModel) set while the patcher's model is
    loaded for sampling and restored after; clones (and 0.38's per-device copies) carry it."""
    model_patcher.add_object_patch(key, value)
