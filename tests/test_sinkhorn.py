"""The ASAG transport plan (asag_core.sinkhorn.sinkhorn_plan) against outside references.

References used here: POT's ``ot.sinkhorn`` (the entropic OT plan), the
column/row marginals the definition promises, the softmax of the logits, and
plans computed on reduced inputs (masked rows/columns removed).
"""

import math

import numpy as np
import ot
import pytest
import torch

from asag_core import logit_sign, sinkhorn_plan
from asag_core.sinkhorn import COSTS


def _randn(*shape, seed=0, dtype=torch.float64, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=dtype) * scale


def _row_entropy(p: torch.Tensor) -> float:
    p = p.double()
    return float(-(torch.where(p > 0, p * torch.log(p), torch.zeros_like(p))).sum(-1).mean())


# ---------------------------------------------------------------------------
# convergence to POT's entropic OT plan
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("lam", [0.5, 2.0])
@pytest.mark.parametrize("cost", ["adversarial", "similarity"])
@pytest.mark.parametrize("nq,nk", [(7, 11), (12, 5)])
def test_converged_plan_matches_pot(lam, cost, nq, nk):
    d = 6
    q = _randn(2, 2, nq, d, seed=1)
    k = _randn(2, 2, nk, d, seed=2)
    plan = sinkhorn_plan(q, k, iterations=400, lam=lam, cost=cost)
    assert plan.dtype == torch.float64
    sign = 1.0 if cost == "adversarial" else -1.0  # M = +QK^T/sqrt(D) for ASAG, -QK^T/sqrt(D) for the control
    for b in range(2):
        for h in range(2):
            m = sign * (q[b, h] @ k[b, h].T).numpy() / math.sqrt(d)
            ref = ot.sinkhorn(ot.unif(nq), ot.unif(nk), m, reg=1.0 / lam, numItermax=100_000, stopThr=1e-13)
            np.testing.assert_allclose(plan[b, h].numpy(), nq * ref, atol=1e-4, rtol=0)


def test_converged_plan_matches_pot_log_domain_at_high_lam():
    # lam = 20: exp(-lam*M) spans ~1e30, where POT needs its log-domain solver
    nq, nk, d, lam = 9, 6, 4, 20.0
    q, k = _randn(1, 1, nq, d, seed=3), _randn(1, 1, nk, d, seed=4)
    plan = sinkhorn_plan(q, k, iterations=1000, lam=lam)
    m = (q[0, 0] @ k[0, 0].T).numpy() / math.sqrt(d)
    ref = ot.sinkhorn(
        ot.unif(nq), ot.unif(nk), m, reg=1.0 / lam, method="sinkhorn_log", numItermax=100_000, stopThr=1e-13
    )
    np.testing.assert_allclose(plan[0, 0].numpy(), nq * ref, atol=1e-4, rtol=0)


def _sinkhorn_knopp_numpy(m, lam, iterations):
    """Textbook Sinkhorn-Knopp in the exp domain (float64 numpy): scalings v from 1,
    u = 1/(K v), v = (Nq/Nk)/(K^T u), then the row-normalised K diag(v)."""
    nq, nk = m.shape
    kern = np.exp(-lam * m)
    v = np.ones(nk)
    for _ in range(iterations):
        u = 1.0 / (kern @ v)
        v = (nq / nk) / (kern.T @ u)
    p = kern * v[None, :]
    return p / p.sum(1, keepdims=True)


@pytest.mark.parametrize("iterations", [1, 2, 3, 7])
def test_few_iterations_match_textbook_sinkhorn_knopp(iterations):
    nq, nk, d = 5, 8, 3
    q, k = _randn(1, 2, nq, d, seed=5), _randn(1, 2, nk, d, seed=6)
    plan = sinkhorn_plan(q, k, iterations=iterations, lam=1.3)
    for h in range(2):
        m = (q[0, h] @ k[0, h].T).numpy() / math.sqrt(d)
        np.testing.assert_allclose(plan[0, h].numpy(), _sinkhorn_knopp_numpy(m, 1.3, iterations), atol=1e-12, rtol=0)


# ---------------------------------------------------------------------------
# marginals
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("nq,nk", [(16, 24), (24, 16), (20, 20)])
def test_marginal_error_shrinks_with_iterations(nq, nk):
    q, k = _randn(2, 3, nq, 8, seed=7), _randn(2, 3, nk, 8, seed=8)
    errors = []
    for it in (0, 1, 2, 5, 10, 50):
        plan = sinkhorn_plan(q, k, iterations=it, lam=1.0)
        # rows always sum to 1
        torch.testing.assert_close(plan.sum(-1), torch.ones(2, 3, nq, dtype=plan.dtype), atol=1e-12, rtol=0)
        errors.append(float((plan.sum(-2) - nq / nk).abs().sum(-1).max()))
    for before, after in zip(errors, errors[1:], strict=False):
        assert after <= before * 1.01 + 1e-12, errors
    assert errors[0] > 0.1, errors  # softmax is far from balanced ...
    assert errors[-1] < 1e-6 * errors[0], errors  # ... 50 iterations are balanced


def test_rows_sum_to_one_in_float32_for_every_cost():
    q, k = _randn(1, 2, 9, 5, seed=9, dtype=torch.float32), _randn(1, 2, 4, 5, seed=10, dtype=torch.float32)
    for cost in COSTS:
        for it in (0, 1, 2, 7):
            plan = sinkhorn_plan(q, k, iterations=it, lam=1.5, cost=cost)
            assert plan.dtype == torch.float32
            torch.testing.assert_close(plan.sum(-1), torch.ones(1, 2, 9), atol=1e-5, rtol=0)


def test_zero_iterations_is_softmax_of_logits():
    q, k = _randn(2, 2, 6, 4, seed=11), _randn(2, 2, 7, 4, seed=12)
    s = q @ k.transpose(-1, -2) / 2.0
    torch.testing.assert_close(
        sinkhorn_plan(q, k, iterations=0, lam=1.7, cost="similarity"), torch.softmax(1.7 * s, -1)
    )
    torch.testing.assert_close(sinkhorn_plan(q, k, iterations=0, lam=1.7), torch.softmax(-1.7 * s, -1))


def test_uniform_cost_and_zero_lam_give_the_uniform_plan():
    q, k = _randn(1, 2, 5, 4, seed=13), _randn(1, 2, 7, 4, seed=14)
    uniform = torch.full((1, 2, 5, 7), 1 / 7, dtype=torch.float64)
    for it in (0, 2, 9):
        torch.testing.assert_close(sinkhorn_plan(q, k, iterations=it, lam=3.0, cost="uniform"), uniform)
        for cost in COSTS:
            torch.testing.assert_close(sinkhorn_plan(q, k, iterations=it, lam=0.0, cost=cost), uniform)


# ---------------------------------------------------------------------------
# the paper's entropy claim
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("scale", [0.5, 1.0, 2.0, 4.0])
@pytest.mark.parametrize("lam", [0.5, 1.0, 2.0])
def test_adversarial_plan_has_higher_entropy_than_softmax_random(scale, lam):
    q, k = _randn(2, 4, 64, 32, seed=15, scale=scale), _randn(2, 4, 80, 32, seed=16, scale=scale)
    h_adv = _row_entropy(sinkhorn_plan(q, k, iterations=2, lam=lam))
    h_soft = _row_entropy(sinkhorn_plan(q, k, iterations=0, lam=lam, cost="similarity"))
    assert h_soft - 1e-9 <= h_adv <= math.log(80) + 1e-9


@pytest.mark.parametrize("lam", [0.5, 1.0, 2.0])
def test_adversarial_plan_has_higher_entropy_than_softmax_clustered(lam):
    # tokens around 4 cluster centres: softmax attention concentrates on the query's own
    # cluster; the adversarial plan moves mass to the other clusters.
    g = torch.Generator().manual_seed(17)
    centres = torch.randn(4, 32, generator=g, dtype=torch.float64) * 2
    iq = torch.randint(0, 4, (64,), generator=g)
    ik = torch.randint(0, 4, (80,), generator=g)
    q = (centres[iq] + 0.3 * torch.randn(64, 32, generator=g, dtype=torch.float64))[None, None]
    k = (centres[ik] + 0.3 * torch.randn(80, 32, generator=g, dtype=torch.float64))[None, None]
    p_adv = sinkhorn_plan(q, k, iterations=2, lam=lam)
    p_soft = sinkhorn_plan(q, k, iterations=0, lam=lam, cost="similarity")
    assert _row_entropy(p_adv) > _row_entropy(p_soft) + 0.3
    # and the mass really leaves the own cluster
    same = (iq[:, None] == ik[None, :]).double()
    assert float((p_adv[0, 0] * same).sum(-1).mean()) < 0.5 * float((p_soft[0, 0] * same).sum(-1).mean())


# ---------------------------------------------------------------------------
# masks
# ---------------------------------------------------------------------------


def test_masked_pairs_get_exactly_zero_mass():
    q, k = _randn(2, 3, 10, 4, seed=18), _randn(2, 3, 12, 4, seed=19)
    g = torch.Generator().manual_seed(20)
    mask = torch.rand(2, 3, 10, 12, generator=g) > 0.4
    mask[..., 0] = True  # every row keeps a key
    for it in (0, 1, 2, 6):
        for cost in COSTS:
            plan = sinkhorn_plan(q, k, iterations=it, lam=1.0, cost=cost, mask=mask)
            assert (plan[~mask] == 0).all()
            torch.testing.assert_close(plan.sum(-1), torch.ones(2, 3, 10, dtype=plan.dtype), atol=1e-12, rtol=0)


def test_additive_mask_minus_inf_is_the_same_as_bool_mask():
    q, k = _randn(1, 2, 6, 4, seed=21), _randn(1, 2, 8, 4, seed=22)
    mask = torch.rand(6, 8, generator=torch.Generator().manual_seed(23)) > 0.3
    mask[:, 0] = True
    additive = torch.zeros(6, 8).masked_fill(~mask, float("-inf"))
    torch.testing.assert_close(sinkhorn_plan(q, k, mask=mask), sinkhorn_plan(q, k, mask=additive))


def test_additive_mask_is_added_to_the_logits():
    q, k = _randn(1, 1, 5, 3, seed=24), _randn(1, 1, 6, 3, seed=25)
    bias = _randn(5, 6, seed=26)
    expected = torch.softmax(-(q @ k.transpose(-1, -2)) / math.sqrt(3) + bias, -1)
    torch.testing.assert_close(sinkhorn_plan(q, k, iterations=0, mask=bias), expected)


def test_fully_masked_rows_are_zero_and_leave_other_rows_alone():
    q, k = _randn(1, 2, 6, 4, seed=27), _randn(1, 2, 9, 4, seed=28)
    mask = torch.ones(6, 9, dtype=torch.bool)
    mask[[1, 4]] = False
    keep = torch.tensor([0, 2, 3, 5])
    for it in (0, 2, 5):
        plan = sinkhorn_plan(q, k, iterations=it, mask=mask)
        assert torch.isfinite(plan).all()
        assert (plan[:, :, [1, 4]] == 0).all()
        # the other rows are the plan of the queries without the masked ones
        torch.testing.assert_close(plan[:, :, keep], sinkhorn_plan(q[:, :, keep], k, iterations=it))


def test_fully_masked_columns_are_the_same_as_dropping_those_keys():
    q, k = _randn(2, 2, 7, 4, seed=29), _randn(2, 2, 10, 4, seed=30)
    mask = torch.ones(7, 10, dtype=torch.bool)
    mask[:, [0, 6]] = False
    keep = torch.tensor([1, 2, 3, 4, 5, 7, 8, 9])
    for it in (0, 1, 2, 8):
        plan = sinkhorn_plan(q, k, iterations=it, mask=mask)
        assert torch.isfinite(plan).all()
        assert (plan[..., [0, 6]] == 0).all()
        torch.testing.assert_close(plan[..., keep], sinkhorn_plan(q, k[:, :, keep], iterations=it))


def test_three_d_mask_is_per_batch_like_comfyui():
    # ComfyUI's attention functions read a 3-D mask as (B, Nq, Nk), shared by the heads
    q, k = _randn(2, 3, 5, 4, seed=31), _randn(2, 3, 6, 4, seed=32)
    mask = torch.rand(2, 5, 6, generator=torch.Generator().manual_seed(33)) > 0.3
    mask[..., 0] = True
    torch.testing.assert_close(sinkhorn_plan(q, k, mask=mask), sinkhorn_plan(q, k, mask=mask[:, None]))
    for b in range(2):
        torch.testing.assert_close(
            sinkhorn_plan(q[b : b + 1], k[b : b + 1], mask=mask[b]), sinkhorn_plan(q, k, mask=mask)[b : b + 1]
        )


# ---------------------------------------------------------------------------
# numerics
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_huge_logits_stay_finite(dtype):
    # |QK^T/sqrt(D)| ~ 1e4
    q, k = (
        _randn(1, 2, 12, 16, seed=34, dtype=dtype, scale=100.0),
        _randn(1, 2, 10, 16, seed=35, dtype=dtype, scale=100.0),
    )
    assert float((q @ k.transpose(-1, -2)).abs().max()) / 4 > 1e4
    for cost in COSTS:
        for it in (0, 2, 10):
            plan = sinkhorn_plan(q, k, iterations=it, cost=cost)
            assert torch.isfinite(plan).all()
            torch.testing.assert_close(plan.sum(-1), torch.ones(1, 2, 12, dtype=dtype), atol=1e-5, rtol=0)


def test_low_precision_inputs_are_computed_in_float32():
    q, k = _randn(1, 2, 8, 8, seed=36, dtype=torch.float16), _randn(1, 2, 8, 8, seed=37, dtype=torch.float16)
    plan = sinkhorn_plan(q, k)
    assert plan.dtype == torch.float32
    torch.testing.assert_close(plan, sinkhorn_plan(q.float(), k.float()))


# ---------------------------------------------------------------------------
# validation
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs,name",
    [
        ({"iterations": -1}, "iterations"),
        ({"iterations": 1.5}, "iterations"),
        ({"iterations": True}, "iterations"),
        ({"iterations": "2"}, "iterations"),
        ({"lam": -0.1}, "lam"),
        ({"lam": float("nan")}, "lam"),
        ({"lam": float("inf")}, "lam"),
        ({"lam": "big"}, "lam"),
        ({"cost": "cosine"}, "cost"),
        ({"mask": torch.ones(3, 3, dtype=torch.bool)}, "mask"),
        ({"mask": [[True]]}, "mask"),
    ],
)
def test_bad_parameters_raise_value_error_naming_them(kwargs, name):
    q, k = _randn(1, 2, 4, 3), _randn(1, 2, 5, 3)
    with pytest.raises(ValueError, match=name):
        sinkhorn_plan(q, k, **kwargs)


@pytest.mark.parametrize(
    "qshape,kshape",
    [((1, 2, 4, 3), (1, 2, 5, 4)), ((1, 2, 4, 3), (2, 2, 5, 3)), ((1, 2, 4, 3), (1, 3, 5, 3)), ((2, 4, 3), (2, 5, 3))],
)
def test_mismatched_shapes_raise_value_error(qshape, kshape):
    with pytest.raises(ValueError, match=r"\bq\b.*\bk\b"):
        sinkhorn_plan(torch.zeros(qshape), torch.zeros(kshape))


@pytest.mark.parametrize(
    "qshape,kshape,message",
    [
        ((1, 2, 4, 3), (2, 5, 3), "q and k must be 4-D (batch, heads, tokens, dim); got q (1, 2, 4, 3), k (2, 5, 3)"),
        ((2, 4, 3), (1, 2, 5, 3), "q and k must be 4-D (batch, heads, tokens, dim); got q (2, 4, 3), k (1, 2, 5, 3)"),
        (
            (1, 2, 4, 3),
            (1, 3, 5, 3),
            "q and k must agree in batch, heads and head dim: q (1, 2, 4, 3) vs k (1, 3, 5, 3)",
        ),
    ],
)
def test_shape_errors_say_what_was_expected_and_what_came(qshape, kshape, message):
    with pytest.raises(ValueError) as err:
        sinkhorn_plan(torch.zeros(qshape), torch.zeros(kshape))
    assert str(err.value) == message


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"cost": "cosine"}, "cost must be one of adversarial, similarity, uniform; got 'cosine'"),
        ({"mask": "causal"}, "mask must be a torch.Tensor or None, got str"),
        ({"mask": torch.ones(1, 1, 1, 4, 5)}, "mask must have at most 4 dims, got shape (1, 1, 1, 4, 5)"),
    ],
)
def test_parameter_errors_list_the_valid_values(kwargs, message):
    q, k = _randn(1, 2, 4, 3), _randn(1, 2, 5, 3)
    with pytest.raises(ValueError) as err:
        sinkhorn_plan(q, k, **kwargs)
    assert str(err.value) == message


def test_logit_sign_of_each_cost_and_its_error():
    assert [logit_sign(c) for c in COSTS] == [-1.0, 1.0, 0.0]
    with pytest.raises(ValueError) as err:
        logit_sign("cosine")
    assert str(err.value) == "cost must be one of adversarial, similarity, uniform; got 'cosine'"


def test_nan_in_a_query_reaches_its_masked_pairs_too():
    # NaN + (-inf) is NaN, as in attention: the masked pairs of a NaN row are not silently 0
    q, k = _randn(1, 1, 4, 3, seed=40), _randn(1, 1, 5, 3, seed=41)
    q[0, 0, 1, 0] = float("nan")
    mask = torch.ones(4, 5, dtype=torch.bool)
    mask[:, 3] = False
    for it in (0, 2):
        plan = sinkhorn_plan(q, k, iterations=it, mask=mask)
        assert torch.isnan(plan[0, 0, 1]).all()
        assert torch.isnan(plan).all() == (it > 0)
