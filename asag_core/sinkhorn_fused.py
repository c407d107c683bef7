r"""The memory-bounded ASAG attention on CPU, one fused flash-attention call per half-step.

PyTorch's CPU flash-attention kernel
(``torch.ops.aten._scaled_dot_product_flash_attention_for_cpu``) computes, for
queries :math:`A`, keys :math:`B`, values :math:`V` and an additive mask
:math:`C` (and its own logit scale :math:`\sigma_k`),

.. math::

    O = \operatorname{softmax}_j\!\left(\sigma_k AB^\top + C\right) V,
    \qquad
    \ell_i = \operatorname{logsumexp}_j \left(\sigma_k AB^\top + C\right)_{ij}

in :math:`O(N)` extra memory, and returns :math:`\ell` besides :math:`O`. With
:math:`A = cQ` (the whole logit multiplier :math:`c = s\lambda\sigma` of
:mod:`asag_core.sinkhorn` folded into the queries) and :math:`\sigma_k = 1`, one Sinkhorn iteration of
:mod:`asag_core.sinkhorn` is two such calls:

.. math::

    f &= -\ell\bigl(A, K;\ \text{bias} + g\bigr)
        &&\text{(row update: keys K, the column potential as a key bias)}\\
    g &= -\ell\bigl(K, A;\ \text{bias}^\top + f^\top\bigr) + \log(N_q/N_k)
        &&\text{(column update: the transposed problem, keys as queries)}

and the output is one more call, :math:`O(A, K, V;\ \text{bias} + g)`:
attention with logits :math:`L` and the key bias :math:`g` is exactly
:math:`\operatorname{softmax}_j(L_{ij} + g_j)\,V = P V`. That is
``2 * iterations + 1`` kernel calls, each about the cost of one SDPA call.

Masks. Without a mask, or with one that has no query axis (key padding,
(B, 1, 1, Nk)), the kernel's mask :math:`C` = bias + potential goes in as a
broadcast view. A mask with a query axis is added ``rows`` rows at a time,
pairs at or below :data:`~asag_core.sinkhorn_common.MASK_THRESHOLD` set to
:math:`-\infty` on that block only, so no (Nq, Nk) tensor of a head is
materialised beyond the caller's own mask. For a line whose pairs are all
masked the kernel returns :math:`\ell = 0` (not :math:`-\infty`), so its
potential is 0; any finite value would do, since every pair of that line is
:math:`-\infty` in both updates and in the output (an infinite :math:`\ell`
would be set to 0 as on the dense path).

The kernel is a private op. If a call of it raises, :class:`KernelFailed` is
raised; :func:`asag_core.sinkhorn.adversarial_attention` then calls
:func:`disable` and runs the portable path (:mod:`asag_core.sinkhorn_chunked`)
from then on.

References: T. Dao et al., "FlashAttention", NeurIPS 2022 (the online
log-sum-exp); the iteration itself as in :mod:`asag_core.sinkhorn`.
"""

from __future__ import annotations

import logging

import torch

from .sinkhorn_common import bias_rows, empty_to_zero, log_ratio, masked_bias

_LOG = logging.getLogger(__name__)

try:
    _FLASH_CPU = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
except (AttributeError, RuntimeError):  # pragma: no cover - older PyTorch
    _FLASH_CPU = None


class KernelFailed(RuntimeError):
    """The fused CPU kernel raised; the caller should fall back to the portable path."""


def available() -> bool:
    """Whether the kernel exists in this PyTorch and has not failed."""
    return _FLASH_CPU is not None


def usable(q, v) -> bool:
    """Whether this path can run: the kernel exists (and has not failed), CPU, float32/64, Dv = D."""
    return (
        _FLASH_CPU is not None
        and q.device.type == "cpu"
        and q.dtype in (torch.float32, torch.float64)
        and v.shape[-1] == q.shape[-1]
    )


def disable(error: BaseException) -> None:
    """Stop using the kernel for the rest of the process (it raised ``error``)."""
    global _FLASH_CPU
    if _FLASH_CPU is not None:
        _LOG.warning("ASAG: the fused CPU attention kernel failed (%s); using the portable path from now on", error)
    _FLASH_CPU = None


def _kernel(a, b, value, mask):
    try:  # the queries carry the whole logit multiplier: the kernel's own scale is 1
        return _FLASH_CPU(a, b, value, attn_mask=mask, scale=1.0)
    except RuntimeError as err:
        raise KernelFailed(str(err)) from err


def _flash_rows(a, b, value, bias, potential, rows, want_lse):
    """Fused attention of queries ``a`` over keys ``b`` with logits
    ``a.b + bias + potential`` (potential: (B, H, 1, Nb), or None for 0).

    Returns ``(output, lse)``: output (B, H, Na, Dv) (None unless ``value`` is
    given) and the row log-sum-exp (B, H, Na, 1) (None unless ``want_lse``).
    """
    bb, hh, na, _ = a.shape
    nb = b.shape[2]
    v = b if value is None else value  # the kernel needs a value; unused when only the lse is wanted
    if bias is None or bias.shape[-2] == 1:  # one call: the kernel's own tensors (no copy into fresh pages)
        mask = potential if bias is None else masked_bias(bias, potential)
        mask = None if mask is None else mask.expand(bb, hh, na, nb)
        o, row_lse = _kernel(a, b, v, mask)
        return (None if value is None else o), (row_lse.unsqueeze(-1) if want_lse else None)
    # a mask with a query axis is built ``rows`` rows at a time
    out = None if value is None else a.new_empty((bb, hh, na, v.shape[-1]))
    lse = a.new_empty((bb, hh, na, 1)) if want_lse else None
    for start in range(0, na, rows):
        stop = min(na, start + rows)
        mask = potential if bias is None else masked_bias(bias_rows(bias, start, stop), potential)
        mask = None if mask is None else mask.expand(bb, hh, stop - start, nb)
        o, row_lse = _kernel(a[:, :, start:stop], b, v, mask)
        if out is not None:
            out[:, :, start:stop] = o
        if lse is not None:
            lse[:, :, start:stop] = row_lse.unsqueeze(-1)
    return out, lse


def _potential(a, k, bias, iterations, rows):
    """Column potentials g, (B, H, 1, Nk), or None for g = 0 (no iteration). ``bias`` as given
    (broadcastable): transposed, it is the bias of the column update."""
    bias_t = None if bias is None else bias.transpose(-1, -2)
    ratio = log_ratio(a.shape[2], k.shape[2])
    g = None
    for _ in range(iterations):
        _, lse = _flash_rows(a, k, None, bias, g, rows, True)
        f = empty_to_zero(-lse)
        _, lse = _flash_rows(k, a, None, bias_t, f.transpose(-1, -2), rows, True)
        g = empty_to_zero(-lse + ratio).transpose(-1, -2)
    return g


def output(a, k, v, bias, g, rows):
    """``softmax_j(a.k + bias + g) V`` by the kernel, (B, H, Na, Dv): the output pass alone,
    for another path's potentials ``g`` (B, H, 1, Nk) or None. Raises :class:`KernelFailed`."""
    return _flash_rows(a, k, v, bias, g, rows, False)[0]


def attention(q, k, v, multiplier, bias, iterations, rows):
    """``P V`` for the plan P of :mod:`asag_core.sinkhorn`, (B, H, Nq, Dv), in O(rows * N) extra memory.

    ``q``, ``k``, ``v`` (B, H, N, D) in the work dtype; ``multiplier`` = sign * lam * logit scale;
    ``bias`` the additive mask (broadcastable, unthresholded) or None. Rows
    without an admissible key are left to the caller to zero. Raises
    :class:`KernelFailed` if the kernel raises.
    """
    a = q * multiplier  # the kernel's own scale is 1
    g = _potential(a, k, bias, iterations, rows)
    out, _ = _flash_rows(a, k, v, bias, g, rows, False)
    return out
