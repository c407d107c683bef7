"""Step timing of the speed benchmark: interleaved variants, the token-count scaling, the
attention alone, and the shared prefix's exactness (see ``benchmarks/speed.py``)."""

from __future__ import annotations

import statistics
import time

import torch

from .host import pack_module, start_host
from .measure import interleaved, medians
from .speed_models import FLUX_SHAPE, MODELS, SCALING_VARIANTS, SDXL_SHAPE, conditioning, make_guider, run


def time_variants(host, model, family, size, variants, repeats, steps, timer=None):
    """Interleaved rounds. Returns ({variant: [(CPU s, wall s) per step]}, {variant: Sinkhorn CPU
    seconds per step}); the warm-up round is dropped."""
    cfg = MODELS[family][3]
    positive, negative = conditioning(family, size)
    guiders = {v: make_guider(host, v, model, positive, negative, cfg) for v in variants}
    runs = {v: (lambda n, g=guiders[v]: run(g, model, family, size, n)[0]) for v in variants}
    times = interleaved(runs, repeats, steps, timer)
    sinkhorn = {v: (timer.seconds.get(v, 0.0) if timer else 0.0) / len(times[v]) for v in variants}
    return times, sinkhorn


def shared_prefix_diff(host, model, family, size):
    """Max abs difference of one guided prediction (an Euler step to sigma 0) with the
    adversarial rows' prefix shared vs computed (plain batching), for the ASAG node's fast
    path and ASAGGuider; and the output scale."""
    cfg = MODELS[family][3]
    positive, negative = conditioning(family, size)
    carried_step = pack_module(host, "nodes.guidance_step").carried_step
    diffs, scale = {}, 0.0
    for who in ("node", "guider"):
        outs = {}
        for share in (True, False):
            guider = make_guider(host, "asag" if who == "node" else "guider", model, positive, negative, cfg)
            step = carried_step(guider.model_options) if who == "node" else guider.step
            step.share_prefix = share
            outs[share] = run(guider, model, family, size, 1, seed=3)[1]
        diffs[who] = float((outs[True] - outs[False]).abs().max())
        scale = max(scale, float(outs[False].abs().max()))
    return diffs, scale


def attention_alone(tokens, heads, dim, repeats, sinkhorn_attention):
    """Median seconds of one attention call alone, in the layout the model hands over
    ((1, tokens, heads * dim) in and out): ComfyUI's own attention function and the
    Sinkhorn attention (the function the ASAG patch calls)."""
    from comfy.ldm.modules.attention import optimized_attention

    settings = pack_module(start_host(), "asag_core").ASAGSettings()
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, tokens, heads * dim, generator=g) for _ in range(3))
    fns = {
        "sdpa": lambda: optimized_attention(q, k, v, heads),
        "sinkhorn": lambda: sinkhorn_attention(q, k, v, heads, settings, None),
    }
    times = {name: [] for name in fns}
    for fn in fns.values():
        fn()
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.thread_time()
            fn()
            times[name].append(time.thread_time() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def perturbed_attention_shape(family, size):
    """(tokens, heads, head dim, layers) of the node's default layers at latent ``size``."""
    if family == "sdxl":
        channels = SDXL_SHAPE["model_channels"] * SDXL_SHAPE["channel_mult"][-1]
        dim = SDXL_SHAPE["num_head_channels"]
        return (size // 4) ** 2, channels // dim, dim, SDXL_SHAPE["transformer_depth_middle"]
    heads, dim = FLUX_SHAPE["num_heads"], FLUX_SHAPE["hidden_size"] // FLUX_SHAPE["num_heads"]
    return (size // 2) ** 2 + MODELS["flux"][4], heads, dim, 1


def measure_scaling(host, model, family, sizes, repeats, steps, quick, timer):
    rows = []
    for size in sizes:
        big = size > MODELS[family][2]
        step, in_run = time_variants(host, model, family, size, SCALING_VARIANTS,
                                     3 if big else max(3, repeats // 2), steps, timer)
        tokens, heads, dim, layers = perturbed_attention_shape(family, size)
        alone = attention_alone(tokens, heads, dim, 5 if quick else 9, timer.real)
        rows.append({"latent": size, "tokens": tokens,
                     "step": medians(step)[0],
                     "attention": {"sdpa_per_step": alone["sdpa"] * layers,
                                   "sinkhorn_per_step": alone["sinkhorn"] * layers,
                                   "sinkhorn_in_asag_step": in_run["node_separate"]}})
    return rows
