"""Reliability in the real ComfyUI: bad input, an untouched input MODEL, half precision,
interrupts and a soak run.

Each test drives this pack's nodes through their public ``execute`` and ComfyUI's own
samplers on tiny random-weight models (tests/tiny_models.py). The graph-level checks
(the error shown on the node, caching of our node's output) run through ComfyUI's
execution engine in tests/test_execution.py; composition with other patches is in
tests/test_composition.py.
"""

import gc
import math
import os
import sys
import time

import model_state
import pytest
import sampling
import tiny_models
import torch
from small_runs import SIZE, STEPS, run, run_guider

pytestmark = pytest.mark.host


@pytest.fixture(scope="module")
def sd15(host):
    return tiny_models.sd15()


def errors(host):
    return sys.modules[host.pack_module_name + ".asag_core"].LayerSpecError


# ---------------------------------------------------------------------------------------------
# bad input: a clear error naming the input and the valid values, and nothing half-applied
# ---------------------------------------------------------------------------------------------

SD15_LAYERS = "d0, d1; m0; u0, u1, u2, u3"  # the tiny SD1.5's layers, as the catalog names them
GRAMMAR = "U-Net: d<i>, m<i>, u<i>"

BAD_INPUTS = [
    # (node, inputs, LayerSpecError?, fragments the message must contain)
    ("ASAGAdvanced", {"layers": ""}, True, ["layers is empty", "'auto'", GRAMMAR]),
    ("ASAGAdvanced", {"layers": "   "}, True, ["layers is empty", GRAMMAR]),
    ("ASAGAdvanced", {"layers": "x7"}, True, ["layers", "'x7'", GRAMMAR]),
    ("ASAGAdvanced", {"layers": "d0,,u1"}, True, ["layers", "empty item", GRAMMAR]),
    ("ASAGAdvanced", {"layers": "d0;u1"}, True, ["layers", "'d0;u1'", GRAMMAR]),
    ("ASAGAdvanced", {"layers": "d3-d1"}, True, ["layers", "'d3-d1'", "runs backwards"]),
    ("ASAGAdvanced", {"layers": "d5"}, True, ["layers", "'d5'", "SD15", SD15_LAYERS]),
    ("ASAGAdvanced", {"layers": "m0, u4"}, True, ["layers", "'u4'", SD15_LAYERS]),
    ("ASAGAdvanced", {"layers": "u0.3"}, True, ["layers", "transformer 3", SD15_LAYERS]),
    ("ASAGAdvanced", {"layers": "double2"}, True, ["layers", "DiT layer", "U-Net", SD15_LAYERS]),
    ("ASAG", {"scale": math.nan}, False, ["scale", "finite number >= 0.0", "nan"]),
    ("ASAG", {"scale": math.inf}, False, ["scale", "finite number >= 0.0", "inf"]),
    ("ASAG", {"scale": -1.0}, False, ["scale", ">= 0.0", "-1.0"]),
    ("ASAGAdvanced", {"scale": -math.inf}, False, ["scale", "finite number >= 0.0"]),
    ("ASAGAdvanced", {"iterations": -1}, False, ["iterations", "integer >= 0", "-1"]),
    ("ASAGAdvanced", {"iterations": 2.5}, False, ["iterations", "integer >= 0", "2.5"]),
    ("ASAGAdvanced", {"lam": -0.5}, False, ["lam", ">= 0.0", "-0.5"]),
    ("ASAGAdvanced", {"lam": math.nan}, False, ["lam", "finite number >= 0.0"]),
    ("ASAGAdvanced", {"lam": math.inf}, False, ["lam", "finite number >= 0.0"]),
    ("ASAGAdvanced", {"cost": "wasserstein"}, False, ["cost", "adversarial, similarity, uniform", "'wasserstein'"]),
    ("ASAGAdvanced", {"rescale_mode": "half"}, False, ["rescale_mode", "full, partial", "'half'"]),
    ("ASAGAdvanced", {"rescale": 1.5}, False, ["rescale", "<= 1.0"]),
    ("ASAGAdvanced", {"rescale": math.nan}, False, ["rescale", ">= 0.0 and <= 1.0"]),
    ("ASAGAdvanced", {"start_percent": 0.6, "end_percent": 0.4}, False,
     ["start_percent (0.6) must not exceed end_percent (0.4)", "0 <= start <= end <= 1"]),
    ("ASAGAdvanced", {"start_percent": math.nan}, False, ["start_percent", "finite number >= 0.0 and <= 1.0"]),
    ("ASAGAdvanced", {"start_percent": -0.1}, False, ["start_percent", ">= 0.0", "-0.1"]),
    ("ASAGAdvanced", {"end_percent": 1.5}, False, ["end_percent", "<= 1.0", "1.5"]),
    ("ASAGAdvanced", {"end_percent": math.inf}, False, ["end_percent", "finite number >= 0.0 and <= 1.0"]),
]


@pytest.mark.parametrize("node,inputs,layer_error,fragments", BAD_INPUTS,
                         ids=[f"{n}-{'-'.join(f'{k}={v!r}' for k, v in i.items())}" for n, i, _, _ in BAD_INPUTS])
def test_bad_input_is_a_clear_error_and_changes_nothing(host, sd15, node, inputs, layer_error, fragments):
    before = model_state.patcher_state(sd15)
    expected = errors(host) if layer_error else ValueError
    with pytest.raises(expected) as raised:
        sampling.patch(host, node, sd15, **inputs)
    message = str(raised.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} missing from the error: {message}"
    model_state.assert_state_unchanged(sd15, before)


@pytest.mark.parametrize("scale", [math.nan, math.inf, -0.5])
def test_guider_rejects_a_bad_scale_and_changes_nothing(host, sd15, scale):
    pos, neg = tiny_models.conditioning("sd15")
    patched = sampling.patch(host, "ASAGAdvanced", sd15, layers="d0")
    for model in (sd15, patched):  # the guider's own settings, and those it takes from a patched model
        before = model_state.patcher_state(model)
        with pytest.raises(ValueError, match=r"scale must be .*>= 0\.0"):
            host.node("ASAGGuider").execute(model, pos, neg, 4.0, scale)
        model_state.assert_state_unchanged(model, before)


def test_a_model_without_reachable_self_attention_is_refused(host):
    model = tiny_models.sd15_without_attention()
    layer_error = errors(host)
    catalog = host.internal("nodes.model_layers").layer_catalog(model)
    assert not catalog.unet and not catalog.dit, f"the attention-free U-Net still offers layers: {catalog}"
    assert torch.isfinite(run(host, model)).all(), "the attention-free model itself does not sample"

    before = model_state.patcher_state(model)
    pos, neg = tiny_models.conditioning("sd15")
    attempts = [
        lambda: sampling.patch(host, "ASAG", model),
        lambda: sampling.patch(host, "ASAGAdvanced", model, layers="auto"),
        lambda: sampling.patch(host, "ASAGAdvanced", model, layers="d0"),
        lambda: sampling.patch(host, "ASAGAdvanced", model, layers="b0"),
        lambda: host.node("ASAGGuider").execute(model, pos, neg, 4.0, 1.5),
    ]
    for attempt in attempts:
        with pytest.raises(layer_error) as raised:
            attempt()
        message = str(raised.value)
        assert "layers" in message and "SD15 model has no self-attention ASAG can reach" in message, message
        assert "DiT" not in message, f"a U-Net must not be called a DiT: {message}"
        model_state.assert_state_unchanged(model, before)


# ---------------------------------------------------------------------------------------------
# the input MODEL is never mutated; differently configured patches are independent
# ---------------------------------------------------------------------------------------------

def _hooks(patcher):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in patcher.model.modules())


def test_input_model_is_never_mutated(host, sinkhorn_calls):
    model = tiny_models.sd15(seed=3)
    # a realistic input: already carrying someone's attn1 patch and post-CFG function
    model.set_model_attn1_replace(lambda q, k, v, extra: q * 0 + v, "input", 1, 0)
    model.set_model_sampler_post_cfg_function(lambda args: args["denoised"])
    state, weights, hooks = model_state.patcher_state(model), model_state.weights(model), _hooks(model)
    options_before = model_state.patch_keys(model.model_options)

    plain = run(host, model)
    a = sampling.patch(host, "ASAG", model, scale=2.0)
    b = sampling.patch(host, "ASAGAdvanced", model, scale=3.0, layers="d0, m0, u1", iterations=3, lam=2.0,
                       rescale=0.5, rescale_mode="partial")
    twice = sampling.patch(host, "ASAG", a, scale=1.0)
    states = {name: model_state.patcher_state(m) for name, m in (("a", a), ("b", b), ("twice", twice))}
    for patched in (a, b, twice):
        assert patched is not model and patched.model_options is not model.model_options
        out = run(host, patched)
        assert torch.isfinite(out).all() and not torch.allclose(out, plain, atol=1e-3)
    guider = sampling.asag_guider(host, b, "sd15", 4.0, 2.0)
    run_guider(host, guider, b, steps=STEPS)
    guider = sampling.asag_guider(host, model, "sd15", 4.0, 2.0)
    run_guider(host, guider, model, steps=STEPS)
    assert sinkhorn_calls, "ASAG never ran"

    model_state.assert_state_unchanged(model, state)
    model_state.assert_weights_equal(model, weights)
    assert model_state.patch_keys(model.model_options) == options_before
    assert len(model.model_options["sampler_post_cfg_function"]) == 1
    assert _hooks(model) == hooks, "forward hooks were left on the model"
    for name, patched in (("a", a), ("b", b), ("twice", twice)):
        model_state.assert_state_unchanged(patched, states[name], what=f"patched model {name} (by sampling)")
    assert torch.equal(run(host, model), plain), "the input model samples differently after ASAG ran"


def test_two_patches_of_one_model_are_independent(host, sd15, sinkhorn_calls):
    a = sampling.patch(host, "ASAG", sd15, scale=1.5)
    b = sampling.patch(host, "ASAGAdvanced", sd15, scale=4.0, layers="d0, u1", lam=3.0, iterations=3)
    first_a = run(host, a)
    layers_a = {layer for layer, _, _ in sinkhorn_calls}
    sinkhorn_calls.clear()
    only_b = run(host, b)
    layers_b = {layer for layer, _, _ in sinkhorn_calls}
    sinkhorn_calls.clear()
    again_a = run(host, a)
    assert torch.equal(again_a, first_a), "sampling B changed what A gives"
    assert {layer for layer, _, _ in sinkhorn_calls} == layers_a
    assert layers_a != layers_b, "B ran in A's layers"
    assert not torch.allclose(first_a, only_b, atol=1e-3)
    # B again, after A: also unchanged
    assert torch.equal(run(host, b), only_b)


# ---------------------------------------------------------------------------------------------
# half precision
# ---------------------------------------------------------------------------------------------

HALF_SETTINGS = [(0.0, 1.0), (1.5, 1.0), (1.5, 10.0), (10.0, 1.0), (10.0, 10.0)]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_half_precision_models_stay_finite(host, dtype, sinkhorn_calls):
    model = tiny_models.sd15(dtype=dtype)
    assert model.model.get_dtype() == dtype
    base = run(host, model)
    assert torch.isfinite(base).all(), "the tiny half-precision model overflows on its own"
    for scale, lam in HALF_SETTINGS:
        sinkhorn_calls.clear()
        patched = sampling.patch(host, "ASAGAdvanced", model, scale=scale, lam=lam)
        out = run(host, patched)
        assert torch.isfinite(out).all(), f"{dtype}: NaN/Inf at scale {scale}, lam {lam}"
        if scale == 0:
            assert torch.equal(out, base) and not sinkhorn_calls
        else:
            assert sinkhorn_calls, f"ASAG did not run at scale {scale}"
            assert not torch.allclose(out, base, atol=1e-3)
    # the batched guider (cond, uncond and adversarial rows in one call) at the extremes
    strongest = sampling.patch(host, "ASAGAdvanced", model, scale=10.0, lam=10.0, layers="d0, m0, u3")
    via_guider = run_guider(host, sampling.asag_guider(host, strongest, "sd15", 4.0, 10.0), strongest)
    assert torch.isfinite(via_guider).all()


def test_bf16_dit_stays_finite(host, sinkhorn_calls):
    model = tiny_models.flux(dtype=torch.bfloat16)
    patched = sampling.patch(host, "ASAGAdvanced", model, scale=10.0, lam=10.0, layers="double0-2, single0-3")
    out = run(host, patched, family="flux", cfg=1.0)
    assert torch.isfinite(out).all()
    assert sinkhorn_calls


# ---------------------------------------------------------------------------------------------
# interrupts
# ---------------------------------------------------------------------------------------------

@pytest.fixture
def progress_hook():
    """ComfyUI's server-side progress hook, installed as main.hijack_progress installs it
    (``comfy.utils.set_progress_bar_global_hook``): it checks the interrupt flag at each call."""
    import comfy.model_management
    import comfy.utils

    def hook(value, total, preview_image, prompt_id=None, node_id=None):
        comfy.model_management.throw_exception_if_processing_interrupted()

    before = comfy.utils.PROGRESS_BAR_HOOK
    comfy.utils.set_progress_bar_global_hook(hook)
    yield hook
    comfy.utils.set_progress_bar_global_hook(before)
    comfy.model_management.interrupt_current_processing(False)


def _interrupt():
    import comfy.model_management

    comfy.model_management.interrupt_current_processing()


def _cancel_after_step(model, step):
    """``model`` with a post-CFG function that presses Cancel once step ``step``'s prediction is
    made (one model evaluation per euler step): an interrupt while that step finishes."""
    steps = []

    def cancel(args):
        steps.append(1)
        if len(steps) == step:
            _interrupt()
        return args["denoised"]

    cancelling = model.clone()
    cancelling.set_model_sampler_post_cfg_function(cancel)
    return cancelling


def _check_nothing_left(host, models_and_states, weights_of, reference_runs):
    import comfy.model_management

    assert not comfy.model_management.processing_interrupted(), "the interrupt flag was not cleared"
    for name, (model, state) in models_and_states.items():
        model_state.assert_state_unchanged(model, state, what=name)
        stale = model_state.patch_keys(model.model_options)
        assert not stale, f"{name}: patches left in transformer_options: {stale}"
    model_state.assert_weights_equal(*weights_of)
    for again, reference in reference_runs:
        assert torch.equal(again(), reference), "the run after the interrupt differs from a fresh run"


def test_interrupt_between_steps(host, sd15, progress_hook, sinkhorn_calls):
    """Cancel pressed while step 2 of 3 finishes. Where ComfyUI notices it differs: 0.3.64's
    ProgressBar calls the hook after every step, so the hook raises after step 2; 0.22's calls it
    for the first and the last step and otherwise at most every 0.1 s, but 0.22's own layers
    (comfy.ops, ``run_every_op``) check the flag at every call, so step 3's first layer raises
    if the hook did not. Either way no attention of step 3 runs."""
    import traceback

    import comfy.model_management
    import comfy.ops

    patched = sampling.patch(host, "ASAG", sd15, scale=2.0)
    states = {"input model": (sd15, model_state.patcher_state(sd15)),
              "patched model": (patched, model_state.patcher_state(patched))}
    weights = model_state.weights(sd15)
    fresh = run(host, patched, steps=3)

    sinkhorn_calls.clear()
    with pytest.raises(comfy.model_management.InterruptProcessingException) as raised:
        run(host, _cancel_after_step(patched, 2), steps=3)
    assert len(sinkhorn_calls) == 2, "the interrupt should stop sampling after step 2"
    if not hasattr(comfy.ops, "run_every_op"):  # 0.3.64: the progress hook is the only check
        hook = progress_hook.__code__
        assert any((f.filename, f.name) == (hook.co_filename, hook.co_name) for f in traceback.extract_tb(raised.tb))
    _check_nothing_left(host, states, (sd15, weights), [(lambda: run(host, patched, steps=3), fresh)])


INSIDE_CASES = [("sd15", "node", "d0, m0"), ("sd15", "guider", "d0, m0"), ("flux", "node", "double0, single1"),
                ("flux", "guider", "double0, single1")]


@pytest.mark.parametrize("family,path,layers", INSIDE_CASES, ids=[f"{f}-{p}" for f, p, _ in INSIDE_CASES])
def test_interrupt_inside_the_adversarial_pass(host, sd15, family, path, layers, monkeypatch):
    """The exception is raised from inside the model call that carries the Sinkhorn patches, between
    its two chosen layers (ComfyUI's own context-window loop raises it inside calc_cond_batch too)."""
    import comfy.model_management

    module = host.internal("nodes.adversarial_call")
    real = module.sinkhorn_attention
    calls = []

    def interrupting(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            _interrupt()
            comfy.model_management.throw_exception_if_processing_interrupted()
        return real(*args, **kwargs)

    model = sd15 if family == "sd15" else tiny_models.flux()
    cfg = 4.0 if family == "sd15" else 1.0
    patched = sampling.patch(host, "ASAGAdvanced", model, scale=2.0, layers=layers)
    if path == "node":
        def sample():
            return run(host, patched, family=family, steps=3, cfg=cfg)
    else:
        def sample():
            guider = sampling.asag_guider(host, patched, family, cfg, 2.0)
            return run_guider(host, guider, patched, family=family, steps=3)
    states = {"input model": (model, model_state.patcher_state(model)),
              "patched model": (patched, model_state.patcher_state(patched))}
    weights, hooks = model_state.weights(model), _hooks(model)
    fresh = sample()

    monkeypatch.setattr(module, "sinkhorn_attention", interrupting)
    with pytest.raises(comfy.model_management.InterruptProcessingException):
        sample()
    assert len(calls) == 2, "the interrupt must come from inside the adversarial pass"
    monkeypatch.setattr(module, "sinkhorn_attention", real)
    assert _hooks(model) == hooks, "hooks were left on the model's blocks"
    tracking = host.internal("nodes.adversarial_call")
    assert tracking.current() is None, "a model call is still tracked as running"
    _check_nothing_left(host, states, (model, weights), [(sample, fresh)])


# ---------------------------------------------------------------------------------------------
# soak
# ---------------------------------------------------------------------------------------------

SOAK_RUNS = 200
SOAK_BOUND_MB = 50  # a leak detector, not a timing threshold


def _rss_mb():
    import psutil

    gc.collect()
    try:  # hand freed heap pages back, so RSS measures live memory rather than allocator slack
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    return psutil.Process(os.getpid()).memory_info().rss / 2**20


@pytest.mark.slow
def test_soak_without_memory_growth(host, sinkhorn_calls, record_property):
    pytest.importorskip("psutil")
    model = tiny_models.sd15(seed=5)
    latent = tiny_models.latent("sd15", size=SIZE)

    def one(i):
        # a fresh patch each run, as a graph whose ASAG input changes re-executes the node
        patched = sampling.patch(host, "ASAG", model, scale=1.0 + 0.25 * (i % 4))
        out = sampling.ksampler(host, patched, "sd15", steps=1, seed=i, latent=latent)
        assert sinkhorn_calls, f"run {i}: ASAG did not run"
        sinkhorn_calls.clear()
        return out

    for i in range(10):  # warm-up: allocator pools, lazily built kernels, ComfyUI's model cache
        one(i)
    start = _rss_mb()
    started = time.perf_counter()
    for i in range(SOAK_RUNS):
        out = one(i)
    seconds = time.perf_counter() - started
    assert torch.isfinite(out).all()
    growth = _rss_mb() - start
    print(f"\nsoak: {SOAK_RUNS} ASAG sampling runs, RSS {start:.1f} MB -> {start + growth:.1f} MB "
          f"(growth {growth:+.2f} MB) in {seconds:.1f} s")
    record_property("soak_runs", SOAK_RUNS)
    record_property("soak_rss_start_mb", round(start, 2))
    record_property("soak_rss_growth_mb", round(growth, 2))
    assert growth < SOAK_BOUND_MB, f"RSS grew {growth:.1f} MB over {SOAK_RUNS} runs: a leak"
