"""asag_core.guidance against an independent CFG-rescale reference and its input validation.

The reference below is written from Lin et al. 2023 ("Common Diffusion Noise Schedules and Sample
Steps are Flawed", Alg. 2) in the convention sd-perturbed-attention uses for PAG: the guidance term
is scaled by ``rescale * std(cond) / std(guided) + (1 - rescale)``, with the std taken per sample
over every non-batch dimension; ``full`` measures ``guided = cfg_result + term``, ``partial``
``guided = cond + term``. It loops over samples in NumPy float64 and uses the population std
(ddof=0): the ratio of two stds over the same element count does not depend on Bessel's correction.
"""

import math

import numpy as np
import pytest
import torch

from asag_core import (
    DEFAULT_ITERATIONS,
    DEFAULT_LAM,
    DEFAULT_SCALE,
    ASAGSettings,
    adversarial_attention,
    apply_asag,
    rescale_term,
    sinkhorn_plan,
)
from asag_core.guidance import asag_term
from asag_core.layers import GRAMMAR_HELP, LayerSpecError
from asag_core.sinkhorn import COSTS


def reference_rescaled_term(term, cond, cfg_result, rescale, mode):
    term, cond, cfg_result = (np.asarray(x, dtype=np.float64) for x in (term, cond, cfg_result))
    out = np.empty_like(term)
    for i in range(term.shape[0]):
        guided = (cfg_result[i] if mode == "full" else cond[i]) + term[i]
        std_cond, std_guided = cond[i].std(), guided.std()
        factor = std_cond / std_guided if std_guided > 0 else 1.0  # a constant result has nothing to rescale
        out[i] = term[i] * (rescale * factor + (1.0 - rescale))
    return out


def predictions(batch=3, shape=(4, 5, 6), seed=0):
    """cond, uncond, adversarial and CFG result whose per-sample stds differ (some below 1, some above),
    so a rescale that mixes samples, or drops a factor of 1, shows."""
    g = torch.Generator().manual_seed(seed)
    spread = torch.tensor([0.3, 1.0, 4.0][:batch], dtype=torch.float64).view(-1, *([1] * len(shape)))
    adv_spread = torch.tensor([0.2, 2.0, 0.5][:batch], dtype=torch.float64).view_as(spread)
    cond = torch.randn(batch, *shape, generator=g, dtype=torch.float64) * spread + 0.7
    uncond = cond + 0.5 * torch.randn(batch, *shape, generator=g, dtype=torch.float64) * spread
    adversarial = cond + torch.randn(batch, *shape, generator=g, dtype=torch.float64) * adv_spread
    cfg_result = uncond + 2.0 * (cond - uncond)
    return cond, uncond, adversarial, cfg_result


def test_predictions_have_distinct_per_sample_stds():
    cond, _, adversarial, cfg_result = predictions()
    for x in (cond, cfg_result + (cond - adversarial), cond + (cond - adversarial)):
        stds = x.flatten(1).std(dim=1)
        assert len(set(stds.tolist())) == len(stds) and stds.min() < 1 < stds.max()


@pytest.mark.parametrize("mode", ["full", "partial"])
@pytest.mark.parametrize("rescale", [0.0, 0.3, 1.0])
def test_rescale_term_matches_reference_per_sample(rescale, mode):
    cond, _, adversarial, cfg_result = predictions()
    term = asag_term(cond, adversarial, 2.0)
    got = rescale_term(term, cond, cfg_result, rescale, mode)
    expected = reference_rescaled_term(term, cond, cfg_result, rescale, mode)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-12, atol=0)
    assert got.shape == term.shape and got.dtype == term.dtype


@pytest.mark.parametrize("mode", ["full", "partial"])
@pytest.mark.parametrize("rescale", [0.0, 0.3, 1.0])
def test_apply_asag_is_cfg_plus_reference_term(rescale, mode):
    cond, _, adversarial, cfg_result = predictions(batch=2, shape=(3, 7))
    settings = ASAGSettings(scale=1.5, rescale=rescale, rescale_mode=mode)
    got = apply_asag(cfg_result, cond, adversarial, settings)
    term = (cond - adversarial).numpy() * 1.5
    expected = cfg_result.numpy() + reference_rescaled_term(term, cond, cfg_result, rescale, mode)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-12, atol=1e-12)


def test_apply_asag_without_rescale_is_exactly_the_paper_formula():
    cond, uncond, adversarial, _ = predictions()
    w, s = 4.0, 1.5
    cfg_result = uncond + w * (cond - uncond)
    got = apply_asag(cfg_result, cond, adversarial, ASAGSettings(scale=s))
    assert torch.equal(got, cfg_result + s * (cond - adversarial))


def test_full_rescale_of_a_pure_term_restores_the_std_of_cond():
    """With nothing else in the result (cfg_result == 0), rescale 1 is Alg. 2 verbatim: the
    guided result gets exactly the per-sample std of cond."""
    cond, _, adversarial, _ = predictions()
    zero = torch.zeros_like(cond)
    got = apply_asag(zero, cond, adversarial, ASAGSettings(scale=3.0, rescale=1.0, rescale_mode="full"))
    torch.testing.assert_close(got.flatten(1).std(dim=1), cond.flatten(1).std(dim=1), rtol=1e-12, atol=0)


def test_each_sample_is_rescaled_by_its_own_std():
    cond, _, adversarial, cfg_result = predictions()
    term = asag_term(cond, adversarial, 1.0)
    together = rescale_term(term, cond, cfg_result, 1.0, "full")
    alone = torch.cat([rescale_term(term[i : i + 1], cond[i : i + 1], cfg_result[i : i + 1], 1.0) for i in range(3)])
    torch.testing.assert_close(together, alone, rtol=1e-12, atol=0)  # batched reductions may sum in another order


@pytest.mark.parametrize("k", [2.0**-40, 2.0**40])
@pytest.mark.parametrize("mode", ["full", "partial"])
def test_rescale_does_not_depend_on_the_units_of_the_prediction(mode, k):
    """Only a std ratio enters, so scaling every prediction by k scales the result by k: no absolute
    threshold may treat a small-but-real std as zero. Powers of two keep the scaling exact."""
    cond, _, adversarial, cfg_result = predictions()
    term = asag_term(cond, adversarial, 1.0)
    scaled = rescale_term(term * k, cond * k, cfg_result * k, 0.3, mode)
    assert torch.equal(scaled, rescale_term(term, cond, cfg_result, 0.3, mode) * k)


@pytest.mark.parametrize("mode", ["full", "partial"])
def test_constant_guided_result_keeps_the_term(mode):
    """std(guided) == 0 has no scale to match: the factor is 1, never x/0 (sample 1, cond varies)
    or 0/0 (sample 0, cond constant too). Quarter-integers keep every sum exact, so the guided
    result is exactly constant rather than constant up to rounding."""
    g = torch.Generator().manual_seed(1)

    def quarters():
        return torch.randint(-8, 9, (2, 3, 4, 5), generator=g).double() / 4

    cond = quarters()
    cond[0] = 0.25
    if mode == "full":
        adversarial = quarters()
        cfg_result = 2.0 - asag_term(cond, adversarial, 1.0)  # cfg_result + term == 2 everywhere
    else:
        adversarial, cfg_result = 2.0 * cond - 2.0, quarters()  # cond + (cond - adversarial) == 2 everywhere
    term = asag_term(cond, adversarial, 1.0)
    assert term[1].std() > 0 and cond[1].std() > 0
    got = rescale_term(term, cond, cfg_result, 1.0, mode)
    assert torch.equal(got, term)
    np.testing.assert_allclose(got.numpy(), reference_rescaled_term(term, cond, cfg_result, 1.0, mode), rtol=1e-12)


def test_zero_std_cond_and_guided_in_one_sample_only():
    cond, _, adversarial, cfg_result = predictions(batch=2)
    cond[1] = 0.5
    adversarial[1] = 0.25  # sample 1: cond, term and guided all constant
    cfg_result[1] = -1.0
    term = asag_term(cond, adversarial, 1.0)
    for mode in ("full", "partial"):
        got = rescale_term(term, cond, cfg_result, 1.0, mode)
        assert torch.equal(got[1], term[1])
        np.testing.assert_allclose(got.numpy(), reference_rescaled_term(term, cond, cfg_result, 1.0, mode), rtol=1e-12)


def test_rescale_term_rejects_an_unknown_mode_naming_the_valid_ones():
    cond, _, adversarial, cfg_result = predictions(batch=1)
    with pytest.raises(ValueError) as err:
        rescale_term(cond - adversarial, cond, cfg_result, 0.5, "partiall")
    assert str(err.value) == "rescale_mode must be one of full, partial; got 'partiall'"


def test_defaults_are_the_papers():
    """ASAG paper: scale 1.5, two Sinkhorn iterations, lambda 1, adversarial cost; no rescale,
    the whole schedule, the family's default layers."""
    s = ASAGSettings()
    assert (DEFAULT_SCALE, DEFAULT_ITERATIONS, DEFAULT_LAM) == (1.5, 2, 1.0)
    assert (s.scale, s.iterations, s.lam, s.cost, s.layers) == (1.5, 2, 1.0, "adversarial", "auto")
    assert (s.start_percent, s.end_percent, s.rescale, s.rescale_mode) == (0.0, 1.0, 0.0, "full")


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(scale=0.0),
        dict(iterations=0),
        dict(lam=0.0),
        dict(rescale=1.0),
        dict(start_percent=0.0, end_percent=0.0),
        dict(start_percent=1.0, end_percent=1.0),
        dict(start_percent=0.4, end_percent=0.4),
        dict(start_percent=0.0, end_percent=1.0),
        dict(scale=1e6, iterations=1000, lam=50.0, rescale=0.7, rescale_mode="partial", layers="d0-d3, m0"),
        *[dict(cost=c) for c in COSTS],
    ],
)
def test_boundary_values_are_accepted(kwargs):
    s = ASAGSettings(**kwargs)
    assert all(getattr(s, k) == v for k, v in kwargs.items())


BAD_INPUTS = [
    (dict(scale=-0.01), "scale must be >= 0.0, got -0.01"),
    (dict(scale=math.nan), "scale must be a finite number >= 0.0, got nan"),
    (dict(scale=math.inf), "scale must be a finite number >= 0.0, got inf"),
    (dict(scale="big"), "scale must be a finite number >= 0.0, got 'big'"),
    (dict(scale=None), "scale must be a finite number >= 0.0, got None"),
    (dict(lam=-1.0), "lam must be >= 0.0, got -1.0"),
    (dict(lam=-math.inf), "lam must be a finite number >= 0.0, got -inf"),
    (dict(lam="x"), "lam must be a finite number >= 0.0, got 'x'"),
    (dict(iterations=-1), "iterations must be an integer >= 0, got -1"),
    (dict(iterations=2.0), "iterations must be an integer >= 0, got 2.0"),
    (dict(iterations=True), "iterations must be an integer >= 0, got True"),
    (dict(cost="l2"), "cost must be one of adversarial, similarity, uniform; got 'l2'"),
    (dict(rescale=-0.1), "rescale must be >= 0.0 and <= 1.0, got -0.1"),
    (dict(rescale=1.5), "rescale must be >= 0.0 and <= 1.0, got 1.5"),
    (dict(rescale=math.nan), "rescale must be a finite number >= 0.0 and <= 1.0, got nan"),
    (dict(rescale_mode="half"), "rescale_mode must be one of full, partial; got 'half'"),
    (dict(start_percent=-0.1), "start_percent must be >= 0.0 and <= 1.0, got -0.1"),
    (dict(start_percent=1.01), "start_percent must be >= 0.0 and <= 1.0, got 1.01"),
    (dict(start_percent="x"), "start_percent must be a finite number >= 0.0 and <= 1.0, got 'x'"),
    (dict(end_percent=-0.5), "end_percent must be >= 0.0 and <= 1.0, got -0.5"),
    (dict(end_percent=2), "end_percent must be >= 0.0 and <= 1.0, got 2"),
    (dict(end_percent=math.nan), "end_percent must be a finite number >= 0.0 and <= 1.0, got nan"),
    (
        dict(start_percent=0.6, end_percent=0.5),
        "start_percent (0.6) must not exceed end_percent (0.5); "
        "guidance runs from start_percent to end_percent of the schedule, 0 <= start <= end <= 1",
    ),
]


@pytest.mark.parametrize("kwargs,message", BAD_INPUTS, ids=[m.split(" ")[0] + "-" + repr(k) for k, m in BAD_INPUTS])
def test_bad_input_raises_value_error_naming_it_and_its_valid_values(kwargs, message):
    with pytest.raises(ValueError) as err:
        ASAGSettings(**kwargs)
    assert str(err.value) == message


SINKHORN_INPUTS = [(kw, m) for kw, m in BAD_INPUTS if next(iter(kw)) in ("iterations", "lam", "cost")]


@pytest.mark.parametrize("kwargs,message", SINKHORN_INPUTS, ids=[repr(k) for k, _ in SINKHORN_INPUTS])
def test_sinkhorn_parameters_are_checked_once_with_one_wording(kwargs, message):
    # the node's settings and the attention itself reject a bad iterations / lam / cost with the same words
    q = torch.zeros(1, 1, 2, 4)
    for check in (lambda: ASAGSettings(**kwargs), lambda: sinkhorn_plan(q, q, **kwargs),
                  lambda: adversarial_attention(q, q, q, 1, skip_reshape=True, **kwargs)):
        with pytest.raises(ValueError) as err:
            check()
        assert str(err.value) == message


@pytest.mark.parametrize("layers,bad", [("m0, x9", "x9"), ("d0-d3, u1.x", "u1.x")])
def test_bad_layers_raise_layer_spec_error_with_the_grammar(layers, bad):
    with pytest.raises(LayerSpecError) as err:
        ASAGSettings(layers=layers)
    assert str(err.value) == f"layers: cannot read '{bad}'. {GRAMMAR_HELP}"


def test_layers_must_be_a_string():
    with pytest.raises(LayerSpecError, match=r"^layers must be a string, got int$"):
        ASAGSettings(layers=3)
