"""The rows of a model call with adversarial copies: which rows they are, what other patches see of
them, how a call is split between the Sinkhorn and the attention the other rows run, and how the rows
of a shared prefix are narrowed and widened. Pure: tensors, dicts and lists in, the same out.

The adversarial branch is the conditional prediction with the Sinkhorn plan in the chosen layers. To
everything except that plan it must look like the conditional rows it copies, so that patches written
for (cond, uncond) batches keep working:

* **Slot.** ComfyUI tags each chunk of a batch with the index of its cond in the call
  (``transformer_options["cond_or_uncond"]``). In a call with conds ``[cond, uncond, adversarial]``
  the adversarial chunk would carry slot 2, and a patch that indexes per-slot tensors as
  ``(cond, uncond)[i] for i in cond_or_uncond`` (IPAdapter_plus, InstantID, PuLID) fails. The model
  sees adversarial chunks relabelled slot 0 (conditional).
* **Own key.** The pack tracks its rows under ``transformer_options[ADVERSARIAL_ROWS]``: per chunk,
  the uuid of the conditional cond an adversarial chunk copies, else None.
* **Own uuids.** Adversarial conds carry a uuid of their own, derived from the conditional one, so
  per-cond state kept by uuid (EasyCache's cached output differences) never mixes the two.
"""

from __future__ import annotations

import dataclasses
import math
import uuid as uuid_lib

import torch

from . import comfy_contract as contract

#: transformer_options key of the pack: per chunk, the conditional partner's uuid (adversarial) or None
ADVERSARIAL_ROWS = "asag_adversarial_rows"
COND_SLOT = contract.COND_SLOT
PER_CHUNK_KEYS = (contract.COND_OR_UNCOND, contract.UUIDS, ADVERSARIAL_ROWS)

_NAMESPACE = uuid_lib.UUID("6f1d2a0e-59c1-4c57-9a54-2b7f0c1e8a11")


# ---------------------------------------------------------------------------------------------
# which rows are adversarial
# ---------------------------------------------------------------------------------------------

def adversarial_uuid(cond_uuid) -> uuid_lib.UUID:
    """The adversarial copy's uuid: stable across steps, distinct from the conditional one."""
    return uuid_lib.uuid5(_NAMESPACE, str(cond_uuid))


def adversarial_cond(cond: list) -> tuple[list, dict]:
    """The adversarial copy of a processed cond list, and {adversarial uuid: conditional uuid}."""
    copies, partners = [], {}
    for entry in cond:
        own = adversarial_uuid(entry[contract.COND_UUID])
        partners[own] = entry[contract.COND_UUID]
        copies.append({**entry, contract.COND_UUID: own})
    return copies, partners


def marked(transformer_options: dict, partners: dict, slots=None) -> dict:
    """A copy of one model call's ``transformer_options`` with its chunks tagged, the adversarial ones
    relabelled slot 0, and the others given ``slots[i]`` for cond list ``i`` (the step's own numbering, when
    the call put the adversarial list before them); the same dict if it is tagged already."""
    if ADVERSARIAL_ROWS in transformer_options:
        return transformer_options
    out = dict(transformer_options)
    flags = [partners.get(u) for u in transformer_options.get(contract.UUIDS) or []]
    out[ADVERSARIAL_ROWS] = flags
    order = transformer_options.get(contract.COND_OR_UNCOND)
    if order and len(order) == len(flags):
        def slot(i, adversarial):
            if adversarial:
                return COND_SLOT
            return slots[i] if slots is not None and i < len(slots) else i

        out[contract.COND_OR_UNCOND] = [slot(i, f is not None) for i, f in zip(order, flags, strict=True)]
    return out


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


def plain_row_options(transformer_options: dict) -> dict:
    """``transformer_options`` for the non-adversarial rows of a split batch: the per-chunk lists cut to
    those chunks, so a chained patch that splits its batch by them (SAG, IP-Adapter...) sees lists
    that match its rows."""
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


# ---------------------------------------------------------------------------------------------
# one attention call, split between the adversarial rows and the others
# ---------------------------------------------------------------------------------------------

def take(t, index):
    """Rows ``index`` (a LongTensor, or None for all) of a batch-leading tensor."""
    return t if index is None else t.index_select(0, index.to(t.device))


def dispatch_rows(call, mask, batch):
    """``call(index, adversarial)`` on the adversarial rows and on the others, merged in order.
    ``mask`` is :func:`row_mask`'s; ``index`` a LongTensor of batch rows, or None for all of them."""
    if isinstance(mask, str):
        return call(None, mask == "all")
    idx_adv = mask.nonzero().flatten()
    idx_plain = (~mask).nonzero().flatten()
    out_adv = call(idx_adv, True)
    out_plain = call(idx_plain, False)
    out = out_adv.new_empty((batch,) + tuple(out_adv.shape[1:]))
    out.index_copy_(0, idx_adv.to(out.device), out_adv)
    out.index_copy_(0, idx_plain.to(out.device), out_plain.to(out.dtype))
    return out


def token_tensors(args, kwargs) -> tuple:
    """The token sequences handed to a module: batch-leading float tensors of 3+ dims, by identity."""
    seen, out = set(), []
    for value in (*args, *kwargs.values()):
        if isinstance(value, torch.Tensor) and value.is_floating_point() and value.ndim >= 3 and id(value) not in seen:
            seen.add(id(value))
            out.append(value)
    return tuple(out)


def keys_are_own_tokens(n_queries: int, n_keys: int, sequences, batch: int, exclude=()) -> bool:
    """The generic family's rule: whether an attention call with ``n_queries`` queries and ``n_keys`` keys,
    made inside a module that was handed the token tensors ``sequences`` (None: directly in the block),
    attends to its queries' own tokens. Cross-attention is recognised by what it attends to: a key count
    other than the query count, or a second sequence of the keys' length handed to the module.

    ``exclude``: the call's own q, k, v (a module handed them is an attention kernel, not a source)."""
    if n_queries != n_keys:
        return False
    if sequences is None:
        return True
    tokens = [math.prod(t.shape[1:-1]) for t in sequences if t.shape[0] == batch and not any(t is e for e in exclude)]
    if len(tokens) >= 2 and sum(tokens) == n_queries:
        return True  # joint attention over every sequence the module was handed
    # two sequences of the query length: the queries come from one, the keys from another
    return sum(1 for n in tokens if n == n_queries) < 2


# ---------------------------------------------------------------------------------------------
# the shared prefix: one call's rows, narrowed to the non-shared ones and widened back
# ---------------------------------------------------------------------------------------------

def _rows_equal(obj, batch, rows_a, rows_b) -> bool:
    """Rows ``rows_a`` equal rows ``rows_b`` in every batch-leading tensor inside ``obj``."""
    if isinstance(obj, torch.Tensor):
        return obj.ndim == 0 or obj.shape[0] != batch or torch.equal(obj[rows_a], obj[rows_b])
    if isinstance(obj, dict):
        return all(_rows_equal(v, batch, rows_a, rows_b) for k, v in obj.items() if k != contract.TRANSFORMER_OPTIONS)
    if isinstance(obj, (list, tuple)):
        return all(_rows_equal(v, batch, rows_a, rows_b) for v in obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return all(_rows_equal(getattr(obj, f.name), batch, rows_a, rows_b) for f in dataclasses.fields(obj))
    return True


class Fork:
    """The row bookkeeping of one shared call.

    ``keep``: the rows the prefix computes (all but the shared adversarial ones); ``gather``: for every
    row of the full batch, its row in the kept batch (an adversarial row points at its partner's)."""

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

    #: a leading dim of 2 to this many batches is read as batch rows stacked (Qwen-Image-Edit-2511's
    #: [t, t = 0] modulation rows); more is a table of tokens (CogVideoX's rotary table), hundreds of rows
    STACKED_BATCHES = 4

    def narrowable(self, obj) -> bool:
        """Whether every tensor in ``obj`` is batch-leading or batch-independent. A leading dim of a few
        batches (rows stacked per batch row) cannot be narrowed exactly: that module runs unshared."""
        if isinstance(obj, torch.Tensor):
            if obj.ndim == 0 or obj.shape[0] in (1, self.batch) or obj.shape[0] % self.batch:
                return True
            return obj.shape[0] // self.batch > self.STACKED_BATCHES
        if isinstance(obj, dict):
            return all(self.narrowable(v) for k, v in obj.items() if k != contract.TRANSFORMER_OPTIONS)
        if isinstance(obj, (list, tuple)):
            return all(self.narrowable(v) for v in obj)
        if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
            return all(self.narrowable(getattr(obj, f.name)) for f in dataclasses.fields(obj))
        return True

    def narrow(self, obj):
        """``obj`` with the kept rows of every batch-leading tensor in it (inside lists, tuples, named
        tuples and dataclasses, such as FLUX.2's modulations); this call's transformer_options (it
        carries the pack's tags) as a copy with the per-chunk lists cut to the kept rows."""
        if isinstance(obj, torch.Tensor):
            if obj.ndim == 0 or obj.shape[0] != self.batch:
                return obj
            if self.keep_range is not None:
                return obj.narrow(0, *self.keep_range)
            return obj.index_select(0, self.keep.to(obj.device))
        if isinstance(obj, dict) and ADVERSARIAL_ROWS in obj:
            return {**obj, **{key: list(values) for key, values in self.narrowed_lists.items()}}
        return _map(obj, self.narrow)

    def widen(self, obj):
        """``obj`` (a prefix module's output) with the full batch: adversarial rows copied from their partners."""
        if isinstance(obj, torch.Tensor):
            if obj.ndim == 0 or obj.shape[0] != self.narrow_batch:
                return obj
            return obj.index_select(0, self.gather.to(obj.device))
        return _map(obj, self.widen)


def _map(obj, fn):
    """``fn`` applied to the items of a list, tuple, named tuple or dataclass; anything else as it is."""
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):
        return type(obj)(*(fn(v) for v in obj))
    if isinstance(obj, (list, tuple)):
        return type(obj)(fn(v) for v in obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.replace(obj, **{f.name: fn(getattr(obj, f.name)) for f in dataclasses.fields(obj)
                                           if f.init})
    return obj


def plan_fork(batch, transformer_options, inputs) -> Fork | None:
    """Pair each adversarial chunk of this call (tagged by :func:`marked`) with the conditional chunk
    it copies (same cond uuid, slot 0, equal inputs); None if none can be shared."""
    order = list(transformer_options.get(contract.COND_OR_UNCOND) or [])
    uuids = list(transformer_options.get(contract.UUIDS) or [])
    partners = list(transformer_options.get(ADVERSARIAL_ROWS) or [])
    if len(order) < 2 or len(uuids) != len(order) or len(partners) != len(order) or batch % len(order):
        return None
    per = batch // len(order)
    partner = {}
    for o, cond_uuid in enumerate(partners):
        if cond_uuid is None:
            continue
        for p, other in enumerate(partners):
            if other is not None or p in partner.values() or uuids[p] != cond_uuid or order[p] != COND_SLOT:
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
    gather = [position[partner.get(o, o)] * per + r for o in range(len(order)) for r in range(per)]
    per_chunk = zip(PER_CHUNK_KEYS, (order, uuids, partners), strict=True)
    return Fork(batch, keep, gather, {key: [values[o] for o in kept_chunks] for key, values in per_chunk})
