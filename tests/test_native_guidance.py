"""ASAG beside the guidance and sampling nodes ComfyUI ships, through ComfyUI's KSampler.

* NAGuidance (Normalized Attention Guidance, ComfyUI 0.22; 0.3.64 has none) on Flux.1 and FLUX.2 Klein,
  in either order: both change the sample, each at its neutral setting equals the other alone, and the
  ASAG node's batched call equals its separate pass.
* EasyCache and LazyCache on Wan (both hosts): sampling works; the steps a cache skipped run no Sinkhorn
  and get no ASAG term (EasyCache skips inside the model call: the pack warns once; LazyCache skips the
  whole prediction, ASAG's functions with it: nothing to warn about).
* ContextWindowsManual on Wan (both hosts): the Sinkhorn runs once per window and model evaluation over
  that window's tokens, and the batched call equals the separate pass.
* SkipLayerGuidanceDiT beside ASAG on FLUX.2 and Z-Image (0.22): with one Euler step the two guidance
  terms add up exactly; on Z-Image SLG skips nothing (see the test).
"""

from __future__ import annotations

import inspect
import logging

import comfy_host
import pytest
import sampling
import tiny_dits
import tiny_families as tf
import tiny_models
import torch
from test_fast_path import assert_relative

pytestmark = pytest.mark.host

STEPS = 2


class Subject:
    """A tiny model with its conditioning and latent, from tiny_models, tiny_dits or tiny_families."""

    def __init__(self, model, conditioning, latent):
        self.model = model
        self.pos, self.neg = conditioning
        self.latent = latent

    def sample(self, host, model=None, cfg=4.0, steps=STEPS):
        (out,) = host.nodes.KSampler().sample(model or self.model, 1, steps, cfg, "euler", "normal", self.pos,
                                              self.neg, self.latent, denoise=1.0)
        return out["samples"]


def subject(name) -> Subject:
    if name in tiny_models.FAMILIES:
        return Subject(tiny_models.FAMILIES[name](), tiny_models.conditioning(name), tiny_models.latent(name))
    if name in tiny_dits.FAMILIES:
        return Subject(tiny_dits.FAMILIES[name](), tiny_dits.conditioning(name), tiny_dits.latent(name))
    return Subject(tf.build(name), tf.conditioning(name), tf.latent(name))


@pytest.fixture(scope="module")
def version(host):
    return comfy_host.comfyui_version(host.root)


def asag(host, model, path="fast", scale=1.5):
    return sampling.asag_on(host, model, path, scale=scale)


# ---------------------------------------------------------------------------------------------
# NAGuidance
# ---------------------------------------------------------------------------------------------

def _nag_node():
    try:
        from comfy_extras.nodes_nag import NAGuidance
    except ImportError:
        return None
    return NAGuidance


def nag(model, scale):
    return _nag_node().execute(model, scale, 0.5, 1.5).result[0]


def _both(host, model, order, path, asag_scale=1.5, nag_scale=5.0):
    if order == "nag-then-asag":
        return asag(host, nag(model, nag_scale), path, asag_scale)
    return nag(asag(host, model, path, asag_scale), nag_scale)


@pytest.mark.parametrize("order", ["nag-then-asag", "asag-then-nag"])
@pytest.mark.parametrize("name", ["flux", "flux2_klein"])
def test_nag_beside_asag(host, version, name, order, sinkhorn_calls):
    """At cfg 1, NAG's setting (distilled models): NAG turns the negative prompt into an attention-output
    correction of the conditional rows (it computes uncond although cfg is 1). The ASAG node's adversarial
    row sits in the same call as cond and uncond; NAG's patch edits the first conditional chunk only, and a
    call without an uncond chunk not at all, so the adversarial row gets no NAG on either path."""
    if _nag_node() is None:
        assert version < (0, 22, 0), f"ComfyUI {version} lacks NAGuidance"
        return
    if name in tf.FAMILIES and name not in tf.available():
        assert version < (0, 22, 0) and name in tf.NEW_IN_0_22
        return
    s = subject(name)
    plain, nag_only, asag_only = (s.sample(host, m, cfg=1.0) for m in (s.model, nag(s.model, 5.0), asag(host, s.model)))
    assert not torch.allclose(nag_only, plain, atol=1e-3) and not torch.allclose(asag_only, plain, atol=1e-3)

    sinkhorn_calls.clear()
    fast = s.sample(host, _both(host, s.model, order, "fast"), cfg=1.0)
    assert len(sinkhorn_calls) == STEPS and {c.rows for c in sinkhorn_calls} == {1}
    separate = s.sample(host, _both(host, s.model, order, "separate"), cfg=1.0)
    assert_relative(fast, separate)
    assert not torch.allclose(fast, nag_only, atol=1e-3), "ASAG changed nothing beside NAG"
    assert not torch.allclose(fast, asag_only, atol=1e-3), "NAG changed nothing beside ASAG"

    # each at its neutral setting: ASAG at scale 0 returns the model unchanged; NAG at scale 1 gives the
    # conditional rows their own attention output (NAG's 0 is not neutral: it pushes towards the negative).
    # NAG's uncond pass changes the batch the cond rows run in: equal up to float32 reordering.
    assert torch.equal(s.sample(host, _both(host, s.model, order, "fast", asag_scale=0.0), cfg=1.0), nag_only)
    assert_relative(s.sample(host, _both(host, s.model, order, "fast", nag_scale=1.0), cfg=1.0), asag_only)


# ---------------------------------------------------------------------------------------------
# EasyCache and LazyCache on Wan
# ---------------------------------------------------------------------------------------------

class BlockRuns:
    """Entries into one block (the chosen one): a cache that skips the model skips them."""

    def __init__(self, block):
        self.batches = []
        self.handle = block.register_forward_pre_hook(lambda module, args: self.batches.append(args[0].shape[0]))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def _skipped_warnings(caplog):
    return [r for r in caplog.records if r.levelno == logging.WARNING and "caching node" in r.getMessage()]


@pytest.mark.parametrize("path", sampling.PATHS)
@pytest.mark.parametrize("cache", ["EasyCache", "LazyCache"])
def test_easycache_and_lazycache_on_wan(host, cache, path, caplog, sinkhorn_calls):
    """What each cache skips, per path. Fast path (cond, uncond and adversarial rows in one call): both skip
    that call whole, so a skipped step computes no adversarial branch. EasyCache skips inside ASAG's model
    call: ASAG sees its layers did not run, drops the term, warns once. LazyCache skips the whole
    prediction, ASAG's post-CFG function included: nothing to warn about. Separate pass: LazyCache skips
    both calls of a step; EasyCache reuses the cond/uncond call but never the adversarial pass (its own
    call, whose output it has not cached), which then runs every step."""
    from comfy_extras.nodes_easycache import EasyCacheNode, LazyCacheNode

    steps = 8
    s = subject("wan21")
    node = {"EasyCache": EasyCacheNode, "LazyCache": LazyCacheNode}[cache]
    # a threshold so high that every step the cache may skip, it skips
    cached = node.execute(asag(host, s.model, path), 100.0, 0.0, 1.0, False).result[0]
    block = s.model.model.diffusion_model.blocks[1]  # auto: the middle of 3
    with caplog.at_level(logging.INFO, logger="comfyui-asag"), BlockRuns(block) as runs:
        out = s.sample(host, cached, steps=steps)
    assert torch.isfinite(out).all()
    adversarial = runs.batches.count(3 if path == "fast" else 1)  # the calls that hold the adversarial row
    # the Sinkhorn ran exactly in the calls whose blocks ran, on the adversarial row
    assert len(sinkhorn_calls) == adversarial and {c.rows for c in sinkhorn_calls} == {1}
    if path == "fast":
        assert 0 < adversarial < steps, f"{cache} skipped no step, or every step"
        assert len(_skipped_warnings(caplog)) == (1 if cache == "EasyCache" else 0)
        return
    conditional = runs.batches.count(2)
    assert 0 < conditional < steps, f"{cache} skipped no cond/uncond call, or every one"
    assert adversarial == (steps if cache == "EasyCache" else conditional)
    assert _skipped_warnings(caplog) == []


# ---------------------------------------------------------------------------------------------
# context windows on Wan
# ---------------------------------------------------------------------------------------------

WINDOW_FRAMES = 4  # latent frames: two windows of 2 frames, no overlap (static standard schedule)


def _context_windows(model):
    from comfy_extras.nodes_context_windows import ContextWindowsManualNode

    args = dict(context_length=2, context_overlap=0, context_schedule="standard_static", context_stride=1,
                closed_loop=False, fuse_method="pyramid", dim=2)
    if "freenoise" in inspect.signature(ContextWindowsManualNode.execute).parameters:  # ComfyUI 0.22
        args["freenoise"] = False
    return ContextWindowsManualNode.execute(model, **args).result[0]


def _window_tokens():
    """Wan's tokens per window: 2 frames x (8/2 x 8/2). ComfyUI 0.22's causal_window_fix (on by default)
    runs every window after the first with the frame before it prepended: 3 frames there."""
    from comfy_extras.nodes_context_windows import ContextWindowsManualNode

    per_frame = (8 // 2) * (8 // 2)
    causal_fix = "causal_window_fix" in inspect.signature(ContextWindowsManualNode.execute).parameters
    return [2 * per_frame, (3 if causal_fix else 2) * per_frame]


def test_context_windows_on_wan(host, sinkhorn_calls):
    s = subject("wan21")
    s.latent = {"samples": torch.zeros(1, 16, WINDOW_FRAMES, 8, 8)}
    windowed = _context_windows(s.model)
    plain = s.sample(host, windowed)
    results = {}
    for path in sampling.PATHS:
        sinkhorn_calls.clear()
        results[path] = s.sample(host, asag(host, windowed, path))
        tokens = [(c.rows, c.tokens, c.keys) for c in sinkhorn_calls]
        assert tokens == [(1, n, n) for n in _window_tokens()] * STEPS, path
    assert_relative(results["fast"], results["separate"])
    assert not torch.allclose(results["fast"], plain, atol=1e-3)


# ---------------------------------------------------------------------------------------------
# SkipLayerGuidanceDiT on FLUX.2 and Z-Image
# ---------------------------------------------------------------------------------------------

def _slg(model, block="0"):
    from comfy_extras.nodes_slg import SkipLayerGuidanceDiT

    return SkipLayerGuidanceDiT.execute(model, 3.0, 0.0, 1.0, double_layers=block, single_layers="").result[0]


@pytest.mark.parametrize("order", ["asag-after", "asag-before"])
@pytest.mark.parametrize("name", ["flux2_klein", "zimage"])
def test_skip_layer_guidance_beside_asag(host, version, name, order, sinkhorn_calls):
    """With one Euler step the sample is linear in the guided prediction, so the terms add up:
    x_both - x_cfg = (x_slg - x_cfg) + (x_asag - x_cfg). SLG skips block 0, ASAG perturbs its auto b1.
    FLUX.2 honours SLG's block replace. ComfyUI's NextDiT (Lumina 2, Z-Image) runs its layers without
    patches_replace["dit"], so there SLG's pass equals the conditional pass and its term is only the
    float32 noise of a batch of 1 against 2."""
    if name not in tf.available():
        assert version < (0, 22, 0) and name in tf.NEW_IN_0_22
        return
    s = subject(name)
    plain = s.sample(host, steps=1)
    effect_slg = s.sample(host, _slg(s.model), steps=1) - plain
    effect_asag = s.sample(host, asag(host, s.model), steps=1) - plain
    effects = {}
    for path in sampling.PATHS:
        both = asag(host, _slg(s.model), path) if order == "asag-after" else _slg(asag(host, s.model, path))
        sinkhorn_calls.clear()
        effects[path] = s.sample(host, both, steps=1) - plain
        assert len(sinkhorn_calls) == 1, "ASAG's adversarial row only, not SLG's pass"
    assert effect_asag.abs().max() > 1e-3
    if name == "zimage":
        assert_relative(effect_slg + plain, plain)
    else:
        assert effect_slg.abs().max() > 1e-3
    torch.testing.assert_close(effects["fast"], effect_slg + effect_asag, rtol=1e-4,
                               atol=1e-4 * float(effects["fast"].abs().max()))
    assert_relative(effects["fast"] + plain, effects["separate"] + plain)
