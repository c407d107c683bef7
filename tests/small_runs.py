"""Small, quick sampling runs for the reliability and composition host tests.

The host machine is shared: under CPU contention PyTorch's intra-op thread pool spends
most of its time waiting on barriers (a tiny U-Net step takes ~10x longer with 2 threads
than with 1), so these tests run single-threaded; the ``single_thread`` fixture restores
the previous setting afterwards.
"""

from __future__ import annotations

import pytest
import sampling
import tiny_models
import torch

SIZE = 8  # latent side (64x64 pixels): the tiny SD1.5's middle block sees 4x4 = 16 tokens
STEPS = 2


@pytest.fixture(scope="module", autouse=True)
def single_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def run(host, model, family="sd15", batch=1, **kwargs):
    """KSampler on a small empty latent (or ``latent=``), STEPS steps unless told."""
    kwargs.setdefault("steps", STEPS)
    kwargs.setdefault("latent", tiny_models.latent(family, batch=batch, size=SIZE))
    return sampling.ksampler(host, model, family, **kwargs)


def assert_same_sample(actual, expected):
    """Equal up to float32 reordering (attention kernels, batch composition), as in test_families."""
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=2e-5 * float(expected.abs().max()))


def run_guider(host, guider, model, family="sd15", batch=1, steps=STEPS, seed=1):
    """SamplerCustomAdvanced with ``guider`` on the same small latent as :func:`run`."""
    from comfy_extras import nodes_custom_sampler as ncs

    (noise,) = ncs.RandomNoise().get_noise(seed)
    (sampler,) = ncs.KSamplerSelect().get_sampler("euler")
    (sigmas,) = ncs.BasicScheduler().get_sigmas(model, "normal", steps, 1.0)
    latent = tiny_models.latent(family, batch=batch, size=SIZE)
    out, _ = ncs.SamplerCustomAdvanced().sample(noise, guider, sampler, sigmas, latent)
    return out["samples"]
