r"""Log-domain pieces shared by the ASAG attention's backends and its entry points.

The definitions (logits, potentials, masks, NaN) are in the docstring of
:mod:`asag_core.sinkhorn`; this module holds what the dense reference
(:mod:`asag_core.sinkhorn_solver`), the blocked backend
(:mod:`asag_core.sinkhorn_blocked`), the kernel backend
(:mod:`asag_core.sinkhorn_kernel`) and the entry points compute the same way:

- the additive bias of a mask, and where a pair counts as masked: its bias is at
  or below :data:`MASK_THRESHOLD` (set to :math:`-\infty` before any
  exponential is taken, one block of rows at a time on the bounded backends);
- which lines (rows, columns) have an admissible pair at all;
- the logits :math:`L = c\, QK^\top + \text{bias}` with :math:`c = s\lambda\sigma`
  (:math:`\sigma` the logit scale, :math:`1/\sqrt{D}` by default);
- the output rows of queries without an admissible key, set to 0.

The potentials of empty lines are set in one place, :func:`asag_core.sinkhorn_solver.line_potential`.
"""

from __future__ import annotations

import math
from typing import Optional

import torch

#: An additive mask value at or below this marks a masked pair (zero plan mass),
#: exactly like ``-inf`` or ``False``. See "Masks" in :mod:`asag_core.sinkhorn`.
MASK_THRESHOLD = -1000.0
# mask elements tested at a time by admissible()
_ADMISSIBLE_BLOCK = 1 << 24


def mask_4d(mask, shape, device) -> Optional[torch.Tensor]:
    """``mask`` checked and viewed as 4-D, broadcastable to ``shape`` = (B, H, Nq, Nk), on ``device``;
    its dtype is kept (a bool mask stays bool: True = attend)."""
    if mask is None:
        return None
    if not isinstance(mask, torch.Tensor):
        raise ValueError(f"mask must be a torch.Tensor or None, got {type(mask).__name__}")
    # the conventions of ComfyUI's attention functions: (Nq, Nk), (B, Nq, Nk), (B, H, Nq, Nk);
    # like attention_pytorch, a 3-D mask gets its heads axis at dim 1, not dim 0
    if mask.ndim == 3:
        mask = mask.unsqueeze(1)
    while mask.ndim < 4:
        mask = mask.unsqueeze(0)
    if mask.ndim > 4:
        raise ValueError(f"mask must have at most 4 dims, got shape {tuple(mask.shape)}")
    try:
        torch.broadcast_shapes(mask.shape, shape)
    except RuntimeError:
        raise ValueError(
            f"mask of shape {tuple(mask.shape)} does not broadcast to the attention shape {tuple(shape)}"
        ) from None
    return mask.to(device)


def mask_bias(mask, shape, device, dtype) -> Optional[torch.Tensor]:
    """``mask`` as an additive bias of ``dtype`` broadcastable to ``shape`` = (B, H, Nq, Nk).

    Boolean masks become 0 / -inf. Float masks are converted, not thresholded:
    :func:`masked_bias` does that on the block about to be used, so a bounded path
    never holds a thresholded copy of a full (Nq, Nk) mask.
    """
    mask = mask_4d(mask, shape, device)
    if mask is None:
        return None
    return additive(mask, dtype)


def additive(mask: torch.Tensor, dtype) -> torch.Tensor:
    """A bool mask (True = attend) as 0 / -inf of ``dtype``; a float mask converted to ``dtype``."""
    if mask.dtype == torch.bool:
        bias = torch.zeros(mask.shape, dtype=dtype, device=mask.device)
        return bias.masked_fill_(~mask, float("-inf"))
    return mask.to(dtype)


def masked_bias(bias: torch.Tensor, potential: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``bias + potential`` with every pair whose bias is at or below :data:`MASK_THRESHOLD` at -inf.

    A new tensor of the broadcast shape; ``bias`` is left alone. NaN in ``bias``
    is not a masked pair (NaN <= t is false), so it stays NaN.
    """
    # thresholded before the potential broadcasts it over heads: the extra work is the mask's size
    bias = bias.masked_fill(bias <= MASK_THRESHOLD, float("-inf"))
    return bias if potential is None else bias + potential


def admissible(bias: Optional[torch.Tensor], dim: int) -> Optional[torch.Tensor]:
    """bool, reduced over ``dim`` (-1: keys, -2: queries; keepdim): lines with at least one unmasked pair;
    None if all have one. ``bias`` additive, or a bool mask (True = attend).

    Taken over blocks of query rows, so no bool tensor of the mask's full size is made.
    """
    if bias is None:
        return None
    nq = bias.shape[-2]
    step = max(1, _ADMISSIBLE_BLOCK // max(1, bias[..., :1, :].numel()))
    parts = []
    for start in range(0, nq, step):
        block = bias[..., start : start + step, :]
        ok = block if block.dtype == torch.bool else ~(block <= MASK_THRESHOLD)
        parts.append(ok.any(dim=dim, keepdim=True))
    if dim in (-2, bias.ndim - 2):
        has_pair = parts[0]
        for part in parts[1:]:
            has_pair = has_pair | part
    else:
        has_pair = torch.cat(parts, dim=-2)
    if has_pair.device.type == "meta":  # no values to look at: keep the test (a GPU would have run it)
        return has_pair
    return None if bool(has_pair.all()) else has_pair


def logits_of(q, k, multiplier: float, bias=None) -> torch.Tensor:
    r""":math:`c\, QK^\top` plus the masked bias.

    ``multiplier`` is :math:`c = s\lambda\sigma` (0 for the uniform plan: the product is
    still taken, so NaN in q or k reaches the logits as it would in attention).
    """
    out = torch.matmul(q * multiplier, k.transpose(-1, -2))
    if bias is not None:
        out.add_(masked_bias(bias))  # q and k have full token axes, so out has the broadcast shape
    return out


def zero_masked_rows(x: torch.Tensor, row_ok: Optional[torch.Tensor]) -> torch.Tensor:
    """``x`` (B, H, Nq, ·) with the rows that have no admissible key set to 0 (their defined output)."""
    return x if row_ok is None else torch.where(row_ok, x, torch.zeros((), dtype=x.dtype, device=x.device))


def bias_rows(bias: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    """Rows ``start:stop`` of a broadcastable bias: all of it when its query axis is broadcast
    (a key-padding mask stays one row, however many rows it is used for)."""
    return bias if bias.shape[-2] == 1 else bias[..., start:stop, :]


def log_ratio(nq: int, nk: int) -> float:
    r""":math:`\log(N_q/N_k)`: the column marginal of the row-stochastic plan, in the log domain."""
    return math.log(nq / nk)
