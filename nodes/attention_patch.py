"""Putting the adversarial Sinkhorn attention into the chosen layers of one model call.

The patches live only in the model_options of the adversarial evaluation, so the
ordinary cond/uncond passes are untouched. Inside a batched call (ASAGGuider:
cond, uncond and adversarial rows together) only the rows whose
``transformer_options["cond_or_uncond"]`` index is adversarial get the Sinkhorn
plan; the others run the attention they would have run anyway.

U-Nets: ComfyUI's ``attn1`` replace patch, keyed (block, id, transformer index),
the mechanism PAG uses. DiTs: ``transformer_options["optimized_attention_override"]``
(the hook every ComfyUI DiT routes its attention through) plus a marker on the chosen
block modules, set by forward hooks that exist only for the duration of the adversarial
call. Attention inside a marked block whose keys are the queries' own tokens
(Nk == Nq: self- or joint text+image attention) gets the plan; cross-attention to a
text context is left alone. Marking modules rather than relying on each model's
``patches_replace["dit"]`` loop reaches DiTs that have no such loop (Lumina 2,
Cosmos, HiDream) by the same mechanism.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from dataclasses import dataclass, replace

import comfy.samplers
import torch
from comfy.ldm.modules import attention as comfy_attention

from ..asag_core import ASAGSettings, DiTLayer, UNetLayer, adversarial_attention
from .model_layers import dit_block

# The DiT layer whose forward is running during an adversarial call (None outside marked blocks).
_CURRENT_DIT_LAYER = contextvars.ContextVar("asag_current_dit_layer", default=None)


@dataclass(frozen=True)
class ASAGPlan:
    """Validated settings plus the concrete layers of one model: what a patched model carries."""

    settings: ASAGSettings
    layers: tuple
    family: str
    #: the settings' start/end_percent as this model's noise levels (the window is model-specific:
    #: SD's sigmas run 14.6 → 0.03, a flow model's 1 → 0); the defaults leave it unbounded
    sigma_start: float = math.inf
    sigma_end: float = 0.0

    def active_at(self, sigma: float) -> bool:
        """Whether ASAG guides the step at noise level ``sigma``: both bounds inclusive, as in
        ComfyUI's SkipLayerGuidance (``sigma_end <= sigma <= sigma_start``)."""
        return self.settings.scale != 0.0 and self.sigma_end <= sigma <= self.sigma_start


def sinkhorn_attention(q, k, v, heads, settings: ASAGSettings, layer, **layout):
    """The one place the Sinkhorn attention is called from the model (tests count calls here)."""
    if not layout.get("skip_reshape", False):
        # some callers (SD3's MMDiT) hand v over as (B, N, H, D); ComfyUI's own kernels view it flat
        q, k, v = (t.flatten(2) if t.ndim == 4 else t for t in (q, k, v))
    return adversarial_attention(
        q, k, v, heads, iterations=settings.iterations, lam=settings.lam, cost=settings.cost, **layout
    )


def _adversarial_row_mask(transformer_options, batch, slots):
    """Bool (batch,) of the rows that belong to adversarial conds; None means all rows."""
    order = transformer_options.get("cond_or_uncond")
    if not order:
        return None
    if batch % len(order):
        raise RuntimeError(f"ASAG: batch {batch} does not split into the {len(order)} conds of this call")
    per = batch // len(order)
    flags = torch.tensor([i in slots for i in order]).repeat_interleave(per)
    if bool(flags.all()):
        return None
    return flags


def _dispatch_rows(call, row_mask, batch):
    """``call(index, adversarial)`` on the adversarial rows and on the others, merged in order.

    ``index`` is a LongTensor of batch rows, or None for all of them.
    """
    if row_mask is None:
        return call(None, True)
    if not bool(row_mask.any()):
        return call(None, False)
    idx_adv = row_mask.nonzero().flatten()
    idx_plain = (~row_mask).nonzero().flatten()
    out_adv = call(idx_adv, True)
    out_plain = call(idx_plain, False)
    out = out_adv.new_empty((batch,) + tuple(out_adv.shape[1:]))
    out.index_copy_(0, idx_adv.to(out.device), out_adv)
    out.index_copy_(0, idx_plain.to(out.device), out_plain.to(out.dtype))
    return out


def _take(t, index):
    return t if index is None else t.index_select(0, index.to(t.device))


def _plain_row_options(options, slots):
    """``options`` for the non-adversarial rows of a split batch: the per-cond lists
    (cond_or_uncond, uuids) cut to the conds those rows belong to, so that a chained patch
    which splits its batch by them (SAG, IP-Adapter...) sees lists that match its rows."""
    order = options.get("cond_or_uncond")
    if not order:
        return options
    keep = [i for i, c in enumerate(order) if c not in slots]
    out = dict(options)
    out["cond_or_uncond"] = [order[i] for i in keep]
    uuids = options.get("uuids")
    if uuids is not None and len(uuids) == len(order):
        out["uuids"] = [uuids[i] for i in keep]
    return out


class _Counter:
    """Counts Sinkhorn calls of one adversarial evaluation (to catch layers that never ran)."""

    def __init__(self):
        self.calls = 0

    def __deepcopy__(self, memo):  # model_options get deep-copied by ModelPatcher.clone
        return self


def _unet_patch(layer: UNetLayer, settings, slots, counter, previous):
    def attn1_replace(q, k, v, extra_options):
        heads = extra_options["n_heads"]

        def call(index, adversarial):
            q_, k_, v_ = (_take(t, index) for t in (q, k, v))
            if adversarial:
                counter.calls += 1
                return sinkhorn_attention(q_, k_, v_, heads, settings, layer)
            options = extra_options if index is None else _plain_row_options(extra_options, slots)
            if previous is not None:
                return previous(q_, k_, v_, options)
            return comfy_attention.optimized_attention(
                q_, k_, v_, heads, attn_precision=extra_options.get("attn_precision"), transformer_options=options
            )

        return _dispatch_rows(call, _adversarial_row_mask(extra_options, q.shape[0], slots), q.shape[0])

    return attn1_replace


_ATTENTION_PARAMS = ("q", "k", "v", "heads", "mask", "attn_precision", "skip_reshape", "skip_output_reshape")


def _dit_override(settings, slots, counter, chosen, outer_override):
    def override(func, *args, **kwargs):
        # ComfyUI's attention functions share one signature; callers pass heads and mask
        # positionally or by keyword, so bind them by name first
        call_kwargs = dict(zip(_ATTENTION_PARAMS, args, strict=False))
        call_kwargs.update(kwargs)
        q, k, v, heads = (call_kwargs.pop(name) for name in _ATTENTION_PARAMS[:4])
        layer = _CURRENT_DIT_LAYER.get()
        mask = call_kwargs.get("mask")
        skip_reshape = call_kwargs.get("skip_reshape", False)
        token_dim = 2 if skip_reshape else 1
        batch = q.shape[0]
        per_row_mask = isinstance(mask, torch.Tensor) and mask.ndim >= 3 and mask.shape[0] == batch and batch > 1

        def call(index, adversarial):
            q_, k_, v_ = (_take(t, index) for t in (q, k, v))
            kw = dict(call_kwargs)
            if per_row_mask:
                kw["mask"] = _take(mask, index)
            if index is not None and not adversarial and kw.get("transformer_options"):
                kw["transformer_options"] = _plain_row_options(kw["transformer_options"], slots)
            if adversarial:
                counter.calls += 1
                return sinkhorn_attention(
                    q_, k_, v_, heads, settings, layer, mask=kw.get("mask"), skip_reshape=skip_reshape,
                    skip_output_reshape=kw.get("skip_output_reshape", False),
                )
            if outer_override is not None:
                return outer_override(func, q_, k_, v_, heads, **kw)
            return func(q_, k_, v_, heads, **kw)

        if layer not in chosen or k.shape[token_dim] != q.shape[token_dim]:
            return call(None, False)  # outside the chosen blocks, or cross-attention to a context
        options = call_kwargs.get("transformer_options") or {}
        return _dispatch_rows(call, _adversarial_row_mask(options, batch, slots), batch)

    return override


@contextlib.contextmanager
def _marked_dit_blocks(diffusion_model, layers):
    """Mark the chosen DiT blocks while they run, for the duration of one model call only."""
    handles = []
    tokens = []

    def enter(layer):
        def pre_hook(module, args):
            tokens.append(_CURRENT_DIT_LAYER.set(layer))

        return pre_hook

    def leave(module, args, output):
        _CURRENT_DIT_LAYER.reset(tokens.pop())

    try:
        for layer in layers:
            block = dit_block(diffusion_model, layer.stack, layer.index)
            handles.append(block.register_forward_pre_hook(enter(layer)))
            handles.append(block.register_forward_hook(leave))
        yield
    finally:
        for handle in handles:
            handle.remove()
        while tokens:  # a block that raised (e.g. an interrupt) never reached its forward hook
            _CURRENT_DIT_LAYER.reset(tokens.pop())


def _adversarial_model_options(model_options: dict, plan: ASAGPlan, slots, counter) -> dict:
    """A copy of ``model_options`` with the Sinkhorn attention in ``plan.layers``, acting on
    the rows of the conds at positions ``slots`` of the calc_cond_batch call."""
    slots = frozenset(slots)
    options = dict(model_options)
    to = dict(options.get("transformer_options", {}))
    unet_layers = [layer for layer in plan.layers if isinstance(layer, UNetLayer)]
    dit_layers = frozenset(layer for layer in plan.layers if isinstance(layer, DiTLayer))
    if unet_layers:
        replace = {name: dict(patches) for name, patches in to.get("patches_replace", {}).items()}
        attn1 = replace.setdefault("attn1", {})
        for layer in unet_layers:
            previous = attn1.get(layer.patch_key, attn1.get(layer.patch_key[:2]))
            attn1[layer.patch_key] = _unet_patch(layer, plan.settings, slots, counter, previous)
        to["patches_replace"] = replace
    if dit_layers:
        to["optimized_attention_override"] = _dit_override(
            plan.settings, slots, counter, dit_layers, to.get("optimized_attention_override")
        )
    options["transformer_options"] = to
    return options


@contextlib.contextmanager
def adversarial_call(model, model_options: dict, plan: ASAGPlan, slots):
    """Model options for one calc_cond_batch call in which the conds at positions ``slots``
    are adversarial. Afterwards, checks that the Sinkhorn attention really ran."""
    counter = _Counter()
    options = _adversarial_model_options(model_options, plan, slots, counter)
    dit_layers = [layer for layer in plan.layers if isinstance(layer, DiTLayer)]
    with _marked_dit_blocks(model.diffusion_model, dit_layers):
        yield options
    check_ran(counter, plan)


def check_ran(counter: _Counter, plan: ASAGPlan):
    if counter.calls == 0:
        names = ", ".join(str(layer.patch_key) for layer in plan.layers)
        raise RuntimeError(
            f"ASAG: the Sinkhorn attention never ran in the chosen layers ({names}) of this {plan.family} model. "
            "Its architecture does not route self-attention through ComfyUI's optimized_attention with "
            "transformer_options; ASAG cannot guide it. Remove the ASAG node for this model."
        )


def adversarial_prediction(model, cond, x, sigma, model_options, plan: ASAGPlan):
    """The conditional prediction with the Sinkhorn plan in the chosen layers (one extra pass)."""
    with adversarial_call(model, model_options, plan, slots=(0,)) as options:
        (adv,) = comfy.samplers.calc_cond_batch(model, [cond], x, sigma, options)
    return adv


def copy_plan(plan: ASAGPlan, **settings_changes) -> ASAGPlan:
    """The plan with some settings changed; layers and the sigma window are kept (the window was
    resolved from the percents against the model, so those two are not for changing here)."""
    if {"start_percent", "end_percent"} & set(settings_changes):
        raise ValueError("copy_plan keeps the plan's sigma window: start_percent and end_percent need a new plan")
    settings = plan.settings
    if settings_changes:
        values = {**settings.__dict__, **settings_changes}
        settings = ASAGSettings(**values)
    return replace(plan, settings=settings)


__all__ = ["ASAGPlan", "adversarial_call", "adversarial_prediction", "copy_plan"]
