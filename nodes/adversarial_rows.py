"""Which rows of a model call are adversarial, and what the rest of ComfyUI sees of them.

The adversarial branch is the conditional prediction with the Sinkhorn plan in the chosen
layers. To everything except that plan it must look like the conditional rows it copies, so
that patches written for (cond, uncond) batches keep working:

* **Slot.** ComfyUI's ``calc_cond_batch`` tags each chunk of a batch with the index of its
  cond in the call (``transformer_options["cond_or_uncond"]``). In a call with conds
  ``[cond, uncond, adversarial]`` the adversarial chunk would carry slot 2, and a patch that
  indexes per-slot tensors as ``(cond, uncond)[i] for i in cond_or_uncond`` (the pattern of
  IPAdapter_plus, InstantID, PuLID) fails. Before the model sees the batch, adversarial
  chunks are relabelled slot 0 (conditional). The output routing of ``calc_cond_batch`` is
  unaffected: it reads its own copy of the list.
* **Own key.** The pack tracks its rows under ``transformer_options[ADVERSARIAL_ROWS]``: per
  chunk, the uuid of the conditional cond an adversarial chunk copies, else None.
* **Own uuids.** Adversarial conds carry their own uuid, derived from the conditional one, so
  per-cond state kept by uuid (EasyCache's cached output differences, for one) never mixes a
  conditional chunk with its adversarial copy.

The relabelling happens in an ``APPLY_MODEL`` wrapper placed outermost (and, when a node has
set one, around the ``model_function_wrapper``, which runs before ``apply_model``), and only
in the model_options of the adversarial call. Neither changes a dict ComfyUI handed over: each
hands the next stage a transformer_options dict of its own carrying the tags, so the tags
reach the model through any copy ComfyUI makes on the way (0.38's ``_apply_model`` passes the
diffusion model a shallow copy).
"""

from __future__ import annotations

import uuid as uuid_lib

import torch

from . import comfy_internals as comfy

#: transformer_options key: per chunk, the conditional partner's uuid (adversarial) or None
ADVERSARIAL_ROWS = "asag_adversarial_rows"
MARKER_WRAPPER_KEY = "asag_adversarial_rows"
COND_SLOT = 0

_NAMESPACE = uuid_lib.UUID("6f1d2a0e-59c1-4c57-9a54-2b7f0c1e8a11")


def adversarial_uuid(cond_uuid) -> uuid_lib.UUID:
    """The adversarial copy's uuid: stable across steps, distinct from the conditional one."""
    return uuid_lib.uuid5(_NAMESPACE, str(cond_uuid))


def adversarial_cond(cond: list) -> tuple[list, dict]:
    """The adversarial copy of a processed cond list, and {adversarial uuid: conditional uuid}."""
    copies, partners = [], {}
    for entry in cond:
        own = adversarial_uuid(entry[comfy.COND_UUID])
        partners[own] = entry[comfy.COND_UUID]
        copies.append({**entry, comfy.COND_UUID: own})
    return copies, partners


def marked(transformer_options: dict, partners: dict) -> dict:
    """A copy of one model call's ``transformer_options`` with its chunks tagged and the
    adversarial ones relabelled slot 0 (the same dict if it is tagged already)."""
    if ADVERSARIAL_ROWS in transformer_options:
        return transformer_options
    out = dict(transformer_options)
    flags = [partners.get(u) for u in transformer_options.get(comfy.UUIDS) or []]
    out[ADVERSARIAL_ROWS] = flags
    order = transformer_options.get(comfy.COND_OR_UNCOND)
    if order and len(order) == len(flags):
        relabelled = zip(order, flags, strict=True)
        out[comfy.COND_OR_UNCOND] = [COND_SLOT if f is not None else s for s, f in relabelled]
    return out


def _marker_wrapper(partners: dict, around_batch):
    def asag_mark_adversarial_rows(executor, x, t, c_concat=None, c_crossattn=None, control=None,
                                   transformer_options={}, **kwargs):
        options = marked(transformer_options, partners)

        def run():
            return executor(x, t, c_concat, c_crossattn, control, options, **kwargs)

        return around_batch(executor, run, chunk_flags(options) or [])

    return asag_mark_adversarial_rows


def _around_model_function_wrapper(inner, partners: dict):
    def asag_model_function_wrapper(apply_model, args):
        to = args["c"].get(comfy.TRANSFORMER_OPTIONS)
        if to is not None:
            to = marked(to, partners)
            args = {**args, "c": {**args["c"], comfy.TRANSFORMER_OPTIONS: to},
                    comfy.COND_OR_UNCOND: list(to.get(comfy.COND_OR_UNCOND, args[comfy.COND_OR_UNCOND]))}
        return inner(apply_model, args)

    return asag_model_function_wrapper


def _just_run(executor, run, flags):
    return run()


def with_row_marking(model_options: dict, partners: dict, around_batch=_just_run) -> dict:
    """A copy of ``model_options`` whose model calls tag and relabel the adversarial chunks.

    ``around_batch(executor, run, flags)`` is called for each model call (``executor`` the
    APPLY_MODEL executor, whose class_obj is the BaseModel running the call), with the per-chunk
    adversarial flags, and must return ``run()``."""
    # outermost: every other apply_model wrapper already sees slot 0 and the pack's key
    options = with_apply_model_wrapper(model_options, MARKER_WRAPPER_KEY, _marker_wrapper(partners, around_batch),
                                       outermost=True)
    if comfy.MODEL_FUNCTION_WRAPPER in options:
        inner = options[comfy.MODEL_FUNCTION_WRAPPER]
        options[comfy.MODEL_FUNCTION_WRAPPER] = _around_model_function_wrapper(inner, partners)
    return options


def with_apply_model_wrapper(model_options: dict, key: str, wrapper, outermost: bool) -> dict:
    """A copy of ``model_options`` with ``wrapper`` as an APPLY_MODEL wrapper under ``key``, first
    (outermost) or last (innermost) among them; the input dicts are not modified."""
    options = dict(model_options)
    to = dict(options.get(comfy.TRANSFORMER_OPTIONS, {}))
    wrappers = {kind: dict(by_key) for kind, by_key in to.get(comfy.WRAPPERS, {}).items()}
    by_key = {k: v for k, v in wrappers.get(comfy.APPLY_MODEL, {}).items() if k != key}
    wrappers[comfy.APPLY_MODEL] = {key: [wrapper], **by_key} if outermost else {**by_key, key: [wrapper]}
    to[comfy.WRAPPERS] = wrappers
    options[comfy.TRANSFORMER_OPTIONS] = to
    return options


def chunk_flags(transformer_options: dict) -> list | None:
    """Per chunk: adversarial or not; None when the call carries no tag (nothing adversarial)."""
    flags = transformer_options.get(ADVERSARIAL_ROWS)
    return None if flags is None else [f is not None for f in flags]


def row_mask(flags: list | None, batch: int):
    """Bool (batch,) of adversarial rows from per-chunk ``flags``; "all" or "none" when uniform."""
    if not flags or not any(flags):
        return "none"
    if all(flags):
        return "all"
    if batch % len(flags):
        raise RuntimeError(f"ASAG: batch {batch} does not split into the {len(flags)} conds of this call")
    return torch.tensor(flags).repeat_interleave(batch // len(flags))


PER_CHUNK_KEYS = (comfy.COND_OR_UNCOND, comfy.UUIDS, ADVERSARIAL_ROWS)


def plain_row_options(transformer_options: dict) -> dict:
    """``transformer_options`` for the non-adversarial rows of a split batch: the per-chunk
    lists cut to those chunks, so a chained patch that splits its batch by them (SAG,
    IP-Adapter...) sees lists that match its rows."""
    flags = chunk_flags(transformer_options)
    if not flags:
        return transformer_options
    keep = [i for i, adversarial in enumerate(flags) if not adversarial]
    out = dict(transformer_options)
    for key in PER_CHUNK_KEYS:
        values = transformer_options.get(key)
        if values is not None and len(values) == len(flags):
            out[key] = [values[i] for i in keep]
    return out


__all__ = [
    "ADVERSARIAL_ROWS",
    "adversarial_cond",
    "adversarial_uuid",
    "chunk_flags",
    "marked",
    "plain_row_options",
    "row_mask",
    "with_apply_model_wrapper",
    "with_row_marking",
]
