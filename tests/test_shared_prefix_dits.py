"""The shared prefix on the video DiTs and Qwen-Image (Wan, LTXV, HunyuanVideo, Qwen-Image).

The blocks before the first perturbed one run without the adversarial rows, and the result equals
the unshared batched call (see test_shared_prefix.py for the U-Nets, Flux and SD3)."""

import pytest
import sampling
import tiny_dits
from test_shared_prefix import _assert_close, _hook_count, _module, rows_seen

pytestmark = pytest.mark.host

# (family, layers, cfg): the auto layer, a later one, and a single-stack layer for the two-stack DiTs
CASES = [
    ("wan21", "auto", 4.0),
    ("wan21", "b2", 1.0),
    ("wan22", "auto", 4.0),
    ("ltxv", "auto", 4.0),
    ("hunyuan_video", "single1", 4.0),
    ("qwen_image", "b2", 4.0),
]


def _denoise_once(host, guider, model, family, batch):
    from comfy_extras import nodes_custom_sampler as ncs

    (noise,) = ncs.RandomNoise().get_noise(1)
    (sampler,) = ncs.KSamplerSelect().get_sampler("euler")
    (sigmas,) = ncs.BasicScheduler().get_sigmas(model, "normal", 1, 1.0)
    out, _ = ncs.SamplerCustomAdvanced().sample(noise, guider, sampler, sigmas, tiny_dits.latent(family, batch=batch))
    return out["samples"]


def _guider(host, model, family, spec, cfg, share, batch):
    patched = sampling.patch(host, "ASAGAdvanced", model, layers=spec)
    pos, neg = tiny_dits.conditioning(family, batch=batch)
    guider = host.node("ASAGGuider").execute(patched, pos, neg, cfg, 1.5).result[0]
    guider.step.share_prefix = share
    return guider, patched


@pytest.mark.parametrize("family, spec, cfg", CASES)
def test_dit_prefix_runs_without_the_adversarial_rows_and_changes_nothing(host, family, spec, cfg):
    shared_prefix = _module(host, "model_layers")
    base = tiny_dits.FAMILIES[family]()
    diffusion_model = base.model.diffusion_model
    batch = 2
    full = batch * (3 if cfg != 1.0 else 2)  # cond, [uncond,] adversarial
    results = {}
    for share in (False, True):
        guider, model = _guider(host, base, family, spec, cfg, share, batch)
        prefix = shared_prefix.prefix_modules(diffusion_model, guider.plan.layers)
        assert prefix, f"no shareable prefix before {guider.plan.layers}"
        hooks = _hook_count(diffusion_model)
        with rows_seen(prefix) as seen:
            results[share] = _denoise_once(host, guider, model, family, batch)
        assert all(rows == [full - batch if share else full] for rows in seen.values()), (share, seen.values())
        assert _hook_count(diffusion_model) == hooks, "hooks left on the diffusion model"
    _assert_close(results[True], results[False])
