"""The path rule (asag_core.sinkhorn_paths), the empty edges, the blocked CPU path's own mechanics,
and the precision the docstring states.

References: SDPA (the edges, and its float32 error on the same logits), the dense path, a float64
evaluation of the definition, and the rule's own documented order.
"""

import math

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

import asag_core.sinkhorn as sk
import asag_core.sinkhorn_blocked as blocked
import asag_core.sinkhorn_chunked as chunked
import asag_core.sinkhorn_fused as fused
import asag_core.sinkhorn_kernel as kernel
import asag_core.sinkhorn_paths as paths
from asag_core import adversarial_attention, attention_path

HUGE = 1 << 62


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


def _dense(q, k, v, monkeypatch, **kw):
    """The dense path whatever the size (the reference the bounded paths are held to)."""
    with monkeypatch.context() as m:
        m.setattr(paths, "DENSE_MAX_ELEMENTS", HUGE)
        return _attn(q, k, v, memory_budget_bytes=HUGE, **kw)


# ---------------------------------------------------------------------------
# the rule
# ---------------------------------------------------------------------------


def test_the_rule_in_order(monkeypatch):
    tiny = _qkv(1, 2, 8, 8, 4)  # 128 logits
    big = _qkv(1, 2, 200, 100, 4)  # 40,000 logits: above DENSE_MAX_ELEMENTS
    assert _path(*tiny) == "dense"
    assert _path(*tiny, chunk_size=4) == "blocked"  # a chunk size forces a bounded path
    assert _path(*tiny, memory_budget_bytes=4 * 128 * 4 - 1) == "blocked"  # dense must fit the budget
    assert _path(*tiny, memory_budget_bytes=4 * 128 * 4) == "dense"
    assert _path(*big, memory_budget_bytes=HUGE) == "blocked"  # the fastest, whatever the budget
    monkeypatch.setattr(blocked, "usable", lambda device: False)
    assert _path(*big) == "fused"
    assert _path(big[0], big[1], big[2][..., :3]) == "portable"  # the fused kernel wants Dv = D
    monkeypatch.setattr(fused, "_FLASH_CPU", None)
    assert _path(*big) == "portable"


def test_dense_max_elements_is_the_boundary():
    b, h, d = 1, 2, 4
    nq = paths.DENSE_MAX_ELEMENTS // (b * h * 64)
    assert _path(*_qkv(b, h, nq, 64, d)) == "dense"
    assert _path(*_qkv(b, h, nq + 1, 64, d)) == "blocked"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_meta_takes_the_cuda_path(dtype):
    q, k, v = (torch.empty(1, 8, 512, 64, device="meta", dtype=dtype) for _ in range(3))
    assert _path(q, k, v) == "kernel"
    assert paths.choose(torch.device("cuda"), dtype, 1, 8, 512, 512, 64, 64) == "kernel"
    assert paths.choose(torch.device("mps"), dtype, 1, 8, 512, 512, 64, 64) == "dense"  # unmeasured: today's rule
    assert paths.choose(torch.device("mps"), dtype, 1, 8, 4096, 4096, 64, 64) == "portable"
    assert paths.choose(torch.device("cuda"), dtype, 1, 8, 4096, 4096, 256, 256) == "portable"  # 259 > 256 dims


@pytest.mark.parametrize("kw", [{}, {"chunk_size": 5}, {"memory_budget_bytes": 1}])
def test_the_call_takes_the_path_the_rule_names(kw, monkeypatch):
    ran = []
    for name, module in (("blocked", blocked), ("fused", fused), ("portable", chunked)):
        real = module.attention
        monkeypatch.setattr(module, "attention", lambda *a, _n=name, _r=real: ran.append(_n) or _r(*a))
    real_dense = sk._dense_attention
    monkeypatch.setattr(sk, "_dense_attention", lambda *a: ran.append("dense") or real_dense(*a))
    for shape in ((1, 2, 8, 8, 4), (1, 2, 300, 200, 8)):
        q, k, v = _qkv(*shape)
        ran.clear()
        _attn(q, k, v, **kw)
        assert ran == [_path(q, k, v, **kw)]


# ---------------------------------------------------------------------------
# Nq = 0, Nk = 0: what SDPA returns
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("nq,nk", [(0, 5), (4, 0), (0, 0)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_empty_queries_or_keys_give_sdpas_result(nq, nk, dtype):
    q, k, v = _qkv(2, 3, nq, nk, 4, dtype=dtype)
    v = v[..., :3].contiguous()
    ref = F.scaled_dot_product_attention(q, k, v)
    for kw in ({}, {"chunk_size": 2}, {"mask": torch.ones(nq, nk, dtype=torch.bool)}, {"iterations": 0}):
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


@pytest.mark.parametrize("cache", ["all", "some rows", "none"])
@pytest.mark.parametrize("mask", list(MASKS))
def test_blocked_cached_partly_cached_and_streamed_equal_dense(cache, mask, monkeypatch):
    b, h, nq, nk, d = 2, 3, 140, 100, 8  # 84,000 logits: above the dense size
    q, k, v = _qkv(b, h, nq, nk, d, seed=5, scale=1.5)
    m = MASKS[mask](b, nq, nk)
    head = nq * nk * 4
    monkeypatch.setattr(blocked, "CACHE_BYTES", {"all": 2 * head, "some rows": head * 3 // 4, "none": 0}[cache])
    monkeypatch.setattr(blocked, "DEFAULT_ROWS", 16)
    rows, group, cached = blocked.geometry(h, nq, nk, 16, 4, paths.DEFAULT_MEMORY_BUDGET_BYTES)
    assert {"all": cached == nq, "some rows": 0 < cached < nq and cached % 16 == 0, "none": cached == 0}[cache]
    for it in (0, 1, 3):
        for cost in ("adversarial", "similarity"):
            kw = dict(iterations=it, cost=cost, mask=m)
            assert _path(q, k, v, **kw) == "blocked"
            torch.testing.assert_close(_attn(q, k, v, **kw), _dense(q, k, v, monkeypatch, **kw), atol=1e-5, rtol=1e-5)


def _underflowing(seed=6):
    # lam 10 and logits up to ~700: columns far below every row's maximum sum to 0 in float32
    q, k, v = _qkv(1, 2, 256, 256, 64, seed=seed, scale=4.0)
    return q, k, v, dict(lam=10.0, iterations=2)


@pytest.mark.parametrize("kw", [{}, {"chunk_size": 32}])
def test_underflowing_column_sums_take_the_log_domain(kw, monkeypatch):
    q, k, v, settings = _underflowing()
    reference = _attn(q.double(), k.double(), v.double(), memory_budget_bytes=HUGE, **settings)
    recomputed = []
    real = blocked._log_domain_columns
    monkeypatch.setattr(blocked, "_log_domain_columns", lambda g, f, low, *a: recomputed.append(int(low.sum()))
                        or real(g, f, low, *a))
    out = _attn(q, k, v, **settings, **kw)
    assert recomputed and recomputed[0] > 0, "no column underflowed: the case does not test the fallback"
    dense32 = _dense(q, k, v, monkeypatch, **settings)
    error = (out.double() - reference).abs().max()
    assert error <= 2 * (dense32.double() - reference).abs().max() + 1e-6  # float32 conditioning, like dense
    monkeypatch.setattr(blocked, "_log_domain_columns", lambda *a: None)  # without the fallback it breaks
    broken = _attn(q, k, v, **settings, **kw)
    assert not torch.isfinite(broken).all() or (broken.double() - reference).abs().max() > 100 * error


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


def test_blocked_output_survives_a_failing_fused_kernel(monkeypatch, caplog):
    calls = []

    def broken(*a, **kw):
        calls.append(1)
        raise RuntimeError("no kernel image")

    monkeypatch.setattr(fused, "_FLASH_CPU", broken)
    q, k, v = _qkv(2, 2, 300, 200, 8, seed=8)
    monkeypatch.setattr(blocked, "CACHE_BYTES", 0)  # streamed: the output pass would use the kernel
    out = _attn(q, k, v)
    torch.testing.assert_close(out, _dense(q, k, v, monkeypatch), atol=1e-5, rtol=1e-5)
    assert len(calls) == 1 and not fused.available()
    assert "fused CPU attention kernel failed" in caplog.text


# ---------------------------------------------------------------------------
# the precision sentence of the docstring
# ---------------------------------------------------------------------------


def _every_cpu_path(q, k, v, monkeypatch, **kw):
    out = {"dense": _dense(q, k, v, monkeypatch, **kw), "blocked": _attn(q, k, v, **kw),
           "blocked streamed": _attn(q, k, v, chunk_size=32, **kw)}
    with monkeypatch.context() as m:
        m.setattr(blocked, "usable", lambda device: False)
        out["fused"] = _attn(q, k, v, chunk_size=32, **kw)
        m.setattr(fused, "_FLASH_CPU", None)
        out["portable"] = _attn(q, k, v, chunk_size=32, **kw)
    with monkeypatch.context() as m:  # the CUDA path's numbers, with PyTorch's CPU kernel of the same contract
        m.setattr(kernel, "DEVICES", ("cpu",))
        m.setattr(kernel, "KERNELS", {"flash": kernel.cpu_kernel, "efficient": kernel.cpu_kernel})
        out["kernel"] = _attn(q, k, v, **kw)
    return out


def test_unit_scale_logits_every_path_agrees_to_1e_6(monkeypatch):
    q, k, v = _qkv(1, 2, 256, 256, 64, seed=9)
    reference = _attn(q.double(), k.double(), v.double(), memory_budget_bytes=HUGE)
    for name, out in _every_cpu_path(q, k, v, monkeypatch).items():
        assert (out.double() - reference).abs().max() < 1e-6, name


def test_large_logits_every_path_errs_like_sdpa_in_float32(monkeypatch):
    # lam 10, |L| up to ~640: float32 conditioning; SDPA's own float32 softmax attention of logits of
    # that size errs as much, so ~1e-4 is the float32 floor, not a path's defect
    q, k, v = _qkv(1, 2, 256, 256, 64, seed=10, scale=3.6)
    lam = 10.0
    assert 500 < lam * float((q @ k.transpose(-1, -2)).abs().max()) / 8 < 800
    reference = _attn(q.double(), k.double(), v.double(), lam=lam, memory_budget_bytes=HUGE)
    logits = lam / 8 * q.double() @ k.double().transpose(-1, -2)
    with sdpa_kernel(SDPBackend.MATH):
        sdpa = F.scaled_dot_product_attention(q, k, v, scale=lam / 8)
    sdpa_error = float((sdpa.double() - torch.softmax(logits, -1) @ v.double()).abs().max())
    assert 1e-5 < sdpa_error < 3e-4
    for name, out in _every_cpu_path(q, k, v, monkeypatch, lam=lam).items():
        error = float((out.double() - reference).abs().max())
        assert error < 3 * sdpa_error, (name, error, sdpa_error)


def test_blocked_softmax_blocks_give_the_plan():
    # one row softmax per block serves both updates: the plan of sinkhorn_plan, to rounding
    q, k, v = _qkv(1, 1, 64, 64, 8, seed=11, scale=2.0)
    rows, group, cached = blocked.geometry(1, 64, 64, 16, 4, HUGE)
    out = blocked.attention(q, k, v, -1.0 / math.sqrt(8), None, 3, rows, group, cached)
    torch.testing.assert_close(out, sk.sinkhorn_plan(q, k, iterations=3) @ v, atol=2e-6, rtol=2e-6)


# ---------------------------------------------------------------------------
# video length (issue 18): Wan 2.1/2.2 at 480p x 81 frames is 32,760 tokens
# ---------------------------------------------------------------------------


def test_video_length_call_is_bounded_and_equals_the_fused_path(monkeypatch):
    # one head of 32,760 tokens: its N x N logits would be 4 GiB in float32; the default (blocked)
    # call allocates nothing near that and gives the fused kernel path's result
    n = 32760
    q, k, v = _qkv(1, 1, n, n, 16, seed=12)
    assert _path(q, k, v) == "blocked"
    with torch.autograd.profiler.profile(profile_memory=True, use_kineto=False) as prof:
        out = _attn(q, k, v)
    largest = max(e.cpu_memory_usage for e in prof.function_events if not e.cpu_children)
    assert largest <= 16 << 20, f"an allocation of {largest / 2**20:.0f} MiB"
    with monkeypatch.context() as m:
        m.setattr(blocked, "usable", lambda device: False)
        assert _path(q, k, v) == "fused"
        reference = _attn(q, k, v)
    torch.testing.assert_close(out, reference, atol=1e-5, rtol=1e-5)
