"""The path rule (asag_core.sinkhorn_paths) and the explicit ``path=``, the empty edges, the blocked
CPU path's own mechanics, the kernel fallback, and the precision the docstring states.

References: SDPA (the edges, and its float32 error on the same logits), the dense path, a float64
evaluation of the definition, and the rule's own documented order.
"""

import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

import asag_core.sinkhorn as sk
import asag_core.sinkhorn_blocked as blocked
import asag_core.sinkhorn_kernel as kernel
import asag_core.sinkhorn_paths as paths
from asag_core import adversarial_attention, attention_path
from asag_core.sinkhorn_checks import logit_multiplier
from asag_core.sinkhorn_common import mask_bias

HUGE = 1 << 62


# a kernel that raises makes its call warn and compute another way: here that would test the wrong code
pytestmark = pytest.mark.filterwarnings("error::RuntimeWarning")

def _randn(*shape, seed=0, scale=1.0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype)


def _qkv(b, h, nq, nk, d, seed=0, scale=1.0, dtype=torch.float32):
    return (_randn(b, h, nq, d, seed=seed, scale=scale, dtype=dtype),
            _randn(b, h, nk, d, seed=seed + 1, scale=scale, dtype=dtype),
            _randn(b, h, nk, d, seed=seed + 2, dtype=dtype))


def _attn(q, k, v, **kw):
    return adversarial_attention(q, k, v, q.shape[1], skip_reshape=True, skip_output_reshape=True, **kw)


def _path(q, k, v, **kw):
    return attention_path(q, k, v, q.shape[1], skip_reshape=True, **kw)


# ---------------------------------------------------------------------------
# the rule, and the caller's choice
# ---------------------------------------------------------------------------


def test_the_rule_in_order():
    tiny = _qkv(1, 2, 8, 8, 4)  # 128 logits
    big = _qkv(1, 2, 200, 100, 4)  # 40,000 logits: above DENSE_MAX_ELEMENTS
    assert _path(*tiny) == "dense"
    assert _path(*tiny, chunk_size=4) == "blocked"  # a chunk size forces a bounded path
    assert _path(*tiny, memory_budget_bytes=4 * 128 * 4 - 1) == "blocked"  # dense must fit the budget
    assert _path(*tiny, memory_budget_bytes=4 * 128 * 4) == "dense"
    assert _path(*big, memory_budget_bytes=HUGE) == "blocked"  # the fastest, whatever the budget
    assert _path(*big, chunk_size=3, path=None) == "blocked"


def test_a_named_path_is_taken_whatever_the_rule_says():
    tiny, big = _qkv(1, 2, 8, 8, 4), _qkv(1, 2, 200, 100, 4)
    for qkv in (tiny, big):
        for path in paths.PATHS:
            assert _path(*qkv, path=path) == path
        assert _path(*qkv, path="dense", memory_budget_bytes=1) == "dense"  # the budget only steers the rule
        assert _path(*qkv, path="kernel", chunk_size=3) == "kernel"


@pytest.mark.parametrize("shape", [(1, 2, 8, 8, 4), (1, 2, 300, 200, 8)])
@pytest.mark.parametrize("kw", [{}, {"chunk_size": 5}, {"memory_budget_bytes": 1}])
def test_the_call_takes_the_path_the_rule_names(shape, kw):
    # the automatic call is bit for bit the call on the path attention_path names, and not the others
    q, k, v = _qkv(*shape)
    named = {p: _attn(q, k, v, path=p, **kw) for p in paths.PATHS if not (p == "dense" and "chunk_size" in kw)}
    auto, chosen = _attn(q, k, v, **kw), _path(q, k, v, **kw)
    assert torch.equal(auto, named[chosen])
    assert not any(torch.equal(auto, out) for p, out in named.items() if p != chosen)


@pytest.mark.parametrize("bad", ["portable", "fused", "Dense", "auto", 1, True])
def test_an_unknown_path_is_an_error_naming_the_valid_ones(bad):
    q, k, v = _qkv(1, 2, 8, 8, 4)
    message = f"path must be None (automatic) or one of dense, blocked, kernel; got {bad!r}"
    for call in (_attn, _path):
        with pytest.raises(ValueError) as err:
            call(q, k, v, path=bad)
        assert str(err.value) == message


def test_a_named_path_that_cannot_run_the_call_says_why():
    q, k, v = _qkv(1, 2, 8, 8, 4)
    cases = [
        (dict(path="dense", chunk_size=4), (q, k, v),
         "path 'dense' cannot run this call: chunk_size asks for blocks of query rows, which the dense path "
         "does not have"),
        (dict(path="kernel"), (q.double(), k.double(), v.double()),
         "path 'kernel' cannot run this call: its kernels take float16, bfloat16 or float32, not float64"),
        (dict(path="kernel"), _qkv(1, 2, 8, 8, 254),
         "path 'kernel' cannot run this call: head dims 254 (+3) and 254 exceed its kernels' 256"),
        (dict(path="blocked"), tuple(t.to("meta") for t in (q, k, v)),
         "path 'blocked' cannot run this call: it reads values (its underflow test), which meta tensors do not "
         "have"),
    ]
    for kw, qkv, message in cases:
        for call in (_attn, _path):
            with pytest.raises(ValueError) as err:
                call(*qkv, **kw)
            assert str(err.value) == message


def test_dense_max_elements_is_the_boundary():
    b, h, d = 1, 2, 4
    nq = paths.DENSE_MAX_ELEMENTS // (b * h * 64)
    assert _path(*_qkv(b, h, nq, 64, d)) == "dense"
    assert _path(*_qkv(b, h, nq + 1, 64, d)) == "blocked"


def test_the_memory_budget_counts_the_work_dtype():
    """Off CPU and CUDA the dense path runs while its temporaries fit the budget: 4 of 1 x 8 x 1024 x 1536
    elements are 201 MB in float32 (the work dtype of bf16, fp16, fp32) and 403 MB in float64."""
    mps, shape = torch.device("mps"), (1, 8, 1024, 1536, 64, 64)
    temporaries = paths.DENSE_PEAK_TEMPORARIES * 8 * 1024 * 1536
    assert temporaries * 4 <= paths.DEFAULT_MEMORY_BUDGET_BYTES < temporaries * 8
    for dtype in (torch.bfloat16, torch.float16, torch.float32):
        assert paths.choose(mps, dtype, *shape) == "dense"
    assert paths.choose(mps, torch.float64, *shape) == "blocked"
    # exactly at the budget: 4 x 8 bytes x 2**23 elements is 256 MiB, which still fits
    assert paths.choose(mps, torch.float64, 1, 8, 1024, 1024, 64, 64) == "dense"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_meta_takes_the_cuda_path(dtype):
    q, k, v = (torch.empty(1, 8, 512, 64, device="meta", dtype=dtype) for _ in range(3))
    assert _path(q, k, v) == "kernel"
    assert paths.choose(torch.device("cuda"), dtype, 1, 8, 512, 512, 64, 64) == "kernel"
    assert paths.choose(torch.device("mps"), dtype, 1, 8, 512, 512, 64, 64) == "dense"  # unmeasured: today's rule
    assert paths.choose(torch.device("mps"), dtype, 1, 8, 4096, 4096, 64, 64) == "blocked"
    assert paths.choose(torch.device("cuda"), dtype, 1, 8, 4096, 4096, 256, 256) == "blocked"  # 259 > 256 dims
    with pytest.raises(ValueError, match="path 'kernel' cannot run this call: it runs on cuda, meta, cpu, not mps"):
        paths.choose(torch.device("mps"), dtype, 1, 8, 512, 512, 64, 64, path="kernel")
    assert paths.choose(torch.device("cpu"), dtype, 1, 8, 4096, 4096, 64, 64) == "blocked"  # CPU: named only
    assert paths.choose(torch.device("cpu"), dtype, 1, 8, 4096, 4096, 64, 64, path="kernel") == "kernel"


# ---------------------------------------------------------------------------
# Nq = 0, Nk = 0: what SDPA returns
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("nq,nk", [(0, 5), (4, 0), (0, 0)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_empty_queries_or_keys_give_sdpas_result(nq, nk, dtype):
    q, k, v = _qkv(2, 3, nq, nk, 4, dtype=dtype)
    v = v[..., :3].contiguous()
    ref = F.scaled_dot_product_attention(q, k, v)
    for kw in ({}, {"chunk_size": 2}, {"mask": torch.ones(nq, nk, dtype=torch.bool)}, {"iterations": 0},
               {"path": "dense"}, {"path": "blocked"}, {"path": "kernel"}):
        assert _path(q, k, v, **{x: y for x, y in kw.items() if x != "iterations"}) == "empty"
        out = _attn(q, k, v, **kw)
        assert out.shape == ref.shape == (2, 3, nq, 3) and out.dtype == dtype
        assert torch.equal(out, ref)  # empty, or zeros for no keys
        flat = adversarial_attention(q.transpose(1, 2).flatten(2), k.transpose(1, 2).flatten(2),
                                     v.transpose(1, 2).flatten(2), 3, **kw)
        assert torch.equal(flat, ref.transpose(1, 2).flatten(2))
    meta = _attn(*(t.to("meta") for t in (q, k, v)))
    assert meta.shape == ref.shape


# ---------------------------------------------------------------------------
# the blocked path
# ---------------------------------------------------------------------------

MASKS = {
    None: lambda b, nq, nk: None,
    "keypad": lambda b, nq, nk: torch.arange(nk).expand(b, 1, 1, nk) < torch.tensor([nk, nk // 2]).view(b, 1, 1, 1),
    "bool": lambda b, nq, nk: (torch.rand(b, 1, nq, nk, generator=torch.Generator().manual_seed(3)) > 0.3)
    | (torch.arange(nk) == 0),
    "additive": lambda b, nq, nk: _randn(nq, nk, seed=4, scale=2.0).masked_fill(torch.eye(nq, nk) > 0, -1e4),
}


def _blocked(q, k, v, mask, cost, iterations, rows, cache_bytes, flash):
    """The blocked backend called directly, with its geometry's cache size and output kernel given."""
    b, h, nq, d = q.shape
    nk = k.shape[2]
    bias = mask_bias(mask, (b, h, nq, nk), q.device, q.dtype)
    geometry = blocked.geometry(h, nq, nk, rows, 4, paths.DEFAULT_MEMORY_BUDGET_BYTES, cache_bytes)
    out = blocked.attention(q, k, v, logit_multiplier(cost, 1.0, None, d), bias, iterations, *geometry, flash)
    return out, geometry


@pytest.mark.parametrize("flash", [kernel.cpu_kernel, None], ids=["fused output", "block output"])
@pytest.mark.parametrize("cache", ["all", "some rows", "none"])
@pytest.mark.parametrize("mask", list(MASKS))
def test_blocked_cached_partly_cached_and_streamed_equal_dense(cache, mask, flash):
    b, h, nq, nk, d = 2, 3, 140, 100, 8  # 84,000 logits: above the dense size
    q, k, v = _qkv(b, h, nq, nk, d, seed=5, scale=1.5)
    m = MASKS[mask](b, nq, nk)
    head = nq * nk * 4
    cache_bytes = {"all": 2 * head, "some rows": head * 3 // 4, "none": 0}[cache]
    for it in (0, 1, 3):
        for cost in ("adversarial", "similarity"):
            out, (rows, group, cached) = _blocked(q, k, v, m, cost, it, 16, cache_bytes, flash)
            assert {"all": cached == nq, "some rows": 0 < cached < nq and cached % 16 == 0,
                    "none": cached == 0}[cache]
            dense = _attn(q, k, v, iterations=it, cost=cost, mask=m, path="dense")
            torch.testing.assert_close(out, dense, atol=1e-5, rtol=1e-5)
    assert _path(q, k, v, mask=m) == "blocked"


def _underflowing(seed=6):
    # lam 10 and logits up to ~700: columns far below every row's maximum sum to 0 in float32
    q, k, v = _qkv(1, 2, 256, 256, 64, seed=seed, scale=4.0)
    return q, k, v, dict(lam=10.0, iterations=2)


@pytest.mark.parametrize("kw", [{}, {"chunk_size": 32}])
def test_underflowing_column_sums_take_the_log_domain(kw):
    q, k, v, settings = _underflowing()
    # the case needs the fallback: the first iteration's softmax column sums underflow in float32, some to
    # exactly 0, whose potential -log(sum) would be infinite
    column_sums = torch.softmax(q * (-10.0 / 8) @ k.transpose(-1, -2), dim=-1).sum(-2)
    assert int((column_sums < blocked.underflow(torch.float32)).sum()) > 50 and bool((column_sums == 0).any())
    reference = _attn(q.double(), k.double(), v.double(), path="dense", **settings)
    out = _attn(q, k, v, path="blocked", **settings, **kw)
    dense32 = _attn(q, k, v, path="dense", **settings)
    error = (out.double() - reference).abs().max()
    assert error <= 2 * (dense32.double() - reference).abs().max() + 1e-6  # float32 conditioning, like dense


def test_blocked_passes_allocate_no_block_sized_temporaries():
    # the block buffer (and cache) is allocated once a call and reused: 32 row blocks x 3 passes make
    # no allocation of a block's size each, only the buffer and the output kernel's workspace
    def large_allocations(nq):
        q, k, v = _qkv(1, 2, nq, 512, 4, seed=7)  # D 4: the O(Nq D) tensors stay below a block
        rows, group, cached = blocked.geometry(2, nq, 512, 64, 4, paths.DEFAULT_MEMORY_BUDGET_BYTES, 0)
        block = group * rows * 512 * 4
        with torch.autograd.profiler.profile(profile_memory=True, use_kineto=False) as prof:
            _attn(q, k, v, chunk_size=64)
        return sum(1 for e in prof.function_events if e.cpu_memory_usage >= block and not e.cpu_children)

    assert large_allocations(2048) <= 3


def test_cached_logits_passes_allocate_nothing_per_iteration():
    # with the logits cached (no chunk_size), each pass reads the cache into the reused block buffer: more
    # iterations make no more allocations of a block's size
    q, k, v = _qkv(1, 2, 512, 512, 4, seed=7)
    rows, group, cached = blocked.geometry(2, 512, 512, blocked.DEFAULT_ROWS, 4, paths.DEFAULT_MEMORY_BUDGET_BYTES)
    assert cached == 512
    block = group * rows * 512 * 4

    def large_allocations(iterations):
        with torch.autograd.profiler.profile(profile_memory=True, use_kineto=False) as prof:
            _attn(q, k, v, path="blocked", iterations=iterations)
        return sum(1 for e in prof.function_events if e.cpu_memory_usage >= block and not e.cpu_children)

    assert large_allocations(1) == large_allocations(4)


def _counting(calls, fail=False):
    """Kernels of the CPU contract that record each call (and raise, if ``fail``)."""
    def call(q, k, v, bias, scale):
        calls.append(tuple(q.shape))
        if fail:
            raise RuntimeError("no kernel image")
        return kernel.cpu_kernel(q, k, v, bias, scale)

    return {"flash": call, "efficient": call}


def _heads_call(q, k, v, path, kernels, chunk_size=None, **kw):
    multiplier = logit_multiplier("adversarial", 1.0, None, q.shape[-1])
    return sk.attention_heads(q, k, v, multiplier, kw.get("mask"), 2, path, chunk_size, kernels=kernels)


def test_blocked_output_survives_a_failing_fused_kernel_for_that_call_only():
    q, k, v = _qkv(2, 2, 300, 200, 8, seed=8)
    dense = _attn(q, k, v, path="dense")
    calls = []
    with pytest.warns(RuntimeWarning) as caught:  # streamed rows (chunk_size): the output pass calls the kernel
        out = _heads_call(q, k, v, "blocked", _counting(calls, fail=True), chunk_size=64)
    assert [str(w.message) for w in caught] == [
        "ASAG: PyTorch's fused CPU attention kernel failed (flash: no kernel image); this call computes its "
        "output by blocks"] * 2  # once per batch element's group of heads
    torch.testing.assert_close(out, dense, atol=1e-5, rtol=1e-5)
    assert len(calls) == 2
    calls.clear()  # nothing remembers the failure: the next call uses the kernel again
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        torch.testing.assert_close(_heads_call(q, k, v, "blocked", _counting(calls), chunk_size=64), out,
                                   atol=1e-5, rtol=1e-5)
    assert len(calls) == 2


def test_a_failing_kernel_path_runs_the_blocked_path_for_that_call_only():
    q, k, v = _qkv(2, 2, 30, 20, 8, seed=8)
    mask = torch.ones(2, 1, 1, 20, dtype=torch.bool)
    mask[0, ..., 15:] = False
    dense = _attn(q, k, v, path="dense", mask=mask)
    calls = []
    with pytest.warns(RuntimeWarning) as caught:
        out = _heads_call(q, k, v, "kernel", _counting(calls, fail=True), mask=mask)
    assert [str(w.message) for w in caught] == [  # float32: the efficient kernel
        "ASAG: a fused attention kernel failed (efficient: no kernel image); this call runs the blocked path"]
    assert len(calls) == 1  # the first kernel call raised; the blocked path caches these logits whole
    torch.testing.assert_close(out, dense, atol=1e-5, rtol=1e-5)
    calls.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = _heads_call(q, k, v, "kernel", _counting(calls), mask=mask)
    assert len(calls) == 5 and torch.equal(again, _attn(q, k, v, path="kernel", mask=mask))


def test_a_query_axis_mask_makes_one_kernel_call_per_row_block_and_failures_name_the_kernel():
    q, k, v = _qkv(1, 3, 40, 24, 8, seed=10)
    mask = torch.rand(1, 1, 40, 24, generator=torch.Generator().manual_seed(3)) > 0.3
    mask[..., 0] = True
    calls = []
    out = _heads_call(q, k, v, "blocked", _counting(calls), chunk_size=16, mask=mask)
    assert calls == [(1, 3, 16, 8), (1, 3, 16, 8), (1, 3, 8, 8)]  # the output pass: 40 rows in blocks of 16
    torch.testing.assert_close(out, _attn(q, k, v, path="dense", mask=mask), atol=1e-5, rtol=1e-5)
    for path, message in (
        ("blocked", "ASAG: PyTorch's fused CPU attention kernel failed (flash: no kernel image); this call "
                    "computes its output by blocks"),
        ("kernel", "ASAG: a fused attention kernel failed (efficient: no kernel image); this call runs the "
                   "blocked path"),
    ):
        with pytest.warns(RuntimeWarning) as caught:
            _heads_call(q, k, v, path, _counting([], fail=True), chunk_size=16 if path == "blocked" else None,
                        mask=mask)
        assert [str(w.message) for w in caught] == [message]


def test_the_blocked_geometry_counts_heads_not_rows():
    """4 heads of 2 rows: the geometry puts all 4 heads in one group, so the fused output pass is one call."""
    q, k, v = _qkv(1, 4, 2, 2, 8, seed=11)
    calls = []
    _heads_call(q, k, v, "blocked", _counting(calls), chunk_size=1)
    assert calls == [(1, 4, 2, 8)]


def test_errors_that_are_not_the_kernels_are_not_swallowed():
    # only a kernel's own RuntimeError sends a call elsewhere: a wrong argument is still an error
    q, k, v = _qkv(1, 2, 30, 20, 8, seed=9)

    def wrong_contract(q, k, v, bias, scale):
        raise TypeError("a bug")

    with pytest.raises(TypeError, match="a bug"):
        _heads_call(q, k, v, "kernel", {"flash": wrong_contract, "efficient": wrong_contract})


# ---------------------------------------------------------------------------
# the precision sentence of the docstring
# ---------------------------------------------------------------------------


def _every_path(q, k, v, **kw):
    return {"dense": _attn(q, k, v, path="dense", **kw), "blocked": _attn(q, k, v, **kw),
            "blocked streamed": _attn(q, k, v, chunk_size=32, **kw),
            # the CUDA path's numbers, with PyTorch's CPU kernel of the same contract
            "kernel": _attn(q, k, v, path="kernel", **kw)}


def test_unit_scale_logits_every_path_agrees_to_1e_6():
    q, k, v = _qkv(1, 2, 256, 256, 64, seed=9)
    reference = _attn(q.double(), k.double(), v.double(), path="dense")
    for name, out in _every_path(q, k, v).items():
        assert (out.double() - reference).abs().max() < 1e-6, name


def test_large_logits_every_path_errs_like_sdpa_in_float32():
    # lam 10, |L| up to ~640: float32 conditioning; SDPA's own float32 softmax attention of logits of
    # that size errs as much, so ~1e-4 is the float32 floor, not a path's defect
    q, k, v = _qkv(1, 2, 256, 256, 64, seed=10, scale=3.6)
    lam = 10.0
    assert 500 < lam * float((q @ k.transpose(-1, -2)).abs().max()) / 8 < 800
    reference = _attn(q.double(), k.double(), v.double(), lam=lam, path="dense")
    logits = lam / 8 * q.double() @ k.double().transpose(-1, -2)
    with sdpa_kernel(SDPBackend.MATH):
        sdpa = F.scaled_dot_product_attention(q, k, v, scale=lam / 8)
    sdpa_error = float((sdpa.double() - torch.softmax(logits, -1) @ v.double()).abs().max())
    assert 1e-5 < sdpa_error < 3e-4
    for name, out in _every_path(q, k, v, lam=lam).items():
        error = float((out.double() - reference).abs().max())
        assert error < 3 * sdpa_error, (name, error, sdpa_error)


def test_blocked_softmax_blocks_give_the_plan():
    # one row softmax per block serves both updates: the plan of sinkhorn_plan, to rounding
    q, k, v = _qkv(1, 1, 64, 64, 8, seed=11, scale=2.0)
    rows, group, cached = blocked.geometry(1, 64, 64, 16, 4, HUGE)
    out = blocked.attention(q, k, v, -1.0 / math.sqrt(8), None, 3, rows, group, cached)
    torch.testing.assert_close(out, sk.sinkhorn_plan(q, k, iterations=3) @ v, atol=2e-6, rtol=2e-6)


# ---------------------------------------------------------------------------
# video length: Wan 2.1/2.2 at 480p x 81 frames is 32,760 tokens
# ---------------------------------------------------------------------------


def test_video_length_call_is_bounded_and_equals_the_kernel_path():
    # one head of 32,760 tokens: its N x N logits would be 4 GiB in float32; the default (blocked)
    # call allocates nothing near that and gives the kernel path's result (PyTorch's CPU flash kernel
    # in the CUDA kernels' place: one fused call per half-step, no logits at all)
    n = 32760
    q, k, v = _qkv(1, 1, n, n, 16, seed=12)
    assert _path(q, k, v) == "blocked"
    with torch.autograd.profiler.profile(profile_memory=True, use_kineto=False) as prof:
        out = _attn(q, k, v)
    largest = max(e.cpu_memory_usage for e in prof.function_events if not e.cpu_children)
    assert largest <= 16 << 20, f"an allocation of {largest / 2**20:.0f} MiB"
    torch.testing.assert_close(out, _attn(q, k, v, path="kernel"), atol=1e-5, rtol=1e-5)
