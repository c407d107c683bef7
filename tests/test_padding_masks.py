"""Finite padding masks and NaN inputs, on every attention path.

ComfyUI builds key-padding masks as finite large negatives, ``(m - 1) * finfo(dtype).max``
(Lumina 2, HunyuanVideo, LTXV, Cosmos). Sinkhorn's column update cancels any finite column
offset, so such keys must count as masked (``MASK_THRESHOLD``, asag_core/sinkhorn.py "Masks")
or they get mass back after one iteration. References here: the same attention over the
unpadded keys only, the boolean mask of the same pattern, a float64 numpy Sinkhorn for a real
(unmasked) bias, and SDPA's NaN pattern.
"""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from asag_core import MASK_THRESHOLD, adversarial_attention, sinkhorn_plan

ITERATIONS = (0, 1, 2, 5)


def _randn(*shape, seed=0, dtype=torch.float32, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype)


def _qkv(b, h, nq, nk, d, seed=0, dtype=torch.float32):
    return (
        _randn(b, h, nq, d, seed=seed, dtype=dtype),
        _randn(b, h, nk, d, seed=seed + 1, dtype=dtype),
        _randn(b, h, nk, d, seed=seed + 2, dtype=dtype),
    )


@pytest.fixture(params=["dense", "blocked", "blocked streamed", "kernel"])
def path(request):
    """adversarial_attention keyword arguments that select one path ("kernel": the CUDA path's code with
    PyTorch's CPU flash kernel in the CUDA kernels' place; "blocked streamed": blocks of 3 rows, no cache,
    the output of its rows by the CPU flash kernel)."""
    return {"dense": {"path": "dense"}, "blocked": {"path": "blocked"},
            "blocked streamed": {"path": "blocked", "chunk_size": 3},
            "kernel": {"path": "kernel", "chunk_size": 3}}[request.param]


def _attn(q, k, v, **kw):
    return adversarial_attention(q, k, v, q.shape[1], skip_reshape=True, skip_output_reshape=True, **kw)


def comfy_fill(keep: torch.Tensor, dtype) -> torch.Tensor:
    """ComfyUI's padding mask from a 0/1 keep tensor: ``(keep - 1).to(dtype) * finfo(dtype).max``."""
    return (keep.long() - 1).to(dtype) * torch.finfo(dtype).max


FILLS = {
    "fp32_max": lambda keep: comfy_fill(keep, torch.float32),
    "fp16_max": lambda keep: comfy_fill(keep, torch.float16),
    "bf16_max": lambda keep: comfy_fill(keep, torch.bfloat16),
    "minus_1e4": lambda keep: (1.0 - keep.float()) * -1e4,
    "minus_1e4_bf16": lambda keep: ((1.0 - keep.float()) * -1e4).to(torch.bfloat16),  # -9984 in bfloat16
    "at_threshold": lambda keep: (1.0 - keep.float()) * MASK_THRESHOLD,
}


def test_threshold_separates_padding_fills_from_real_biases():
    fills = [-torch.finfo(t).max for t in (torch.float16, torch.bfloat16, torch.float32)]
    fills += [-1e4, float(torch.tensor(-1e4, dtype=torch.bfloat16))]
    assert all(f <= MASK_THRESHOLD for f in fills)
    # below log of the smallest float64 subnormal: exp() of it is 0 in every float format
    assert MASK_THRESHOLD < math.log(np.nextafter(0, 1)) and math.exp(MASK_THRESHOLD) == 0.0
    assert MASK_THRESHOLD < -500  # ALiBi / relative-position biases of a few hundred stay biases


# ---------------------------------------------------------------------------
# padded keys == keys that are not there
# ---------------------------------------------------------------------------

B, H, NQ, NK, D = 2, 2, 9, 12, 8
PADDED = (3, 5)  # padded keys at the end, per batch element


def _keep_keys():
    keep = torch.ones(B, NK, dtype=torch.long)
    for b, n in enumerate(PADDED):
        keep[b, NK - n :] = 0
    return keep


def _unpadded_reference(q, k, v, it, cost):
    """Attention of each batch element over its real keys only (no mask at all)."""
    out = []
    for b, n in enumerate(PADDED):
        sl = slice(b, b + 1)
        out.append(_attn(q[sl], k[sl, :, : NK - n], v[sl, :, : NK - n], iterations=it, cost=cost))
    return torch.cat(out)


KEY_PADDING_SHAPES = {
    "B11N": lambda m: m[:, None, None, :],  # (B, 1, 1, Nk): HunyuanVideo, LTXV
    "BNqNk": lambda m: m[:, None, :].expand(B, NQ, NK),  # (B, Nq, Nk): read as per-batch rows
    "B1N": lambda m: m[:, None, :],  # (B, 1, Nk): ComfyUI's 3-D form, broadcast over queries
}


@pytest.mark.parametrize("shape", list(KEY_PADDING_SHAPES))
@pytest.mark.parametrize("fill", list(FILLS))
def test_padded_keys_equal_attending_over_the_real_keys_only(fill, shape, path):
    q, k, v = _qkv(B, H, NQ, NK, D, seed=1)
    mask = KEY_PADDING_SHAPES[shape](FILLS[fill](_keep_keys()))
    for cost in ("adversarial", "similarity"):
        for it in ITERATIONS:
            ref = _unpadded_reference(q, k, v, it, cost)
            out = _attn(q, k, v, iterations=it, cost=cost, mask=mask, **path)
            torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("fill", ["fp32_max", "fp16_max"])
def test_padded_keys_get_exactly_zero_plan_mass(fill):
    q, k, _ = _qkv(B, H, NQ, NK, D, seed=2)
    keep = _keep_keys()
    mask = FILLS[fill](keep)[:, None, None, :]
    for it in ITERATIONS:
        plan = sinkhorn_plan(q, k, iterations=it, mask=mask)
        padded = (keep == 0)[:, None, None, :].expand_as(plan)
        assert (plan[padded] == 0).all()
        torch.testing.assert_close(plan.sum(-1), torch.ones(B, H, NQ), atol=1e-6, rtol=0)


@pytest.mark.parametrize("fill", ["fp32_max", "fp16_max", "minus_1e4"])
def test_per_row_finite_masks_equal_the_boolean_mask(fill, path):
    # an arbitrary (B, Nq, Nk) pattern: no reduced problem to compare with, but the boolean mask
    # of the same pattern (tested against reduced problems in test_sinkhorn/test_attention)
    q, k, v = _qkv(B, H, NQ, NK, D, seed=3)
    keep = torch.rand(B, NQ, NK, generator=torch.Generator().manual_seed(4)) > 0.4
    keep[..., 0] = True
    for it in ITERATIONS:
        ref = _attn(q, k, v, iterations=it, mask=keep, path="dense")
        out = _attn(q, k, v, iterations=it, mask=FILLS[fill](keep), **path)
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------
# a real bias just above the threshold stays a bias
# ---------------------------------------------------------------------------


def _numpy_sinkhorn_attention(q, k, v, bias, lam, iterations):
    """float64 log-domain Sinkhorn of asag_core/sinkhorn.py's definition, one head, in numpy."""
    d = q.shape[-1]
    logits = -lam * (q @ k.T) / math.sqrt(d) + bias
    nq, nk = logits.shape
    g = np.zeros(nk)

    def lse(x, axis):
        m = x.max(axis=axis, keepdims=True)
        return (m + np.log(np.exp(x - m).sum(axis=axis, keepdims=True))).squeeze(axis)

    for _ in range(iterations):
        f = -lse(logits + g[None, :], 1)
        g = -lse(logits + f[:, None], 0) + math.log(nq / nk)
    z = logits + g[None, :]
    p = np.exp(z - z.max(1, keepdims=True))
    return (p / p.sum(1, keepdims=True)) @ v


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-9), (torch.float32, 5e-4)])
def test_bias_just_above_the_threshold_is_not_a_mask(dtype, tol, path):
    if dtype == torch.float64 and path["path"] == "kernel":  # the kernels take at most float32: its own case
        dtype, tol = torch.float32, 5e-4
    nq, nk = 7, 10
    q, k, v = _qkv(1, 2, nq, nk, D, seed=5, dtype=dtype)
    bias = torch.zeros(nq, nk, dtype=torch.float64)
    bias[:, -3:] = MASK_THRESHOLD + 1.0  # three columns far below the others, but above the threshold
    bias[:, :4] -= 3.0 * torch.arange(4, dtype=torch.float64)  # and an ALiBi-like ramp
    for it in ITERATIONS:
        out = _attn(q, k, v, iterations=it, mask=bias.to(dtype), **path)
        for h in range(2):
            ref = _numpy_sinkhorn_attention(
                q[0, h].double().numpy(), k[0, h].double().numpy(), v[0, h].double().numpy(), bias.numpy(), 1.0, it
            )
            np.testing.assert_allclose(out[0, h].double().numpy(), ref, atol=tol, rtol=tol)
        masked = _attn(q, k, v, iterations=it, mask=bias.masked_fill(bias < -500, -torch.inf).to(dtype), **path)
        if it > 0:  # Sinkhorn gives those columns their share back: far from the masked result
            assert (out - masked).abs().max() > 0.05


# ---------------------------------------------------------------------------
# fully masked rows
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("fill", ["fp32_max", "fp16_max", "minus_1e4", "at_threshold"])
def test_fully_masked_rows_are_zero_on_every_path(fill, path):
    q, k, v = _qkv(2, 2, 7, 6, 4, seed=6)
    keep = torch.ones(2, 7, 6, dtype=torch.bool)
    keep[0, 3] = False
    keep[1, [0, 6]] = False
    keep[1, :, 2] = False  # and a fully masked column
    mask = FILLS[fill](keep)
    for cost in ("adversarial", "similarity", "uniform"):
        for it in ITERATIONS:
            out = _attn(q, k, v, iterations=it, cost=cost, mask=mask, **path)
            assert (out[0, :, 3] == 0).all() and (out[1, :, [0, 6]] == 0).all()
            dense_bool = _attn(q, k, v, iterations=it, cost=cost, mask=keep, path="dense")
            torch.testing.assert_close(out, dense_bool, atol=1e-5, rtol=1e-5)
    plan = sinkhorn_plan(q, k, mask=mask)
    assert (plan[0, :, 3] == 0).all() and (plan[1, :, [0, 6]] == 0).all() and (plan[1, :, :, 2] == 0).all()


def test_everything_masked_by_a_finite_fill_is_zero(path):
    q, k, v = _qkv(1, 2, 5, 4, 4, seed=7)
    out = _attn(q, k, v, mask=comfy_fill(torch.zeros(5, 4), torch.float32), **path)
    assert (out == 0).all()


# ---------------------------------------------------------------------------
# memory: thresholding a mask adds no (Nq, Nk) tensor on the bounded paths
# ---------------------------------------------------------------------------


def _largest_allocation(fn) -> int:
    with torch.autograd.profiler.profile(profile_memory=True, use_kineto=False) as prof:
        fn()
    return max(e.cpu_memory_usage for e in prof.function_events)


@pytest.mark.parametrize("bounded", [{"path": "blocked", "chunk_size": 32}, {"path": "kernel", "chunk_size": 32}],
                         ids=["blocked", "kernel"])
def test_finite_full_mask_costs_no_logits_sized_tensor(bounded):
    n = 512
    q, k, v = _qkv(1, 4, n, n, 8, seed=8)
    keep = torch.rand(n, n, generator=torch.Generator().manual_seed(9)) > 0.3
    keep[:, 0] = True
    mask = comfy_fill(keep, torch.float32)  # float32 already: used as given, never copied whole
    largest = _largest_allocation(lambda: _attn(q, k, v, iterations=2, mask=mask, **bounded))
    assert largest < n * n * 4  # below one float (Nq, Nk) tensor (the admissibility test is n*n bools)


# ---------------------------------------------------------------------------
# NaN reaches the output
# ---------------------------------------------------------------------------


def _sdpa_math(q, k, v, mask=None):
    """SDPA's math backend: softmax(QK^T/sqrt(D) + mask) V as written. (The default CPU backend,
    the fused flash kernel, returns 0 instead of NaN for a NaN query row when no mask is given.)"""
    with sdpa_kernel(SDPBackend.MATH):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def _with_nan(q, k, v, where):
    q, k, v = q.clone(), k.clone(), v.clone()
    {"q": q, "k": k, "v": v}[where][1, 0, 2, 3] = float("nan")
    return q, k, v


def _padding(b, nq, nk):
    keep = torch.ones(b, nk, dtype=torch.long)
    keep[:, -2:] = 0
    return comfy_fill(keep, torch.float32)[:, None, None, :]


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("where", ["q", "k", "v"])
def test_nan_pattern_is_sdpas_with_zero_iterations(where, masked, path):
    q, k, v = _with_nan(*_qkv(2, 2, 6, 7, 4, seed=10), where)
    mask = _padding(2, 6, 7) if masked else None
    sdpa = _sdpa_math(q, k, v, mask)
    out = _attn(q, k, v, iterations=0, cost="similarity", mask=mask, **path)
    assert torch.isnan(sdpa).any()
    assert torch.equal(torch.isnan(out), torch.isnan(sdpa))
    torch.testing.assert_close(out.nan_to_num(7.0), sdpa.nan_to_num(7.0), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("cost", ["adversarial", "uniform"])
@pytest.mark.parametrize("where", ["q", "k", "v"])
def test_nan_reaches_the_output_with_iterations(where, cost, path):
    q, k, v = _with_nan(*_qkv(2, 2, 6, 7, 4, seed=11), where)
    sdpa_nan = torch.isnan(_sdpa_math(q, k, v))
    for it in (1, 2, 5):
        for mask in (None, _padding(2, 6, 7)):
            nan = torch.isnan(_attn(q, k, v, iterations=it, cost=cost, mask=mask, **path))
            assert nan[sdpa_nan].all(), "NaN where SDPA has it"
            expected = torch.zeros_like(nan)
            if where == "v":  # as in SDPA: that value column of that head
                expected[1, 0, :, 3] = True
            else:  # every column potential sums over all rows of the head
                expected[1, 0] = True
            assert torch.equal(nan, expected)


def test_fully_masked_rows_stay_zero_when_nan_fills_the_rest_of_the_head(path):
    q, k, v = _with_nan(*_qkv(2, 2, 6, 7, 4, seed=15), "q")  # NaN in query 2 of head (1, 0)
    keep = torch.ones(2, 6, 7, dtype=torch.bool)
    keep[1, 4] = False
    out = _attn(q, k, v, iterations=2, mask=comfy_fill(keep, torch.float32), **path)
    assert (out[1, :, 4] == 0).all()
    assert torch.isnan(out[1, 0, [0, 1, 2, 3, 5]]).all()
    assert not torch.isnan(out[0]).any() and not torch.isnan(out[1, 1]).any()


def test_nan_in_a_query_makes_the_plan_nan():
    q, k, _ = _with_nan(*_qkv(2, 2, 6, 7, 4, seed=12), "q")
    assert torch.isnan(sinkhorn_plan(q, k, iterations=0)[1, 0, 2]).all()
    assert torch.isnan(sinkhorn_plan(q, k, iterations=2)[1, 0]).all()
    assert not torch.isnan(sinkhorn_plan(q, k, iterations=2)[[0, 1], [1, 1]]).any()  # other heads untouched
