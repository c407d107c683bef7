"""The backend interface of the Sinkhorn iteration (asag_core.sinkhorn_solver) against its reference.

Every backend's half-steps (row log-sum-exp, column log-sum-exp) and output are held to the dense
backend's on the same logits and potentials, with every kind of mask; the blocked backend's one-pass
step is held to the solver's own step (two log-sum-exp half-steps), also where its column sums
underflow; and ``line_potential`` sets the potentials of empty lines as documented.
"""

import math

import pytest
import torch

import asag_core.sinkhorn as sk
import asag_core.sinkhorn_blocked as blocked
import asag_core.sinkhorn_kernel as kernel
import asag_core.sinkhorn_solver as solver
from asag_core.sinkhorn_checks import logit_multiplier
from asag_core.sinkhorn_common import MASK_THRESHOLD, admissible, logits_of, mask_bias

B, H, NQ, NK, D = 2, 3, 40, 30, 8


# a kernel that raises makes its call warn and compute another way: here that would test the wrong code
pytestmark = pytest.mark.filterwarnings("error::RuntimeWarning")

def _randn(*shape, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).float()


def _masks():
    keep = torch.ones(B, NK, dtype=torch.bool)
    keep[0, NK // 2:] = False
    rows = torch.rand(B, 1, NQ, NK, generator=torch.Generator().manual_seed(1)) > 0.3
    rows[..., 0] = True
    rows[0, 0, 3] = False  # a fully masked row
    rows[1, 0, :, 2] = False  # a fully masked column
    ramp = -3.0 * torch.arange(NK, dtype=torch.float32)  # a real key bias, down to -87: not a mask
    return {
        "none": None,
        "keypad bool": keep[:, None, None, :],
        "key bias": torch.where(keep, ramp, torch.tensor(MASK_THRESHOLD - 1.0))[:, None, None, :],
        "query-axis bool": rows,
        "query-axis additive": _randn(NQ, NK, seed=2, scale=2.0).masked_fill(~rows[0, 0], -1e4),
    }


def _problem(mask, scale=1.5, lam=1.3):
    q, k, v = _randn(B, H, NQ, D, seed=3, scale=scale), _randn(B, H, NK, D, seed=4, scale=scale), _randn(
        B, H, NK, D, seed=5)
    multiplier = logit_multiplier("adversarial", lam, None, D)
    bias = mask_bias(mask, (B, H, NQ, NK), q.device, torch.float32)
    dense = solver.DenseBackend(logits_of(q, k, multiplier, bias), v, admissible(bias, -1))
    return q, k, v, multiplier, bias, dense


def _potentials(dense):
    """A column potential g of the dense reference after one iteration, and the row potential f from it."""
    g = solver.column_potentials(dense, 1)
    return g, solver.row_potential(dense, g)


def _close(a, b, ok=None):
    """Equal where the reference is finite (and, if given, on the admissible lines)."""
    keep = torch.isfinite(b) if ok is None else torch.isfinite(b) & ok
    torch.testing.assert_close(torch.where(keep, a, 0.0), torch.where(keep, b, 0.0), atol=2e-5, rtol=2e-5)
    assert torch.equal(torch.isfinite(a) | ~keep, torch.ones_like(keep))


def _blocked_groups(q, k, v, multiplier, bias, cache_bytes, flash=None):
    geometry = blocked.geometry(H, NQ, NK, 16, 4, 1 << 30, cache_bytes)
    assert geometry[2] == (NQ if cache_bytes else 0)
    yield from blocked.backends(q, k, v, multiplier, bias, *geometry, flash)


@pytest.mark.parametrize("cache_bytes", [1 << 20, 0], ids=["cached", "streamed"])
@pytest.mark.parametrize("mask", list(_masks()))
def test_blocked_half_steps_and_output_equal_the_dense_reference(mask, cache_bytes):
    q, k, v, multiplier, bias, dense = _problem(_masks()[mask])
    g, f = _potentials(dense)
    cols = torch.tensor([0, 2, 7, NK - 1])
    for bi, hs, backend in _blocked_groups(q, k, v, multiplier, bias, cache_bytes, kernel.cpu_kernel):
        at = (bi, hs)
        _close(backend.row_lse(None), dense.row_lse(None)[at])
        _close(backend.row_lse(g[at]), dense.row_lse(g)[at])
        _close(backend.column_lse(f[at]), dense.column_lse(f)[at])
        _close(backend.column_lse(f[at], cols), dense.column_lse(f)[at][..., cols])
        _close(backend.output(g[at]), dense.output(g)[at])
        _close(backend.output(None), dense.output(None)[at])


@pytest.mark.parametrize("mask", list(_masks()))
def test_kernel_half_steps_and_output_equal_the_dense_reference(mask):
    # the CPU flash kernel returns a finite lse for an empty line: compared on the admissible lines only
    m = _masks()[mask]
    q, k, v, multiplier, bias, dense = _problem(m)
    g, f = _potentials(dense)
    backend = kernel.KernelBackend(q, k, v, multiplier, m, 16, kernel.CPU_KERNELS)
    rows_ok = None if backend.row_ok is None else backend.row_ok.expand(B, H, NQ)
    cols_ok = None if backend.col_ok is None else backend.col_ok.expand(B, H, NK)
    _close(backend.row_lse(None), dense.row_lse(None)[..., 0], rows_ok)
    _close(backend.row_lse(g[..., 0, :]), dense.row_lse(g)[..., 0], rows_ok)
    _close(backend.column_lse(f[..., 0]), dense.column_lse(f)[..., 0, :], cols_ok)
    _close(solver.line_potential(backend.output(g[..., 0, :]), rows_ok[..., None] if rows_ok is not None else None),
           solver.line_potential(dense.output(g), rows_ok[..., None] if rows_ok is not None else None))
    assert (backend.row_ok is None) == (mask in ("none", "key bias", "keypad bool"))


@pytest.mark.parametrize("mask", ["none", "key bias", "query-axis additive"])
@pytest.mark.parametrize("scale,lam", [(1.5, 1.3), (4.0, 10.0)], ids=["unit", "underflowing"])
def test_blocked_one_pass_step_is_the_solvers_step(mask, scale, lam):
    # the blocked backend's step (one row softmax per block, column sums; log-domain fallback where a
    # column sum underflows) against the solver's step (two log-sum-exp half-steps) on the same backend
    q, k, v, multiplier, bias, dense = _problem(_masks()[mask], scale=scale, lam=lam)
    g1 = solver.column_potentials(dense, 1)
    if lam == 10.0:  # the case needs the fallback: the first step's softmax column sums underflow
        sums = torch.softmax(dense.logits, dim=-1).nan_to_num(0.0).sum(-2)
        assert bool((sums < blocked.underflow(torch.float32)).any())
    far = torch.where(torch.arange(NK) % 3 == 0, -90.0, 0.0)  # columns whose softmax sums underflow given g
    for bi, hs, backend in _blocked_groups(q, k, v, multiplier, bias, 0):
        for g in (None, g1[bi, hs], g1[bi, hs] + far):
            fused, two_pass = backend.step(g), solver.Backend.step(backend, g)
            tol = 1e-5 if lam < 10 else 1e-3  # |L| up to ~700: float32 conditioning of the two formulas
            torch.testing.assert_close(fused, two_pass, atol=tol, rtol=tol)


def test_line_potential_sets_empty_lines_to_zero_and_keeps_nan():
    minus_lse = torch.tensor([1.5, math.inf, math.nan, -2.0, 3.0])
    assert torch.equal(solver.line_potential(minus_lse).nan_to_num(9.0), torch.tensor([1.5, 0.0, 9.0, -2.0, 3.0]))
    ok = torch.tensor([True, True, True, True, False])
    assert torch.equal(solver.line_potential(minus_lse, ok).nan_to_num(9.0), torch.tensor([1.5, 0.0, 9.0, -2.0, 0.0]))
    assert solver.line_potential(minus_lse.double(), ok).dtype == torch.float64


def test_the_solver_loop_is_the_iteration_from_zero():
    # column_potentials runs ``iterations`` steps from g = None (0); solve is output after them
    _, _, _, _, _, dense = _problem(None)
    assert solver.column_potentials(dense, 0) is None
    g = None
    for it in range(1, 4):
        g = dense.step(g)
        torch.testing.assert_close(solver.column_potentials(dense, it), g, atol=0, rtol=0)
        torch.testing.assert_close(solver.solve(dense, it), dense.output(g), atol=0, rtol=0)
    zero = torch.zeros(B, H, 1, NK)
    torch.testing.assert_close(dense.step(None), dense.step(zero), atol=0, rtol=0)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, 123.0])
def test_the_kernels_value_for_an_empty_line_does_not_matter(value):
    # a kernel may return anything as the log-sum-exp of a line whose pairs are all masked (PyTorch's CPU
    # flash kernel returns 0): the kernel backend's row_ok / col_ok make the solver set that potential to 0
    def call(q, k, v, bias, scale):
        out, lse = kernel.cpu_kernel(q, k, v, bias, scale)[:2]
        if bias is not None:
            lse = lse.masked_fill((bias == -math.inf).all(-1), value)
        return out, lse

    m = _masks()["query-axis bool"]
    q, k, v, multiplier, bias, dense = _problem(m)
    out = sk.attention_heads(q, k, v, multiplier, m, 2, "kernel", 16, kernels={"flash": call, "efficient": call})
    torch.testing.assert_close(out, sk.attention_heads(q, k, v, multiplier, m, 2, "dense"), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dim", [-1, -2, 2, 3])
@pytest.mark.parametrize("kind", ["bool", "additive"])
def test_admissible_over_several_row_blocks_equals_one_reduction(dim, kind):
    """``admissible`` reduces the mask in blocks of 2**24 elements of query rows: over 4097 x 4096
    keys that is two blocks, and a column whose only pair lies in the second block stays admissible."""
    keep = torch.rand(1, 1, 4097, 4096, generator=torch.Generator().manual_seed(2)) > 0.999
    keep[..., 5] = False  # an empty column
    keep[..., 7] = False
    keep[..., -1, 7] = True  # a column whose only pair is in the last row (the second block)
    keep[..., 9, :] = False  # an empty row
    bias = keep if kind == "bool" else torch.zeros(keep.shape).masked_fill_(~keep, float("-inf"))
    got = admissible(bias, dim)
    assert got is not None and torch.equal(got, keep.any(dim=dim, keepdim=True))
