r"""The kernel backend of the ASAG attention: CUDA (and the meta device), fused attention-kernel passes.

Every half-step of the iteration (:mod:`asag_core.sinkhorn_solver`) is an
attention-like pass that needs only a log-sum-exp: with the logit multiplier
:math:`c` and potentials,

.. math::

    f_i = -\operatorname{logsumexp}_j (c\,q_i k_j + g_j), \qquad
    g_j = -\operatorname{logsumexp}_i (c\,q_i k_j + f_i) + \log(N_q/N_k),

and the output is attention with the key bias :math:`g`. So each pass is one
call of a fused attention kernel that returns its log-sum-exp (FlashAttention,
Dao et al. 2022; PyTorch's ``_scaled_dot_product_flash_attention``, or
``_scaled_dot_product_efficient_attention`` where a mask needs a bias): no
:math:`N_q \times N_k` block of logits is written to memory, and the inputs stay
in their own dtype (no float32 copy of q, k or v). ``2 * iterations + 1``
kernel calls.

Potentials folded into the keys. The flash kernel takes no bias, and a bf16
bias would round :math:`g` to ~0.4 %. Instead every head gets
:data:`EXTRA` more dimensions (then zeros up to a multiple of 8):

.. math::

    q'_i = [\,q_i,\ u, u, u\,], \qquad
    k'_j = [\,\operatorname{sign}(c)\,k_j,\ t^{(1)}_j, t^{(2)}_j, t^{(3)}_j\,],
    \qquad \sigma' = |c|,

with :math:`t = g / (\sigma' u)` split into three numbers of the input dtype,
:math:`t^{(1)} = \operatorname{rd}(t)`, :math:`t^{(2)} = \operatorname{rd}(t - t^{(1)})`,
:math:`t^{(3)} = \operatorname{rd}(t - t^{(1)} - t^{(2)})` (so their sum carries about
24 bits of :math:`t` even in bf16), and :math:`u` the power of two nearest
:math:`1/\sigma'` (exact in every dtype). The kernel's :math:`\sigma'\,q'_i k'_j` is
then :math:`c\,q_i k_j + g_j` up to float32 accumulation: the products of bf16
numbers are exact in the kernel's float32 accumulator. The column pass is the
transposed problem with the roles swapped (queries :math:`[\operatorname{sign}(c)k_j,
u, u, u]`, keys :math:`[q_i, t(f)_i]`). Two head-padded buffers (and one for the
values of the output pass) are written once; each pass rewrites only the three
extra columns. The sign goes into the keys because flash kernels take their
row maximum before scaling, so their scale must be positive. :math:`c = 0`
(uniform plan) uses :math:`\sigma' = 1` and zero key parts.

Masks. A key-padding mask (no query axis) is a key bias: it joins :math:`g` in
the row passes (a masked key gets :math:`t^{(1)} = -\infty`) and shifts the
column lse of its key. A mask with a query axis goes to the efficient kernel
as its bias, in blocks of rows (columns, transposed, for the column pass) of
at most :data:`BIAS_BYTES`, thresholded at
:data:`~asag_core.sinkhorn_common.MASK_THRESHOLD` on the block in float32, before it is
rounded to the input dtype (as the other paths read it). A kernel returns
a finite log-sum-exp (not :math:`-\infty`) for a line without an admissible
pair, so this backend tells the solver which lines are admissible (``row_ok``,
``col_ok``) and the solver sets their potentials to 0, as on every path.

Range. In fp16 the parts of :math:`t` must stay within 65,504 in magnitude: a potential
beyond it (logits of order :math:`10^5`, e.g. the similarity cost on unnormalised inputs)
overflows the first part and its line is wrong, without a warning. bf16 and float32 have the
range; the dense and blocked paths work in float32.

Which kernel: the flash kernel for fp16/bf16 inputs without a query-axis mask,
else the efficient one (also float32). On the meta device the same calls run
(their meta registrations give shapes only), so the path's op count, bytes
moved and temporaries can be counted without a GPU
(``benchmarks/attention_accounting.py``). On CPU, where the path runs only when a
caller names it (``path="kernel"``), PyTorch's CPU flash kernel, which has the same
contract, stands in for both (:data:`CPU_KERNELS`): the tests check this
backend's numbers that way without a GPU.

A kernel call that raises becomes :class:`KernelFailed`; the caller
(:func:`asag_core.sinkhorn.adversarial_attention`) then warns and runs the
blocked path for that call. Nothing is remembered between calls.
"""

from __future__ import annotations

import math

import torch

from . import sinkhorn_solver as solver
from .sinkhorn_common import additive, admissible, log_ratio, masked_bias

#: Extra head dimensions that carry a potential (three parts of the input dtype).
EXTRA = 3
#: Largest head dimension (after padding) the kernels take.
MAX_HEAD_DIM = 256
#: Bytes of one block of a query-axis mask handed to the efficient kernel.
BIAS_BYTES = 256 << 20
#: Devices whose tensors this path takes when the caller leaves the path to the rule (auto).
DEVICES = ("cuda", "meta")
#: Devices it runs on when a caller names it: on CPU, with :data:`CPU_KERNELS`.
EXPLICIT_DEVICES = DEVICES + ("cpu",)
#: Input dtypes the kernels take.
DTYPES = (torch.float16, torch.bfloat16, torch.float32)


class KernelFailed(RuntimeError):
    """A kernel call raised; the caller falls back to another path for this call."""


def run_kernel(kernel, name, *args):
    """``kernel(*args)``, its ``RuntimeError`` (a kernel that cannot run here) as :class:`KernelFailed`."""
    try:
        return kernel(*args)
    except RuntimeError as err:
        raise KernelFailed(f"{name}: {err}") from err


def padded_dim(d: int, dv: int) -> int:
    """Head size of the padded buffers: D + EXTRA (and Dv) rounded up to a multiple of 8."""
    return (max(d + EXTRA, dv) + 7) // 8 * 8


def unusable(device, dtype, d: int, dv: int, devices=EXPLICIT_DEVICES):
    """Why this path cannot run a call of this device, dtype and head dims; None if it can."""
    if device.type not in devices:
        return f"it runs on {', '.join(devices)}, not {device.type}"
    if dtype not in DTYPES:
        return f"its kernels take float16, bfloat16 or float32, not {str(dtype).replace('torch.', '')}"
    if padded_dim(d, dv) > MAX_HEAD_DIM:
        return f"head dims {d} (+{EXTRA}) and {dv} exceed its kernels' {MAX_HEAD_DIM}"
    return None


def _flash(q, k, v, bias, scale):
    out, lse = torch.ops.aten._scaled_dot_product_flash_attention(q, k, v, 0.0, False, False, scale=scale)[:2]
    return out, lse


def _efficient(q, k, v, bias, scale):
    out, lse = torch.ops.aten._scaled_dot_product_efficient_attention(q, k, v, bias, True, 0.0, False, scale=scale)[
        :2
    ]
    return out, lse[..., : q.shape[2]]  # the lse is padded to a multiple of 32 rows


def cpu_kernel(q, k, v, bias, scale):
    """The kernels' contract on CPU: ``(softmax(scale q k^T + bias) v, logsumexp)`` by PyTorch's CPU flash kernel."""
    return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, attn_mask=bias, scale=scale)


#: kernel name -> function(q, k, v, bias or None, scale) -> (output, lse (B, H, Nq) float32)
CUDA_KERNELS = {"flash": _flash, "efficient": _efficient}
#: The same contract on CPU (PyTorch's CPU flash kernel takes a bias and any of the dtypes).
CPU_KERNELS = {"flash": cpu_kernel, "efficient": cpu_kernel}


def kernels_for(device) -> dict:
    """The kernels a call on ``device`` uses: the CPU stand-in on CPU, the CUDA kernels elsewhere (meta counts them)."""
    return CPU_KERNELS if device.type == "cpu" else CUDA_KERNELS


def mask_rows(q, k, mask) -> int:
    """Query rows per kernel call for a mask with a query axis: blocks of at most :data:`BIAS_BYTES`."""
    if mask is None:
        return q.shape[2]
    # a bias block is (B, H of the mask (1 if broadcast), rows, the longer token axis)
    return max(1, BIAS_BYTES // max(1, q.shape[0] * mask.shape[1] * max(q.shape[2], k.shape[2]) * q.element_size()))


def kernel_name(dtype, row_mask: bool) -> str:
    return "flash" if dtype in (torch.float16, torch.bfloat16) and not row_mask else "efficient"


def _split(t: torch.Tensor, dtype, parts=EXTRA):
    """t (float32) as three ``dtype`` parts whose sum is t to ~24 bits; -inf stays in the first part.
    ``parts=1``: t rounded to ``dtype`` alone, the other two 0 (what the split avoids)."""
    hi = t.to(dtype)
    if parts == 1:
        return hi, torch.zeros_like(hi), torch.zeros_like(hi)
    rest = (t - hi.float()).nan_to_num_(0.0, 0.0, 0.0)  # -inf - -inf: the masked key's other parts are 0
    mid = rest.to(dtype)
    return hi, mid, (rest - mid.float()).to(dtype)


class _Buffers:
    """The padded query and key buffers and the parameters of the fold (module docstring)."""

    def __init__(self, q, k, multiplier, parts=EXTRA):
        b, h, nq, d = q.shape
        self.d, self.dtype, self.parts = d, q.dtype, parts
        self.dp = padded_dim(d, 0)
        self.scale = abs(multiplier) if multiplier != 0 else 1.0
        self.u = 2.0 ** round(-math.log2(self.scale))
        self.qb = q.new_zeros((b, h, nq, self.dp))
        self.qb[..., :d] = q
        self.kb = _heads_buffer(k, h, self.dp)
        if multiplier < 0:
            self.kb[..., :d].neg_()
        elif multiplier == 0:
            self.kb[..., :d].mul_(0)  # 0 * k: the uniform plan (NaN in k stays NaN, as on every path)

    def queries(self, buf):
        """``buf`` as the queries of a pass: its extra columns u."""
        buf[..., self.d : self.d + EXTRA].fill_(self.u)

    def keys(self, buf, potential):
        """``buf`` as the keys of a pass: its extra columns the three parts of potential / (scale u), or 0
        (potential None)."""
        extra = buf[..., self.d : self.d + EXTRA]
        if potential is None:
            extra.zero_()
            return
        for i, part in enumerate(_split(potential / (self.scale * self.u), self.dtype, self.parts)):
            extra[..., i] = part


def _heads_buffer(x, heads, width):
    """(B, heads, N, width) zeros holding x (B, H_kv, N, D) in its first D columns, each kv head
    repeated for its heads // H_kv query heads (SDPA's grouping), written without an expanded copy."""
    b, hkv, n, d = x.shape
    buf = x.new_zeros((b, heads, n, width))
    buf.view(b, hkv, heads // hkv, n, width)[..., :d].copy_(x[:, :, None])
    return buf


def _bias_block(mask, rows, cols, transpose, dtype, rows_pad):
    """The thresholded additive block mask[..., rows, cols] (transposed if asked) in ``dtype``, its last
    dim padded in memory to a multiple of 16 elements (the efficient kernel's alignment).

    Thresholded in float32, the other paths' work dtype, before it is rounded to ``dtype``: bf16 would
    round a bias of -999 to the threshold, -1000, and mask a pair the other paths keep."""
    block = mask[..., rows, cols]
    block = block.transpose(-1, -2) if transpose else block
    out = torch.empty(block.shape[:-1] + (rows_pad,), dtype=dtype, device=block.device)[..., : block.shape[-1]]
    out.copy_(masked_bias(additive(block, torch.float32)))
    return out


def _key_bias(mask):
    """A mask without query axis as a natural-unit float32 key bias (B, H|1, 1, Nk), or None."""
    if mask is None or mask.shape[-2] != 1:
        return None
    return masked_bias(additive(mask, torch.float32))


def _squeezed(ok, dim):
    return None if ok is None else ok.squeeze(dim)


class KernelBackend(solver.Backend):
    """The whole call as kernel passes; f (B, H, Nq) and g (B, H, Nk) float32.

    ``q`` (B, H, Nq, D), ``k``/``v`` (B, H_kv, Nk, ·) in their own dtype (H a multiple of H_kv);
    ``multiplier`` = sign * lam * logit scale; ``mask`` 4-D (bool or additive, broadcastable) or
    None; ``rows`` query rows per kernel call where a mask has a query axis; ``kernels`` the
    functions of :data:`CUDA_KERNELS`' contract; ``parts`` the input-dtype numbers that carry each
    potential (:data:`EXTRA`; 1 rounds it to the input dtype, for the tests of what the split buys).
    """

    def __init__(self, q, k, v, multiplier, mask, rows, kernels, parts=EXTRA):
        self.buf = _Buffers(q, k, multiplier, parts)
        self.v, self.rows, self.kernels = v, rows, kernels
        self.heads, self.nk = q.shape[1], k.shape[2]
        self.key_bias = _key_bias(mask)
        self.row_mask = None if mask is None or self.key_bias is not None else mask
        self.row_ok = _squeezed(admissible(mask, -1), -1)
        self.col_ok = _squeezed(admissible(mask, -2), -2)
        self.ratio = log_ratio(q.shape[2], self.nk)

    def _key_side(self, g):
        """The key-side potential of a row pass, (B, H, Nk) float32: g plus the key bias (None if both are)."""
        if g is None and self.key_bias is None:
            return None
        key_bias = None if self.key_bias is None else self.key_bias[:, :, 0, :]
        total = key_bias if g is None else (g if key_bias is None else g + key_bias)
        return total.expand(total.shape[0], self.heads, self.nk)

    def _pass(self, queries, keys, values, transpose, want_out=False):
        """Row lse (B, H, Nq) float32 of ``scale * queries.keys``, plus the output if asked; a query-axis
        mask as a bias, ``rows`` query rows per call (its transpose for the column pass)."""
        scale, mask = self.buf.scale, self.row_mask
        if mask is None:
            name = kernel_name(queries.dtype, False)
            out, lse = run_kernel(self.kernels[name], name, queries, keys, values, None, scale)
            return lse, out
        n = queries.shape[2]
        lse = queries.new_empty(queries.shape[:3], dtype=torch.float32)
        out = queries.new_empty(queries.shape[:3] + values.shape[-1:]) if want_out else None
        pad = (keys.shape[2] + 15) // 16 * 16
        b, h = queries.shape[:2]
        for start in range(0, n, self.rows):
            rs = slice(start, min(n, start + self.rows))
            sel = (slice(None), rs) if transpose else (rs, slice(None))
            bias = _bias_block(mask, *sel, transpose, queries.dtype, pad).expand(b, h, rs.stop - rs.start, -1)
            o, block_lse = run_kernel(self.kernels["efficient"], "efficient", queries[:, :, rs], keys, values, bias,
                                      scale)
            lse[:, :, rs] = block_lse
            if out is not None:
                out[:, :, rs] = o
        return lse, out

    def row_lse(self, g):
        buf = self.buf
        buf.queries(buf.qb)
        buf.keys(buf.kb, self._key_side(g))
        return self._pass(buf.qb, buf.kb, buf.kb, False)[0]

    def column_lse(self, f):
        buf = self.buf
        buf.queries(buf.kb)
        buf.keys(buf.qb, f)
        lse = self._pass(buf.kb, buf.qb, buf.qb, True)[0]
        if self.key_bias is not None:  # a finite key bias shifts its column's lse (it cancels in the row passes)
            lse = lse + self.key_bias[..., 0, :]
        return lse

    def output(self, g):
        """``P V`` (B, H, Nq, Dv) in the input dtype; rows without an admissible key are left to the caller."""
        buf = self.buf
        buf.queries(buf.qb)
        buf.keys(buf.kb, self._key_side(g))
        values = _heads_buffer(self.v, self.heads, buf.dp)
        return self._pass(buf.qb, buf.kb, values, False, want_out=True)[1][..., : self.v.shape[-1]]


def attention(q, k, v, multiplier, mask, iterations, rows, kernels=CUDA_KERNELS, parts=EXTRA):
    """``P V`` (B, H, Nq, Dv) in the input dtype, with ``2 * iterations + 1`` kernel calls (arguments as
    :class:`KernelBackend`). Raises :class:`KernelFailed` if a kernel raises."""
    return solver.solve(KernelBackend(q, k, v, multiplier, mask, rows, kernels, parts), iterations)
