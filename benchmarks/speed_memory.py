"""Memory of the speed benchmark: peak RSS and torch peak per variant, one row's activations in the
plain model, and the 4096-token check that no dense N x N matrix is allocated (see
``benchmarks/speed.py``)."""

from __future__ import annotations

import bisect
import time

import torch

from .host import pack_module
from .measure import model_calls, peak_rss, torch_allocations, window_stats
from .speed_models import MODELS, SDXL_SHAPE, conditioning, make_guider, run, sdxl_shaped


def memory_variants(host, model, family, size, variants, steps):
    """Peak RSS of every variant first (no profiler has run in between, whose buffers would
    lift the RSS of later runs), then the torch allocations of every variant, and the
    diffusion model's calls and rows per step."""
    cfg = MODELS[family][3]
    positive, negative = conditioning(family, size)
    guiders = {v: make_guider(host, v, model, positive, negative, cfg) for v in variants}
    out = {}
    for v in variants:
        with model_calls(model) as calls:
            run(guiders[v], model, family, size, 1)  # warm
        with peak_rss() as rss:
            run(guiders[v], model, family, size, steps)
        out[v] = {**rss, "model_calls_per_step": calls["calls"], "rows_per_step": calls["rows"]}
    for v in variants:
        with torch_allocations() as alloc:
            run(guiders[v], model, family, size, steps)
        alloc.pop("events")
        out[v].update(alloc)
    return out


def model_inputs(host, model, family, size):
    """The diffusion model's inputs (args, kwargs) of one CFG step, as ComfyUI hands them over."""
    seen = []

    def capture(module, args, kwargs):
        if not seen:
            seen.append((args, kwargs))

    handle = model.model.diffusion_model.register_forward_pre_hook(capture, with_kwargs=True)
    try:
        run(make_guider(host, "cfg", model, *conditioning(family, size), MODELS[family][3]), model, family, size, 1)
    finally:
        handle.remove()
    return seen[0]


def rows_of(inputs, n):
    """The inputs with every batch-leading tensor made of ``n`` copies of row 0 (the plain
    model, no patches: empty transformer_options)."""
    args, kwargs = inputs
    batch = args[0].shape[0]

    def pick(obj):
        if isinstance(obj, torch.Tensor) and obj.ndim > 0 and obj.shape[0] == batch:
            return obj[[0] * n].clone()
        return obj

    return [pick(a) for a in args], {k: ({} if k == "transformer_options" else pick(v)) for k, v in kwargs.items()}


def row_activations(model, inputs, rows=(1, 2, 3)):
    """torch peak (live CPU bytes above the start) of one plain model call with 1, 2 and 3
    rows; the third row's activations are peak(3) - peak(2)."""
    dm = model.model.diffusion_model
    peaks = {}
    for n in rows:
        args, kwargs = rows_of(inputs, n)
        dm(*args, **kwargs)  # warm
        with torch_allocations() as alloc:
            dm(*args, **kwargs)
        peaks[n] = alloc["torch_peak"]
    return peaks


DENSE_CHECK_HEAD_CHANNELS = 8


def _recording_sinkhorn(patch_module, windows):
    """The pack's sinkhorn_attention, recording (tokens, heads, start ns, stop ns) of every call."""
    inner = patch_module.sinkhorn_attention

    def recording(q, k, v, heads_, settings, layer, **layout):
        n = q.shape[2] if layout.get("skip_reshape") else q.shape[1]
        start_ns = time.time_ns()
        try:
            return inner(q, k, v, heads_, settings, layer, **layout)
        finally:
            windows.append((n, heads_, start_ns, time.time_ns()))

    return inner, recording


def _per_token_count(windows, events):
    per_tokens = {}
    for n, h, start_ns, stop_ns in windows:
        largest, peak = window_stats(events, start_ns, stop_ns)
        row = per_tokens.setdefault(n, {"calls": 0, "heads": h, "largest_alloc_bytes": 0, "peak_extra_bytes": 0,
                                        "dense_logits_bytes": h * n * n * 4})
        row["calls"] += 1
        row["largest_alloc_bytes"] = max(row["largest_alloc_bytes"], largest)
        row["peak_extra_bytes"] = max(row["peak_extra_bytes"], peak)
    return per_tokens


def _largest_outside(windows, events):
    spans = sorted((a, b) for _, _, a, b in windows)
    starts = [a for a, _ in spans]

    def in_sinkhorn(t):
        i = bisect.bisect_right(starts, t) - 1
        return i >= 0 and t <= spans[i][1]

    return max((n for t, n in events if not in_sinkhorn(t)), default=0)


def dense_check(host, size):
    """ASAG with every self-attention layer of the SDXL-shaped U-Net perturbed at a latent
    ``size`` (tokens at level 1: (size/2)^2); one step of the ASAG node at cfg 1.

    The U-Net here has 8 channels per head, so its level-1 head count (8) is as close to
    SDXL's (10) as its width allows; the timing model's 4 heads would put the dense logits
    at exactly the 256 MiB budget, where asag_core runs dense by design."""
    from comfy_extras import nodes_custom_sampler as ncs

    model = sdxl_shaped(num_head_channels=DENSE_CHECK_HEAD_CHANNELS)
    guidance = pack_module(host, "nodes.guidance_step")
    layers = "d0-d3, m0, u0-u5"
    patched = host.node("ASAGAdvanced").execute(
        model, 1.5, 2, 1.0, "adversarial", layers, 0.0, 1.0, 0.0, "full"
    ).result[0]
    plan = guidance.carried_plan(patched.model_options)
    positive, negative = conditioning("sdxl", size)
    (guider,) = ncs.CFGGuider().get_guider(patched, positive, negative, 1.0)
    tokens = (size // 2) ** 2
    heads = SDXL_SHAPE["model_channels"] * SDXL_SHAPE["channel_mult"][1] // DENSE_CHECK_HEAD_CHANNELS
    # the time window of every Sinkhorn call, to attribute the allocator events to it
    patch_module = pack_module(host, "nodes.adversarial_call")
    windows = []
    inner, recording = _recording_sinkhorn(patch_module, windows)
    patch_module.sinkhorn_attention = recording
    try:
        run(guider, model, "sdxl", 16, 1)  # warm-up at a small size
        windows.clear()
        with peak_rss() as rss, torch_allocations() as alloc:
            start = time.perf_counter()
            step, _ = run(guider, model, "sdxl", size, 1)
            wall = time.perf_counter() - start
    finally:
        patch_module.sinkhorn_attention = inner
    head_matrix = tokens * tokens * 4
    per_tokens = _per_token_count(windows, alloc["events"])
    at_max = per_tokens.get(tokens, {"calls": 0, "largest_alloc_bytes": 0, "peak_extra_bytes": 0})
    return {
        "latent": [4, size, size], "layers": layers, "perturbed_layers": len(plan.layers),
        "num_head_channels": DENSE_CHECK_HEAD_CHANNELS, "max_tokens": tokens, "heads_at_max_tokens": heads,
        "one_head_nxn_bytes": head_matrix, "dense_logits_bytes": heads * head_matrix,
        "memory_budget_bytes": pack_module(host, "asag_core").DEFAULT_MEMORY_BUDGET_BYTES,
        "step_seconds": step[0][1], "wall_seconds": wall,
        "sinkhorn_calls_by_tokens": {str(n): row for n, row in sorted(per_tokens.items())},
        "largest_alloc_in_max_token_calls_bytes": at_max["largest_alloc_bytes"],
        "peak_extra_in_max_token_calls_bytes": at_max["peak_extra_bytes"],
        "largest_alloc_bytes": alloc["torch_largest"],
        "largest_alloc_outside_sinkhorn_bytes": _largest_outside(windows, alloc["events"]),
        "torch_peak_bytes": alloc["torch_peak"], "peak_rss_extra_bytes": rss["peak_rss_extra"],
        "no_dense_nxn_per_head": at_max["calls"] > 0 and at_max["largest_alloc_bytes"] < head_matrix,
    }
