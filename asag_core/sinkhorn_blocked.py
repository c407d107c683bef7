r"""The memory-bounded ASAG attention on CPU: small blocks, one exponential per logit and pass.

Each Sinkhorn iteration of :mod:`asag_core.sinkhorn` needs a row update and a
column update. Over a block of rows (of a group of heads) both come from the
same exponentials. With the current column potential :math:`g` and a row shift
:math:`m_i = \max_j (L_{ij} + g_j)`,

.. math::

    E_{ij} &= \exp(L_{ij} + g_j - m_i) \in [0, 1], \qquad s_i = \textstyle\sum_j E_{ij} \ge 1,\\
    f_i &= -(m_i + \log s_i) \qquad\text{(the row update, exactly)},\\
    \exp(L_{ij} + f_i) &= e^{-g_j}\, E_{ij} / s_i,

so the column update is a column sum of the row-normalised block,

.. math::

    g^{\text{new}}_j = -\operatorname{logsumexp}_i (L_{ij} + f_i) + \log\frac{N_q}{N_k}
        = g_j - \log \sum_i \frac{E_{ij}}{s_i} + \log\frac{N_q}{N_k},

a matrix-vector product accumulated over the blocks (Sinkhorn-Knopp's scaling
form, Cuturi 2013, with a log-domain shift per row as in Schmitzer 2019). One
pass over the logits per iteration: a max, one exponential, a row sum and that
product; then one more pass for the output :math:`\operatorname{softmax}_j(L_{ij}
+ g_j)\,V`. The fused path (:mod:`asag_core.sinkhorn_fused`) takes two full
attention calls per iteration for the same work.

Heads are processed in groups, all iterations of a group before the next (the
potentials of different heads are independent). Where one group's logits fit
:data:`CACHE_BYTES` (and the memory budget) they are computed once, by one
matmul, and kept for the group's passes ("cached"); otherwise every pass
recomputes them block by block ("streamed") and the output pass is one call of
PyTorch's fused CPU attention kernel with :math:`g` as a key bias (when it is
there and Dv = D; else the block loop with :math:`EV/s`).

Base 2. The passes work on :math:`L\log_2 e` with ``exp2`` (about 40 % cheaper than
``exp`` on CPU; one more rounding of the logits, ~1e-7 relative), potentials in
base-2 units, converted back for the kernel (whose own scale :math:`\ln 2` undoes
the base change).

Log-domain fallback. :math:`E_{ij}/s_i` is relative to the row's own maximum,
so a column whose logits lie far below every row maximum (large
:math:`\lambda`, e.g. 10, with realistic logit magnitudes) sums to a number
that underflows, possibly to 0 (float32 flushes below ~1e-38). Where a column
sum falls below :func:`underflow` (:math:`\sqrt{\text{tiny}}`: 1e-19 in float32,
so the flushed terms change it by less than :math:`N\sqrt{\text{tiny}}`
relative), that column's potential is recomputed in the log domain,
:math:`-\operatorname{logsumexp}_i(L_{ij} + f_i)`, over the rows in blocks:
extra work in proportion to the number of such columns. Columns without any
admissible pair are not recomputed: their potential is 0 by definition. The
row sums need no fallback: :math:`s_i \ge 1` (the largest term is 1), and no
term exceeds 1, so nothing overflows.

Memory. The block buffers (and the cache) are allocated once per call and
reused by every block and pass, so no pass pays first-touch page faults of
fresh temporaries; besides them O(N) vectors. Masks are thresholded one block
at a time.

References: M. Cuturi, "Sinkhorn Distances", NeurIPS 2013; B. Schmitzer,
"Stabilized Sparse Scaling Algorithms for Entropy Regularized Transport
Problems", SIAM J. Sci. Comput. 2019.
"""

from __future__ import annotations

import math

import torch

from . import sinkhorn_fused
from .sinkhorn_common import admissible, bias_rows, empty_to_zero, log_ratio, masked_bias

#: Query rows per block by default: measured on CPU (1 thread), 128-256-row blocks keep the
#: matmuls near their full speed, 32-64 rows cost 10-25 % more time.
DEFAULT_ROWS = 256
#: Most elements of one block of one head (the rows shrink for long key axes): 8 MiB of float32.
ROW_BLOCK_ELEMENTS = 1 << 21
#: Elements of one block of a group of heads (heads x rows x Nk) when the logits are streamed: 4 MiB.
BLOCK_ELEMENTS = 1 << 20
#: A group of heads keeps its logits for all passes when they fit in this many bytes; else the first
#: rows' logits, as many as fit. 8 MiB keeps the call's peak below the fused path's (measured).
CACHE_BYTES = 8 << 20
LOG2E = 1.0 / math.log(2.0)
LN2 = math.log(2.0)


def underflow(dtype) -> float:
    """Column sums below this are recomputed in the log domain (see the module docstring)."""
    return torch.finfo(dtype).tiny ** 0.5


def usable(device) -> bool:
    """Whether this path runs on ``device`` (CPU; it computes in the float32/64 work dtype)."""
    return device.type == "cpu"


def geometry(heads: int, nq: int, nk: int, rows: int, itemsize: int, budget: int, cache_bytes=None):
    """``(rows, heads per group, cached rows)`` for :func:`attention`.

    A block of one head holds at most :data:`ROW_BLOCK_ELEMENTS`, of a streamed group
    :data:`BLOCK_ELEMENTS`; the buffers at most ``min(cache_bytes, budget / 2)`` bytes
    (``cache_bytes`` defaults to :data:`CACHE_BYTES`). A group caches all its logits when one head's
    fit, else the logits of its first rows (a whole number of blocks), as many as fit.
    """
    limit = min(CACHE_BYTES if cache_bytes is None else cache_bytes, budget // 2)
    rows = max(1, min(rows, nq, ROW_BLOCK_ELEMENTS // max(1, nk), budget // max(1, 2 * nk * itemsize)))
    block = rows * nk * itemsize
    head = nq * nk * itemsize
    if head + block <= limit:
        return rows, max(1, min(heads, limit // (head + block))), nq
    group = max(1, min(heads, BLOCK_ELEMENTS // max(1, rows * nk), budget // max(1, 2 * block)))
    cached = max(0, limit - group * block) // max(1, group * block) * rows
    return rows, group, min(nq, cached)


def buffer_bytes(heads: int, nq: int, nk: int, d: int, rows: int, itemsize: int, budget: int) -> int:
    """The buffers :func:`attention` allocates besides its output: block, cache and scaled queries of a group."""
    rows, group, cached = geometry(heads, nq, nk, rows, itemsize, budget)
    return group * (rows * nk + cached * nk + nq * d) * itemsize


def _at(x, bi, hs, rs=None):
    """Block of a broadcastable (B|1, H|1, Nq|1, ·) tensor; broadcast axes stay 1."""
    x = x[bi if x.shape[0] > 1 else 0]
    x = x[hs] if x.shape[0] > 1 else x
    return x if rs is None or x.shape[1] == 1 else x[:, rs]


class _Group:
    """One group of heads ``hs`` of batch element ``bi``: its base-2 queries, keys, values and mask,
    the logits of its first ``cached`` rows, and the block buffer."""

    def __init__(self, shared, bi, hs):
        q, k, v, multiplier, bias, rows, buf, cache = shared
        self.a = q[bi, hs] * (multiplier * LOG2E)  # base-2 logits; a contiguous copy of one group
        self.k, self.v = k[bi, hs], v[bi, hs]
        self.row_bias = None if bias is None or bias.shape[-2] == 1 else _at(bias, bi, hs)
        self.key_bias = None if bias is None or self.row_bias is not None else masked_bias(_at(bias, bi, hs)) * LOG2E
        self.col_ok = admissible(None if bias is None else _at(bias, bi, hs), -2)
        self.masked = bias is not None
        self.rows = rows
        n = self.a.shape[0]
        self.buf = buf[:n]
        self.cache = cache[:n]
        self.cached = cache.shape[1]
        if self.cached:
            torch.bmm(self.a[:, : self.cached], self.k.transpose(-1, -2), out=self.cache)
            if self.row_bias is not None:
                for rs in self.row_blocks(0, self.cached):
                    self.cache[:, rs].add_(masked_bias(self.row_bias[:, rs]), alpha=LOG2E)

    def row_blocks(self, start=0, stop=None):
        stop = self.a.shape[1] if stop is None else stop
        return [slice(r0, min(stop, r0 + self.rows)) for r0 in range(start, stop, self.rows)]

    def shift(self, g):
        """The key shift g + key bias, (n, 1, Nk), or None for 0."""
        if g is None or self.key_bias is None:
            return g if g is not None else self.key_bias
        return g + self.key_bias

    def logits(self, rs, shift, out):
        """Base-2 logits + shift of rows ``rs`` into ``out`` (rows beyond the cache)."""
        k_t = self.k.transpose(-1, -2)
        if shift is None:
            torch.bmm(self.a[:, rs], k_t, out=out)
        else:
            torch.baddbmm(shift, self.a[:, rs], k_t, out=out)
        if self.row_bias is not None:
            out.add_(masked_bias(self.row_bias[:, rs]), alpha=LOG2E)
        return out

    def column_logits(self, rs, cols):
        """Base-2 logits (without potentials) of rows ``rs`` and the columns ``cols``."""
        if rs.stop <= self.cached:
            block = self.cache[:, rs][..., cols]
        else:
            block = torch.matmul(self.a[:, rs], self.k[:, cols].transpose(-1, -2))
            if self.row_bias is not None:
                block.add_(masked_bias(bias_rows(self.row_bias, rs.start, rs.stop)[..., cols]), alpha=LOG2E)
        return block if self.key_bias is None else block + self.key_bias[..., cols]

    def exp_block(self, rs, shift, in_cache=False):
        """(E, m, s) of one block: E = 2^(L + shift - m), m the row max, s = sum E. E is in the reused
        buffer, or (``in_cache``, cached rows only, for the last pass) overwrites the cached logits."""
        if rs.stop > self.cached:
            e = self.logits(rs, shift, self.buf[:, : rs.stop - rs.start])
            m = self._row_max(e)
            e.sub_(m)
        elif in_cache or shift is not None:
            e = self.cache[:, rs] if in_cache else self.buf[:, : rs.stop - rs.start]
            if shift is not None:
                torch.add(self.cache[:, rs], shift, out=e)
            m = self._row_max(e)
            e.sub_(m)
        else:  # first pass on cached rows: the max of the cache, the difference straight into the buffer
            m = self._row_max(self.cache[:, rs])
            e = torch.sub(self.cache[:, rs], m, out=self.buf[:, : rs.stop - rs.start])
        e.exp2_()
        return e, m, e.sum(dim=-1, keepdim=True)

    def _row_max(self, x):
        m = x.amax(dim=-1, keepdim=True)
        if self.masked:  # a row without any admissible key: shift 0, its exponentials are all 0
            m.masked_fill_(m == float("-inf"), 0.0)
        return m


def _update(grp: _Group, g, ratio):
    """One Sinkhorn iteration of the group: its new column potentials g, (n, 1, Nk), base 2 (``ratio`` too)."""
    n, nq, _ = grp.a.shape
    col = grp.a.new_zeros((n, 1, grp.k.shape[1]))
    f = grp.a.new_empty((n, nq, 1))
    shift = grp.shift(g)
    for rs in grp.row_blocks():
        e, m, s = grp.exp_block(rs, shift)
        w = s.reciprocal()
        if grp.masked:
            w.masked_fill_(s == 0, 0.0)
        col.baddbmm_(w.transpose(-1, -2), e)
        f[:, rs] = empty_to_zero(-(m + s.log2()))
    g_new = col.log2().neg_().add_(ratio)
    if g is not None:
        g_new.add_(g)
    low = col < underflow(col.dtype)
    if grp.col_ok is not None:
        low &= grp.col_ok
        g_new.masked_fill_(~grp.col_ok, 0.0)
    if bool(low.any()):
        _log_domain_columns(grp, f, low, g_new, ratio)
    return g_new


def _log_domain_columns(grp: _Group, f, low, g, ratio) -> None:
    """g (in place, base 2) at the columns flagged ``low``: -log2 sum_i 2^(L_ij + f_i) + ratio."""
    cols = low.flatten(0, -2).any(0).nonzero().flatten()
    lse = grp.a.new_full((grp.a.shape[0], 1, cols.numel()), float("-inf"))
    for rs in grp.row_blocks():
        block = grp.column_logits(rs, cols) + f[:, rs]
        lse = torch.logaddexp2(lse, torch.logsumexp(block * LN2, dim=-2, keepdim=True) * LOG2E)
    fresh = empty_to_zero(-lse + ratio)
    g[..., cols] = torch.where(low[..., cols], fresh, g[..., cols])


def _output(grp: _Group, g, out):
    """``out`` (n, Nq, Dv) = softmax_j(L + g) V for the group: the cached rows by blocks, the others
    by the fused kernel where it runs."""
    shift = grp.shift(g)
    rest = grp.a.shape[1]
    if grp.cached < rest and sinkhorn_fused.usable(grp.a, grp.v):
        rs = slice(grp.cached, rest)
        nat = None if shift is None else (shift * LN2)[None]  # natural units; the key bias is thresholded
        bias = None if grp.row_bias is None else grp.row_bias[None, :, rs]
        try:
            out[:, rs] = sinkhorn_fused.output(grp.a[None, :, rs], grp.k[None], grp.v[None], bias, nat, grp.rows,
                                               scale=LN2)[0]
            rest = grp.cached
        except sinkhorn_fused.KernelFailed as err:
            sinkhorn_fused.disable(err)
    if grp.cached:  # the cached rows: exponentials in place, then one matmul with V
        sums = grp.a.new_empty((grp.a.shape[0], grp.cached, 1))
        for rs in grp.row_blocks(0, grp.cached):
            sums[:, rs] = grp.exp_block(rs, shift, in_cache=True)[2]
        out[:, : grp.cached] = torch.bmm(grp.cache, grp.v).div_(sums)  # 0 / 0 for a row without keys
    for rs in grp.row_blocks(grp.cached, rest):
        e, _, s = grp.exp_block(rs, shift)
        out[:, rs] = torch.bmm(e, grp.v).div_(s)  # (the caller zeroes rows without keys)


def attention(q, k, v, multiplier, bias, iterations, rows, group, cached):
    """``P V`` for the plan P of :mod:`asag_core.sinkhorn`, (B, H, Nq, Dv), in bounded extra memory.

    ``q``, ``k``, ``v`` (B, H, N, D) in the work dtype (CPU); ``multiplier`` = sign * lam * logit scale;
    ``bias`` the additive mask (broadcastable, unthresholded) or None; ``rows``, ``group`` (heads per
    group) and ``cached`` (rows whose logits a group keeps) from :func:`geometry`. Rows without an
    admissible key are left to the caller to zero.
    """
    b, h, nq, _ = q.shape
    nk = k.shape[2]
    buf = q.new_empty((min(group, h), min(rows, nq), nk))
    cache = q.new_empty((min(group, h), cached, nk))
    shared = (q, k.contiguous(), v.contiguous(), multiplier, bias, rows, buf, cache)
    ratio = log_ratio(nq, nk) * LOG2E
    out = q.new_empty((b, h, nq, v.shape[-1]))
    for bi in range(b):
        for h0 in range(0, h, group):
            hs = slice(h0, min(h, h0 + group))
            grp = _Group(shared, bi, hs)
            g = None
            for _ in range(iterations):
                g = _update(grp, g, ratio)
            _output(grp, g, out[bi, hs])
    return out
