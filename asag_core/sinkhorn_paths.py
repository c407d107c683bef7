r"""Which backend an ASAG attention call takes: the one rule, used by the code and the benchmarks.

A caller may name the path (``adversarial_attention(..., path="blocked")``, as SDPA's
``sdpa_kernel`` or POT's ``method=`` name theirs); ``path=None`` leaves it to the rule below, and
:func:`asag_core.sinkhorn.attention_path` says what the rule picks. The paths (see
:mod:`asag_core.sinkhorn` for what they compute; they agree):

``"dense"`` (:class:`asag_core.sinkhorn_solver.DenseBackend`)
    the whole (B, H, Nq, Nk) logits, in the float32 (float64) work dtype; the reference. The rule
    takes it only for tiny calls (at most :data:`DENSE_MAX_ELEMENTS` logits), where its few large ops
    beat the per-block overhead of the others, and only when its peak fits the memory budget.
``"blocked"`` (:mod:`asag_core.sinkhorn_blocked`)
    small blocks in the work dtype, one row softmax per block and iteration, logits kept between
    passes where they fit a small cache: the CPU default (the fastest CPU path measured,
    ``benchmarks/attention.py``), and the bounded path of devices without the kernel path.
``"kernel"`` (:mod:`asag_core.sinkhorn_kernel`)
    one fused attention kernel call with log-sum-exp per half-step, inputs in their own dtype:
    CUDA and the meta device; on CPU only when named (PyTorch's CPU flash kernel standing in).

The rule for ``path=None``, in order: ``"empty"`` when Nq or Nk is 0 (SDPA's empty or zero output);
dense when tiny and within the budget; kernel on CUDA/meta where its kernels take the dtype and head
dims; on CPU blocked; on other devices (MPS, XPU, ..., and CUDA calls the kernels do not take) dense
where it fits the budget, else blocked (unmeasured there). ``chunk_size`` (query rows per block)
asks for a memory-bounded path, so the rule then never takes dense, and naming dense with it is an
error.

Two things happen below the rule, inside a path, and nowhere else: a kernel call that raises
(a GPU or build without that kernel) makes the kernel path warn and run the blocked path for that
call; and on CPU the blocked path computes the output of rows whose logits it does not cache with
PyTorch's fused CPU flash kernel (by blocks, with a warning, if that raises). Neither is remembered
between calls.
"""

from __future__ import annotations

import torch

from . import sinkhorn_kernel

#: What ``path=`` accepts besides None (automatic).
PATHS = ("dense", "blocked", "kernel")

#: Dense logits above this many bytes switch to a memory-bounded path.
DEFAULT_MEMORY_BUDGET_BYTES = 256 * 1024 * 1024
#: The dense path's peak holds about four logits-sized temporaries (logits, logits + g,
#: the lse workspace, the plan), so that is what the budget is compared with.
DENSE_PEAK_TEMPORARIES = 4
#: Calls with at most this many logits (B * H * Nq * Nk) take the dense path when it fits: measured on
#: CPU (1 thread), the blocked path is within 5 % of dense up to about 2^15 logits and faster above.
DENSE_MAX_ELEMENTS = 1 << 15


def check_path(path) -> None:
    if path is not None and path not in PATHS:
        raise ValueError(f"path must be None (automatic) or one of {', '.join(PATHS)}; got {path!r}")


def _cannot(path, device, dtype, d, dv, chunk_size):
    """Why a named path cannot run this call, or None."""
    if path == "dense" and chunk_size is not None:
        return "chunk_size asks for blocks of query rows, which the dense path does not have"
    if path == "kernel":
        return sinkhorn_kernel.unusable(device, dtype, d, dv)
    if path == "blocked" and device.type == "meta":
        return "it reads values (its underflow test), which meta tensors do not have"
    return None


def choose(device, dtype, b, h, nq, nk, d, dv, chunk_size=None, budget=DEFAULT_MEMORY_BUDGET_BYTES,
           path=None) -> str:
    """The path of a call with these shapes: (B, H, Nq, D) queries, Nk keys of value dim Dv, on
    ``device``, inputs of ``dtype``; ``path`` the caller's choice or None for the rule (module
    docstring). A named path that cannot run the call is a ValueError saying why."""
    check_path(path)
    if nq == 0 or nk == 0:
        return "empty"
    if path is not None:
        reason = _cannot(path, device, dtype, d, dv, chunk_size)
        if reason:
            raise ValueError(f"path {path!r} cannot run this call: {reason}")
        return path
    elements = b * h * nq * nk
    work_bytes = 8 if dtype == torch.float64 else 4
    dense_fits = chunk_size is None and DENSE_PEAK_TEMPORARIES * elements * work_bytes <= budget
    if dense_fits and elements <= DENSE_MAX_ELEMENTS:
        return "dense"
    if sinkhorn_kernel.unusable(device, dtype, d, dv, sinkhorn_kernel.DEVICES) is None:
        return "kernel"
    if device.type == "cpu":
        return "blocked"
    return "dense" if dense_fits else "blocked"
