"""Reaching attention that ComfyUI calls without transformer_options (HunyuanDiT, 0.22's Ernie-Image).

Such a module's ``forward`` calls ComfyUI's attention function by a global name (HunyuanDiT's
``Attention.forward``: ``optimized_attention(q, k, v, heads, skip_reshape=True, ...)``), so no
``optimized_attention_override`` in transformer_options can reach it. Per model, never globally:
for each such module inside a chosen block, the patched model gets a ModelPatcher object patch that
sets the module's class to a subclass whose ``forward`` is the very same code object run with one
name changed in its globals: the attention function becomes a router. The router hands the call to
the attention override of the adversarial call running in this context (``adversarial_call.current``)
and to ComfyUI's function otherwise, so the module computes what it always did for every other call.
Object patches belong to the ModelPatcher: its clones, and ComfyUI 0.38's per-device copies for
several GPUs, get them too; unpatching restores the class.
"""

from __future__ import annotations

import types

from ..asag_core import DiTLayer
from . import comfy_bridge as bridge
from . import comfy_contract as contract
from .adversarial_call import current
from .model_layers import block_path, layer_module

_MARK = "_asag_rerouted_from"


def _router(module_globals: dict, name: str):
    def asag_attention_router(*args, **kwargs):
        real = module_globals[name]  # looked up per call: the function ComfyUI would call now
        model_call = current()
        if model_call is None:
            return real(*args, **kwargs)
        return model_call.owner.attention_override(real, *args, **kwargs)

    return asag_attention_router


def _attention_names(cls, attention_functions) -> tuple:
    forward = getattr(cls.forward, "__func__", cls.forward)
    code = getattr(forward, "__code__", None)
    if code is None:
        return ()
    return tuple(n for n in code.co_names if forward.__globals__.get(n) in attention_functions)


def _rerouted_class(cls, names):
    forward = cls.forward
    module_globals = forward.__globals__
    rerouted_globals = dict(module_globals)
    rerouted_globals.update({name: _router(module_globals, name) for name in names})
    new_forward = types.FunctionType(forward.__code__, rerouted_globals, forward.__name__, forward.__defaults__,
                                     forward.__closure__)
    new_forward.__kwdefaults__ = forward.__kwdefaults__
    new_forward.__qualname__ = forward.__qualname__
    return type(cls.__name__, (cls,), {"forward": new_forward, "__module__": cls.__module__, _MARK: cls})


def object_patches(diffusion_model, layers) -> dict:
    """{object patch key: class} for the attention modules inside the chosen DiT blocks that ComfyUI
    calls without transformer_options; {} when there are none."""
    functions = bridge.attention_functions()
    patches = {}
    for layer in layers:
        if not isinstance(layer, DiTLayer):
            continue
        for name, module in layer_module(diffusion_model, layer).named_modules():
            cls = getattr(type(module), _MARK, type(module))  # the original, if this model is loaded patched
            if bridge.takes_transformer_options(module):
                continue
            names = _attention_names(cls, functions)
            if names:
                path = ".".join(p for p in (block_path(diffusion_model, layer), name) if p)
                patches[contract.object_patch_key(path)] = _rerouted_class(cls, names)
    return patches


def reach_attention(model_patcher, layers) -> None:
    """Add the object patches of :func:`object_patches` to ``model_patcher`` (a clone of ours)."""
    dm = contract.uncompiled(contract.diffusion_model(model_patcher.model))
    for key, cls in object_patches(dm, layers).items():
        bridge.add_object_patch(model_patcher, key, cls)


__all__ = ["object_patches", "reach_attention"]
