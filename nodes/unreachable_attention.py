"""Reaching attention that ComfyUI calls without transformer_options (HunyuanDiT; 0.38's Ernie-Image).

Such a module's ``forward`` calls ComfyUI's attention function by a global name (HunyuanDiT's
``Attention.forward``: ``optimized_attention(q, k, v, heads, skip_reshape=True, ...)``), so no
``optimized_attention_override`` in transformer_options can reach it. Per model, never
globally: for each such module inside a chosen block, the patched model gets a ModelPatcher
object patch that sets the module's class to a subclass whose ``forward`` is the very same code
object run with one name changed in its globals: the attention function becomes a router. The
router calls the current model call's Sinkhorn override (``block_tracking.current()``) when a
call with adversarial rows runs, and ComfyUI's function otherwise, so the module computes what it
always did for every other call. Object patches belong to the ModelPatcher: its clones, and
ComfyUI 0.38's per-device copies for several GPUs, get them too; unpatching restores the class.
"""

from __future__ import annotations

import types

from ..asag_core import DiTLayer
from . import block_tracking
from . import comfy_internals as comfy
from .model_layers import dit_block_path, layer_module

_REROUTED = {}  # original class -> its rerouted subclass
_MARK = "_asag_rerouted_from"


def _router(module_globals: dict, name: str):
    def asag_attention_router(*args, **kwargs):
        real = module_globals[name]  # looked up per call: the function ComfyUI would call now
        tracked = block_tracking.current()
        if tracked is None or tracked.override is None:
            return real(*args, **kwargs)
        return tracked.override(real, *args, **kwargs)

    return asag_attention_router


def _attention_names(cls, attention_functions) -> tuple:
    forward = getattr(cls.forward, "__func__", cls.forward)
    code = getattr(forward, "__code__", None)
    if code is None:
        return ()
    return tuple(n for n in code.co_names if forward.__globals__.get(n) in attention_functions)


def _rerouted_class(cls, names):
    if cls not in _REROUTED:
        forward = cls.forward
        module_globals = forward.__globals__
        rerouted_globals = dict(module_globals)
        rerouted_globals.update({name: _router(module_globals, name) for name in names})
        new_forward = types.FunctionType(forward.__code__, rerouted_globals, forward.__name__,
                                         forward.__defaults__, forward.__closure__)
        new_forward.__kwdefaults__ = forward.__kwdefaults__
        new_forward.__qualname__ = forward.__qualname__
        _REROUTED[cls] = type(cls.__name__, (cls,), {"forward": new_forward, "__module__": cls.__module__,
                                                   _MARK: cls})
    return _REROUTED[cls]


def object_patches(diffusion_model, layers) -> dict:
    """{object patch key: class} for the attention modules inside the chosen DiT blocks that
    ComfyUI calls without transformer_options; {} when there are none."""
    functions = comfy.attention_functions()
    patches = {}
    for layer in layers:
        if not isinstance(layer, DiTLayer):
            continue
        block = layer_module(diffusion_model, layer)
        for name, module in block.named_modules():
            cls = getattr(type(module), _MARK, type(module))
            if comfy.takes_transformer_options(module):
                continue
            names = _attention_names(cls, functions)
            if names:
                path = ".".join(p for p in ("diffusion_model", dit_block_path(diffusion_model, layer), name) if p)
                patches[f"{path}.__class__"] = _rerouted_class(cls, names)
    return patches


def reach_attention(model_patcher, layers) -> None:
    """Add the object patches of :func:`object_patches` to ``model_patcher`` (a clone of ours)."""
    dm = comfy.uncompiled(comfy.diffusion_model(model_patcher.model))
    for key, cls in object_patches(dm, layers).items():
        comfy.add_object_patch(model_patcher, key, cls)


__all__ = ["object_patches", "reach_attention"]
