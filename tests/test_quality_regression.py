"""Quality regression on the committed tiny digits model: ASAG moves the samples the way
``benchmarks/quality.py`` measured, beyond the seed noise measured here.

What the benchmark measured (``python -m benchmarks.quality --quick``, same settings as
below: 30 images = 3 per digit, 10 euler/karras steps, CFG 3, ASAG scale 1.5, layers
``u3``, 2 iterations, seeds 0 and 1; docs/quality.md):

- classifier-feature FD, paired to plain CFG on the same seed: +286 ± 25 with cost
  "adversarial", +22 ± 1 with cost "similarity" (ASAG *raises* this FD on the tiny model:
  it removes the leftover salt-and-pepper noise but saturates the strokes, while the real
  digits are soft bilinear upsamples);
- fraction of saturated pixels (> 0.9): 6.5 % for CFG, 21.1 % for CFG + ASAG.

FD alone cannot tell the sign of the guidance: measured with the sign of the ASAG term
flipped (``x_cfg - s(x_c - x_adv)``), FD rises by about as much (the flipped samples are
washed-out grey).  The saturated-pixel fraction is odd in the sign (flipped: 0.6 %), so
the regression checks both, and ``test_check_fails_with_flipped_sign`` runs the same
check with the sign flipped (monkeypatched in the loaded pack) and requires it to fail.
"""

from __future__ import annotations

import sys

import pytest
import torch

pytestmark = pytest.mark.host

N = 30  # 3 per digit
STEPS = 10
SEEDS = (0, 1)
LAYERS = "u3"  # the 8x8 decoder layer the benchmark uses (docs/quality.md)
SCALE = 1.5
# benchmark (quick run, identical settings): paired delta of classifier-feature FD vs CFG
BENCH_DELTA_FD = 286.0
BENCH_DELTA_SAT = 0.146  # saturated-pixel fraction, CFG + ASAG minus CFG


@pytest.fixture(scope="module")
def bench(host):
    from benchmarks import quality

    yield quality, quality.TinyBackend(host, N, STEPS)


_CACHE: dict = {}


def _measure(host, bench, guidance="none", cost="adversarial", tag=""):
    quality, backend = bench
    key = (guidance, cost, tag)
    if key not in _CACHE:
        s = quality.Setting(f"{guidance}/{cost}", "main", 3.0, guidance=guidance, scale=SCALE if guidance != "none"
                            else 0.0, cost=cost, layers=LAYERS)
        model = quality.patched_model(host, backend.model, s)
        _CACHE[key] = [quality.evaluate(backend, backend.sample(model, 3.0, seed)) for seed in SEEDS]
    return _CACHE[key]


def check_asag_moves_samples_as_measured(host, bench, tag=""):
    cfg = _measure(host, bench)
    adv = _measure(host, bench, "asag", "adversarial", tag)
    sim = _measure(host, bench, "asag", "similarity", tag)
    fd_cfg = [m["fd_feat"] for m in cfg]
    d_adv = [a["fd_feat"] - c["fd_feat"] for a, c in zip(adv, cfg, strict=False)]
    d_sim = [a["fd_feat"] - c["fd_feat"] for a, c in zip(sim, cfg, strict=False)]
    d_sat = [a["sat"] - c["sat"] for a, c in zip(adv, cfg, strict=False)]
    seed_noise = max(fd_cfg) - min(fd_cfg)  # FD spread of plain CFG across the seeds (benchmark: ~13)
    report = (f"fd CFG {fd_cfg}, delta adversarial {d_adv}, delta similarity {d_sim}, delta saturated {d_sat}, "
              f"seed noise {seed_noise:.1f}")
    # 1. FD: up, on every seed, by far more than the seed noise and roughly the benchmark's size
    assert min(d_adv) > max(3.0 * seed_noise, 0.35 * BENCH_DELTA_FD), report
    assert sum(d_adv) / len(d_adv) < 2.5 * BENCH_DELTA_FD, report
    # 2. the sign: ASAG adds saturated ink on every seed (flipped sign removes it)
    assert min(d_sat) > 0.4 * BENCH_DELTA_SAT, report
    # 3. the cost matters: the similarity cost (the paper's negative ablation) moves FD far less
    assert sum(d_adv) > 3.0 * abs(sum(d_sim)), report


def test_asag_moves_samples_as_benchmark_measured(host, bench):
    check_asag_moves_samples_as_measured(host, bench)


def test_check_fails_with_flipped_sign(host, bench, monkeypatch):
    """The check above must catch x_cfg - s(x_c - x_adv): flip the term in the loaded pack."""
    module = sys.modules[host.pack_module_name + ".nodes.guidance_nodes"]
    real = module.apply_asag

    def flipped(cfg_result, cond, adversarial, settings):
        return real(cfg_result, cond, 2 * cond - adversarial, settings)  # = cfg - s (cond - adv)

    monkeypatch.setattr(module, "apply_asag", flipped)
    with pytest.raises(AssertionError) as info:
        check_asag_moves_samples_as_measured(host, bench, tag="flipped")
    assert "delta saturated" in str(info.value)


def test_checkpoint_path_runs_end_to_end_with_stand_ins(host, monkeypatch, tmp_path, capsys):
    """The --checkpoint code path (no real checkpoint here): comfy.sd.load_checkpoint_guess_config
    is replaced by a tiny random SD1.5 UNet (tests/tiny_models.py) with a stand-in CLIP and VAE;
    everything else -- ComfyUI's CLIPTextEncode, EmptyLatentImage and KSampler nodes, the
    reference folder, the pixel-space fallback metric, the table and the JSON line -- is real."""
    import json

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
    assert len(summary["rows"]) == len(quality.build_settings(5.0, 1.5, "auto", True))
    assert all(r["acc"] is None and np.isfinite(r["fd_feat"][0]) for r in summary["rows"])
    assert any(line.startswith("| CFG + ASAG 1.5 | main |") for line in out), out[:8]
