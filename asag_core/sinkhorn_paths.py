r"""Which implementation an ASAG attention call takes: the one rule, used by the code and the benchmarks.

Paths (see :mod:`asag_core.sinkhorn` for what each computes; they agree):

``"empty"``
    :math:`N_q = 0` or :math:`N_k = 0`: the result is SDPA's, an empty output or zeros.
``"dense"``
    the whole (B, H, Nq, Nk) logits; taken only for tiny calls (at most
    :data:`DENSE_MAX_ELEMENTS` logits), where its few large ops beat the per-block
    overhead of the others, and only when its peak fits the memory budget.
``"kernel"`` (:mod:`asag_core.sinkhorn_kernel`)
    CUDA and the meta device: each half-step one fused attention kernel that
    returns its log-sum-exp, inputs in their own dtype.
``"blocked"`` (:mod:`asag_core.sinkhorn_blocked`)
    CPU: small blocks, one row softmax per block and pass, logits kept between
    passes where they fit a small cache; the fastest CPU path measured
    (``benchmarks/attention.py``).
``"fused"`` (:mod:`asag_core.sinkhorn_fused`)
    CPU, when the blocked path is unavailable: one call of PyTorch's fused CPU
    flash kernel per half-step.
``"portable"`` (:mod:`asag_core.sinkhorn_chunked`)
    any device: matmul / logsumexp blocks and SDPA; the fallback and test reference.

``chunk_size`` (query rows per block) forces a memory-bounded path (never dense).
"""

from __future__ import annotations

import torch

from . import sinkhorn_blocked, sinkhorn_fused, sinkhorn_kernel

PATHS = ("empty", "dense", "kernel", "blocked", "fused", "portable")

#: Dense logits above this many bytes switch to a memory-bounded path.
DEFAULT_MEMORY_BUDGET_BYTES = 256 * 1024 * 1024
#: The dense path's peak holds about four logits-sized temporaries (logits, logits + g,
#: the lse workspace, the plan), so that is what the budget is compared with.
DENSE_PEAK_TEMPORARIES = 4
#: Calls with at most this many logits (B * H * Nq * Nk) take the dense path when it fits: measured on
#: CPU (1 thread), the blocked path is within 5 % of dense up to about 2^15 logits and faster above.
DENSE_MAX_ELEMENTS = 1 << 15


def choose(device, dtype, b, h, nq, nk, d, dv, chunk_size=None, budget=DEFAULT_MEMORY_BUDGET_BYTES) -> str:
    """The path of a call with these shapes: (B, H, Nq, D) queries, Nk keys of value dim Dv, on
    ``device``, inputs of ``dtype``. The rule, in order: empty; dense if tiny and it fits; the kernel
    path on CUDA/meta; blocked, fused, portable on CPU as available; elsewhere dense where it fits
    the budget, else portable."""
    if nq == 0 or nk == 0:
        return "empty"
    elements = b * h * nq * nk
    work_bytes = 8 if dtype == torch.float64 else 4
    dense_fits = chunk_size is None and DENSE_PEAK_TEMPORARIES * elements * work_bytes <= budget
    if dense_fits and elements <= DENSE_MAX_ELEMENTS:
        return "dense"
    if sinkhorn_kernel.usable(device, dtype, d, dv):
        return "kernel"
    if device.type == "cpu":
        if sinkhorn_blocked.usable(device):
            return "blocked"
        if sinkhorn_fused.available() and d == dv:
            return "fused"
        return "portable"
    return "dense" if dense_fits else "portable"  # other devices (MPS, XPU, ...): today's rule, unmeasured
