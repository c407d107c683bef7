"""Small, quick sampling runs for the reliability and composition host tests.

(Single-threaded, like every test: see ``one_torch_thread`` in conftest.py.)
"""

from __future__ import annotations

import sampling
import tiny_models

SIZE = 8  # latent side (64x64 pixels): the tiny SD1.5's middle block sees 4x4 = 16 tokens
STEPS = 2


def run(host, model, family="sd15", batch=1, **kwargs):
    """KSampler on a small empty latent (or ``latent=``), STEPS steps unless told."""
    kwargs.setdefault("steps", STEPS)
    kwargs.setdefault("latent", tiny_models.latent(family, batch=batch, size=SIZE))
    return sampling.ksampler(host, model, family, **kwargs)


def run_guider(host, guider, model, family="sd15", batch=1, steps=STEPS, seed=1):
    """SamplerCustomAdvanced with ``guider`` on the same small latent as :func:`run`."""
    from comfy_extras import nodes_custom_sampler as ncs

    (noise,) = ncs.RandomNoise().get_noise(seed)
    (sampler,) = ncs.KSamplerSelect().get_sampler("euler")
    (sigmas,) = ncs.BasicScheduler().get_sigmas(model, "normal", steps, 1.0)
    latent = tiny_models.latent(family, batch=batch, size=SIZE)
    out, _ = ncs.SamplerCustomAdvanced().sample(noise, guider, sampler, sigmas, latent)
    return out["samples"]
