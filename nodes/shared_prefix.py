"""Computing the adversarial branch's shared prefix once.

In the batched model call of the fast path (``guidance_step.py``: the ASAG node and
ASAGGuider alike) the adversarial rows are exact copies of the
conditional rows (same latent, sigma and conditioning) up to the first perturbed
self-attention layer: everything before it computes the same numbers twice.
This module makes that prefix run once.

How
---
For the duration of one ``apply_model`` call (an ``APPLY_MODEL`` wrapper added to
the model_options of that call only, so it composes with other wrappers and
leaves the shared model untouched), every module that runs entirely before the
first perturbed layer gets two temporary hooks, registered on the model that
executes the call (``executor.class_obj``):

* a forward *pre*-hook that hands the module only the rows that are not
  shared-adversarial: every tensor argument whose leading dim is the call's
  batch is narrowed, and a transformer_options argument is replaced by a copy
  whose per-chunk lists (``cond_or_uncond``, ``uuids``, the pack's row tags) are
  cut to match, so patches inside the module that split the batch by cond see a
  consistent picture. No dict is changed: the module gets its own copy, whatever
  copies of transformer_options ComfyUI made before (0.38's ``_apply_model``
  hands the diffusion model a shallow copy); and
* a forward hook that rebuilds the full batch from the module's output, the
  adversarial rows filled in as copies of their conditional partner's rows.

Between prefix modules the full batch flows as before (skip connections,
ControlNet residuals and block patches see what they always saw). The hooks are
removed in ``finally``: nothing stays registered on the diffusion model, also
when sampling is interrupted.

Which modules (the "prefix")
----------------------------
* ComfyUI's ``UNetModel`` (SD1.x/2.x/SDXL; not the video U-Nets): the children of every
  input/middle/output block that runs before the block holding the first
  perturbed transformer, the children of that block before its
  SpatialTransformer, and inside the SpatialTransformer its norm, proj_in and the
  transformer blocks before the perturbed one.
* Flux, SD3 (MMDiT), Wan, LTXV, HunyuanVideo and Qwen-Image
  (``comfy_internals.PREFIX_SHAREABLE_DITS``): the blocks of the double/joint stack (then the
  single stack) before the first perturbed block. The cheap embedders are not shared.
* Any other architecture: no sharing; the batched call runs as before.

When rows are *not* shared (the call runs unchanged for them)
-------------------------------------------------------------
* calc_cond_batch put an adversarial chunk in a different model call than its
  conditional partner (memory-based splitting, area conds): the partner is
  matched by its cond uuid (``adversarial_rows``) inside one call only.
* The adversarial and conditional rows of the model inputs are not bit-equal
  (something upstream, e.g. a ``model_function_wrapper``, changed one of them).
* The model runs under ``torch.compile`` (hooks would force recompiles).

A separate adversarial pass (the slot is held by another node) holds no conditional rows,
so nothing is shared there.

The hooks act only in the context (thread) of the call that registered them.

Assumption: every prefix module is row-independent (true of convolutions,
group/layer norms, linear layers and attention in eval mode). Patches inside the prefix
see the adversarial rows as the conditional rows they equal (slot 0, see
``adversarial_rows.py``), so sharing changes nothing they can tell.
"""

from __future__ import annotations

import contextvars
import weakref

import torch

from ..asag_core import DiTLayer, UNetLayer
from . import adversarial_rows as rows
from . import comfy_internals as comfy
from .model_layers import dit_stack

# The hooks of the shared call running in this context; hooks of another thread's call stay idle.
_ACTIVE_HOOKS = contextvars.ContextVar("asag_shared_prefix_hooks", default=None)

WRAPPER_KEY = "asag_shared_prefix"

_UNET_PART_RANK = {"input": 0, "middle": 1, "output": 2}
_IMAGE_UNETS = weakref.WeakKeyDictionary()  # UNetModel -> has no video transformer


# ---------------------------------------------------------------------------
# which modules run before the first perturbed layer
# ---------------------------------------------------------------------------

def _is_unet(diffusion_model) -> bool:
    """ComfyUI's image UNetModel. Video U-Nets (SVD) are left out: their temporal layers mix
    the rows of a chunk and take frame-shaped extra inputs."""
    if comfy.class_id(diffusion_model) != comfy.UNET_CLASS:
        return False
    if getattr(diffusion_model, comfy.TEMPORAL_RESBLOCKS, False):
        return False
    known = _IMAGE_UNETS.get(diffusion_model)
    if known is None:
        known = not any(type(m).__name__ == comfy.VIDEO_TRANSFORMER_CLASS_NAME for m in diffusion_model.modules())
        _IMAGE_UNETS[diffusion_model] = known
    return known


def _is_known_dit(diffusion_model) -> bool:
    return comfy.class_id(diffusion_model) in comfy.PREFIX_SHAREABLE_DITS


def _unet_prefix(diffusion_model, layers):
    first = min(layers, key=lambda lay: (_UNET_PART_RANK[lay.part], lay.block_id, lay.transformer_index))
    blocks = []
    for attribute, part in comfy.UNET_PARTS.items():  # input, middle, output: the order they run in
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
            if hasattr(child, comfy.TRANSFORMER_BLOCKS):
                modules.append(getattr(child, comfy.SPATIAL_NORM))
                modules.append(getattr(child, comfy.SPATIAL_PROJ_IN))
                modules.extend(list(getattr(child, comfy.TRANSFORMER_BLOCKS))[: first.transformer_index])
                return modules
            modules.append(child)
        return None  # the perturbed transformer is not where the catalog said: share nothing
    return None


def _blocks(diffusion_model, stack, count=None):
    blocks = dit_stack(diffusion_model, stack)
    return list(blocks if count is None else blocks[:count])


def _dit_prefix(diffusion_model, layers):
    # the catalog's numbering: the double/joint stack runs first, then the single stack
    first = min(layers, key=lambda lay: (0 if lay.stack == "double" else 1, lay.index))
    if first.stack == "double":
        return _blocks(diffusion_model, "double", first.index)
    return _blocks(diffusion_model, "double") + _blocks(diffusion_model, "single", first.index)


def prefix_modules(diffusion_model, layers) -> list:
    """The modules that run entirely before the first of ``layers``, in order; [] if none
    or the architecture is not one whose prefix is known to be shareable."""
    layers = list(layers)
    if not layers:
        return []
    if all(isinstance(lay, UNetLayer) for lay in layers) and _is_unet(diffusion_model):
        modules = _unet_prefix(diffusion_model, layers)
    elif all(isinstance(lay, DiTLayer) for lay in layers) and _is_known_dit(diffusion_model):
        modules = _dit_prefix(diffusion_model, layers)
    else:
        modules = None
    return [m for m in (modules or []) if isinstance(m, torch.nn.Module)]


# ---------------------------------------------------------------------------
# which rows can be shared in one call
# ---------------------------------------------------------------------------

def _rows_equal(obj, batch, rows_a, rows_b) -> bool:
    """Rows ``rows_a`` equal rows ``rows_b`` in every batch-leading tensor inside ``obj``."""
    if isinstance(obj, torch.Tensor):
        if obj.ndim == 0 or obj.shape[0] != batch:
            return True
        return torch.equal(obj[rows_a], obj[rows_b])
    if isinstance(obj, dict):
        return all(_rows_equal(v, batch, rows_a, rows_b) for k, v in obj.items() if k != comfy.TRANSFORMER_OPTIONS)
    if isinstance(obj, (list, tuple)):
        return all(_rows_equal(v, batch, rows_a, rows_b) for v in obj)
    return True


class Fork:
    """The row bookkeeping of one shared call.

    ``keep``: the rows the prefix computes (all but the shared adversarial ones);
    ``gather``: for every row of the full batch, its row in the kept batch (an
    adversarial row points at its conditional partner's).
    """

    def __init__(self, batch, keep, gather, narrowed_lists):
        self.batch = batch
        self.narrow_batch = len(keep)
        self.keep = torch.tensor(keep, dtype=torch.long)
        self.gather = torch.tensor(gather, dtype=torch.long)
        contiguous = keep == list(range(keep[0], keep[0] + len(keep)))
        self.keep_range = (keep[0], len(keep)) if contiguous else None
        #: the per-chunk lists of transformer_options (cond_or_uncond, uuids, the pack's tags) cut to ``keep``
        self.narrowed_lists = narrowed_lists
        self.shared_rows = batch - len(keep)


def plan_fork(batch, transformer_options, inputs) -> Fork | None:
    """Pair each adversarial chunk of this call (tagged by ``adversarial_rows``) with the
    conditional chunk it copies (same cond uuid, equal inputs); None if none can be shared."""
    order = list(transformer_options.get(comfy.COND_OR_UNCOND) or [])
    uuids = list(transformer_options.get(comfy.UUIDS) or [])
    partners = list(transformer_options.get(rows.ADVERSARIAL_ROWS) or [])
    if len(order) < 2 or len(uuids) != len(order) or len(partners) != len(order) or batch % len(order):
        return None
    per = batch // len(order)
    partner = {}
    for o, cond_uuid in enumerate(partners):
        if cond_uuid is None:
            continue
        for p, other in enumerate(partners):
            if other is not None or p in partner.values() or uuids[p] != cond_uuid or order[p] != rows.COND_SLOT:
                continue
            rows_adv = torch.arange(o * per, (o + 1) * per)
            rows_cond = torch.arange(p * per, (p + 1) * per)
            if _rows_equal(inputs, batch, rows_adv, rows_cond):
                partner[o] = p
            break
    if not partner:
        return None
    kept_chunks = [o for o in range(len(order)) if o not in partner]
    keep = [o * per + r for o in kept_chunks for r in range(per)]
    position = {chunk: i for i, chunk in enumerate(kept_chunks)}
    gather = []
    for o in range(len(order)):
        src = position[partner.get(o, o)]
        gather.extend(src * per + r for r in range(per))
    per_chunk = zip(rows.PER_CHUNK_KEYS, (order, uuids, partners), strict=True)
    return Fork(batch, keep, gather, {key: [values[o] for o in kept_chunks] for key, values in per_chunk})


# ---------------------------------------------------------------------------
# the hooks
# ---------------------------------------------------------------------------

class _Hooks:
    def __init__(self, fork: Fork):
        self.fork = fork
        self.depth = 0

    def _narrow(self, obj):
        fork = self.fork
        if isinstance(obj, torch.Tensor):
            if obj.ndim == 0 or obj.shape[0] != fork.batch:
                return obj
            if fork.keep_range is not None:
                return obj.narrow(0, *fork.keep_range)
            return obj.index_select(0, fork.keep.to(obj.device))
        if isinstance(obj, dict) and rows.ADVERSARIAL_ROWS in obj:
            # this call's transformer_options (every copy of it carries the pack's tags): a copy of
            # our own with the per-chunk lists cut to the kept rows
            return {**obj, **{key: list(values) for key, values in fork.narrowed_lists.items()}}
        if isinstance(obj, (list, tuple)) and not hasattr(obj, "_fields"):
            return type(obj)(self._narrow(v) for v in obj)
        return obj  # other dicts and everything else pass through

    def _widen(self, obj):
        fork = self.fork
        if isinstance(obj, torch.Tensor):
            if obj.ndim == 0 or obj.shape[0] != fork.narrow_batch:
                return obj
            return obj.index_select(0, fork.gather.to(obj.device))
        if isinstance(obj, (list, tuple)) and not hasattr(obj, "_fields"):
            return type(obj)(self._widen(v) for v in obj)
        return obj

    def pre(self, module, args, kwargs):
        if _ACTIVE_HOOKS.get() is not self:  # another sampling of this model, in another thread
            return None
        self.depth += 1
        if self.depth > 1:  # a prefix module inside another one: already narrowed
            return None
        return self._narrow(args), {k: self._narrow(v) for k, v in kwargs.items()}

    def post(self, module, args, output):
        if _ACTIVE_HOOKS.get() is not self:
            return None
        self.depth -= 1
        if self.depth > 0:
            return None
        return self._widen(output)


def shared_prefix_wrapper(layers, stats=None):
    """An APPLY_MODEL wrapper that computes the prefix once for the shared adversarial rows.

    ``stats`` (optional dict) is updated with the rows shared in each call (for tests and
    benchmarks)."""

    def asag_shared_prefix(executor, x, t, c_concat=None, c_crossattn=None, control=None, transformer_options={},
                           **kwargs):
        def run():
            return executor(x, t, c_concat, c_crossattn, control, transformer_options, **kwargs)

        diffusion_model = getattr(comfy.executing_model(executor), "diffusion_model", None)
        if diffusion_model is None or comfy.is_compiled(diffusion_model):
            return run()
        modules = prefix_modules(diffusion_model, layers)
        if not modules:
            return run()
        inputs = (x, t, c_concat, c_crossattn, control, kwargs)
        fork = plan_fork(x.shape[0], transformer_options, inputs)
        if fork is None:
            return run()
        hooks = _Hooks(fork)
        handles = []
        token = _ACTIVE_HOOKS.set(hooks)
        try:
            for module in modules:
                handles.append(module.register_forward_pre_hook(hooks.pre, with_kwargs=True))
                handles.append(module.register_forward_hook(hooks.post, prepend=True))
            out = run()
        finally:
            for handle in handles:
                handle.remove()
            _ACTIVE_HOOKS.reset(token)
        if stats is not None:
            stats["calls"] = stats.get("calls", 0) + 1
            stats["shared_rows"] = stats.get("shared_rows", 0) + fork.shared_rows
        return out

    return asag_shared_prefix


def with_shared_prefix(model_options: dict, plan, stats=None) -> dict:
    """A copy of ``model_options`` whose model calls share the prefix of the rows tagged
    adversarial with the conditional rows they copy. The input dicts are not modified."""
    if comfy.TORCH_COMPILE_KWARGS in model_options:
        return model_options
    # innermost of the apply_model wrappers: it runs with the inputs the model will see
    return rows.with_apply_model_wrapper(model_options, WRAPPER_KEY, shared_prefix_wrapper(plan.layers, stats),
                                         outermost=False)


__all__ = ["Fork", "WRAPPER_KEY", "plan_fork", "prefix_modules", "shared_prefix_wrapper", "with_shared_prefix"]
