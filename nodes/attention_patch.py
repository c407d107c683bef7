"""The Sinkhorn attention in the chosen layers, for the adversarial rows of one model call.

The patches live only in the model_options of an adversarial call, so the ordinary cond/uncond
passes are untouched. Inside a batched call (cond, uncond and adversarial rows together) only
the rows tagged adversarial (``adversarial_rows.py``) get the Sinkhorn plan; the other rows run
the attention they would have run anyway, through any patch chained before ours.

U-Nets: ComfyUI's ``attn1`` replace patch, keyed (block, id, transformer index), the mechanism
PAG uses. DiTs: ``transformer_options["optimized_attention_override"]``, the hook every ComfyUI
attention function honours when its caller passes transformer_options; attention called without
them is redirected to the same override per model (``unreachable_attention.py``). The override
gives the plan to attention calls made inside a chosen block whose keys are the queries' own
tokens (``block_tracking.py`` tracks the block and tells cross-attention apart).
"""

from __future__ import annotations

from ..asag_core import ASAGSettings, DiTLayer, UNetLayer, adversarial_attention
from . import adversarial_rows as rows
from . import block_tracking
from . import comfy_internals as comfy


def sinkhorn_attention(q, k, v, heads, settings: ASAGSettings, layer, **layout):
    """The one place the Sinkhorn attention is called from the model (tests count calls here).

    ``layout``: mask, skip_reshape, skip_output_reshape, and ComfyUI 0.38's scale and enable_gqa."""
    if not layout.get("skip_reshape", False):
        # some callers (SD3's MMDiT) hand v over as (B, N, H, D); ComfyUI's own kernels view it flat
        q, k, v = (t.flatten(2) if t.ndim == 4 else t for t in (q, k, v))
    return adversarial_attention(
        q, k, v, heads, iterations=settings.iterations, lam=settings.lam, cost=settings.cost, **layout
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


def _row_mask(batch):
    tracked = block_tracking.current()
    return rows.row_mask(tracked.flags if tracked is not None else None, batch)


def _unet_patch(layer: UNetLayer, settings, report, previous):
    def attn1_replace(q, k, v, extra_options):
        heads = extra_options[comfy.N_HEADS]

        def call(index, adversarial):
            q_, k_, v_ = (_take(t, index) for t in (q, k, v))
            if adversarial:
                report.count(sinkhorn=1)
                return sinkhorn_attention(q_, k_, v_, heads, settings, layer)
            options = extra_options if index is None else rows.plain_row_options(extra_options)
            if previous is not None:
                return previous(q_, k_, v_, options)
            return comfy.plain_attention(q_, k_, v_, heads, extra_options.get(comfy.ATTN_PRECISION), options)

        return _dispatch_rows(call, _row_mask(q.shape[0]), q.shape[0])

    return attn1_replace


def _tokens(t, skip_reshape):
    return t.shape[2] if skip_reshape else t.shape[1]


def _sinkhorn_layout(kw, skip_reshape):
    layout = {"mask": kw.get("mask"), "skip_reshape": skip_reshape,
              "skip_output_reshape": kw.get("skip_output_reshape", False)}
    for name in (comfy.ATTENTION_SCALE, comfy.ATTENTION_GQA):  # ComfyUI 0.38's attention kwargs
        if kw.get(name) is not None:
            layout[name] = kw[name]
    return layout


def _dit_override(plan, report, outer_override):
    chosen = frozenset(layer for layer in plan.layers if isinstance(layer, DiTLayer))

    def override(func, *args, **kwargs):
        # ComfyUI's attention functions share one signature; callers pass heads and mask
        # positionally or by keyword, so bind them by name first
        call_kwargs = dict(zip(comfy.ATTENTION_PARAMS, args, strict=False))
        call_kwargs.update(kwargs)
        q, k, v, heads = (call_kwargs.pop(name) for name in comfy.ATTENTION_PARAMS[:4])
        mask = call_kwargs.get("mask")
        skip_reshape = call_kwargs.get("skip_reshape", False)
        batch = q.shape[0]
        per_row_mask = hasattr(mask, "ndim") and mask.ndim >= 3 and mask.shape[0] == batch and batch > 1
        # attention reached without transformer_options (unreachable_attention.py) runs as ComfyUI
        # would run it there: no other node's override
        via_options = comfy.TRANSFORMER_OPTIONS in call_kwargs

        def call(index, adversarial):
            q_, k_, v_ = (_take(t, index) for t in (q, k, v))
            kw = dict(call_kwargs)
            if per_row_mask:
                kw["mask"] = _take(mask, index)
            if index is not None and not adversarial and kw.get(comfy.TRANSFORMER_OPTIONS):
                kw[comfy.TRANSFORMER_OPTIONS] = rows.plain_row_options(kw[comfy.TRANSFORMER_OPTIONS])
            if adversarial:
                report.count(sinkhorn=1)
                return sinkhorn_attention(q_, k_, v_, heads, plan.settings, layer, **_sinkhorn_layout(kw, skip_reshape))
            if outer_override is not None and via_options:
                return outer_override(func, q_, k_, v_, heads, **kw)
            return func(q_, k_, v_, heads, **kw)

        tracked = block_tracking.current()
        layer = None if tracked is None else tracked.layer
        own = layer in chosen and block_tracking.keys_are_own_tokens(
            _tokens(q, skip_reshape), _tokens(k, skip_reshape), tracked.frame, batch, (q, k, v))
        if not own:
            return call(None, False)  # outside the chosen blocks, or cross-attention
        return _dispatch_rows(call, rows.row_mask(tracked.flags, batch), batch)

    return override


def with_sinkhorn(model_options: dict, plan, report) -> tuple[dict, object]:
    """A copy of ``model_options`` with the Sinkhorn attention in ``plan.layers`` for the rows tagged
    adversarial, and the call's DiT attention override (None for a U-Net plan)."""
    options = dict(model_options)
    to = dict(options.get(comfy.TRANSFORMER_OPTIONS, {}))
    unet_layers = [layer for layer in plan.layers if isinstance(layer, UNetLayer)]
    override = None
    if unet_layers:
        replace_patches = {name: dict(patches) for name, patches in to.get(comfy.PATCHES_REPLACE, {}).items()}
        attn1 = replace_patches.setdefault(comfy.ATTN1, {})
        for layer in unet_layers:
            previous = attn1.get(layer.patch_key, attn1.get(layer.patch_key[:2]))
            attn1[layer.patch_key] = _unet_patch(layer, plan.settings, report, previous)
        to[comfy.PATCHES_REPLACE] = replace_patches
    if len(unet_layers) < len(plan.layers):
        override = _dit_override(plan, report, to.get(comfy.ATTENTION_OVERRIDE))
        to[comfy.ATTENTION_OVERRIDE] = override
    options[comfy.TRANSFORMER_OPTIONS] = to
    return options, override


__all__ = ["sinkhorn_attention", "with_sinkhorn"]
