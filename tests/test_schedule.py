"""ASAGAdvanced's start_percent/end_percent: ComfyUI's percent convention, the same steps on every model.

A percent is a point of the model's own noise schedule (``model_sampling.percent_to_sigma``), so one
window selects the same steps of an SD1.5 U-Net (σ 14.6 → 0.03) and of Flux (σ 1 → 0). Which steps
were guided is counted, not inferred: the Sinkhorn attention calls are recorded and attributed to
steps with the sampler's own step callback.
"""


import pytest
import sampling
import tiny_models

pytestmark = pytest.mark.host

STEPS = 10
# The "normal" schedule puts step i at fraction i/9 of the model's timesteps, so [0.3, 0.6] holds
# steps 3, 4 and 5 (fractions .33, .44, .56) on every model; no step lies near either bound.
WINDOW = (0.3, 0.6)
WINDOW_STEPS = [3, 4, 5]


@pytest.fixture(scope="module")
def models(host):
    return {"sd15": tiny_models.sd15(), "flux": tiny_models.flux()}


def _calls_per_step(model, guider, family, calls):
    """How many entries ``calls`` gained during each sampling step (one euler evaluation per step)."""
    import comfy.sample
    import comfy.samplers
    from comfy_extras import nodes_custom_sampler as ncs

    per_step = []

    def callback(step, x0, x, total):
        per_step.append(len(calls) - sum(per_step))

    (sigmas,) = ncs.BasicScheduler().get_sigmas(model, "normal", STEPS, 1.0)
    latent = tiny_models.latent(family)["samples"]
    noise = comfy.sample.prepare_noise(latent, 1)
    guider.sample(noise, latent, comfy.samplers.sampler_object("euler"), sigmas, callback=callback, seed=1)
    assert len(per_step) == STEPS and sum(per_step) == len(calls)
    return per_step


def _guided_steps(model, guider, family, calls):
    """Indices of the steps in which the Sinkhorn attention ran."""
    return [i for i, n in enumerate(_calls_per_step(model, guider, family, calls)) if n]


def _node_guider(host, patched, family):
    import comfy.samplers

    pos, neg = tiny_models.conditioning(family)
    guider = comfy.samplers.CFGGuider(patched)  # what KSampler samples with
    guider.set_conds(pos, neg)
    guider.set_cfg(4.0)
    return guider


def _window_steps(host, models, family, calls, start, end, via_guider=False):
    patched = sampling.patch(host, "ASAGAdvanced", models[family], start_percent=start, end_percent=end)
    if via_guider:
        guider = sampling.asag_guider(host, patched, family, 4.0, 1.5)
    else:
        guider = _node_guider(host, patched, family)
    return _guided_steps(models[family], guider, family, calls)


@pytest.mark.parametrize("via_guider", [False, True], ids=["ASAGAdvanced", "ASAGGuider"])
def test_one_percent_window_guides_the_same_steps_on_sd15_and_flux(host, models, sinkhorn_calls, via_guider):
    steps = {}
    for family in ("sd15", "flux"):
        sinkhorn_calls.clear()
        steps[family] = _window_steps(host, models, family, sinkhorn_calls, *WINDOW, via_guider=via_guider)
    assert steps["sd15"] == steps["flux"] == WINDOW_STEPS, steps


@pytest.mark.parametrize("family", ["sd15", "flux"])
def test_the_window_matches_comfyuis_skip_layer_guidance(host, models, sinkhorn_calls, family):
    """ComfyUI's SkipLayerGuidanceDiT, given the same percents, runs its extra model pass in exactly
    the steps ASAG guides (on the U-Net its layer patch does nothing, but the pass still runs)."""
    from comfy_extras.nodes_slg import SkipLayerGuidanceDiT

    slg = SkipLayerGuidanceDiT.execute(models[family], scale=3.0, start_percent=WINDOW[0], end_percent=WINDOW[1],
                                       double_layers="0", single_layers="").result[0].clone()
    model_calls = []
    slg.set_model_unet_function_wrapper(lambda apply, args: model_calls.append(1) or apply(args["input"],
                                        args["timestep"], **args["c"]))
    per_step = _calls_per_step(models[family], _node_guider(host, slg, family), family, model_calls)
    slg_steps = [i for i, n in enumerate(per_step) if n > min(per_step)]
    assert slg_steps == _window_steps(host, models, family, sinkhorn_calls, *WINDOW)


@pytest.mark.parametrize("family", ["sd15", "flux"])
def test_each_bound_excludes_its_side(host, models, sinkhorn_calls, family):
    """Only a start bound drops the first steps, only an end bound the last ones, and the full
    window guides every step: a dropped bound cannot go unnoticed."""
    assert _window_steps(host, models, family, sinkhorn_calls, 0.0, 1.0) == list(range(STEPS))
    sinkhorn_calls.clear()
    assert _window_steps(host, models, family, sinkhorn_calls, WINDOW[0], 1.0) == list(range(3, STEPS))
    sinkhorn_calls.clear()
    assert _window_steps(host, models, family, sinkhorn_calls, 0.0, WINDOW[1]) == list(range(6))


def test_the_window_is_the_models_own_percent_to_sigma(host, models):
    module = host.internal("nodes.guidance_step")
    for family, model in models.items():
        plan = module.carried_plan(sampling.patch(host, "ASAGAdvanced", model, start_percent=0.25,
                                                  end_percent=0.75).model_options)
        model_sampling = model.get_model_object("model_sampling")
        assert plan.window(model_sampling) == (model_sampling.percent_to_sigma(0.25),
                                               model_sampling.percent_to_sigma(0.75)), family
    sd15 = module.carried_plan(sampling.patch(host, "ASAGAdvanced", models["sd15"]).model_options)
    ms = models["sd15"].get_model_object("model_sampling")
    assert sd15.window(ms) == (float("inf"), 0.0), "the default window must be unbounded"


class _Window:
    """A model sampling whose percent_to_sigma maps 0.25 -> 2.0 and 0.75 -> 1.0."""

    def percent_to_sigma(self, percent):
        return {0.25: 2.0, 0.75: 1.0}[percent]


def test_both_bounds_are_inclusive_like_skip_layer_guidance(host, models):
    """ComfyUI's SkipLayerGuidance guides while sigma_end <= sigma <= sigma_start; so does ASAG."""
    plan_module = host.internal("nodes.plan")
    guidance = host.internal("nodes.guidance_step")
    plan = guidance.carried_plan(sampling.patch(host, "ASAGAdvanced", models["sd15"], start_percent=0.25,
                                                end_percent=0.75).model_options)
    ms = _Window()
    assert [plan.active_at(s, ms) for s in (2.5, 2.0, 1.5, 1.0, 0.5)] == [False, True, True, True, False]
    off = plan_module.copy_plan(plan, scale=0.0)
    assert off.window(ms) == (2.0, 1.0), "copy_plan must keep the window"
    assert not off.active_at(1.5, ms), "scale 0 never guides"
    with pytest.raises(ValueError, match="layers"):
        plan_module.copy_plan(plan, layers="m0")


# ---------------------------------------------------------------------------------------------
# ModelSampling nodes before or after ASAG
# ---------------------------------------------------------------------------------------------

ORDER_WINDOW = (0.3, 0.7)


def _model_sampling_node(family, model):
    from comfy_extras import nodes_model_advanced as nma

    if family == "sd3":
        return nma.ModelSamplingSD3().patch(model, 8.0)[0]
    if family == "flux":
        return nma.ModelSamplingFlux().patch(model, 1.15, 0.5, 1024, 1024)[0]
    return nma.ModelSamplingDiscrete().patch(model, "eps", True)[0]  # zero terminal SNR moves every sigma


def _expected_steps(final):
    """The steps whose sigma lies in the window on the model that is sampled."""
    from comfy_extras import nodes_custom_sampler as ncs

    (sigmas,) = ncs.BasicScheduler().get_sigmas(final, "normal", STEPS, 1.0)
    ms = final.get_model_object("model_sampling")
    start, end = (float(ms.percent_to_sigma(p)) for p in ORDER_WINDOW)
    return [i for i, s in enumerate(sigmas[:-1].tolist()) if end <= s <= start]


@pytest.mark.parametrize("family", ["sd3", "flux", "sd15"])
@pytest.mark.parametrize("via_guider", [False, True], ids=["ASAGAdvanced", "ASAGGuider"])
def test_the_window_does_not_depend_on_where_model_sampling_sits(host, family, via_guider, sinkhorn_calls):
    """The window is resolved while sampling, from the sampled model's own model_sampling, as
    ComfyUI's ControlNetApplyAdvanced and ConditioningSetTimestepRange resolve theirs."""
    model = tiny_models.FAMILIES[family]()

    def asag(m):
        return sampling.patch(host, "ASAGAdvanced", m, start_percent=ORDER_WINDOW[0], end_percent=ORDER_WINDOW[1])

    graphs = {"ModelSampling first": asag(_model_sampling_node(family, model)),
              "ModelSampling after ASAG": _model_sampling_node(family, asag(model))}
    steps = {}
    for order, final in graphs.items():
        sinkhorn_calls.clear()
        if via_guider:
            guider = sampling.asag_guider(host, final, family, 4.0, 1.5)
        else:
            guider = _node_guider(host, final, family)
        steps[order] = _guided_steps(final, guider, family, sinkhorn_calls)
    expected = _expected_steps(graphs["ModelSampling first"])
    assert steps == {order: expected for order in graphs}, steps
    if family in ("sd3", "flux"):  # the 10-step count: [3, 4, 5, 6] with ModelSampling first
        assert expected == [3, 4, 5, 6]
