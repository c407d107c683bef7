r"""Adversarial Sinkhorn attention: the entropic optimal-transport plan used by ASAG.

Definition
----------
For one head with queries :math:`Q \in \mathbb{R}^{N_q \times D}` and keys
:math:`K \in \mathbb{R}^{N_k \times D}` the *logits* are

.. math::

    L = \begin{cases}
        -\lambda\sigma\, QK^\top & \text{cost "adversarial"}\\
        +\lambda\sigma\, QK^\top & \text{cost "similarity"}\\
        0 & \text{cost "uniform"}
    \end{cases}

with the logit scale :math:`\sigma = 1/\sqrt{D}` (SDPA's default; the ``scale``
argument replaces it, with SDPA's meaning), so :math:`L = s\lambda\sigma\,QK^\top`
for the sign :math:`s` of the cost (:func:`logit_sign`); the paths below call
:math:`c = s\lambda\sigma` the logit multiplier.
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
A boolean mask (``True`` = attend) or an additive float mask :math:`C` is added
to :math:`L`. A pair :math:`(i, j)` is *masked* when its boolean mask is
``False`` or

.. math::

    C_{ij} \le t, \qquad t = \texttt{MASK\_THRESHOLD} = -1000,

and a masked pair enters every path with :math:`C_{ij} = -\infty`. The
threshold is needed because ComfyUI builds key-padding masks as *finite* large
negatives, :math:`(m - 1)\cdot\mathrm{finfo(dtype).max}` (Lumina 2,
HunyuanVideo, LTXV, Cosmos; other code uses :math:`-10^4`). Softmax attention
cannot tell those from :math:`-\infty`, but Sinkhorn's column update cancels
any finite offset of a column: if :math:`C_{ij} = c` for every :math:`i`, then

.. math::

    g_j = -\operatorname{logsumexp}_i (L_{ij} + c + f_i) + \log(N_q/N_k)
        = g_j\big|_{c=0} - c,

so :math:`L_{ij} + c + g_j` does not depend on :math:`c` and the padded key
gets its full share of mass again after one iteration. Only :math:`-\infty`
(outside the support of the plan) is left alone. :math:`t = -1000` lies below
:math:`\log` of the smallest float64 (:math:`\approx -745`), so a bias at or
below it carries no weight under any softmax anyway; :math:`-\mathrm{finfo}`
of float16 (:math:`-65504`), bfloat16 and float32 and :math:`-10^4`
(:math:`-9984` in bfloat16) are all below it, real biases (ALiBi, relative
position: a few hundred) above.

Masked pairs get zero mass and take no part in either marginal. A query row
whose keys are *all* masked has no admissible plan; its plan row is defined as
all zeros, so its attention output is zero (SDPA would return NaN there). A key
column masked for every query is likewise ignored by the column update.

NaN
---
NaN in ``q``, ``k`` or ``v`` reaches the output on every path, as in
attention (SDPA), also through masked pairs (NaN :math:`+ (-\infty)` is NaN).
With ``iterations = 0`` the pattern is SDPA's: NaN in :math:`q_i` makes row
:math:`i` NaN, NaN in any :math:`k_j` the whole head, NaN in :math:`v_{je}` the
column :math:`e` of the head's output. With ``iterations >= 1`` NaN in
:math:`q` or :math:`k` makes the whole head NaN: every column potential sums
over all rows. Rows without an admissible key keep their defined output, zero.
The dense backend propagates NaN by its arithmetic; a fused kernel need not
(PyTorch's CPU flash kernel, which the blocked path's output pass and the kernel
path on CPU call, treats a NaN query row like a fully masked one and returns 0),
so :func:`adversarial_attention` sets this pattern explicitly, the same way on
every path: it adds :math:`0 \cdot \sum` of each query row (of all
rows once ``iterations >= 1``), of each head's keys and of each value column,
which is 0, or NaN where a NaN (or an infinity) is (O(N D), no sync).

Grouped-query attention
-----------------------
With ``enable_gqa=True`` (SDPA's flag of that name) k and v may have fewer heads
than q: :math:`H_q` a multiple of :math:`H_{kv}`, and query head :math:`h` uses
kv head :math:`\lfloor h / (H_q/H_{kv}) \rfloor`, as SDPA groups them. Each query
head gets its own plan (its own potentials): the result is the call with k and
v repeated to :math:`H_q` heads (``repeat_interleave`` on the heads axis).

Numerics
--------
On the dense and blocked paths (CPU, and devices without the kernel path)
everything runs in float32 (float64 if given) whatever the input dtype, in the
log domain, so logits of magnitude :math:`10^4` stay finite; the output is cast
back to the input dtype. The kernel path (CUDA; on CPU when named) keeps q, k, v
in their own dtype, as attention kernels do: the logits are accumulated in float32 from the inputs' products, the
potentials are float32 and enter the kernel split into three parts of the input
dtype (:mod:`asag_core.sinkhorn_kernel`), and the kernel rounds its plan and
output to the input dtype as flash attention does.

Precision (measured, ``tests/test_sinkhorn_paths.py``): with unit-scale
logits every path agrees with the dense one to about 1e-6 in float32. The
error grows with the logits' magnitude, as float32 conditioning: at
:math:`\lambda = 10` with :math:`|L|` up to ~660, float32 results (dense path
included) differ from a float64 evaluation by up to ~1e-4, and SDPA's own
float32 softmax attention of the same logits does the same. On the kernel path
with bf16 inputs the error is about that of the final bf16 rounding of the output
(SDPA's in bf16); potentials rounded to bf16 alone, without the three-part split,
would err about as much at :math:`\lambda = 1`, 2x more at :math:`\lambda = 3`
and 10-15x more at :math:`\lambda = 10` (``tests/test_sinkhorn_kernel.py``).

Edges: :math:`N_q = 0` gives an empty output and :math:`N_k = 0` zeros, as SDPA.

Implementations
---------------
The iteration above is written once (:mod:`asag_core.sinkhorn_solver`), over
backends that supply its two log-sum-exps and the output; the potentials are the
interface. :func:`adversarial_attention` validates its inputs, then takes one of
the paths of :mod:`asag_core.sinkhorn_paths` (``path=`` names one; None leaves it
to the rule, which :func:`attention_path` reports), which compute the same
:math:`PV`:

- dense (:class:`~asag_core.sinkhorn_solver.DenseBackend`): the whole
  (B, H, Nq, Nk) logits, about ``DENSE_PEAK_TEMPORARIES`` such tensors at its
  peak; the reference, and :func:`sinkhorn_plan`; automatic only for tiny calls;
- blocked (:mod:`asag_core.sinkhorn_blocked`): CPU, blocks of rows whose row
  softmax serves the row and the column update of an iteration at once;
- kernel (:mod:`asag_core.sinkhorn_kernel`): CUDA and meta, one fused attention
  kernel call with log-sum-exp per half-step, potentials folded into the keys;
  if a kernel raises, the call warns and runs the blocked path.

The memory-bounded paths use the column potentials :math:`g` as an additive key
bias, :math:`\operatorname{softmax}_j(L_{ij} + g_j)\,V = PV`, and never
materialise a full :math:`N_q \times N_k` matrix of a head (a mask is
thresholded a block of rows at a time). Log-domain pieces they share are in
:mod:`asag_core.sinkhorn_common`.

References
----------
- ASAG: "Adversarial Sinkhorn Attention Guidance", arXiv 2511.07499 (AAAI 2026).
- M. Cuturi, "Sinkhorn Distances: Lightspeed Computation of Optimal Transport", NeurIPS 2013.
- G. Peyré, M. Cuturi, "Computational Optimal Transport", 2019.
"""

from __future__ import annotations

import warnings

import torch

from . import sinkhorn_blocked, sinkhorn_kernel
from .sinkhorn_checks import (
    COSTS,
    check_attention_args,
    check_gqa,
    check_params,
    check_qkv,
    check_scale,
    logit_multiplier,
    logit_sign,
    repeat_kv,
    to_heads,
    work_dtype,
)
from .sinkhorn_common import (
    MASK_THRESHOLD,
    additive,
    admissible,
    logits_of,
    mask_4d,
    mask_bias,
    zero_masked_rows,
)
from .sinkhorn_paths import DEFAULT_MEMORY_BUDGET_BYTES, PATHS, choose
from .sinkhorn_solver import DenseBackend, column_potentials, solve

__all__ = [
    "COSTS",
    "DEFAULT_MEMORY_BUDGET_BYTES",
    "MASK_THRESHOLD",
    "PATHS",
    "sinkhorn_plan",
    "adversarial_attention",
    "attention_path",
    "logit_sign",
]


# ---------------------------------------------------------------------------
# the plan: the dense reference
# ---------------------------------------------------------------------------


def sinkhorn_plan(
    q, k, *, iterations=2, lam=1.0, cost="adversarial", mask=None, scale=None, enable_gqa=False
) -> torch.Tensor:
    r"""The row-stochastic ASAG transport plan (the dense reference of every path).

    Args:
        q: queries, (B, H, Nq, D).
        k: keys, (B, H, Nk, D); with ``enable_gqa``, (B, H_kv, Nk, D) with H a
            multiple of H_kv.
        iterations: Sinkhorn iterations (row + column normalisation each), >= 0.
            0 gives ``softmax(L)``; the paper finds 2 enough.
        lam: inverse entropic regularisation :math:`\lambda = 1/\varepsilon` (finite, >= 0).
            0 gives the uniform plan.
        cost: ``"adversarial"`` (ASAG), ``"similarity"`` (control) or ``"uniform"``.
        mask: optional bool (True = attend) or additive float mask broadcastable
            to (B, H, Nq, Nk); as in ComfyUI, a 2-D mask is (Nq, Nk) and a 3-D
            mask is (B, Nq, Nk) (shared by all heads). Values at or below
            ``MASK_THRESHOLD`` mask their pair.
        scale: the logit scale :math:`\sigma` (SDPA's ``scale``): the logits are
            :math:`s\lambda\sigma\,QK^\top`; None means :math:`1/\sqrt{D}`.
        enable_gqa: let k have fewer heads than q (SDPA's grouping: query head
            h uses key head h // (H / H_kv)).

    Returns:
        float32 plan (B, H, Nq, Nk) (float64 for float64 inputs); each row sums
        to 1 (fully masked rows are 0). See the module docstring for the exact
        definition.
    """
    check_params(iterations, lam, cost)
    check_scale(scale)
    check_gqa(enable_gqa)
    check_qkv(q, k, enable_gqa=enable_gqa)
    work = work_dtype(q)
    bias = mask_bias(mask, (q.shape[0], q.shape[1], q.shape[2], k.shape[2]), q.device, work)
    multiplier = logit_multiplier(cost, lam, scale, q.shape[-1])
    dense = _dense(q.to(work), repeat_kv(k.to(work), q.shape[1]), None, multiplier, bias)
    return dense.plan(column_potentials(dense, iterations))


def _dense(q, k, v, multiplier, bias) -> DenseBackend:
    return DenseBackend(logits_of(q, k, multiplier, bias), v, admissible(bias, -1))


# ---------------------------------------------------------------------------
# attention: validate, choose a path, run its backend
# ---------------------------------------------------------------------------


def _with_input_nans(out, q, k, v, iterations) -> torch.Tensor:
    """``out`` (in place) with NaN where the definition puts it for NaN in q, k or v (module docstring, "NaN").

    0 * (sum of a line) is 0, or NaN when the line holds a NaN (or an inf): one reduction per
    input and an add of a (B, H, Nq|1, Dv) term, so cheap next to the attention itself. The sums
    are float32 (a half-precision sum could overflow); k and v may have fewer (grouped) heads.
    """
    heads = q.shape[1]
    q_rows = q.sum(dim=-1, keepdim=True, dtype=torch.float32)  # (B, H, Nq, 1)
    if iterations > 0:  # the column potentials couple all rows of a head
        q_rows = q_rows.sum(dim=-2, keepdim=True)
    k_head = repeat_kv(k.sum(dim=(-2, -1), keepdim=True, dtype=torch.float32), heads)  # (B, H, 1, 1)
    v_cols = repeat_kv(v.sum(dim=-2, keepdim=True, dtype=torch.float32), heads)  # (B, H, 1, Dv)
    return out.add_(q_rows * 0.0 + k_head * 0.0 + v_cols * 0.0)


def _work_path(path, q, k, v, multiplier, mask, iterations, chunk_size, budget, kernels):
    """The dense and blocked paths: float32 (float64) copies, kv heads repeated, the mask as a bias."""
    work = work_dtype(q)
    heads = q.shape[1]
    qw, kw, vw = q.to(work), repeat_kv(k.to(work), heads), repeat_kv(v.to(work), heads)
    bias = None if mask is None else additive(mask, work)
    if path == "dense":
        return solve(_dense(qw, kw, vw, multiplier, bias), iterations), (qw, kw, vw)
    h, nq, nk = qw.shape[1], qw.shape[2], kw.shape[2]
    # a chunk_size asks for blocks of that many rows only: no logits cache
    rows, cache = (chunk_size, 0) if chunk_size else (sinkhorn_blocked.DEFAULT_ROWS, None)
    geometry = sinkhorn_blocked.geometry(h, nq, nk, rows, qw.element_size(), budget, cache)
    flash = kernels["flash"] if q.device.type == "cpu" else None  # the fused output pass: CPU only
    out = sinkhorn_blocked.attention(qw, kw, vw, multiplier, bias, iterations, *geometry, flash)
    return out, (qw, kw, vw)


def attention_heads(q, k, v, multiplier, mask, iterations, path, chunk_size=None,
                    budget=DEFAULT_MEMORY_BUDGET_BYTES, kernels=None) -> torch.Tensor:
    """The attention of (B, H, Nq, D) q and (B, H_kv, Nk, ·) k, v on the named ``path`` ("dense", "blocked",
    "kernel"), inputs checked: logit multiplier ``multiplier``, 4-D ``mask`` or None. ``kernels``: the
    fused attention kernels (:data:`asag_core.sinkhorn_kernel.CUDA_KERNELS`' contract) of the kernel path
    and of the blocked path's CPU output pass; None for the device's own. Returns (B, H, Nq, Dv) of q's
    dtype, NaN and empty rows as defined (module docstring)."""
    kernels = sinkhorn_kernel.kernels_for(q.device) if kernels is None else kernels
    out = None
    if path == "kernel":
        rows = chunk_size or sinkhorn_kernel.mask_rows(q, k, mask)
        try:
            out, inputs = sinkhorn_kernel.attention(q, k, v, multiplier, mask, iterations, rows, kernels), (q, k, v)
        except sinkhorn_kernel.KernelFailed as err:
            warnings.warn(f"ASAG: a fused attention kernel failed ({err}); this call runs the blocked path",
                          RuntimeWarning, stacklevel=2)
            path = "blocked"
    if out is None:
        out, inputs = _work_path(path, q, k, v, multiplier, mask, iterations, chunk_size, budget, kernels)
    out = zero_masked_rows(_with_input_nans(out, *inputs, iterations), admissible(mask, -1))
    return out.to(q.dtype)


def _layout(q, k, v, heads, mask, skip_reshape, enable_gqa):
    """(B, H, N, D) views of q, k, v (kv heads as given), the 4-D mask, and the call's shapes."""
    qh, kh, vh = to_heads(q, k, v, heads, skip_reshape, enable_gqa)
    check_qkv(qh, kh, vh, enable_gqa)
    b, h, nq, d = qh.shape
    mask = mask_4d(mask, (b, h, nq, kh.shape[2]), q.device)
    return qh, kh, vh, mask, (b, h, nq, kh.shape[2], d, vh.shape[-1])


def _check_call(q, k, v, heads, iterations, lam, cost, chunk_size, skip_reshape, scale, enable_gqa):
    check_params(iterations, lam, cost)
    check_attention_args(q, k, v, heads, chunk_size, skip_reshape)
    check_scale(scale)
    check_gqa(enable_gqa)


def attention_path(
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
    scale=None,
    enable_gqa=False,
    path=None,
) -> str:
    """The path :func:`adversarial_attention` takes for these arguments: "empty" (Nq or Nk = 0), or one of
    :data:`asag_core.sinkhorn_paths.PATHS` ("dense", "blocked", "kernel"): ``path`` itself where given,
    else the rule's choice. Validates like the call itself; computes nothing. (A kernel that raises
    during the call still sends that call to the blocked path, with a warning.)"""
    _check_call(q, k, v, heads, iterations, lam, cost, chunk_size, skip_reshape, scale, enable_gqa)
    shapes = _layout(q, k, v, heads, mask, skip_reshape, enable_gqa)[-1]
    return choose(q.device, q.dtype, *shapes, chunk_size, memory_budget_bytes, path)


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
    scale=None,
    enable_gqa=False,
    path=None,
) -> torch.Tensor:
    r"""Attention with the ASAG plan: ``sinkhorn_plan(q, k) @ v``.

    A drop-in for ComfyUI's ``optimized_attention``: q, k, v are (B, N, H*D)
    unless ``skip_reshape`` (then (B, H, N, D)); the output is (B, Nq, H*D)
    unless ``skip_output_reshape`` (then (B, H, Nq, D)). ``heads`` is the query
    head count. The result has the dtype of ``q``; the computation is float32
    (float64 for float64 inputs) except on the kernel path, which keeps the
    inputs' dtype as attention kernels do (module docstring, "Numerics").

    ``scale`` and ``enable_gqa`` mean what they mean for
    :func:`torch.nn.functional.scaled_dot_product_attention`: the logit scale
    :math:`\sigma` (logits :math:`s\lambda\sigma\,QK^\top`; None =
    :math:`1/\sqrt{D}`), and k, v with fewer heads than q (H_q a multiple of
    H_kv; query head h uses kv head h // (H_q/H_kv)). In the flat layout D is
    q's inner size / ``heads`` and k's and v's head count their inner size / D
    (v's / its own head dim, the same count).

    ``path`` names the backend: "dense" (the reference, whole logits), "blocked"
    (bounded blocks; CPU's default) or "kernel" (fused attention kernels; CUDA's
    default, on CPU PyTorch's CPU flash kernel); None (the default) lets
    :func:`attention_path`'s rule choose (:mod:`asag_core.sinkhorn_paths`). A
    named path that cannot run the call is a ValueError. ``chunk_size`` (query
    rows per block) asks for a memory-bounded path; ``memory_budget_bytes``
    bounds the dense path's peak in the rule and the blocked path's buffers.
    Paths agree to ~1e-6 for unit-scale logits in float32 and to float32
    conditioning beyond (module docstring, "Precision"). Fully masked query rows
    give zero output; Nq = 0 or Nk = 0 give SDPA's empty or zero output.
    """
    _check_call(q, k, v, heads, iterations, lam, cost, chunk_size, skip_reshape, scale, enable_gqa)
    qh, kh, vh, mask4, shapes = _layout(q, k, v, heads, mask, skip_reshape, enable_gqa)
    b, h, nq, nk, d, dv = shapes
    chosen = choose(q.device, q.dtype, *shapes, chunk_size, memory_budget_bytes, path)
    if chosen == "empty":
        out = q.new_zeros((b, h, nq, dv))
    else:
        multiplier = logit_multiplier(cost, lam, scale, d)
        out = attention_heads(qh, kh, vh, multiplier, mask4, iterations, chosen, chunk_size, memory_budget_bytes)
    return out if skip_output_reshape else out.transpose(1, 2).reshape(b, nq, h * dv)
