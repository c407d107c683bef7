"""asag_core.sinkhorn.adversarial_attention against outside references.

References: torch.nn.functional.scaled_dot_product_attention, POT's
``ot.sinkhorn``, the mean of V, and the dense path (``sinkhorn_plan(q, k) @ v``)
for the memory-bounded paths. The memory-bounded path has three CPU implementations:
"blocked" (the default on CPU), "fused" (PyTorch's CPU flash-attention kernel per
half-step) and "portable" (plain matmul/logsumexp blocks, used on other devices); all
are checked here, the fused one by hiding the blocked path, the portable one by
hiding both. The kernel path (CUDA) has its own tests (test_sinkhorn_kernel.py).
"""

import math

import numpy as np
import ot
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import asag_core.sinkhorn as sk
import asag_core.sinkhorn_blocked as blocked
import asag_core.sinkhorn_chunked as chunked
import asag_core.sinkhorn_fused as fused
import asag_core.sinkhorn_paths as paths
from asag_core import adversarial_attention, sinkhorn_plan
from asag_core.sinkhorn import COSTS

HUGE = 1 << 62  # memory budget that keeps the (small) calls here on the dense path


def _randn(*shape, seed=0, dtype=torch.float32, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype)


def _qkv(b=2, h=3, nq=10, nk=10, d=8, seed=0, dtype=torch.float32, scale=1.0, dv=None):
    return (
        _randn(b, h, nq, d, seed=seed, dtype=dtype, scale=scale),
        _randn(b, h, nk, d, seed=seed + 1, dtype=dtype, scale=scale),
        _randn(b, h, nk, dv or d, seed=seed + 2, dtype=dtype),
    )


def _tokens(x):
    """(B, H, N, D) -> (B, N, H*D), ComfyUI's layout."""
    b, h, n, d = x.shape
    return x.transpose(1, 2).reshape(b, n, h * d)


def _attn(q, k, v, **kw):
    """adversarial_attention on (B, H, N, D) tensors."""
    return adversarial_attention(q, k, v, q.shape[1], skip_reshape=True, skip_output_reshape=True, **kw)


@pytest.fixture(params=["blocked", "fused", "portable"])
def chunked_impl(request, monkeypatch):
    """Runs a test with each implementation of the memory-bounded path."""
    if request.param == "blocked":  # fail if another bounded path runs instead
        monkeypatch.setattr(fused, "attention", None)
        monkeypatch.setattr(chunked, "attention", None)
    else:
        _hide_blocked(monkeypatch)
    if request.param == "portable":
        monkeypatch.setattr(fused, "_FLASH_CPU", None)
    elif fused._FLASH_CPU is None:
        pytest.skip("this PyTorch has no CPU flash-attention kernel")
    else:
        monkeypatch.setattr(fused, "disable", _fail_on_fallback)
    return request.param


def _hide_blocked(monkeypatch):
    """The CPU rule without the blocked path: the fused path, or the portable one without the kernel."""
    monkeypatch.setattr(blocked, "usable", lambda device: False)


def _fail_on_fallback(error):
    # a fused-path test that silently ran the portable fallback would test the wrong path
    raise AssertionError(f"the fused kernel failed and the portable path took over: {error}")


def _bool_mask(shape, seed, p=0.35):
    m = torch.rand(*shape, generator=torch.Generator().manual_seed(seed)) > p
    m[..., 0] = True  # every query keeps a key
    return m


# ---------------------------------------------------------------------------
# similarity cost, 0 iterations == SDPA
# ---------------------------------------------------------------------------

PATHS = {"dense": {"memory_budget_bytes": HUGE}, "chunk3": {"chunk_size": 3}, "auto": {"memory_budget_bytes": 1}}


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("mask_kind", [None, "bool", "additive"])
def test_similarity_zero_iterations_equals_sdpa_all_layouts(path, mask_kind, chunked_impl):
    b, h, nq, nk, d = 2, 3, 11, 7, 8
    q, k, v = _qkv(b, h, nq, nk, d, seed=1)
    mask = None
    if mask_kind == "bool":
        mask = _bool_mask((b, h, nq, nk), seed=2)
    elif mask_kind == "additive":
        mask = _randn(b, 1, nq, nk, seed=3, scale=2.0)
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    kw = dict(iterations=0, cost="similarity", mask=mask, **PATHS[path])

    # ComfyUI layout (B, N, H*D) in and out
    out = adversarial_attention(_tokens(q), _tokens(k), _tokens(v), h, **kw)
    assert out.shape == (b, nq, h * d)
    torch.testing.assert_close(out, _tokens(ref), atol=1e-5, rtol=1e-5)
    # (B, H, N, D) in, (B, N, H*D) out
    out = adversarial_attention(q, k, v, h, skip_reshape=True, **kw)
    torch.testing.assert_close(out, _tokens(ref), atol=1e-5, rtol=1e-5)
    # (B, H, N, D) in and out
    out = adversarial_attention(q, k, v, h, skip_reshape=True, skip_output_reshape=True, **kw)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    # (B, N, H*D) in, (B, H, N, D) out
    out = adversarial_attention(_tokens(q), _tokens(k), _tokens(v), h, skip_output_reshape=True, **kw)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("path", list(PATHS))
def test_similarity_zero_iterations_with_lam_is_sdpa_with_scale(path, chunked_impl):
    q, k, v = _qkv(1, 2, 9, 13, 16, seed=4)
    ref = F.scaled_dot_product_attention(q, k, v, scale=2.5 / math.sqrt(16))
    torch.testing.assert_close(
        _attn(q, k, v, iterations=0, lam=2.5, cost="similarity", **PATHS[path]), ref, atol=1e-5, rtol=1e-5
    )


@pytest.mark.parametrize("path", list(PATHS))
def test_comfyui_mask_conventions_match_sdpa(path, chunked_impl):
    # ComfyUI: a 2-D mask is (Nq, Nk); a 3-D mask is (B, Nq, Nk) and gets its heads axis at dim 1
    b, h, nq, nk = 2, 3, 6, 5
    q, k, v = _qkv(b, h, nq, nk, 4, seed=5)
    kw = dict(iterations=0, cost="similarity", **PATHS[path])
    m3 = _bool_mask((b, nq, nk), seed=6)
    torch.testing.assert_close(
        _attn(q, k, v, mask=m3, **kw),
        F.scaled_dot_product_attention(q, k, v, attn_mask=m3[:, None]),
        atol=1e-5,
        rtol=1e-5,
    )
    m2 = _randn(nq, nk, seed=7)
    torch.testing.assert_close(
        _attn(q, k, v, mask=m2, **kw), F.scaled_dot_product_attention(q, k, v, attn_mask=m2), atol=1e-5, rtol=1e-5
    )


# ---------------------------------------------------------------------------
# uniform plan == mean of V
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("cost,lam", [("uniform", 1.0), ("uniform", 7.0), ("adversarial", 0.0), ("similarity", 0.0)])
def test_uniform_plan_gives_mean_of_v(path, cost, lam, chunked_impl):
    q, k, v = _qkv(2, 2, 5, 9, 4, seed=8)
    for it in (0, 2, 5):
        out = _attn(q, k, v, iterations=it, lam=lam, cost=cost, **PATHS[path])
        torch.testing.assert_close(out, v.mean(dim=2, keepdim=True).expand_as(out), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("path", list(PATHS))
def test_uniform_cost_with_mask_is_mean_over_admitted_keys(path, chunked_impl):
    q, k, v = _qkv(1, 2, 6, 8, 4, seed=9)
    mask = _bool_mask((1, 2, 6, 8), seed=10)
    out = _attn(q, k, v, iterations=0, cost="uniform", mask=mask, **PATHS[path])
    w = mask.double()
    ref = (w @ v.double()) / w.sum(-1, keepdim=True)
    torch.testing.assert_close(out.double(), ref, atol=1e-6, rtol=1e-6)


# ---------------------------------------------------------------------------
# converged attention == POT plan @ V
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["dense", "chunk3"])
@pytest.mark.parametrize("lam", [0.7, 2.0])
def test_converged_attention_matches_pot_plan(path, lam, chunked_impl):
    nq, nk, d = 9, 6, 5
    q, k, v = _qkv(1, 2, nq, nk, d, seed=11, dtype=torch.float64)
    out = _attn(q, k, v, iterations=300, lam=lam, **PATHS[path])
    assert out.dtype == torch.float64
    for h in range(2):
        m = (q[0, h] @ k[0, h].T).numpy() / math.sqrt(d)
        plan = nq * ot.sinkhorn(ot.unif(nq), ot.unif(nk), m, reg=1.0 / lam, numItermax=100_000, stopThr=1e-13)
        np.testing.assert_allclose(out[0, h].numpy(), plan @ v[0, h].numpy(), atol=1e-4, rtol=0)


# ---------------------------------------------------------------------------
# memory-bounded path == dense path
# ---------------------------------------------------------------------------


def _mask_for(kind, b, h, nq, nk, seed):
    if kind is None:
        return None
    if kind == "bool4d":
        return _bool_mask((b, h, nq, nk), seed)
    if kind == "additive4d":
        return _randn(b, h, nq, nk, seed=seed, scale=3.0)
    if kind == "bool3d":
        return _bool_mask((b, nq, nk), seed)
    if kind == "bool2d":
        return _bool_mask((nq, nk), seed)
    if kind == "additive2d":
        return _randn(nq, nk, seed=seed).masked_fill(~_bool_mask((nq, nk), seed + 1), float("-inf"))
    if kind == "keypad":  # (B, 1, 1, Nk), broadcast over heads and queries
        m = torch.ones(b, 1, 1, nk, dtype=torch.bool)
        m[0, ..., nk // 2 :] = False
        m[..., 0] = True
        return m
    raise AssertionError(kind)


MASKS = [None, "bool4d", "additive4d", "bool3d", "bool2d", "additive2d", "keypad"]
SHAPES = [(13, 9), (9, 13), (1, 1), (1, 6), (6, 1)]


@pytest.mark.parametrize("mask_kind", MASKS)
@pytest.mark.parametrize("nq,nk", SHAPES)
def test_chunked_equals_dense(mask_kind, nq, nk, chunked_impl):
    b, h, d = 2, 3, 8
    q, k, v = _qkv(b, h, nq, nk, d, seed=12, scale=1.5)
    mask = _mask_for(mask_kind, b, h, nq, nk, seed=13)
    for cost in ("adversarial", "similarity"):
        for it in (0, 3):
            kw = dict(iterations=it, lam=1.3, cost=cost, mask=mask)
            dense = _attn(q, k, v, memory_budget_bytes=HUGE, **kw)
            # the dense path is the plan of sinkhorn_plan applied to V
            torch.testing.assert_close(dense, sinkhorn_plan(q, k, **kw) @ v, atol=1e-6, rtol=1e-6)
            for chunk in (dict(chunk_size=4), dict(chunk_size=10_000), dict(memory_budget_bytes=1)):  # budget 1: 1 row
                torch.testing.assert_close(_attn(q, k, v, **chunk, **kw), dense, atol=1e-5, rtol=1e-5)


def test_auto_path_switches_on_the_memory_budget(monkeypatch):
    q, k, v = _qkv(2, 3, 8, 8, 4, seed=14)
    calls = []
    monkeypatch.setattr(sk, "_dense_potential", lambda *a, **kw: calls.append("dense") or torch.zeros(2, 3, 1, 8))
    peak = sk._DENSE_PEAK_TEMPORARIES * 2 * 3 * 8 * 8 * 4  # the dense path's peak: a few logits-sized temporaries
    _attn(q, k, v, memory_budget_bytes=peak)  # fits exactly
    assert calls == ["dense"]
    _attn(q, k, v, memory_budget_bytes=peak - 1)
    assert calls == ["dense"]


def test_the_fused_path_makes_one_kernel_call_per_half_step(monkeypatch):
    if fused._FLASH_CPU is None:
        pytest.skip("this PyTorch has no CPU flash-attention kernel")
    _hide_blocked(monkeypatch)
    calls = []
    kernel = fused._FLASH_CPU
    monkeypatch.setattr(fused, "_FLASH_CPU", lambda *a, **kw: calls.append(a[0].shape) or kernel(*a, **kw))
    monkeypatch.setattr(chunked, "attention", None)  # the portable path would fail
    q, k, v = _qkv(1, 2, 8, 6, 4, seed=30)
    _attn(q, k, v, iterations=2, chunk_size=3)
    assert len(calls) == 5  # 2 x (row pass + column pass) + output


def _count_kernel_calls(monkeypatch):
    calls = []
    kernel = fused._FLASH_CPU
    monkeypatch.setattr(fused, "_FLASH_CPU", lambda *a, **kw: calls.append(a[0].shape[2]) or kernel(*a, **kw))
    return calls


def test_fused_path_keeps_a_key_padding_mask_a_broadcast_view(monkeypatch):
    # a (B, 1, 1, Nk) mask has no query axis: the row updates and the output take all queries in one
    # kernel call; only the column updates (queries as keys: the mask has a key axis there) go in blocks
    if fused._FLASH_CPU is None:
        pytest.skip("this PyTorch has no CPU flash-attention kernel")
    _hide_blocked(monkeypatch)
    calls = _count_kernel_calls(monkeypatch)
    nq, nk, rows, it = 10, 7, 3, 2
    q, k, v = _qkv(2, 2, nq, nk, 4, seed=33)
    keypad = _mask_for("keypad", 2, 2, nq, nk, seed=0)
    out = _attn(q, k, v, iterations=it, mask=keypad, chunk_size=rows)
    torch.testing.assert_close(out, _attn(q, k, v, iterations=it, mask=keypad, memory_budget_bytes=HUGE))
    col_blocks = [min(rows, nk - start) for start in range(0, nk, rows)]
    assert calls == it * ([nq] + col_blocks) + [nq]


def test_chunk_rows_follow_the_memory_budget(monkeypatch):
    # rows per block = budget // (three float32 (rows, N) temporaries per head), at least 1
    if fused._FLASH_CPU is None:
        pytest.skip("this PyTorch has no CPU flash-attention kernel")
    _hide_blocked(monkeypatch)
    calls = _count_kernel_calls(monkeypatch)
    b, h, n = 1, 2, 12
    q, k, v = _qkv(b, h, n, n, 4, seed=34)
    mask = _bool_mask((n, n), seed=35)  # a query axis: the mask is built block by block
    for budget, rows in ((1, 1), (b * h * n * 4 * 3 * 5, 5), (b * h * n * 4 * 3 * 5 - 1, 4)):
        calls.clear()
        _attn(q, k, v, iterations=1, mask=mask, memory_budget_bytes=budget)
        assert calls == 3 * [min(rows, n - start) for start in range(0, n, rows)], budget


def _largest_allocation(fn) -> int:
    """The most memory any single aten op allocated (its net allocation, children included)."""
    # the legacy profiler: the kineto one takes seconds to start on CUDA builds without a GPU
    with torch.autograd.profiler.profile(profile_memory=True, use_kineto=False) as prof:
        fn()
    return max(e.cpu_memory_usage for e in prof.function_events)


@pytest.mark.parametrize("with_mask", [False, True])
def test_chunked_path_never_allocates_the_logits(with_mask, chunked_impl, monkeypatch):
    b, h, n, d = 1, 8, 512, 8
    q, k, v = _qkv(b, h, n, n, d, seed=31)
    logits_bytes = b * h * n * n * 4
    mask = _bool_mask((n, n), seed=32) if with_mask else None
    kw = dict(iterations=1, mask=mask)
    with monkeypatch.context() as dense_for_any_size:  # the dense path, to see what holding the logits shows
        dense_for_any_size.setattr(paths, "DENSE_MAX_ELEMENTS", HUGE)
        assert _largest_allocation(lambda: _attn(q, k, v, memory_budget_bytes=HUGE, **kw)) >= logits_bytes
    largest = _largest_allocation(lambda: _attn(q, k, v, memory_budget_bytes=logits_bytes // 16, **kw))
    # without a mask: nothing near one head's logits; with one: at most the (Nq, Nk) float bias of the mask
    assert largest <= (n * n * 4 if with_mask else n * n * 4 // 4)


def test_chunked_path_with_dv_different_from_d(chunked_impl):
    q, k, v = _qkv(1, 2, 7, 5, 4, seed=15, dv=6)
    dense = _attn(q, k, v, memory_budget_bytes=HUGE)
    assert dense.shape == (1, 2, 7, 6)
    torch.testing.assert_close(_attn(q, k, v, chunk_size=2), dense, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------
# dtypes and extreme logits
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("dtype,tol", [(torch.float16, 2e-3), (torch.bfloat16, 1.6e-2)])
@pytest.mark.parametrize("path", list(PATHS))
def test_half_precision_inputs(dtype, tol, path, chunked_impl):
    q, k, v = _qkv(2, 2, 12, 10, 8, seed=16, dtype=dtype)
    for cost in COSTS:
        out = _attn(q, k, v, cost=cost, mask=_bool_mask((12, 10), seed=17), **PATHS[path])
        assert out.dtype == dtype
        assert torch.isfinite(out).all()
        ref = _attn(
            q.float(), k.float(), v.float(), cost=cost, mask=_bool_mask((12, 10), seed=17), memory_budget_bytes=HUGE
        )
        torch.testing.assert_close(out.float(), ref, atol=tol, rtol=tol)
    # ComfyUI layout keeps the dtype too
    assert adversarial_attention(_tokens(q), _tokens(k), _tokens(v), 2, **PATHS[path]).dtype == dtype


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_logits_of_magnitude_1e4_stay_finite(path, dtype, chunked_impl):
    q, k, v = _qkv(1, 2, 12, 9, 16, seed=18, dtype=dtype, scale=100.0)
    logits = q.double() @ k.double().transpose(-1, -2) / 4
    assert float(logits.abs().max()) > 1e4
    for cost in COSTS:
        for it in (0, 2, 8):
            out = _attn(q, k, v, iterations=it, cost=cost, mask=_bool_mask((12, 9), seed=19), **PATHS[path])
            assert torch.isfinite(out).all()
            assert out.dtype == dtype
            # a convex combination of the values
            assert (out.float() <= v.float().amax(2, keepdim=True) + 1e-2).all()
            assert (out.float() >= v.float().amin(2, keepdim=True) - 1e-2).all()


def test_logits_of_magnitude_1e4_chunked_equals_dense_in_float64(chunked_impl):
    q, k, v = _qkv(2, 2, 12, 9, 16, seed=20, dtype=torch.float64, scale=100.0)
    for it in (0, 2, 8):
        dense = _attn(q, k, v, iterations=it, memory_budget_bytes=HUGE)
        torch.testing.assert_close(_attn(q, k, v, iterations=it, chunk_size=5), dense, atol=1e-8, rtol=1e-8)


# ---------------------------------------------------------------------------
# fully masked rows / columns
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("path", list(PATHS))
def test_fully_masked_rows_give_zero_output(path, chunked_impl):
    q, k, v = _qkv(2, 2, 7, 6, 4, seed=21)
    mask = torch.ones(2, 2, 7, 6, dtype=torch.bool)
    mask[0, :, 3] = False
    mask[1, 1, [0, 6]] = False
    for cost in COSTS:
        for it in (0, 2):
            out = _attn(q, k, v, iterations=it, cost=cost, mask=mask, **PATHS[path])
            assert torch.isfinite(out).all()
            assert (out[0, :, 3] == 0).all() and (out[1, 1, [0, 6]] == 0).all()
            # the other rows are attention of the remaining queries alone
            keep = [0, 1, 2, 4, 5, 6]
            torch.testing.assert_close(
                out[0:1, :, keep],
                _attn(q[0:1, :, keep], k[0:1], v[0:1], iterations=it, cost=cost, memory_budget_bytes=HUGE),
                atol=1e-5,
                rtol=1e-5,
            )


@pytest.mark.parametrize("path", list(PATHS))
def test_fully_masked_columns_are_ignored(path, chunked_impl):
    q, k, v = _qkv(2, 2, 7, 6, 4, seed=22)
    mask = torch.ones(7, 6, dtype=torch.bool)
    mask[:, [1, 4]] = False
    keep = [0, 2, 3, 5]
    v_poisoned = v.clone()
    v_poisoned[:, :, [1, 4]] = 1e30  # would show up in the output if those keys got any mass
    for it in (0, 2, 6):
        out = _attn(q, k, v_poisoned, iterations=it, mask=mask, **PATHS[path])
        assert torch.isfinite(out).all()
        ref = _attn(q, k[:, :, keep], v[:, :, keep], iterations=it, memory_budget_bytes=HUGE)
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_fully_masked_everything_is_zero(chunked_impl):
    q, k, v = _qkv(1, 2, 5, 4, 4, seed=23)
    mask = torch.zeros(5, 4, dtype=torch.bool)
    for path in PATHS.values():
        out = _attn(q, k, v, mask=mask, **path)
        assert (out == 0).all()


# ---------------------------------------------------------------------------
# validation
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs,name",
    [
        ({"iterations": -1}, "iterations"),
        ({"iterations": 2.0}, "iterations"),
        ({"iterations": None}, "iterations"),
        ({"lam": -1.0}, "lam"),
        ({"lam": float("nan")}, "lam"),
        ({"lam": float("-inf")}, "lam"),
        ({"lam": float("inf")}, "lam"),
        ({"lam": None}, "lam"),
        ({"cost": "Adversarial"}, "cost"),
        ({"cost": None}, "cost"),
        ({"chunk_size": 0}, "chunk_size"),
        ({"chunk_size": 2.5}, "chunk_size"),
        ({"mask": torch.ones(4, 4, dtype=torch.bool)}, "mask"),
        ({"mask": torch.ones(1, 1, 1, 1, 6, 5)}, "mask"),
        ({"mask": "causal"}, "mask"),
    ],
)
def test_bad_parameters_raise_value_error_naming_them(kwargs, name):
    q, k, v = (_tokens(t) for t in _qkv(1, 2, 6, 5, 4))
    with pytest.raises(ValueError, match=name):
        adversarial_attention(q, k, v, 2, **kwargs)


@pytest.mark.parametrize("heads", [3, 0, -2, 2.0, True])
def test_bad_heads_raise_value_error(heads):
    q, k, v = (_tokens(t) for t in _qkv(1, 2, 6, 5, 4))  # inner dim 8
    with pytest.raises(ValueError, match="heads"):
        adversarial_attention(q, k, v, heads)


@pytest.mark.parametrize(
    "shapes,name",
    [
        (((1, 6, 8), (1, 5, 12), (1, 5, 12)), r"\bq\b.*\bk\b"),  # head dims differ
        (((1, 6, 8), (2, 5, 8), (2, 5, 8)), r"\bq\b.*\bk\b"),  # batch differs
        (((1, 6, 8), (1, 5, 8), (1, 4, 8)), r"\bv\b"),  # v has other keys than k
        (((1, 6, 8), (1, 5, 8), (1, 5)), r"\bv\b"),  # v not 3-D
        (((1, 2, 6, 4), (1, 2, 5, 4), (1, 2, 5, 4)), r"\bq\b"),  # 4-D without skip_reshape
    ],
)
def test_mismatched_shapes_raise_value_error(shapes, name):
    q, k, v = (torch.zeros(s) for s in shapes)
    with pytest.raises(ValueError, match=name):
        adversarial_attention(q, k, v, 2)


@pytest.mark.parametrize("bad", ["q", "k", "v"])
def test_wrong_layout_errors_name_the_tensor_the_layout_and_what_it_got(bad):
    heads_layout = dict(zip("qkv", _qkv(1, 2, 6, 5, 4), strict=True))
    good = {name: _tokens(t) for name, t in heads_layout.items()}
    args = dict(good, **{bad: heads_layout[bad]})
    with pytest.raises(ValueError) as err:
        adversarial_attention(args["q"], args["k"], args["v"], 2)
    assert str(err.value) == f"{bad} must be a (batch, tokens, heads*dim) tensor, got {args[bad].shape}"
    args = dict(heads_layout, **{bad: [1.0]})
    with pytest.raises(ValueError) as err:
        adversarial_attention(args["q"], args["k"], args["v"], 2, skip_reshape=True)
    assert str(err.value) == f"{bad} must be a (batch, heads, tokens, dim) tensor, got {list}"


def test_defaults_are_two_iterations_lam_one_adversarial():
    q, k, v = _qkv(1, 2, 6, 5, 4, seed=36)
    explicit = dict(iterations=2, lam=1.0, cost="adversarial")
    torch.testing.assert_close(sinkhorn_plan(q, k), sinkhorn_plan(q, k, **explicit), atol=0, rtol=0)
    assert not torch.allclose(sinkhorn_plan(q, k), sinkhorn_plan(q, k, iterations=3))
    torch.testing.assert_close(_attn(q, k, v), _attn(q, k, v, **explicit), atol=0, rtol=0)
    assert not torch.allclose(_attn(q, k, v), _attn(q, k, v, iterations=3))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("path", list(PATHS))
def test_half_precision_inputs_are_computed_in_float32(dtype, path, chunked_impl):
    # the same float32 computation, rounded once at the end
    q, k, v = _qkv(2, 2, 12, 10, 8, seed=37, dtype=dtype)
    mask = _bool_mask((12, 10), seed=38)
    out = _attn(q, k, v, mask=mask, **PATHS[path])
    assert torch.equal(out, _attn(q.float(), k.float(), v.float(), mask=mask, **PATHS[path]).to(dtype))


def test_skip_reshape_wants_4d():
    q, k, v = (_tokens(t) for t in _qkv(1, 2, 6, 5, 4))
    with pytest.raises(ValueError, match=r"\bq\b"):
        adversarial_attention(q, k, v, 2, skip_reshape=True)


# ---------------------------------------------------------------------------
# properties over shapes and parameters
# ---------------------------------------------------------------------------


@st.composite
def _cases(draw):
    b, h = draw(st.integers(1, 2)), draw(st.integers(1, 3))
    nq, nk, d = draw(st.integers(1, 9)), draw(st.integers(1, 9)), draw(st.integers(1, 8))
    return dict(
        b=b,
        h=h,
        nq=nq,
        nk=nk,
        d=d,
        iterations=draw(st.integers(0, 5)),
        cost=draw(st.sampled_from(COSTS)),
        lam=draw(st.sampled_from([0.0, 0.3, 1.0, 2.5, 6.0])),
        scale=draw(st.sampled_from([0.1, 1.0, 10.0])),
        mask=draw(st.sampled_from([None, "bool", "additive", "keypad"])),
        chunk=draw(st.integers(1, 10)),
        seed=draw(st.integers(0, 2**16)),
    )


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=_cases())
def test_properties(case, chunked_impl):
    b, h, nq, nk, d = (case[x] for x in ("b", "h", "nq", "nk", "d"))
    q, k, v = _qkv(b, h, nq, nk, d, seed=case["seed"], scale=case["scale"])
    mask = None
    if case["mask"] == "bool":
        mask = _bool_mask((b, h, nq, nk), seed=case["seed"])
    elif case["mask"] == "additive":
        mask = _randn(b, 1, nq, nk, seed=case["seed"], scale=2.0)
    elif case["mask"] == "keypad":
        mask = _bool_mask((b, 1, 1, nk), seed=case["seed"])
    kw = dict(iterations=case["iterations"], lam=case["lam"], cost=case["cost"], mask=mask)

    plan = sinkhorn_plan(q, k, **kw)
    assert torch.isfinite(plan).all() and (plan >= 0).all()
    torch.testing.assert_close(plan.sum(-1), torch.ones(b, h, nq), atol=1e-5, rtol=0)
    if mask is not None and mask.dtype == torch.bool:
        assert (plan[~mask.expand(b, h, nq, nk)] == 0).all()

    dense = _attn(q, k, v, memory_budget_bytes=HUGE, **kw)
    assert dense.shape == (b, h, nq, d) and torch.isfinite(dense).all()
    torch.testing.assert_close(dense, plan @ v, atol=1e-5, rtol=1e-5)
    chunked = _attn(q, k, v, chunk_size=case["chunk"], **kw)
    # float32 rounding of the logits grows with their magnitude (up to ~600 here)
    max_logit = case["lam"] * float((q @ k.transpose(-1, -2)).abs().max()) / math.sqrt(d) + 6.0
    tol = 1e-5 * max(1.0, max_logit / 10)
    torch.testing.assert_close(chunked, dense, atol=tol, rtol=tol)
