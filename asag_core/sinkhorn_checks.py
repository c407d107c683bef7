"""Validation and head layout of the ASAG attention's inputs (see :mod:`asag_core.sinkhorn`).

Every bad input gets a ``ValueError`` that names the argument and says what was
expected. The layout helpers turn ComfyUI's (B, N, H*D) tensors into
(B, H, N, D) views and resolve grouped-query attention: with ``enable_gqa`` the
key/value head count is read from k's inner size (H_kv = inner / D, D = q's
inner / heads), as ComfyUI's own attention functions read it.
"""

from __future__ import annotations

import math

import torch

COSTS = ("adversarial", "similarity", "uniform")


def check_number(name, value, minimum=None, maximum=None) -> None:
    """The one wording of a bad number: ``name`` must be a finite number within the bounds given."""
    limits = [f"{op} {float(bound)}" for op, bound in ((">=", minimum), ("<=", maximum)) if bound is not None]
    bounds = " " + " and ".join(limits) if limits else ""
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a finite number{bounds}, got {value!r}") from None
    if not math.isfinite(x):
        raise ValueError(f"{name} must be a finite number{bounds}, got {value!r}")
    if (minimum is not None and x < minimum) or (maximum is not None and x > maximum):
        raise ValueError(f"{name} must be{bounds}, got {value!r}")


def check_params(iterations, lam, cost) -> None:
    """The one check of the Sinkhorn parameters, with its one wording: :func:`asag_core.sinkhorn.sinkhorn_plan`,
    :func:`asag_core.sinkhorn.adversarial_attention` and :class:`asag_core.guidance.ASAGSettings` all call it."""
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 0:
        raise ValueError(f"iterations must be an integer >= 0, got {iterations!r}")
    check_number("lam", lam, minimum=0.0)
    if cost not in COSTS:
        raise ValueError(f"cost must be one of {', '.join(COSTS)}; got {cost!r}")


def logit_sign(cost: str) -> float:
    """Sign s with L = s * lam * sigma * QK^T (0 for the uniform cost); sigma = 1/sqrt(D) by default."""
    if cost not in COSTS:
        raise ValueError(f"cost must be one of {', '.join(COSTS)}; got {cost!r}")
    return {"adversarial": -1.0, "similarity": 1.0, "uniform": 0.0}[cost]


def check_scale(scale) -> None:
    bad = isinstance(scale, bool)
    if scale is not None and not bad:
        try:
            bad = not math.isfinite(float(scale))
        except (TypeError, ValueError):
            bad = True
    if bad:
        raise ValueError(f"scale must be None (1/sqrt(head dim)) or a finite number, got {scale!r}")


def check_gqa(enable_gqa) -> None:
    if not isinstance(enable_gqa, bool):
        raise ValueError(f"enable_gqa must be True or False, got {enable_gqa!r}")


def logit_multiplier(cost: str, lam, scale, head_dim: int) -> float:
    r""":math:`c = s\lambda\sigma`: the logits are :math:`c\,QK^\top`.

    :math:`\sigma` is SDPA's ``scale``, :math:`1/\sqrt{D}` if None."""
    sigma = 1.0 / math.sqrt(head_dim) if scale is None else float(scale)
    return logit_sign(cost) * float(lam) * sigma


def check_qkv(q, k, v=None, enable_gqa=False) -> None:
    """(B, H, N, D) q, k (and v): agreeing batch and head dim; heads equal, or grouped with ``enable_gqa``."""
    if q.ndim != 4 or k.ndim != 4:
        raise ValueError(
            f"q and k must be 4-D (batch, heads, tokens, dim); got q {tuple(q.shape)}, k {tuple(k.shape)}"
        )
    grouped = enable_gqa and k.shape[1] >= 1 and q.shape[1] % k.shape[1] == 0
    if q.shape[0] != k.shape[0] or not (q.shape[1] == k.shape[1] or grouped) or q.shape[3] != k.shape[3]:
        if enable_gqa and q.shape[0] == k.shape[0] and q.shape[3] == k.shape[3]:
            raise ValueError(
                f"with enable_gqa, q's head count must be a multiple of k's: q {tuple(q.shape)} vs k {tuple(k.shape)}"
            )
        raise ValueError(
            "q and k must agree in batch, heads and head dim: "
            f"q {tuple(q.shape)} vs k {tuple(k.shape)}"
            + (" (k with fewer heads than q needs enable_gqa=True)" if _groupable(q, k) and not enable_gqa else "")
        )
    if v is not None:
        if v.ndim != 4 or v.shape[:3] != k.shape[:3]:
            raise ValueError(
                f"v must be (batch, heads, keys, dim_v) matching k {tuple(k.shape)}; got v {tuple(v.shape)}"
            )


def _groupable(q, k) -> bool:
    same_rest = q.shape[0] == k.shape[0] and q.shape[3] == k.shape[3]
    return same_rest and 0 < k.shape[1] < q.shape[1] and q.shape[1] % k.shape[1] == 0


def check_attention_args(q, k, v, heads, chunk_size, skip_reshape) -> None:
    if isinstance(heads, bool) or not isinstance(heads, int) or heads < 1:
        raise ValueError(f"heads must be a positive int, got {heads!r}")
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"chunk_size must be None or a positive int, got {chunk_size!r}")
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor) or t.ndim != (4 if skip_reshape else 3):
            want = "(batch, heads, tokens, dim)" if skip_reshape else "(batch, tokens, heads*dim)"
            raise ValueError(f"{name} must be a {want} tensor, got {getattr(t, 'shape', type(t))}")


def _view_heads(x, heads, name):
    b, n, inner = x.shape
    if inner % heads:
        raise ValueError(f"the last dim {inner} of {name} is not divisible by heads={heads}")
    return x.view(b, n, heads, inner // heads).transpose(1, 2)


def to_heads(q, k, v, heads, skip_reshape, enable_gqa):
    """(B, H, N, D) views of q, k, v; in the flat layout k/v get ``heads`` heads, or inner / D with GQA."""
    if skip_reshape:
        return q, k, v
    if q.shape[-1] % heads:
        raise ValueError(f"the last dim {q.shape[-1]} of q/k/v is not divisible by heads={heads}")
    if not enable_gqa:
        return tuple(_view_heads(t, heads, "q/k/v") for t in (q, k, v))
    d = q.shape[-1] // heads
    if k.shape[-1] % d:
        raise ValueError(f"with enable_gqa, k's last dim {k.shape[-1]} is not a multiple of the head dim {d}")
    kv_heads = k.shape[-1] // d
    return _view_heads(q, heads, "q"), _view_heads(k, kv_heads, "k"), _view_heads(v, kv_heads, "v")


def repeat_kv(x: torch.Tensor, heads: int) -> torch.Tensor:
    """k or v (B, H_kv, N, ·) with each head repeated for its H_q / H_kv query heads (SDPA's grouping)."""
    groups = heads // x.shape[1]
    return x if groups == 1 else x.repeat_interleave(groups, dim=1)


def work_dtype(x) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32
