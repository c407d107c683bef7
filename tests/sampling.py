"""Driving ComfyUI's own sampler nodes from tests."""

from __future__ import annotations

import tiny_models
import torch

STEPS = 3


def assert_same_sample(actual, expected):
    """Equal up to float32 reordering (different attention kernels, batch composition), which
    a few sampling steps of a random-weight model amplify in proportion to its output size."""
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=2e-5 * float(expected.abs().max()))


def ksampler(host, model, family, *, cfg=4.0, seed=1, steps=STEPS, batch=1, sampler="euler", scheduler="normal",
             denoise=1.0, latent=None, positive=None, negative=None):
    pos, neg = tiny_models.conditioning(family)
    latent = latent if latent is not None else tiny_models.latent(family, batch=batch)
    (out,) = host.nodes.KSampler().sample(
        model, seed, steps, cfg, sampler, scheduler, positive or pos, negative or neg, latent, denoise=denoise
    )
    return out["samples"]


def custom_advanced(host, guider, model, *, seed=1, steps=STEPS, batch=1, family="sd15"):
    from comfy_extras import nodes_custom_sampler as ncs

    (noise,) = ncs.RandomNoise().get_noise(seed)
    (sampler,) = ncs.KSamplerSelect().get_sampler("euler")
    (sigmas,) = ncs.BasicScheduler().get_sigmas(model, "normal", steps, 1.0)
    out, _ = ncs.SamplerCustomAdvanced().sample(noise, guider, sampler, sigmas, tiny_models.latent(family, batch=batch))
    return out["samples"]


def cfg_guider(host, model, family, cfg):
    from comfy_extras import nodes_custom_sampler as ncs

    pos, neg = tiny_models.conditioning(family)
    (guider,) = ncs.CFGGuider().get_guider(model, pos, neg, cfg)
    return guider


def asag_guider(host, model, family, cfg, scale):
    pos, neg = tiny_models.conditioning(family)
    return host.node("ASAGGuider").execute(model, pos, neg, cfg, scale).result[0]


def patch(host, node_id, model, **inputs):
    """Run one of our MODEL-returning nodes through its public execute()."""
    defaults = {
        "ASAG": {"scale": 1.5},
        "ASAGAdvanced": {"scale": 1.5, "iterations": 2, "lam": 1.0, "cost": "adversarial", "layers": "auto",
                         "start_percent": 0.0, "end_percent": 1.0, "rescale": 0.0, "rescale_mode": "full"},
    }[node_id]
    return host.node(node_id).execute(model, **{**defaults, **inputs}).result[0]


PATHS = ("fast", "separate")


def hold_batch_slot(model):
    """A clone on which another node holds ``sampler_calc_cond_batch_function`` (a pass-through,
    held the way SkipLayerGuidanceDiTSimple holds it), so that ASAG takes its separate pass."""
    import comfy.samplers

    def other_nodes_batch(args):
        return comfy.samplers.calc_cond_batch(
            args["model"], args["conds"], args["input"], args["sigma"], args["model_options"]
        )

    held = model.clone()
    held.set_model_sampler_calc_cond_batch_function(other_nodes_batch)
    return held


def asag_on(host, model, path, node_id="ASAG", **inputs):
    """``model`` with one of our nodes applied, taking the ``path`` ("fast": the batched call;
    "separate": another node holds the batch slot, so the adversarial branch is its own pass)."""
    if path not in PATHS:
        raise ValueError(f"path must be one of {PATHS}, got {path!r}")
    return patch(host, node_id, hold_batch_slot(model) if path == "separate" else model, **inputs)
