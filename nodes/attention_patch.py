"""Putting the adversarial Sinkhorn attention into the chosen layers of one model call.

The patches live only in the model_options of an adversarial call, so the ordinary
cond/uncond passes are untouched. Inside a batched call (cond, uncond and adversarial rows
together) only the rows that ``nodes/adversarial_rows.py`` tags as adversarial get the
Sinkhorn plan; the other rows run the attention they would have run anyway, through any
patch chained before ours.

U-Nets: ComfyUI's ``attn1`` replace patch, keyed (block, id, transformer index), the
mechanism PAG uses. DiTs: ``transformer_options["optimized_attention_override"]`` (the hook
every ComfyUI DiT routes its attention through) plus a marker on the chosen block modules, set
by forward hooks that exist only for the duration of the adversarial call. Inside a marked
block every attention call gets the plan except those made inside the block's
cross-attention modules (found by structure, :func:`model_layers.cross_attention_modules`),
which attend to a text context. Marking modules rather than relying on each model's
``patches_replace["dit"]`` loop reaches DiTs that have no such loop (Lumina 2, Cosmos,
HiDream) by the same mechanism.

Hooks on shared modules act only in the context (thread) of the call that registered them
and only while a batch with adversarial rows runs, so a second sampling of the same model in
another thread never sees them.

After the call, :class:`CallReport` tells what happened: the Sinkhorn attention ran; or the
chosen layers never ran (a caching node reused an earlier output: the step gets no ASAG term);
or the layers ran but the attention never reached the Sinkhorn (the architecture does not route
it through ComfyUI's hooks: a clear error).
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
from . import adversarial_rows as rows
from .model_layers import cross_attention_modules, layer_module

# The DiT layer whose forward is running during an adversarial batch (None outside marked blocks).
_CURRENT_DIT_LAYER = contextvars.ContextVar("asag_current_dit_layer", default=None)
# True while a cross-attention module of a marked block runs.
_IN_CROSS_ATTENTION = contextvars.ContextVar("asag_in_cross_attention", default=False)
# The report of the adversarial call whose batch with adversarial rows is running here.
_ADVERSARIAL_BATCH = contextvars.ContextVar("asag_adversarial_batch", default=None)


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


class CallReport:
    """What one adversarial call did: Sinkhorn calls, and entries into the chosen layers."""

    def __init__(self, plan):
        self.plan = plan
        self.sinkhorn_calls = 0
        self.layer_runs = 0

    def __deepcopy__(self, memo):  # model_options get deep-copied by ModelPatcher.clone
        return self

    @property
    def ran(self) -> bool:
        """True: the plan ran. False: the chosen layers never ran (a cache reused an output).
        Raises when the layers ran but their attention never reached the Sinkhorn."""
        if self.sinkhorn_calls:
            return True
        if self.layer_runs:
            raise_unreachable(self.plan)
        return False


def raise_unreachable(plan):
    names = ", ".join(str(layer.patch_key) for layer in plan.layers)
    raise RuntimeError(
        f"ASAG: the chosen layers ({names}) of this {plan.family} model ran, but their self-attention never "
        "reached the Sinkhorn attention: this architecture does not route it through ComfyUI's attention hooks "
        "(attn1 patches, optimized_attention_override with transformer_options), so ASAG cannot guide it. "
        "Remove the ASAG node for this model."
    )


def _dispatch_rows(call, row_mask, batch):
    """``call(index, adversarial)`` on the adversarial rows and on the others, merged in order.

    ``index`` is a LongTensor of batch rows, or None for all of them.
    """
    if isinstance(row_mask, str):
        return call(None, row_mask == "all")
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


def _unet_patch(layer: UNetLayer, settings, report, previous):
    def attn1_replace(q, k, v, extra_options):
        heads = extra_options["n_heads"]

        def call(index, adversarial):
            q_, k_, v_ = (_take(t, index) for t in (q, k, v))
            if adversarial:
                report.sinkhorn_calls += 1
                return sinkhorn_attention(q_, k_, v_, heads, settings, layer)
            options = extra_options if index is None else rows.plain_row_options(extra_options)
            if previous is not None:
                return previous(q_, k_, v_, options)
            return comfy_attention.optimized_attention(
                q_, k_, v_, heads, attn_precision=extra_options.get("attn_precision"), transformer_options=options
            )

        return _dispatch_rows(call, rows.row_mask(extra_options, q.shape[0]), q.shape[0])

    return attn1_replace


_ATTENTION_PARAMS = ("q", "k", "v", "heads", "mask", "attn_precision", "skip_reshape", "skip_output_reshape")


def _dit_override(settings, report, chosen, outer_override):
    def override(func, *args, **kwargs):
        # ComfyUI's attention functions share one signature; callers pass heads and mask
        # positionally or by keyword, so bind them by name first
        call_kwargs = dict(zip(_ATTENTION_PARAMS, args, strict=False))
        call_kwargs.update(kwargs)
        q, k, v, heads = (call_kwargs.pop(name) for name in _ATTENTION_PARAMS[:4])
        layer = _CURRENT_DIT_LAYER.get()
        mask = call_kwargs.get("mask")
        skip_reshape = call_kwargs.get("skip_reshape", False)
        batch = q.shape[0]
        per_row_mask = isinstance(mask, torch.Tensor) and mask.ndim >= 3 and mask.shape[0] == batch and batch > 1

        def call(index, adversarial):
            q_, k_, v_ = (_take(t, index) for t in (q, k, v))
            kw = dict(call_kwargs)
            if per_row_mask:
                kw["mask"] = _take(mask, index)
            if index is not None and not adversarial and kw.get("transformer_options"):
                kw["transformer_options"] = rows.plain_row_options(kw["transformer_options"])
            if adversarial:
                report.sinkhorn_calls += 1
                return sinkhorn_attention(
                    q_, k_, v_, heads, settings, layer, mask=kw.get("mask"), skip_reshape=skip_reshape,
                    skip_output_reshape=kw.get("skip_output_reshape", False),
                )
            if outer_override is not None:
                return outer_override(func, q_, k_, v_, heads, **kw)
            return func(q_, k_, v_, heads, **kw)

        if layer not in chosen or _IN_CROSS_ATTENTION.get():
            return call(None, False)  # outside the chosen blocks, or cross-attention to a text context
        options = call_kwargs.get("transformer_options") or {}
        return _dispatch_rows(call, rows.row_mask(options, batch), batch)

    return override


@contextlib.contextmanager
def _layer_hooks(diffusion_model, layers, report):
    """For one adversarial call: count entries into the chosen layers, and for DiT blocks set
    the current layer (and the cross-attention flag) while they run. The hooks act only while
    this call's adversarial batch runs in this context."""
    handles = []

    def ours():
        return _ADVERSARIAL_BATCH.get() is report

    def scoped(var, value_of):
        tokens = []

        def enter(module, args):
            if ours():
                tokens.append(var.set(value_of(module)))

        def leave(module, args, output):
            if tokens and ours():
                var.reset(tokens.pop())

        return enter, leave, tokens

    def count(module, args):
        if ours():
            report.layer_runs += 1

    cleanups = []
    try:
        for layer in layers:
            module = layer_module(diffusion_model, layer)
            handles.append(module.register_forward_pre_hook(count))
            if not isinstance(layer, DiTLayer):
                continue
            enter, leave, tokens = scoped(_CURRENT_DIT_LAYER, lambda _m, lay=layer: lay)
            handles += [module.register_forward_pre_hook(enter), module.register_forward_hook(leave)]
            cleanups.append((_CURRENT_DIT_LAYER, tokens))
            for cross in cross_attention_modules(module):
                enter, leave, tokens = scoped(_IN_CROSS_ATTENTION, lambda _m: True)
                handles += [cross.register_forward_pre_hook(enter), cross.register_forward_hook(leave)]
                cleanups.append((_IN_CROSS_ATTENTION, tokens))
        yield
    finally:
        for handle in handles:
            handle.remove()
        for var, tokens in cleanups:  # a block that raised (an interrupt) never reached its forward hook
            while tokens:
                var.reset(tokens.pop())


def _with_sinkhorn(model_options: dict, plan, report) -> dict:
    """A copy of ``model_options`` with the Sinkhorn attention in ``plan.layers`` for the
    rows tagged adversarial."""
    options = dict(model_options)
    to = dict(options.get("transformer_options", {}))
    unet_layers = [layer for layer in plan.layers if isinstance(layer, UNetLayer)]
    dit_layers = frozenset(layer for layer in plan.layers if isinstance(layer, DiTLayer))
    if unet_layers:
        replace_patches = {name: dict(patches) for name, patches in to.get("patches_replace", {}).items()}
        attn1 = replace_patches.setdefault("attn1", {})
        for layer in unet_layers:
            previous = attn1.get(layer.patch_key, attn1.get(layer.patch_key[:2]))
            attn1[layer.patch_key] = _unet_patch(layer, plan.settings, report, previous)
        to["patches_replace"] = replace_patches
    if dit_layers:
        to["optimized_attention_override"] = _dit_override(
            plan.settings, report, dit_layers, to.get("optimized_attention_override")
        )
    options["transformer_options"] = to
    return options


@contextlib.contextmanager
def adversarial_call(model, model_options: dict, plan, partners: dict):
    """``(options, report)`` for one calc_cond_batch call whose conds with uuids in
    ``partners`` (adversarial uuid -> conditional uuid) are adversarial copies. After the
    call, ``report.ran`` says whether the Sinkhorn attention ran."""
    report = CallReport(plan)

    def in_adversarial_batch(run, flags):
        if not any(flags):
            return run()
        token = _ADVERSARIAL_BATCH.set(report)
        try:
            return run()
        finally:
            _ADVERSARIAL_BATCH.reset(token)

    options = _with_sinkhorn(model_options, plan, report)
    options = rows.with_row_marking(options, partners, around_batch=in_adversarial_batch)
    with _layer_hooks(model.diffusion_model, plan.layers, report):
        yield options, report


def separate_adversarial_pass(model, cond, x, sigma, model_options, plan):
    """The conditional prediction with the Sinkhorn plan in the chosen layers, in a model call
    of its own; None when a cache skipped the chosen layers."""
    adversarial, partners = rows.adversarial_cond(cond)
    with adversarial_call(model, model_options, plan, partners) as (options, report):
        (adv,) = comfy.samplers.calc_cond_batch(model, [adversarial], x, sigma, options)
    return adv if report.ran else None


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


__all__ = ["ASAGPlan", "CallReport", "adversarial_call", "copy_plan", "separate_adversarial_pass"]
