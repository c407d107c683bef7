"""asag_core.sinkhorn.adversarial_attention against outside references.

References: torch.nn.functional.scaled_dot_product_attention, POT's
``ot.sinkhorn``, the mean of V, and the dense path (``sinkhorn_plan(q, k) @ v``)
for the memory-bounded paths. Every test runs on each path, named with
``path=``: "dense" (the reference), "blocked" (the CPU default; with its logits
cached, and streamed with ``chunk_size``), "kernel" (the CUDA path, PyTorch's CPU
flash kernel standing in on CPU) and the automatic choice. The kernel path has
its own tests too (test_sinkhorn_kernel.py).
"""

import math
import warnings

import numpy as np
import ot
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from asag_core import adversarial_attention, attention_path, sinkhorn_plan
from asag_core.sinkhorn import COSTS
from asag_core.sinkhorn_blocked import BLOCK_ELEMENTS, CACHE_BYTES, ROW_BLOCK_ELEMENTS, geometry

HUGE = 1 << 62  # a memory budget nothing exceeds


# a kernel that raises makes its call warn and compute another way: here that would test the wrong code
pytestmark = pytest.mark.filterwarnings("error::RuntimeWarning")

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


#: adversarial_attention arguments that select each path. "auto" with budget 1: the rule's bounded path.
PATHS = {
    "dense": {"path": "dense"},
    "blocked": {"path": "blocked"},
    "blocked streamed": {"path": "blocked", "chunk_size": 3},
    "kernel": {"path": "kernel", "chunk_size": 3},
    "auto": {"memory_budget_bytes": 1},
}
#: The paths that compute in float32 whatever the input dtype (the kernel path keeps the inputs' dtype).
FLOAT32_PATHS = [p for p in PATHS if p != "kernel"]


def _bool_mask(shape, seed, p=0.35):
    m = torch.rand(*shape, generator=torch.Generator().manual_seed(seed)) > p
    m[..., 0] = True  # every query keeps a key
    return m


# ---------------------------------------------------------------------------
# similarity cost, 0 iterations == SDPA
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("mask_kind", [None, "bool", "additive"])
def test_similarity_zero_iterations_equals_sdpa_all_layouts(path, mask_kind):
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
def test_similarity_zero_iterations_with_lam_is_sdpa_with_scale(path):
    q, k, v = _qkv(1, 2, 9, 13, 16, seed=4)
    ref = F.scaled_dot_product_attention(q, k, v, scale=2.5 / math.sqrt(16))
    torch.testing.assert_close(
        _attn(q, k, v, iterations=0, lam=2.5, cost="similarity", **PATHS[path]), ref, atol=1e-5, rtol=1e-5
    )


@pytest.mark.parametrize("path", list(PATHS))
def test_comfyui_mask_conventions_match_sdpa(path):
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
def test_uniform_plan_gives_mean_of_v(path, cost, lam):
    q, k, v = _qkv(2, 2, 5, 9, 4, seed=8)
    for it in (0, 2, 5):
        out = _attn(q, k, v, iterations=it, lam=lam, cost=cost, **PATHS[path])
        torch.testing.assert_close(out, v.mean(dim=2, keepdim=True).expand_as(out), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("path", list(PATHS))
def test_uniform_cost_with_mask_is_mean_over_admitted_keys(path):
    q, k, v = _qkv(1, 2, 6, 8, 4, seed=9)
    mask = _bool_mask((1, 2, 6, 8), seed=10)
    out = _attn(q, k, v, iterations=0, cost="uniform", mask=mask, **PATHS[path])
    w = mask.double()
    ref = (w @ v.double()) / w.sum(-1, keepdim=True)
    torch.testing.assert_close(out.double(), ref, atol=1e-6, rtol=1e-6)


# ---------------------------------------------------------------------------
# converged attention == POT plan @ V
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("path", FLOAT32_PATHS)  # float64 inputs: the kernels take at most float32
@pytest.mark.parametrize("lam", [0.7, 2.0])
def test_converged_attention_matches_pot_plan(path, lam):
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


BOUNDED = {
    "blocked": {"path": "blocked"},
    "blocked rows 4": {"path": "blocked", "chunk_size": 4},
    "blocked rows 10000": {"path": "blocked", "chunk_size": 10_000},
    "kernel": {"path": "kernel"},
    "kernel rows 4": {"path": "kernel", "chunk_size": 4},
    "auto, budget 1 (1 row)": {"memory_budget_bytes": 1},
}


@pytest.mark.parametrize("mask_kind", MASKS)
@pytest.mark.parametrize("nq,nk", SHAPES)
def test_bounded_paths_equal_dense(mask_kind, nq, nk):
    b, h, d = 2, 3, 8
    q, k, v = _qkv(b, h, nq, nk, d, seed=12, scale=1.5)
    mask = _mask_for(mask_kind, b, h, nq, nk, seed=13)
    for cost in ("adversarial", "similarity"):
        for it in (0, 3):
            kw = dict(iterations=it, lam=1.3, cost=cost, mask=mask)
            dense = _attn(q, k, v, path="dense", **kw)
            # the dense path is the plan of sinkhorn_plan applied to V
            torch.testing.assert_close(dense, sinkhorn_plan(q, k, **kw) @ v, atol=1e-6, rtol=1e-6)
            for name, bounded in BOUNDED.items():
                torch.testing.assert_close(_attn(q, k, v, **bounded, **kw), dense, atol=1e-5, rtol=1e-5, msg=name)


def test_auto_path_switches_on_the_memory_budget():
    # the dense path's peak holds four logits-sized temporaries; the rule takes it while they fit the budget
    q, k, v = _qkv(2, 3, 8, 8, 4, seed=14)
    peak = 4 * 2 * 3 * 8 * 8 * 4
    explicit = {p: _attn(q, k, v, path=p) for p in ("dense", "blocked")}
    assert not torch.equal(explicit["dense"], explicit["blocked"])  # so the outputs tell the paths apart
    for budget, expected in ((peak, "dense"), (peak - 1, "blocked")):
        assert attention_path(q, k, v, 3, skip_reshape=True, memory_budget_bytes=budget) == expected
        assert torch.equal(_attn(q, k, v, memory_budget_bytes=budget), explicit[expected])


def test_blocked_buffers_follow_the_memory_budget():
    # the block buffer and the logits cache of a call stay within half the budget (one row of one head at
    # least) and within CACHE_BYTES where the budget is larger; rows and heads per group shrink to fit
    for h, nq, nk in ((24, 1024, 1024), (4, 4608, 4608), (1, 32760, 32760), (3, 13, 9)):
        for budget in (1, 4096, 1 << 20, 1 << 24, 1 << 28, HUGE):
            rows, group, cached = geometry(h, nq, nk, 256, 4, budget)
            assert all(type(x) is int for x in (rows, group, cached)), (rows, group, cached)  # sizes and ranges
            assert 1 <= rows <= min(256, nq) and 1 <= group <= h and 0 <= cached <= nq
            buffers = group * (rows + cached) * nk * 4
            assert buffers <= max(min(CACHE_BYTES, budget // 2), nk * 4), (h, nq, nk, budget)
            if cached:  # the cached rows are whole blocks, or all rows
                assert cached == nq or cached % rows == 0
    # streamed (no cache) with the rows asked for: still whole numbers
    assert all(type(x) is int for x in geometry(8, 512, 512, 512, 4, HUGE, 0))


def test_a_partial_last_group_of_heads_reuses_the_buffers_as_they_are():
    """Heads in groups of 2 with 3 heads: the last group takes the first rows of the buffers (a resize
    would warn, which the filter makes an error), and the output is the dense path's."""
    q, k, v = _qkv(1, 3, 64, 64, 8, seed=41)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = adversarial_attention(q, k, v, 3, skip_reshape=True, skip_output_reshape=True, path="blocked",
                                    chunk_size=16, memory_budget_bytes=16384)
    dense = adversarial_attention(q, k, v, 3, skip_reshape=True, skip_output_reshape=True, path="dense")
    torch.testing.assert_close(out, dense)


def _check_geometry_is_maximal(h, nq, nk, asked, budget, cache_bytes, size=4):
    rows, group, cached = geometry(h, nq, nk, asked, size, budget, cache_bytes)
    limit = min(CACHE_BYTES if cache_bytes is None else cache_bytes, budget // 2)
    rows_fit = [r * nk <= ROW_BLOCK_ELEMENTS and 2 * r * nk * size <= budget for r in (rows, rows + 1)]
    assert rows == min(asked, nq) or (rows_fit[0] or rows == 1) and not rows_fit[1]
    block, head = rows * nk * size, nq * nk * size
    assert cached == nq or head + block > limit  # a group caches all its logits when one head's fit
    if cached == nq and group * (head + block) <= limit:  # whole heads cached
        assert group == h or (group + 1) * (head + block) > limit
        return
    group_fits = [g * rows * nk <= BLOCK_ELEMENTS and 2 * g * block <= budget for g in (group, group + 1)]
    assert group == h or (group_fits[0] or group == 1) and not group_fits[1]
    assert cached % rows == 0 or cached == nq
    assert cached == nq or group * (cached + rows) * nk * size + group * block > limit


@pytest.mark.parametrize("cache_bytes", [None, 0, 20479, 19456, 1 << 16])
def test_blocked_geometry_takes_as_much_as_its_bounds_allow(cache_bytes):
    """Each size is the largest its documented bounds allow: one more row per block, head per group or
    cached block would break a bound (or the size is already all there is)."""
    for h, nq, nk, asked in ((24, 1024, 1024, 256), (4, 4608, 4608, 256), (1, 64, 64, 64), (8, 64, 64, 16),
                             (1, 60, 64, 16), (1, 256, 64, 256), (1, 1 << 21, 1, 1 << 21), (1 << 20, 1, 1, 1)):
        for budget in (1 << 15, 1 << 16, 1 << 20, 1 << 28, HUGE):
            _check_geometry_is_maximal(h, nq, nk, asked, budget, cache_bytes)


def _largest_allocation(fn) -> int:
    """The most memory any single aten op allocated (its net allocation, children included)."""
    # the legacy profiler: the kineto one takes seconds to start on CUDA builds without a GPU
    with torch.autograd.profiler.profile(profile_memory=True, use_kineto=False) as prof:
        fn()
    return max(e.cpu_memory_usage for e in prof.function_events)


@pytest.mark.parametrize("bounded", ["blocked", "blocked rows 4", "kernel", "kernel rows 4", "auto"])
@pytest.mark.parametrize("with_mask", [False, True])
def test_bounded_paths_never_allocate_the_logits(with_mask, bounded):
    b, h, n, d = 1, 8, 512, 8
    q, k, v = _qkv(b, h, n, n, d, seed=31)
    logits_bytes = b * h * n * n * 4
    mask = _bool_mask((n, n), seed=32) if with_mask else None
    kw = dict(iterations=1, mask=mask)
    # the dense path, to see what holding the logits shows
    assert _largest_allocation(lambda: _attn(q, k, v, path="dense", **kw)) >= logits_bytes
    chosen = BOUNDED.get(bounded, {})  # auto: the rule, whose budget keeps it off the dense path
    largest = _largest_allocation(lambda: _attn(q, k, v, memory_budget_bytes=logits_bytes // 16, **chosen, **kw))
    # without a mask: at most half a head's logits (the kernel path's largest is its head-padded copy of q,
    # (B, H, N, D + 8) floats); with one: at most the (Nq, Nk) float bias of the mask
    assert largest <= (n * n * 4 if with_mask else n * n * 4 // 2)


@pytest.mark.parametrize("bounded", list(BOUNDED))
def test_bounded_paths_with_dv_different_from_d(bounded):
    q, k, v = _qkv(1, 2, 7, 5, 4, seed=15, dv=6)
    dense = _attn(q, k, v, path="dense")
    assert dense.shape == (1, 2, 7, 6)
    torch.testing.assert_close(_attn(q, k, v, **BOUNDED[bounded]), dense, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------
# dtypes and extreme logits
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("dtype,tol", [(torch.float16, 2e-3), (torch.bfloat16, 1.6e-2)])
@pytest.mark.parametrize("path", list(PATHS))
def test_half_precision_inputs(dtype, tol, path):
    q, k, v = _qkv(2, 2, 12, 10, 8, seed=16, dtype=dtype)
    for cost in COSTS:
        out = _attn(q, k, v, cost=cost, mask=_bool_mask((12, 10), seed=17), **PATHS[path])
        assert out.dtype == dtype
        assert torch.isfinite(out).all()
        ref = _attn(
            q.float(), k.float(), v.float(), cost=cost, mask=_bool_mask((12, 10), seed=17), path="dense"
        )
        torch.testing.assert_close(out.float(), ref, atol=tol, rtol=tol)
    # ComfyUI layout keeps the dtype too
    assert adversarial_attention(_tokens(q), _tokens(k), _tokens(v), 2, **PATHS[path]).dtype == dtype


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_logits_of_magnitude_1e4_stay_finite(path, dtype):
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


@pytest.mark.parametrize("path", ["blocked", "blocked streamed", "auto"])  # the kernels take at most float32
def test_logits_of_magnitude_1e4_bounded_equals_dense_in_float64(path):
    q, k, v = _qkv(2, 2, 12, 9, 16, seed=20, dtype=torch.float64, scale=100.0)
    for it in (0, 2, 8):
        dense = _attn(q, k, v, iterations=it, path="dense")
        torch.testing.assert_close(_attn(q, k, v, iterations=it, **PATHS[path]), dense, atol=1e-8, rtol=1e-8)


# ---------------------------------------------------------------------------
# fully masked rows / columns
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("path", list(PATHS))
def test_fully_masked_rows_give_zero_output(path):
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
                _attn(q[0:1, :, keep], k[0:1], v[0:1], iterations=it, cost=cost, path="dense"),
                atol=1e-5,
                rtol=1e-5,
            )


@pytest.mark.parametrize("path", list(PATHS))
def test_fully_masked_columns_are_ignored(path):
    q, k, v = _qkv(2, 2, 7, 6, 4, seed=22)
    mask = torch.ones(7, 6, dtype=torch.bool)
    mask[:, [1, 4]] = False
    keep = [0, 2, 3, 5]
    v_poisoned = v.clone()
    v_poisoned[:, :, [1, 4]] = 1e30  # would show up in the output if those keys got any mass
    for it in (0, 2, 6):
        out = _attn(q, k, v_poisoned, iterations=it, mask=mask, **PATHS[path])
        assert torch.isfinite(out).all()
        ref = _attn(q, k[:, :, keep], v[:, :, keep], iterations=it, path="dense")
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("path", list(PATHS))
def test_a_key_padding_mask_that_masks_every_key_of_one_element(path):
    # (B, 1, 1, Nk) with no key left for batch element 0: its output is 0, element 1's is unmasked attention
    q, k, v = _qkv(2, 2, 7, 6, 4, seed=24)
    keypad = torch.ones(2, 1, 1, 6, dtype=torch.bool)
    keypad[0] = False
    for it in (0, 2):
        out = _attn(q, k, v, iterations=it, mask=keypad, **PATHS[path])
        assert (out[0] == 0).all()
        torch.testing.assert_close(out[1:], _attn(q[1:], k[1:], v[1:], iterations=it, path="dense"), atol=1e-5,
                                   rtol=1e-5)


def test_attention_path_validates_and_reads_layouts_like_the_call():
    q, k, v = _qkv(1, 6, 9, 7, 8)
    kv = _qkv(1, 2, 9, 7, 8)[1:]
    flat = dict(q=_tokens(q), k=_tokens(kv[0]), v=_tokens(kv[1]))
    assert attention_path(flat["q"], flat["k"], flat["v"], 6, enable_gqa=True) == "dense"  # flat, grouped kv heads
    assert attention_path(flat["q"], flat["k"], flat["v"], 6, enable_gqa=True, chunk_size=2) == "blocked"
    for bad in (dict(chunk_size=0), dict(scale=math.nan), dict(mask=torch.ones(3, 3, dtype=torch.bool)),
                dict(iterations=-1), dict(lam=-1.0), dict(cost="l2"), dict(enable_gqa=False)):
        with pytest.raises(ValueError) as by_path:
            attention_path(flat["q"], flat["k"], flat["v"], 6, **{"enable_gqa": True, **bad})
        with pytest.raises(ValueError) as by_call:
            adversarial_attention(flat["q"], flat["k"], flat["v"], 6, **{"enable_gqa": True, **bad})
        assert str(by_path.value) == str(by_call.value)


def test_fully_masked_everything_is_zero():
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


def test_flat_inner_sizes_that_are_no_whole_number_of_heads_name_the_tensor():
    q, k, v = (_tokens(t) for t in _qkv(1, 2, 6, 5, 4))  # inner dim 8, 2 heads of 4
    with pytest.raises(ValueError) as err:
        adversarial_attention(q, k[..., :7], v[..., :7], 2)
    assert str(err.value) == "the last dim 7 of q/k/v is not divisible by heads=2"
    with pytest.raises(ValueError) as err:
        adversarial_attention(q[..., :7], k, v, 2)
    assert str(err.value) == "the last dim 7 of q/k/v is not divisible by heads=2"


def test_defaults_are_two_iterations_lam_one_adversarial():
    q, k, v = _qkv(1, 2, 6, 5, 4, seed=36)
    explicit = dict(iterations=2, lam=1.0, cost="adversarial")
    torch.testing.assert_close(sinkhorn_plan(q, k), sinkhorn_plan(q, k, **explicit), atol=0, rtol=0)
    assert not torch.allclose(sinkhorn_plan(q, k), sinkhorn_plan(q, k, iterations=3))
    torch.testing.assert_close(_attn(q, k, v), _attn(q, k, v, **explicit), atol=0, rtol=0)
    assert not torch.allclose(_attn(q, k, v), _attn(q, k, v, iterations=3))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("path", FLOAT32_PATHS)
def test_half_precision_inputs_are_computed_in_float32(dtype, path):
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
        bounded=draw(st.sampled_from(["blocked", "kernel", None])),
        seed=draw(st.integers(0, 2**16)),
    )


@settings(max_examples=120, deadline=None)
@given(case=_cases())
def test_properties(case):
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

    dense = _attn(q, k, v, path="dense", **kw)
    assert dense.shape == (b, h, nq, d) and torch.isfinite(dense).all()
    torch.testing.assert_close(dense, plan @ v, atol=1e-5, rtol=1e-5)
    chunked = _attn(q, k, v, chunk_size=case["chunk"], path=case["bounded"], **kw)
    # float32 rounding of the logits grows with their magnitude (up to ~600 here)
    max_logit = case["lam"] * float((q @ k.transpose(-1, -2)).abs().max()) / math.sqrt(d) + 6.0
    tol = 1e-5 * max(1.0, max_logit / 10)
    torch.testing.assert_close(chunked, dense, atol=tol, rtol=tol)
