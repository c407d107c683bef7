r"""The memory-bounded ASAG attention on CPU: small blocks, one softmax per block and pass.

Each Sinkhorn iteration of :mod:`asag_core.sinkhorn` needs a row update and a
column update. Over a block of rows (of a group of heads) both come from one
row softmax. With the current column potential :math:`g`,

.. math::

    P_{ij} = \operatorname{softmax}_j (L_{ij} + g_j) = \exp(L_{ij} + g_j + f_i),
    \qquad f_i = -\operatorname{logsumexp}_j (L_{ij} + g_j)

(the row update, exactly), so :math:`\exp(L_{ij} + f_i) = e^{-g_j} P_{ij}` and the
column update is a column sum of the softmax,

.. math::

    g^{\text{new}}_j = -\operatorname{logsumexp}_i (L_{ij} + f_i) + \log\frac{N_q}{N_k}
        = g_j - \log \sum_i P_{ij} + \log\frac{N_q}{N_k},

accumulated over the blocks (Sinkhorn-Knopp's scaling form, Cuturi 2013, with
the log-domain shift per row that softmax takes, as in Schmitzer 2019). One pass
over the logits per iteration: one matmul, PyTorch's fused row softmax (max,
exponential, sum and scaling of a row while it sits in cache) and a column sum;
then one more pass for the output :math:`\operatorname{softmax}_j(L_{ij} + g_j)\,V`.
The fused path (:mod:`asag_core.sinkhorn_fused`) takes two full attention calls
per iteration for the same work.

Heads are processed in groups, all iterations of a group before the next (the
potentials of different heads are independent). Where one group's logits fit
:data:`CACHE_BYTES` (and the memory budget) they are computed once, by one
matmul, and kept for the group's passes ("cached"); otherwise every pass
recomputes them block by block ("streamed") and the output pass is one call of
PyTorch's fused CPU attention kernel with :math:`g` as a key bias (when it is
there and Dv = D; else the block loop with :math:`PV`).

Log-domain fallback. :math:`P_{ij}` is relative to its row's own total, so a
column whose logits lie far below every row maximum (large :math:`\lambda`,
e.g. 10, with realistic logit magnitudes) sums to a number that underflows,
possibly to 0 (float32 flushes below ~1e-38). Where a column sum falls below
:func:`underflow` (:math:`\sqrt{\text{tiny}}`: 1e-19 in float32, so the flushed
terms change it by less than :math:`N\sqrt{\text{tiny}}` relative), that
column's potential is recomputed in the log domain,
:math:`-\operatorname{logsumexp}_i(L_{ij} + f_i)`, over the rows in blocks,
after one more pass for the row potentials :math:`f`: extra work only where
columns underflow. Columns without any admissible pair are not recomputed: their
potential is 0 by definition. The row sums need no fallback: softmax shifts each
row by its maximum, so its sum is at least 1 before the scaling and nothing
overflows. Rows without an admissible key (all masked) get a zero softmax row.

Memory. The block buffers, the cache and the scaled queries are allocated once
per call and reused by every group, block and pass, so no pass pays first-touch
page faults of fresh temporaries; besides them O(N) vectors. Masks are
thresholded one block at a time.

References: M. Cuturi, "Sinkhorn Distances", NeurIPS 2013; B. Schmitzer,
"Stabilized Sparse Scaling Algorithms for Entropy Regularized Transport
Problems", SIAM J. Sci. Comput. 2019.
"""

from __future__ import annotations

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

try:  # PyTorch's row softmax into a given buffer (in place where the buffer is the input)
    _SOFTMAX_OUT = torch.ops.aten._softmax.out
except (AttributeError, RuntimeError):  # pragma: no cover - an ATen without it
    _SOFTMAX_OUT = None


def _softmax(x, out):
    """``softmax(x, -1)`` written into ``out`` (which may be ``x``). The ATen kernel writes ``out`` as if
    it were contiguous, so it gets only contiguous ones."""
    if _SOFTMAX_OUT is not None and out.is_contiguous():
        return _SOFTMAX_OUT(x, -1, False, out=out)
    return out.copy_(torch.softmax(x, dim=-1))


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


def _at(x, bi, hs, rs=None):
    """Block of a broadcastable (B|1, H|1, Nq|1, ·) tensor; broadcast axes stay 1."""
    x = x[bi if x.shape[0] > 1 else 0]
    x = x[hs] if x.shape[0] > 1 else x
    return x if rs is None or x.shape[1] == 1 else x[:, rs]


class _Group:
    """One group of heads ``hs`` of batch element ``bi``: its scaled queries, keys, values and mask,
    the logits of its first ``cached`` rows, and the block buffer."""

    def __init__(self, shared, bi, hs):
        q, k, v, multiplier, bias, rows, buf, cache, scaled = shared
        n = hs.stop - hs.start
        # the logits' queries, contiguous, in a buffer every group reuses (no fresh pages per group)
        self.a = torch.mul(q[bi, hs], multiplier, out=scaled[:n])
        self.k, self.v = k[bi, hs], v[bi, hs]
        self.row_bias = None if bias is None or bias.shape[-2] == 1 else _at(bias, bi, hs)
        self.key_bias = None if bias is None or self.row_bias is not None else masked_bias(_at(bias, bi, hs))
        self.col_ok = admissible(None if bias is None else _at(bias, bi, hs), -2)
        row_ok = admissible(None if bias is None else _at(bias, bi, hs), -1)
        self.empty_rows = None if row_ok is None else ~row_ok  # rows without an admissible key
        self.rows = rows
        self.buf = buf.view(-1)  # each block takes a contiguous view of its front
        self.cache = cache[:n]
        self.cached = cache.shape[1]
        if self.cached:
            torch.bmm(self.a[:, : self.cached], self.k.transpose(-1, -2), out=self.cache)
            if self.row_bias is not None:
                for rs in self.row_blocks(0, self.cached):
                    self.cache[:, rs].add_(masked_bias(self.row_bias[:, rs]))

    def row_blocks(self, start=0, stop=None):
        stop = self.a.shape[1] if stop is None else stop
        return [slice(r0, min(stop, r0 + self.rows)) for r0 in range(start, stop, self.rows)]

    def shift(self, g):
        """The key shift g + key bias, (n, 1, Nk), or None for 0."""
        if g is None or self.key_bias is None:
            return g if g is not None else self.key_bias
        return g + self.key_bias

    def logits(self, rs, shift, out):
        """Logits + shift of rows ``rs`` into ``out``, computed afresh."""
        k_t = self.k.transpose(-1, -2)
        if shift is None:
            torch.bmm(self.a[:, rs], k_t, out=out)
        else:
            torch.baddbmm(shift, self.a[:, rs], k_t, out=out)
        if self.row_bias is not None:
            out.add_(masked_bias(self.row_bias[:, rs]))
        return out

    def column_logits(self, rs, cols):
        """Logits (without potentials) of rows ``rs`` and the columns ``cols``."""
        if rs.stop <= self.cached:
            block = self.cache[:, rs][..., cols]
        else:
            block = torch.matmul(self.a[:, rs], self.k[:, cols].transpose(-1, -2))
            if self.row_bias is not None:
                block.add_(masked_bias(bias_rows(self.row_bias, rs.start, rs.stop)[..., cols]))
        return block if self.key_bias is None else block + self.key_bias[..., cols]

    def softmax_block(self, rs, shift):
        """``softmax_j(L + shift)`` of rows ``rs``, in the reused buffer (a contiguous view); rows without
        an admissible key are 0."""
        n, nk = self.a.shape[0], self.k.shape[1]
        out = self.buf[: n * (rs.stop - rs.start) * nk].view(n, rs.stop - rs.start, nk)
        if rs.stop > self.cached:
            x = self.logits(rs, shift, out)
        elif shift is not None:
            x = torch.add(self.cache[:, rs], shift, out=out)
        else:
            x = self.cache[:, rs]
        p = _softmax(x, out)
        if self.empty_rows is not None:
            p.masked_fill_(bias_rows(self.empty_rows, rs.start, rs.stop), 0.0)
        return p

    def row_potentials(self, g):
        """f = -logsumexp_j(L + g), (n, Nq, 1), for the column potentials ``g`` (None for 0); 0 for rows
        without an admissible key. One more pass, taken only by the log-domain fallback."""
        f = self.a.new_empty((self.a.shape[0], self.a.shape[1], 1))
        for rs in self.row_blocks():
            block = self.column_logits(rs, slice(None))
            f[:, rs] = -torch.logsumexp(block if g is None else block + g, dim=-1, keepdim=True)
        return empty_to_zero(f)


def _update(grp: _Group, g, ratio):
    """One Sinkhorn iteration of the group: its new column potentials g, (n, 1, Nk)."""
    n, nq, _ = grp.a.shape
    col = grp.a.new_zeros((n, 1, grp.k.shape[1]))
    shift = grp.shift(g)
    ones = grp.a.new_ones((n, 1, min(grp.rows, nq)))
    for rs in grp.row_blocks():  # column sums as a matrix-vector product: faster than a sum over rows
        col.baddbmm_(ones[..., : rs.stop - rs.start], grp.softmax_block(rs, shift))
    g_new = col.log().neg_().add_(ratio)
    if g is not None:
        g_new.add_(g)
    low = col < underflow(col.dtype)
    if grp.col_ok is not None:
        low &= grp.col_ok
        g_new.masked_fill_(~grp.col_ok, 0.0)
    if bool(low.any()):
        _log_domain_columns(grp, grp.row_potentials(g), low, g_new, ratio)
    return g_new


def _log_domain_columns(grp: _Group, f, low, g, ratio) -> None:
    """g (in place) at the columns flagged ``low``: -log sum_i exp(L_ij + f_i) + ratio."""
    cols = low.flatten(0, -2).any(0).nonzero().flatten()
    lse = grp.a.new_full((grp.a.shape[0], 1, cols.numel()), float("-inf"))
    for rs in grp.row_blocks():
        block = grp.column_logits(rs, cols) + f[:, rs]
        lse = torch.logaddexp(lse, torch.logsumexp(block, dim=-2, keepdim=True))
    fresh = empty_to_zero(-lse + ratio)
    g[..., cols] = torch.where(low[..., cols], fresh, g[..., cols])


def _output(grp: _Group, g, out):
    """``out`` (n, Nq, Dv) = softmax_j(L + g) V for the group: the cached rows by blocks, the others
    by the fused kernel where it runs."""
    shift = grp.shift(g)
    rest = grp.a.shape[1]
    if grp.cached < rest and sinkhorn_fused.usable(grp.a, grp.v):
        rs = slice(grp.cached, rest)
        bias = None if grp.row_bias is None else grp.row_bias[None, :, rs]
        potential = None if shift is None else shift[None]  # the key bias in it is thresholded
        try:
            out[:, rs] = sinkhorn_fused.output(grp.a[None, :, rs], grp.k[None], grp.v[None], bias, potential,
                                               grp.rows)[0]
            rest = grp.cached
        except sinkhorn_fused.KernelFailed as err:
            sinkhorn_fused.disable(err)
    for rs in grp.row_blocks(0, rest):  # the cached rows, and the others where the kernel did not run
        out[:, rs] = torch.bmm(grp.softmax_block(rs, shift), grp.v)


def attention(q, k, v, multiplier, bias, iterations, rows, group, cached):
    """``P V`` for the plan P of :mod:`asag_core.sinkhorn`, (B, H, Nq, Dv), in bounded extra memory.

    ``q``, ``k``, ``v`` (B, H, N, D) in the work dtype (CPU); ``multiplier`` = sign * lam * logit scale;
    ``bias`` the additive mask (broadcastable, unthresholded) or None; ``rows``, ``group`` (heads per
    group) and ``cached`` (rows whose logits a group keeps) from :func:`geometry`. Rows without an
    admissible key get 0.
    """
    b, h, nq, _ = q.shape
    nk = k.shape[2]
    buf = q.new_empty((min(group, h), min(rows, nq), nk))
    cache = q.new_empty((min(group, h), cached, nk))
    scaled = q.new_empty((min(group, h), nq, q.shape[-1]))
    shared = (q, k.contiguous(), v.contiguous(), multiplier, bias, rows, buf, cache, scaled)
    ratio = log_ratio(nq, nk)
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
