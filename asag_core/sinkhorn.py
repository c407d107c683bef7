r"""Adversarial Sinkhorn attention: the entropic optimal-transport plan used by ASAG.

Definition
----------
For one head with queries :math:`Q \in \mathbb{R}^{N_q \times D}` and keys
:math:`K \in \mathbb{R}^{N_k \times D}` the *logits* are

.. math::

    L = \begin{cases}
        -\lambda\, QK^\top/\sqrt{D} & \text{cost "adversarial"}\\
        +\lambda\, QK^\top/\sqrt{D} & \text{cost "similarity"}\\
        0 & \text{cost "uniform"}
    \end{cases}

i.e. :math:`L = -\lambda M` for the transport cost :math:`M`. "adversarial" uses
the similarity itself as the cost (ASAG, arXiv 2511.07499): matching query/key
pairs become *expensive*. "similarity" is the paper's control (cost
:math:`1 - QK^\top`, equal up to a constant that Sinkhorn absorbs), whose
zero-iteration plan is ordinary softmax attention. "uniform" is the
:math:`\lambda \to 0` limit.

The plan is the entropic OT plan with uniform marginals, scaled so that every
row sums to 1 (row marginal 1, column marginal :math:`N_q/N_k`). With potentials
:math:`g = 0` at the start, each Sinkhorn iteration is a row then a column
normalisation in the log domain (Cuturi 2013; Peyré & Cuturi 2019, §4.4):

.. math::

    f_i &= -\operatorname{logsumexp}_j (L_{ij} + g_j) \\
    g_j &= -\operatorname{logsumexp}_i (L_{ij} + f_i) + \log(N_q / N_k)

and a final row normalisation gives the plan

.. math::

    P_{ij} = \operatorname{softmax}_j (L_{ij} + g_j).

``iterations = 0`` is therefore a plain softmax of :math:`L`. As the iteration
count grows, :math:`P / N_q` converges to ``ot.sinkhorn(1/N_q, 1/N_k, M, reg=1/lam)``.

Masks
-----
A boolean mask (``True`` = attend) or an additive float mask is added to
:math:`L` (``False`` becomes :math:`-\infty`). Masked pairs get zero mass and
take no part in either marginal. A query row whose keys are *all* masked has no
admissible plan; its plan row is defined as all zeros, so its attention output
is zero (SDPA would return NaN there). A key column masked for every query is
likewise ignored by the column update.

Numerics
--------
Everything runs in float32 (or float64 if given) whatever the input dtype, in
the log domain, so logits of magnitude :math:`10^4` stay finite. The output is
cast back to the input dtype.

Memory
------
The dense path holds :math:`B \cdot H \cdot N_q \cdot N_k` logits (about four
such temporaries at its peak). When that peak would exceed
``memory_budget_bytes`` (or when ``chunk_size`` is given) the memory-bounded
path runs instead; the output is attention with the column potentials
:math:`g` as an additive key bias: ``softmax_j(L_ij + g_j) @ V`` is exactly
attention with logits ``L`` and bias ``g``. No full :math:`N_q \times N_k`
matrix of a head is ever materialised on that path:

- on CPU (float32/float64, value dim = head dim) every half-step is one call of
  PyTorch's fused flash-attention kernel, which returns the row log-sum-exp
  besides the output: the row update is the lse of ``L + g``, the column update
  the lse of the transposed problem (keys as queries, ``L^T + f``). That is
  ``2 * iterations + 1`` kernel calls, each costing about one SDPA call, in
  O(N) extra memory (a mask is added to the bias ``chunk_size`` rows at a time);
- elsewhere the potentials come from matmul/log-sum-exp passes over blocks of
  query rows, and the output from
  :func:`torch.nn.functional.scaled_dot_product_attention` block by block.

References
----------
- ASAG: "Adversarial Sinkhorn Attention Guidance", arXiv 2511.07499 (AAAI 2026).
- M. Cuturi, "Sinkhorn Distances: Lightspeed Computation of Optimal Transport", NeurIPS 2013.
- G. Peyré, M. Cuturi, "Computational Optimal Transport", 2019.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F

COSTS = ("adversarial", "similarity", "uniform")

#: Dense logits above this many bytes switch to the chunked path.
DEFAULT_MEMORY_BUDGET_BYTES = 256 * 1024 * 1024
_DENSE_PEAK_TEMPORARIES = 4

__all__ = [
    "COSTS",
    "DEFAULT_MEMORY_BUDGET_BYTES",
    "sinkhorn_plan",
    "adversarial_attention",
    "logit_sign",
]


# ---------------------------------------------------------------------------
# validation
# ---------------------------------------------------------------------------

def _check_params(iterations, lam, cost) -> None:
    if isinstance(iterations, bool) or not isinstance(iterations, int):
        raise ValueError(f"iterations must be an int >= 0, got {iterations!r}")
    if iterations < 0:
        raise ValueError(f"iterations must be >= 0, got {iterations}")
    try:
        lam_f = float(lam)
    except (TypeError, ValueError):
        raise ValueError(f"lam must be a finite number >= 0, got {lam!r}") from None
    if not math.isfinite(lam_f) or lam_f < 0:
        raise ValueError(f"lam must be a finite number >= 0, got {lam!r}")
    if cost not in COSTS:
        raise ValueError(f"cost must be one of {', '.join(COSTS)}; got {cost!r}")


def logit_sign(cost: str) -> float:
    """Sign s with L = s * lam * QK^T / sqrt(D) (0 for the uniform cost)."""
    if cost not in COSTS:
        raise ValueError(f"cost must be one of {', '.join(COSTS)}; got {cost!r}")
    return {"adversarial": -1.0, "similarity": 1.0, "uniform": 0.0}[cost]


def _check_qkv(q, k, v=None) -> None:
    if q.ndim != 4 or k.ndim != 4:
        raise ValueError(
            f"q and k must be 4-D (batch, heads, tokens, dim); got q {tuple(q.shape)}, k {tuple(k.shape)}"
        )
    if q.shape[0] != k.shape[0] or q.shape[1] != k.shape[1] or q.shape[3] != k.shape[3]:
        raise ValueError(
            "q and k must agree in batch, heads and head dim: "
            f"q {tuple(q.shape)} vs k {tuple(k.shape)}"
        )
    if v is not None:
        if v.ndim != 4 or v.shape[:3] != k.shape[:3]:
            raise ValueError(
                f"v must be (batch, heads, keys, dim_v) matching k {tuple(k.shape)}; got v {tuple(v.shape)}"
            )


def _mask_bias(mask, shape, device) -> Optional[torch.Tensor]:
    """Mask as an additive float32 bias broadcastable to ``shape`` = (B, H, Nq, Nk)."""
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
    mask = mask.to(device)
    if mask.dtype == torch.bool:
        bias = torch.zeros(mask.shape, dtype=torch.float32, device=device)
        return bias.masked_fill_(~mask, float("-inf"))
    return mask.to(torch.float32)


# ---------------------------------------------------------------------------
# log-domain Sinkhorn
# ---------------------------------------------------------------------------

def _finite_or_zero(x: torch.Tensor) -> torch.Tensor:
    # A potential is +inf only for a row (or column) with no admissible entry;
    # zero keeps it out of the arithmetic without changing any admissible mass.
    return torch.where(torch.isfinite(x), x, torch.zeros_like(x))


def _logits(q, k, scale_sign, lam, bias):
    scale = scale_sign * float(lam) / math.sqrt(q.shape[-1])
    if scale == 0.0:
        logits = q.new_zeros(q.shape[:-1] + (k.shape[-2],))
    else:
        logits = torch.matmul(q * scale, k.transpose(-1, -2))
    if bias is not None:
        logits = logits + bias
    return logits


def _dense_potential(logits: torch.Tensor, iterations: int) -> torch.Tensor:
    nq, nk = logits.shape[-2], logits.shape[-1]
    log_ratio = math.log(nq / nk)
    g = logits.new_zeros(logits.shape[:-2] + (1, nk))
    for _ in range(iterations):
        f = _finite_or_zero(-torch.logsumexp(logits + g, dim=-1, keepdim=True))
        g = _finite_or_zero(-torch.logsumexp(logits + f, dim=-2, keepdim=True) + log_ratio)
    return g


def _row_softmax_zero_safe(x: torch.Tensor) -> torch.Tensor:
    p = torch.softmax(x, dim=-1)
    # fully masked rows: softmax of all -inf is NaN; their plan row is defined as zero
    return torch.nan_to_num(p, nan=0.0)


def sinkhorn_plan(q, k, *, iterations=2, lam=1.0, cost="adversarial", mask=None) -> torch.Tensor:
    r"""The row-stochastic ASAG transport plan.

    Args:
        q: queries, (B, H, Nq, D).
        k: keys, (B, H, Nk, D).
        iterations: Sinkhorn iterations (row + column normalisation each), >= 0.
            0 gives ``softmax(L)``; the paper finds 2 enough.
        lam: inverse entropic regularisation :math:`\lambda = 1/\varepsilon` (finite, >= 0).
            0 gives the uniform plan.
        cost: ``"adversarial"`` (ASAG), ``"similarity"`` (control) or ``"uniform"``.
        mask: optional bool (True = attend) or additive float mask broadcastable
            to (B, H, Nq, Nk); as in ComfyUI, a 2-D mask is (Nq, Nk) and a 3-D
            mask is (B, Nq, Nk) (shared by all heads).

    Returns:
        float32 plan (B, H, Nq, Nk); each row sums to 1 (fully masked rows are 0).
        See the module docstring for the exact definition.
    """
    _check_params(iterations, lam, cost)
    _check_qkv(q, k)
    work = torch.float64 if q.dtype == torch.float64 else torch.float32
    q32, k32 = q.to(work), k.to(work)
    shape = (q.shape[0], q.shape[1], q.shape[2], k.shape[2])
    bias = _mask_bias(mask, shape, q.device)
    logits = _logits(q32, k32, logit_sign(cost), lam, bias)
    logits = logits.expand(shape) if logits.shape != shape else logits
    g = _dense_potential(logits, iterations)
    return _row_softmax_zero_safe(logits + g)


# ---------------------------------------------------------------------------
# attention
# ---------------------------------------------------------------------------

def _to_heads(x, heads, skip_reshape):
    if skip_reshape:
        return x
    b, n, inner = x.shape
    if inner % heads:
        raise ValueError(f"the last dim {inner} of q/k/v is not divisible by heads={heads}")
    return x.view(b, n, heads, inner // heads).transpose(1, 2)


def _auto_chunk_rows(bh: int, nk: int, budget: int) -> int:
    # each chunk holds about three (rows x Nk) float32 temporaries per head
    per_row = max(1, bh * nk * 4 * 3)
    return max(1, budget // per_row)


def _token_expanded(bias, nq, nk):
    """``bias`` viewed with full token axes (B|1, H|1, Nq, Nk), so row and column slices work."""
    return None if bias is None else bias.expand(bias.shape[0], bias.shape[1], nq, nk)


def _chunked_potential(q, k, scale_sign, lam, bias, iterations, chunk_rows):
    """Column potentials g, (B, H, 1, Nk), from log-sum-exp passes over query blocks.

    Portable path (any device): one matmul per block and iteration, rows then columns.
    """
    b, h, nq, _ = q.shape
    nk = k.shape[2]
    log_ratio = math.log(nq / nk)
    g = q.new_zeros((b, h, 1, nk))
    full_bias = _token_expanded(bias, nq, nk)
    for _ in range(iterations):
        col_lse = q.new_full((b, h, 1, nk), float("-inf"))
        for start in range(0, nq, chunk_rows):
            stop = min(nq, start + chunk_rows)
            block_bias = None if full_bias is None else full_bias[:, :, start:stop]
            logits = _logits(q[:, :, start:stop], k, scale_sign, lam, block_bias)
            f = _finite_or_zero(-torch.logsumexp(logits + g, dim=-1, keepdim=True))
            logits.add_(f)
            col_lse = torch.logaddexp(col_lse, torch.logsumexp(logits, dim=-2, keepdim=True))
            del logits
        g = _finite_or_zero(-col_lse + log_ratio)
    return g


# PyTorch's fused CPU flash-attention kernel. Besides the output it returns the
# row log-sum-exp of the (biased) logits, so one call is one Sinkhorn half-step
# in O(N) extra memory, at the speed of one SDPA call.
try:
    _FLASH_CPU = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
except (AttributeError, RuntimeError):  # pragma: no cover - older PyTorch
    _FLASH_CPU = None


def _flash_cpu_usable(q, v) -> bool:
    return (
        _FLASH_CPU is not None
        and q.device.type == "cpu"
        and q.dtype in (torch.float32, torch.float64)
        and v.shape[-1] == q.shape[-1]
    )


def _flash_rows(a, b, value, bias, potential, rows, want_lse):
    """Fused attention of queries ``a`` over keys ``b`` with logits
    ``a.b/sqrt(D) + bias + potential`` (potential: (B, H, 1, Nb), or None for 0).

    Returns ``(output, lse)``: output (B, H, Na, Dv) (None unless ``value`` is
    given) and the row log-sum-exp (B, H, Na, 1) (None unless ``want_lse``).
    Without a bias the potential goes in as a broadcast view; with one, the
    biased mask is built for ``rows`` rows of ``a`` at a time.
    """
    bb, hh, na, _ = a.shape
    nb = b.shape[2]
    v = b if value is None else value  # the kernel needs a value; unused when only the lse is wanted
    out = None if value is None else a.new_empty((bb, hh, na, v.shape[-1]))
    lse = a.new_empty((bb, hh, na, 1)) if want_lse else None
    step = na if bias is None else rows
    for start in range(0, na, step):
        stop = min(na, start + step)
        if bias is None:
            mask = None if potential is None else potential.expand(bb, hh, stop - start, nb)
        else:
            block = bias[:, :, start:stop]
            mask = (block if potential is None else block + potential).expand(bb, hh, stop - start, nb)
        o, row_lse = _FLASH_CPU(a[:, :, start:stop], b, v, attn_mask=mask)
        if out is not None:
            out[:, :, start:stop] = o
        if lse is not None:
            lse[:, :, start:stop] = row_lse.unsqueeze(-1)
    return out, lse


def _flash_potential(qs, k, bias, iterations, rows, row_ok, col_ok):
    """Column potentials g, (B, H, 1, Nk), with two fused kernel calls per iteration.

    ``qs`` carries the sign and lam of the logits; ``bias`` has full token axes.
    The row update is a row lse of L + g; the column update is the row lse of the
    transposed problem (keys as queries, L^T + f). Rows/columns without any
    admissible entry get potential 0, as on the dense path.
    """
    b, h, nq, _ = qs.shape
    nk = k.shape[2]
    log_ratio = math.log(nq / nk)
    bias_t = None if bias is None else bias.transpose(-1, -2)
    g = None  # identically zero
    for _ in range(iterations):
        _, lse = _flash_rows(qs, k, None, bias, g, rows, True)
        f = _finite_or_zero(-lse)
        if row_ok is not None:
            f = torch.where(row_ok, f, torch.zeros_like(f))
        _, lse = _flash_rows(k, qs, None, bias_t, f.transpose(-1, -2), rows, True)
        g = _finite_or_zero(-lse + log_ratio).transpose(-1, -2)
        if col_ok is not None:
            g = torch.where(col_ok, g, torch.zeros_like(g))
    return g


def _admissible(bias, dim) -> Optional[torch.Tensor]:
    """bool, reduced over ``dim`` (keepdim): lines with at least one admissible entry; None if all have one."""
    if bias is None:
        return None
    admissible = (bias > float("-inf")).any(dim=dim, keepdim=True)
    return None if bool(admissible.all()) else admissible


def _row_has_key(bias, shape) -> Optional[torch.Tensor]:
    """(B, H|1, Nq, 1) bool: rows with at least one admissible key; None if all rows have one."""
    return _admissible(bias, -1)


def adversarial_attention(
    q,
    k,
    v,
    heads,
    *,
    iterations=2,
    lam=1.0,
    cost="adversarial",
    mask=None,
    skip_reshape=False,
    skip_output_reshape=False,
    chunk_size=None,
    memory_budget_bytes=DEFAULT_MEMORY_BUDGET_BYTES,
) -> torch.Tensor:
    """Attention with the ASAG plan: ``sinkhorn_plan(q, k) @ v``.

    A drop-in for ComfyUI's ``optimized_attention``: q, k, v are (B, N, H*D)
    unless ``skip_reshape`` (then (B, H, N, D)); the output is (B, Nq, H*D)
    unless ``skip_output_reshape`` (then (B, H, Nq, D)). Computation is float32
    and the result has the dtype of ``q``.

    ``chunk_size`` (query rows per block) forces the memory-bounded path; by
    default it is taken when the dense logits would exceed
    ``memory_budget_bytes``. Both paths agree to ~1e-6 in float32.
    Fully masked query rows give zero output.
    """
    _check_params(iterations, lam, cost)
    if isinstance(heads, bool) or not isinstance(heads, int) or heads < 1:
        raise ValueError(f"heads must be a positive int, got {heads!r}")
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"chunk_size must be None or a positive int, got {chunk_size!r}")
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor) or t.ndim != (4 if skip_reshape else 3):
            want = "(batch, heads, tokens, dim)" if skip_reshape else "(batch, tokens, heads*dim)"
            raise ValueError(f"{name} must be a {want} tensor, got {getattr(t, 'shape', type(t))}")

    out_dtype = q.dtype
    work = torch.float64 if q.dtype == torch.float64 else torch.float32
    qh, kh, vh = (_to_heads(t, heads, skip_reshape).to(work) for t in (q, k, v))
    _check_qkv(qh, kh, vh)
    b, h, nq, _ = qh.shape
    nk = kh.shape[2]
    shape = (b, h, nq, nk)
    bias = _mask_bias(mask, shape, q.device)
    sign = logit_sign(cost)

    if (sign == 0.0 or float(lam) == 0.0) and bias is None:
        # uniform plan: every query takes the mean of V over keys
        out = vh.mean(dim=2, keepdim=True).expand(b, h, nq, vh.shape[-1])
    else:
        # the dense path's peak holds about four logits-sized temporaries (logits, logits + g,
        # the lse workspace, the plan), so that is what the budget is compared with
        dense_peak_bytes = _DENSE_PEAK_TEMPORARIES * b * h * nq * nk * 4
        if chunk_size is None and dense_peak_bytes <= memory_budget_bytes:
            logits = _logits(qh, kh, sign, lam, bias)
            logits = logits.expand(shape) if logits.shape != shape else logits
            g = _dense_potential(logits, iterations)
            out = torch.matmul(_row_softmax_zero_safe(logits + g), vh)
        else:
            # SDPA applies its own 1/sqrt(D) scale to q.k; fold the sign and lam into q
            q_scaled = qh * (sign * float(lam))
            # on the mask as given (before expanding its token axes): (.., Nq|1, 1) and (.., 1, Nk|1)
            has_key, col_has_query = _row_has_key(bias, shape), _admissible(bias, -2)
            if bias is not None:
                bias = _token_expanded(bias.to(work), nq, nk)
            if _flash_cpu_usable(qh, vh):
                rows = chunk_size or _auto_chunk_rows(b * h, max(nq, nk), memory_budget_bytes)
                g = _flash_potential(q_scaled, kh, bias, iterations, rows, has_key, col_has_query)
                out, _ = _flash_rows(q_scaled, kh, vh, bias, g, rows, False)
            else:
                rows = chunk_size or _auto_chunk_rows(b * h, nk, memory_budget_bytes)
                g = _chunked_potential(qh, kh, sign, lam, bias, iterations, rows)
                out = qh.new_empty((b, h, nq, vh.shape[-1]))
                for start in range(0, nq, rows):
                    stop = min(nq, start + rows)
                    # the biased mask of one block of rows at a time: never a full (Nq, Nk) tensor
                    block = g if bias is None else bias[:, :, start:stop] + g
                    out[:, :, start:stop] = F.scaled_dot_product_attention(
                        q_scaled[:, :, start:stop], kh, vh, attn_mask=block.expand(b, h, stop - start, nk)
                    )
            if has_key is not None:
                out = torch.where(has_key, out, torch.zeros_like(out))

    out = out.to(out_dtype)
    if not skip_output_reshape:
        out = out.transpose(1, 2).reshape(b, nq, -1)
    return out
