r"""The memory-bounded backend of the ASAG attention on CPU (and other devices without the kernel path).

Each Sinkhorn iteration (:mod:`asag_core.sinkhorn_solver`) needs a row update and a
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
the log-domain shift per row that softmax takes, as in Schmitzer 2019). So this
backend replaces the solver's iteration step by one pass over the logits: one
matmul, PyTorch's fused row softmax (max, exponential, sum and scaling of a row
while it sits in cache) and a column sum; then one more pass for the output
:math:`\operatorname{softmax}_j(L_{ij} + g_j)\,V`. Two separate log-sum-exp
passes (the solver's default step) would read the logits twice per iteration
and take an exponential of every logit in each.

Heads are processed in groups, all iterations of a group before the next (the
potentials of different heads are independent). Where one group's logits fit
:data:`CACHE_BYTES` (and the memory budget) they are computed once, by one
matmul, and kept for the group's passes ("cached"); otherwise every pass
recomputes them block by block ("streamed"). On CPU the output of the streamed
rows is one call of PyTorch's fused CPU flash-attention kernel with :math:`g` as
a key bias (when Dv = D): it never writes a block of logits. If that kernel
raises, the call warns and computes those rows by blocks instead.

Log-domain fallback. :math:`P_{ij}` is relative to its row's own total, so a
column whose logits lie far below every row maximum (large :math:`\lambda`,
e.g. 10, with realistic logit magnitudes) sums to a number that underflows,
possibly to 0 (float32 flushes below ~1e-38). Where a column sum falls below
:func:`underflow` (:math:`\sqrt{\text{tiny}}`: 1e-19 in float32, so the flushed
terms change it by less than :math:`N\sqrt{\text{tiny}}` relative), that
column's potential is recomputed by the solver's own half-steps, row update
then :math:`-\operatorname{logsumexp}_i(L_{ij} + f_i)` over the rows in blocks
for those columns only: extra work only where columns underflow. Columns without
any admissible pair are not recomputed: their potential is 0 by definition. The
row sums need no fallback: softmax shifts each row by its maximum, so its sum is
at least 1 before the scaling and nothing overflows. Rows without an admissible
key (all masked) get a zero softmax row.

Memory. The block buffers, the cache and the scaled queries are allocated once
per call and reused by every group, block and pass, so no pass pays first-touch
page faults of fresh temporaries; besides them O(N) vectors. Masks are
thresholded one block at a time.

References: M. Cuturi, "Sinkhorn Distances", NeurIPS 2013; B. Schmitzer,
"Stabilized Sparse Scaling Algorithms for Entropy Regularized Transport
Problems", SIAM J. Sci. Comput. 2019; T. Dao et al., "FlashAttention", NeurIPS
2022 (the fused output pass).
"""

from __future__ import annotations

import warnings

import torch

from . import sinkhorn_solver as solver
from .sinkhorn_common import admissible, bias_rows, log_ratio, masked_bias
from .sinkhorn_kernel import KernelFailed, run_kernel

#: Query rows per block by default: measured on CPU (1 thread), 128-256-row blocks keep the
#: matmuls near their full speed, 32-64 rows cost 10-25 % more time.
DEFAULT_ROWS = 256
#: Most elements of one block of one head (the rows shrink for long key axes): 8 MiB of float32.
ROW_BLOCK_ELEMENTS = 1 << 21
#: Elements of one block of a group of heads (heads x rows x Nk) when the logits are streamed: 4 MiB.
BLOCK_ELEMENTS = 1 << 20
#: A group of heads keeps its logits for all passes when they fit in this many bytes; else the first
#: rows' logits, as many as fit. With 8 MiB the call's peak stays below the kernel path's on CPU (measured:
#: 20 against 53 MiB at 1024 x 24 x 128, 24 against 50 MiB at 4608 x 4 x 128, float32, 1 thread).
CACHE_BYTES = 8 << 20

def _softmax(x, out):
    """``softmax(x, -1)`` written into ``out`` (which may be ``x``) by PyTorch's fused row softmax. The ATen
    kernel writes ``out`` as if it were contiguous: every block buffer here is a contiguous view."""
    return torch.ops.aten._softmax.out(x, -1, False, out=out)


def underflow(dtype) -> float:
    """Column sums below this are recomputed in the log domain (see the module docstring)."""
    return torch.finfo(dtype).tiny ** 0.5


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


def _at(x, bi, hs):
    """Batch element ``bi``, heads ``hs`` of a broadcastable (B|1, H|1, Nq|1, ·) tensor; broadcast axes stay 1."""
    x = x[bi if x.shape[0] > 1 else 0]
    return x[hs] if x.shape[0] > 1 else x


class BlockedBackend(solver.Backend):
    """One group of heads ``hs`` of batch element ``bi``: its scaled queries, keys, values and mask,
    the logits of its first ``cached`` rows, and the block buffer. f is (n, Nq, 1), g (n, 1, Nk)."""

    def __init__(self, shared, bi, hs):
        q, k, v, multiplier, bias, rows, buf, cache, scaled, flash = shared
        n = hs.stop - hs.start
        # the logits' queries, contiguous, in a buffer every group reuses (no fresh pages per group)
        self.a = torch.mul(q[bi, hs], multiplier, out=scaled[:n])
        self.k, self.v, self.flash = k[bi, hs], v[bi, hs], flash
        self.ratio = log_ratio(q.shape[2], k.shape[2])
        self.row_bias = None if bias is None or bias.shape[-2] == 1 else _at(bias, bi, hs)
        self.key_bias = None if bias is None or self.row_bias is not None else masked_bias(_at(bias, bi, hs))
        # exact log-sum-exps (-inf on empty lines): the solver needs no row_ok / col_ok; the fused step
        # and the softmax blocks use these
        self.cols_ok = admissible(None if bias is None else _at(bias, bi, hs), -2)
        rows_ok = admissible(None if bias is None else _at(bias, bi, hs), -1)
        self.empty_rows = None if rows_ok is None else ~rows_ok  # rows without an admissible key
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

    def row_lse(self, g):
        """logsumexp_j(L + g), (n, Nq, 1): one more pass, taken only by the log-domain fallback."""
        lse = self.a.new_empty((self.a.shape[0], self.a.shape[1], 1))
        for rs in self.row_blocks():
            block = self.column_logits(rs, slice(None))
            lse[:, rs] = torch.logsumexp(block if g is None else block + g, dim=-1, keepdim=True)
        return lse

    def column_lse(self, f, cols=None):
        """logsumexp_i(L + f), (n, 1, Nk), or of the columns ``cols`` only (a LongTensor)."""
        cols = slice(None) if cols is None else cols
        width = self.k.shape[1] if isinstance(cols, slice) else cols.numel()
        lse = self.a.new_full((self.a.shape[0], 1, width), float("-inf"))
        for rs in self.row_blocks():
            block = self.column_logits(rs, cols) + f[:, rs]
            lse = torch.logaddexp(lse, torch.logsumexp(block, dim=-2, keepdim=True))
        return lse

    def step(self, g):
        """One Sinkhorn iteration from one row softmax per block (module docstring), the log-domain
        half-steps of the solver for the columns whose sum underflows."""
        n, nq, _ = self.a.shape
        col = self.a.new_zeros((n, 1, self.k.shape[1]))
        shift = self.shift(g)
        ones = self.a.new_ones((n, 1, min(self.rows, nq)))
        for rs in self.row_blocks():  # column sums as a matrix-vector product: faster than a sum over rows
            col.baddbmm_(ones[..., : rs.stop - rs.start], self.softmax_block(rs, shift))
        g_new = col.log().neg_().add_(self.ratio)
        if g is not None:
            g_new.add_(g)
        low = col < underflow(col.dtype)
        if self.cols_ok is not None:
            low &= self.cols_ok
        g_new = solver.line_potential(g_new, self.cols_ok)
        if bool(low.any()):
            self._log_domain_columns(solver.row_potential(self, g), low, g_new)
        return g_new

    def _log_domain_columns(self, f, low, g) -> None:
        """g (in place) at the columns flagged ``low``: the solver's column update for those columns."""
        cols = low.flatten(0, -2).any(0).nonzero().flatten()
        fresh = solver.line_potential(self.column_lse(f, cols).neg().add(self.ratio))
        g[..., cols] = torch.where(low[..., cols], fresh, g[..., cols])

    def output(self, g, out=None):
        """``out`` (n, Nq, Dv) = softmax_j(L + g) V: the cached rows by blocks, the others by the fused
        CPU kernel where it runs (by blocks if it raises)."""
        shift = self.shift(g)
        out = self.a.new_empty(self.a.shape[:2] + self.v.shape[-1:]) if out is None else out
        rest = self.a.shape[1]
        if self.cached < rest and self.flash is not None and self.v.shape[-1] == self.a.shape[-1]:
            rs = slice(self.cached, rest)
            try:
                out[:, rs] = self._flash_output(rs, shift)
                rest = self.cached
            except KernelFailed as err:
                warnings.warn(f"ASAG: PyTorch's fused CPU attention kernel failed ({err}); this call computes "
                              "its output by blocks", RuntimeWarning, stacklevel=2)
        for rs in self.row_blocks(0, rest):  # the cached rows, and the others where the kernel did not run
            out[:, rs] = torch.bmm(self.softmax_block(rs, shift), self.v)
        return out

    def _flash_output(self, rows, shift):
        """softmax_j(L + shift) V of the rows ``rows`` by the fused kernel (queries carry the multiplier,
        kernel scale 1): one call with a key-only mask as a broadcast view, else one per block of rows."""
        a, k, v = self.a[None, :, rows], self.k[None], self.v[None]
        n, na, nk = a.shape[1], a.shape[2], k.shape[2]
        potential = None if shift is None else shift[None]  # the key bias in it is thresholded
        if self.row_bias is None:  # the kernel's own output (no copy into fresh pages)
            mask = None if potential is None else potential.expand(1, n, na, nk)
            return run_kernel(self.flash, "flash", a, k, v, mask, 1.0)[0][0]
        bias = self.row_bias[None, :, rows]
        out = a.new_empty((1, n, na, v.shape[-1]))
        for start in range(0, na, self.rows):
            stop = min(na, start + self.rows)
            mask = masked_bias(bias_rows(bias, start, stop), potential).expand(1, n, stop - start, nk)
            out[:, :, start:stop] = run_kernel(self.flash, "flash", a[:, :, start:stop], k, v, mask, 1.0)[0]
        return out[0]


def backends(q, k, v, multiplier, bias, rows, group, cached, flash=None):
    """``(batch index, head slice, backend)`` for every group of heads of the call, each backend built when
    the previous one is done with: they share the block buffer, the cache and the scaled queries' buffer.
    Arguments as :func:`attention`."""
    b, h, nq, _ = q.shape
    nk = k.shape[2]
    buf = q.new_empty((min(group, h), min(rows, nq), nk))
    cache = q.new_empty((min(group, h), cached, nk))
    scaled = q.new_empty((min(group, h), nq, q.shape[-1]))
    shared = (q, k.contiguous(), v.contiguous(), multiplier, bias, rows, buf, cache, scaled, flash)
    for bi in range(b):
        for h0 in range(0, h, group):
            hs = slice(h0, min(h, h0 + group))
            yield bi, hs, BlockedBackend(shared, bi, hs)


def attention(q, k, v, multiplier, bias, iterations, rows, group, cached, flash=None):
    """``P V`` for the plan P of :mod:`asag_core.sinkhorn`, (B, H, Nq, Dv), in bounded extra memory.

    ``q``, ``k``, ``v`` (B, H, N, D) in the work dtype; ``multiplier`` = sign * lam * logit scale;
    ``bias`` the additive mask (broadcastable, unthresholded) or None; ``rows``, ``group`` (heads per
    group) and ``cached`` (rows whose logits a group keeps) from :func:`geometry`; ``flash`` a fused
    attention kernel ``(q, k, v, bias, scale) -> (output, lse)`` for the output of streamed rows, or
    None for blocks. Rows without an admissible key get 0.
    """
    out = q.new_empty(q.shape[:3] + v.shape[-1:])
    for bi, hs, backend in backends(q, k, v, multiplier, bias, rows, group, cached, flash):
        backend.output(solver.column_potentials(backend, iterations), out[bi, hs])
    return out
