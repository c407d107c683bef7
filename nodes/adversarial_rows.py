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
in the model_options of the adversarial call.
"""

from __future__ import annotations

import uuid as uuid_lib

import comfy.patcher_extension
import torch

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
        own = adversarial_uuid(entry["uuid"])
        partners[own] = entry["uuid"]
        copies.append({**entry, "uuid": own})
    return copies, partners


def mark_rows(transformer_options: dict, partners: dict) -> None:
    """Tag the chunks of one model call (in place; the dict is that call's own)."""
    if ADVERSARIAL_ROWS in transformer_options:
        return
    uuids = list(transformer_options.get("uuids") or [])
    flags = [partners.get(u) for u in uuids]
    transformer_options[ADVERSARIAL_ROWS] = flags
    order = transformer_options.get("cond_or_uncond")
    if order and len(order) == len(flags):
        relabelled = zip(order, flags, strict=True)
        transformer_options["cond_or_uncond"] = [COND_SLOT if f is not None else s for s, f in relabelled]


def _marker_wrapper(partners: dict, around_batch):
    def asag_mark_adversarial_rows(executor, x, t, c_concat=None, c_crossattn=None, control=None,
                                   transformer_options={}, **kwargs):
        mark_rows(transformer_options, partners)

        def run():
            return executor(x, t, c_concat, c_crossattn, control, transformer_options, **kwargs)

        return around_batch(run, chunk_flags(transformer_options) or [])

    return asag_mark_adversarial_rows


def _around_model_function_wrapper(inner, partners: dict):
    def asag_model_function_wrapper(apply_model, args):
        to = args["c"].get("transformer_options")
        if to is not None:
            mark_rows(to, partners)
            args = {**args, "cond_or_uncond": list(to.get("cond_or_uncond", args["cond_or_uncond"]))}
        return inner(apply_model, args)

    return asag_model_function_wrapper


def _just_run(run, flags):
    return run()


def with_row_marking(model_options: dict, partners: dict, around_batch=_just_run) -> dict:
    """A copy of ``model_options`` whose model calls tag and relabel the adversarial chunks.

    ``around_batch(run, flags)`` is called for each model call, with the per-chunk
    adversarial flags, and must return ``run()``."""
    options = dict(model_options)
    to = dict(options.get("transformer_options", {}))
    wrappers = {kind: dict(by_key) for kind, by_key in to.get("wrappers", {}).items()}
    kind = comfy.patcher_extension.WrappersMP.APPLY_MODEL
    # outermost: every other apply_model wrapper already sees slot 0 and the pack's key
    wrappers[kind] = {MARKER_WRAPPER_KEY: [_marker_wrapper(partners, around_batch)], **wrappers.get(kind, {})}
    to["wrappers"] = wrappers
    options["transformer_options"] = to
    if "model_function_wrapper" in options:
        options["model_function_wrapper"] = _around_model_function_wrapper(options["model_function_wrapper"], partners)
    return options


def chunk_flags(transformer_options: dict) -> list | None:
    """Per chunk: adversarial or not; None when the call carries no tag (nothing adversarial)."""
    flags = transformer_options.get(ADVERSARIAL_ROWS)
    return None if flags is None else [f is not None for f in flags]


def row_mask(transformer_options: dict, batch: int):
    """Bool (batch,) of adversarial rows; "all" or "none" when the answer is uniform."""
    flags = chunk_flags(transformer_options)
    if not flags or not any(flags):
        return "none"
    if all(flags):
        return "all"
    if batch % len(flags):
        raise RuntimeError(f"ASAG: batch {batch} does not split into the {len(flags)} conds of this call")
    return torch.tensor(flags).repeat_interleave(batch // len(flags))


_PER_CHUNK_KEYS = ("cond_or_uncond", "uuids", ADVERSARIAL_ROWS)


def plain_row_options(transformer_options: dict) -> dict:
    """``transformer_options`` for the non-adversarial rows of a split batch: the per-chunk
    lists cut to those chunks, so a chained patch that splits its batch by them (SAG,
    IP-Adapter...) sees lists that match its rows."""
    flags = chunk_flags(transformer_options)
    if not flags:
        return transformer_options
    keep = [i for i, adversarial in enumerate(flags) if not adversarial]
    out = dict(transformer_options)
    for key in _PER_CHUNK_KEYS:
        values = transformer_options.get(key)
        if values is not None and len(values) == len(flags):
            out[key] = [values[i] for i in keep]
    return out


__all__ = [
    "ADVERSARIAL_ROWS",
    "adversarial_cond",
    "adversarial_uuid",
    "chunk_flags",
    "mark_rows",
    "plain_row_options",
    "row_mask",
    "with_row_marking",
]
