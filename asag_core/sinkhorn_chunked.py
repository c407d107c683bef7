r"""The memory-bounded ASAG attention on any device: blocks of query rows.

The column potentials :math:`g` of :mod:`asag_core.sinkhorn` need, per
iteration, a row update and a column update over the whole logits matrix. Both
are log-sum-exps, so they can be accumulated over blocks
:math:`R_1, R_2, \dots` of ``rows`` query rows without ever holding more than
one block (Peyré & Cuturi 2019, §4.4, in the log domain):

.. math::

    f_i &= -\operatorname{logsumexp}_j (L_{ij} + g_j) && i \in R_b
        \text{ (complete within the block)}\\
    c^{(b)}_j &= \operatorname{logaddexp}\Bigl(c^{(b-1)}_j,\
        \operatorname{logsumexp}_{i \in R_b} (L_{ij} + f_i)\Bigr),
        \quad c^{(0)}_j = -\infty\\
    g_j &= -c^{(\text{last})}_j + \log(N_q/N_k).

One block of logits is one matmul. The output then is
:func:`torch.nn.functional.scaled_dot_product_attention` of each block of
queries with the key bias :math:`g` (plus the block's mask): attention with
logits :math:`L` and bias :math:`g` is :math:`\operatorname{softmax}_j(L_{ij} +
g_j)\,V = PV`. The queries carry the whole logit multiplier :math:`c = s\lambda\sigma`
and SDPA's own scale is 1.

Peak extra memory: about three (rows, Nk) float temporaries per head. Masked
pairs (bias at or below :data:`~asag_core.sinkhorn_common.MASK_THRESHOLD`) are
set to :math:`-\infty` block by block. A column without any admissible pair
ends with :math:`c_j = -\infty`, so :math:`g_j = +\infty`, set to 0.

References: G. Peyré, M. Cuturi, "Computational Optimal Transport", 2019, §4.4.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .sinkhorn_common import bias_rows, empty_to_zero, log_ratio, logits_of, masked_bias


def _potential(q, k, multiplier, bias, iterations, rows):
    """Column potentials g, (B, H, 1, Nk); ``bias`` broadcastable (or None)."""
    b, h, nq, _ = q.shape
    nk = k.shape[2]
    ratio = log_ratio(nq, nk)
    g = q.new_zeros((b, h, 1, nk))
    for _ in range(iterations):
        col_lse = q.new_full((b, h, 1, nk), float("-inf"))
        for start in range(0, nq, rows):
            stop = min(nq, start + rows)
            rows_bias = None if bias is None else bias_rows(bias, start, stop)
            block = logits_of(q[:, :, start:stop], k, multiplier, rows_bias)
            block.add_(empty_to_zero(-torch.logsumexp(block + g, dim=-1, keepdim=True)))
            col_lse = torch.logaddexp(col_lse, torch.logsumexp(block, dim=-2, keepdim=True))
            del block
        g = empty_to_zero(-col_lse + ratio)
    return g


def attention(q, k, v, multiplier, bias, iterations, rows):
    """``P V`` for the plan P of :mod:`asag_core.sinkhorn`, (B, H, Nq, Dv), in O(rows * Nk) extra memory.

    ``q``, ``k``, ``v`` (B, H, N, D) in the work dtype; ``multiplier`` = sign * lam * logit scale;
    ``bias`` the additive mask (broadcastable, unthresholded) or None. Rows
    without an admissible key are left to the caller to zero.
    """
    b, h, nq, _ = q.shape
    nk = k.shape[2]
    g = _potential(q, k, multiplier, bias, iterations, rows)
    a = q * multiplier
    out = q.new_empty((b, h, nq, v.shape[-1]))
    for start in range(0, nq, rows):
        stop = min(nq, start + rows)
        block = g if bias is None else masked_bias(bias_rows(bias, start, stop), g)
        out[:, :, start:stop] = F.scaled_dot_product_attention(
            a[:, :, start:stop], k, v, attn_mask=block.expand(b, h, stop - start, nk), scale=1.0
        )
    return out
