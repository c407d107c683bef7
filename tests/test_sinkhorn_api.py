"""``scale`` and ``enable_gqa`` of adversarial_attention / sinkhorn_plan, against SDPA.

With ``iterations=0``, cost "similarity" and ``lam=1`` the plan is softmax attention, so the
output must be torch's ``scaled_dot_product_attention`` with the same ``scale`` and
``enable_gqa=True``; with iterations the grouped call must equal the call with k and v repeated
to the query heads (SDPA's grouping), and a scale must act exactly like the same factor in lam.
"""

import math

import pytest
import torch
import torch.nn.functional as F

from asag_core import adversarial_attention, sinkhorn_plan

#: adversarial_attention arguments that select each path ("auto" with budget 1: the rule's bounded path)
PATHS = {
    "dense": {"path": "dense"},
    "blocked": {"path": "blocked"},
    "blocked rows 3": {"path": "blocked", "chunk_size": 3},
    "kernel": {"path": "kernel"},
    "kernel rows 3": {"path": "kernel", "chunk_size": 3},
    "auto": {"memory_budget_bytes": 1},
}


# a kernel that raises makes its call warn and compute another way: here that would test the wrong code
pytestmark = pytest.mark.filterwarnings("error::RuntimeWarning")

def _randn(*shape, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype)


def _tokens(x):
    b, h, n, d = x.shape
    return x.transpose(1, 2).reshape(b, n, h * d)


def _attn(q, k, v, **kw):
    return adversarial_attention(q, k, v, q.shape[1], skip_reshape=True, skip_output_reshape=True, **kw)


def _gqa_qkv(b=2, hq=6, hkv=2, nq=9, nk=7, d=8, seed=0):
    return _randn(b, hq, nq, d, seed=seed), _randn(b, hkv, nk, d, seed=seed + 1), _randn(b, hkv, nk, d, seed=seed + 2)


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("scale", [0.05, 0.3, 1.0])
def test_scale_at_zero_iterations_is_sdpas_scale(path, scale):
    q, k, v = _gqa_qkv(hkv=6, seed=1)
    mask = _randn(2, 1, 9, 7, seed=4)
    for m in (None, mask):
        ref = F.scaled_dot_product_attention(q, k, v, attn_mask=m, scale=scale)
        kw = dict(iterations=0, lam=1.0, cost="similarity", mask=m, scale=scale, **PATHS[path])
        torch.testing.assert_close(_attn(q, k, v, **kw), ref, atol=1e-5, rtol=1e-5)
        flat = adversarial_attention(_tokens(q), _tokens(k), _tokens(v), 6, **kw)
        torch.testing.assert_close(flat, _tokens(ref), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("path", list(PATHS))
def test_scale_acts_like_the_same_factor_in_lam(path):
    # L = s * lam * scale * QK^T: scale sigma at lam 1 is lam = sigma * sqrt(D) at the default scale
    q, k, v = _gqa_qkv(hkv=6, seed=5)
    for it in (1, 3):
        out = _attn(q, k, v, iterations=it, lam=1.0, scale=0.7, **PATHS[path])
        ref = _attn(q, k, v, iterations=it, lam=0.7 * math.sqrt(8), path="dense")
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    assert torch.equal(_attn(q, k, v, scale=None, **PATHS[path]), _attn(q, k, v, **PATHS[path]))


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("hq,hkv", [(6, 2), (6, 3), (4, 1), (3, 3)])
def test_gqa_at_zero_iterations_is_sdpas_gqa(path, hq, hkv):
    q, k, v = _gqa_qkv(hq=hq, hkv=hkv, seed=7)
    mask = _randn(2, 1, 9, 7, seed=8)
    for m in (None, mask):
        ref = F.scaled_dot_product_attention(q, k, v, attn_mask=m, scale=0.4, enable_gqa=True)
        kw = dict(iterations=0, cost="similarity", mask=m, scale=0.4, enable_gqa=True, **PATHS[path])
        torch.testing.assert_close(_attn(q, k, v, **kw), ref, atol=1e-5, rtol=1e-5)
        # ComfyUI's flat layout: heads is the query head count, k/v have hkv * D inner
        flat = adversarial_attention(_tokens(q), _tokens(k), _tokens(v), hq, **kw)
        torch.testing.assert_close(flat, _tokens(ref), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("path", list(PATHS))
def test_gqa_with_iterations_is_the_call_with_repeated_kv_heads(path):
    q, k, v = _gqa_qkv(hq=6, hkv=2, seed=9)
    k_rep, v_rep = k.repeat_interleave(3, dim=1), v.repeat_interleave(3, dim=1)
    keypad = torch.ones(2, 1, 1, 7, dtype=torch.bool)
    keypad[0, ..., 4:] = False
    for it in (1, 2, 5):
        for mask in (None, keypad):
            kw = dict(iterations=it, mask=mask)
            ref = _attn(q, k_rep, v_rep, path="dense", **kw)
            torch.testing.assert_close(_attn(q, k, v, enable_gqa=True, **kw, **PATHS[path]), ref, atol=1e-5, rtol=1e-5)
    plan = sinkhorn_plan(q, k, iterations=2, enable_gqa=True, scale=0.2)
    torch.testing.assert_close(plan, sinkhorn_plan(q, k_rep, iterations=2, scale=0.2), atol=0, rtol=0)


def test_sinkhorn_plan_scale_acts_like_the_same_factor_in_lam():
    q, k, _ = _gqa_qkv(hkv=6, seed=13)
    for it in (0, 2):
        torch.testing.assert_close(sinkhorn_plan(q, k, iterations=it, scale=0.7),
                                   sinkhorn_plan(q, k, iterations=it, lam=0.7 * math.sqrt(8)), atol=1e-6, rtol=1e-6)


def test_gqa_with_a_different_value_head_dim():
    q, k, _ = _gqa_qkv(hq=4, hkv=2, seed=11)
    v = _randn(2, 2, 7, 5, seed=12)
    out = adversarial_attention(_tokens(q), _tokens(k), _tokens(v), 4, enable_gqa=True)
    assert out.shape == (2, 9, 4 * 5)
    ref = _attn(q, k.repeat_interleave(2, 1), v.repeat_interleave(2, 1))
    torch.testing.assert_close(out, _tokens(ref), atol=1e-6, rtol=1e-6)


def test_fewer_kv_heads_without_enable_gqa_is_an_error_that_says_so():
    q, k, v = _gqa_qkv(hq=6, hkv=2)
    with pytest.raises(ValueError) as err:
        _attn(q, k, v)
    assert str(err.value) == (
        "q and k must agree in batch, heads and head dim: q (2, 6, 9, 8) vs k (2, 2, 7, 8) "
        "(k with fewer heads than q needs enable_gqa=True)"
    )
    with pytest.raises(ValueError, match="enable_gqa"):
        sinkhorn_plan(q, k)


@pytest.mark.parametrize("enable_gqa", [False, True])
def test_k_without_heads_is_a_value_error(enable_gqa):
    q, k = _randn(2, 6, 9, 8), torch.zeros(2, 0, 7, 8)
    with pytest.raises(ValueError) as err:
        _attn(q, k, k, enable_gqa=enable_gqa)
    what = ("with enable_gqa, q's head count must be a multiple of k's" if enable_gqa
            else "q and k must agree in batch, heads and head dim")
    assert str(err.value) == f"{what}: q (2, 6, 9, 8) vs k (2, 0, 7, 8)"


@pytest.mark.parametrize("kshape,hint,q_tokens", [
    ((2, 1, 7, 8), True, 9),  # one kv head for six query heads: groupable
    ((2, 3, 7, 8), True, 2),  # fewer query tokens than heads: the hint reads heads, not tokens
    ((2, 4, 7, 8), False, 9),  # 6 heads are no whole number of groups of 4
    ((2, 12, 7, 8), False, 9),  # more kv heads than query heads
    ((1, 2, 7, 8), False, 9),  # another batch
    ((2, 2, 7, 4), False, 9),  # another head dim
])
def test_the_enable_gqa_hint_only_where_grouping_would_work(kshape, hint, q_tokens):
    q = _randn(2, 6, q_tokens, 8)
    k = _randn(*kshape, seed=1)
    with pytest.raises(ValueError) as err:
        _attn(q, k, k)
    assert str(err.value).endswith(" (k with fewer heads than q needs enable_gqa=True)") == hint
    assert str(err.value).startswith(
        f"q and k must agree in batch, heads and head dim: q (2, 6, {q_tokens}, 8) vs k {kshape}")


def test_gqa_errors_name_what_is_wrong():
    q, k, v = _gqa_qkv(hq=6, hkv=4)
    with pytest.raises(ValueError) as err:
        _attn(q, k, v, enable_gqa=True)
    assert str(err.value) == (
        "with enable_gqa, q's head count must be a multiple of k's: q (2, 6, 9, 8) vs k (2, 4, 7, 8)"
    )
    with pytest.raises(ValueError) as err:  # flat layout: k's inner size is no whole number of heads
        adversarial_attention(_tokens(q), torch.zeros(2, 7, 12), torch.zeros(2, 7, 12), 6, enable_gqa=True)
    assert str(err.value) == "with enable_gqa, k's last dim 12 is not a multiple of the head dim 8"
    with pytest.raises(ValueError) as err:  # v's inner size is no whole number of k's 2 heads
        adversarial_attention(_tokens(q), torch.zeros(2, 7, 16), torch.zeros(2, 7, 15), 6, enable_gqa=True)
    assert str(err.value) == "the last dim 15 of v is not divisible by heads=2"
    with pytest.raises(ValueError) as err:
        _attn(q, k, v, enable_gqa=1)
    assert str(err.value) == "enable_gqa must be True or False, got 1"


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), "big", True, [0.1]])
def test_bad_scale_raises_naming_it(bad):
    q, k, v = _gqa_qkv(hkv=6)
    message = f"scale must be None (1/sqrt(head dim)) or a finite number, got {bad!r}"
    with pytest.raises(ValueError) as err:
        _attn(q, k, v, scale=bad)
    assert str(err.value) == message
    with pytest.raises(ValueError) as err:
        sinkhorn_plan(q, k, scale=bad)
    assert str(err.value) == message
