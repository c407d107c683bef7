"""Per-step cost of ASAG against CFG and ComfyUI's PerturbedAttentionGuidance, on CPU.

Run from the repository root::

    python -m benchmarks.speed            # everything, a few minutes; writes docs/speed_scaling.png
    python -m benchmarks.speed --quick    # fewer repeats and sizes, no 4096-token check, no plot

ComfyUI is found and started like the host tests do (``benchmarks/host.py`` reuses
``tests/comfy_host.py``). Everything runs in this one process, on the CPU, float32.

Models (random weights, ComfyUI's own model classes via ``comfy.supported_models``)
-----------------------------------------------------------------------------------
``sdxl``: ComfyUI's ``UNetModel`` with SDXL's block structure at reduced width:
    channel_mult [1, 2, 4], 2 res blocks per level, transformer_depth
    [0, 0, 2, 2, 10, 10], middle depth 10, output depth [0, 0, 0, 2, 2, 2, 10, 10, 10],
    linear projections, context 2048 (77 tokens), ADM 2816 (pooled 1280 + size
    embeddings) - all as SDXL; model_channels 32 (SDXL: 320), 16 channels per head, so
    4 / 8 heads at the two transformer levels (SDXL: 10 / 20 heads of 64). Latent 4x40x40:
    400 tokens at level 1, 100 in the middle block. With these sizes attention takes about
    the share of a transformer block it takes in SDXL at 1024 px (tokens / (6 x channels)
    is ~1 at level 1 and ~0.13 in the middle, as there); the cross-attention K/V projections
    of the 77 x 2048 context, however, weigh far more than at full size.
``flux``: ComfyUI's ``Flux`` with Flux's block structure at reduced width and proportionally
    reduced depth: 10 double + 20 single stream blocks (Flux: 19 + 38), hidden 128 (Flux:
    3072), 2 heads of 64 (Flux: 24 of 128), mlp ratio 4, guidance embedding, context 4096
    (T5, 64 tokens), vec 768 (CLIP-L pooled); latent 16x32x32: 256 image tokens + 64 text
    tokens. cfg 1 (Flux is guidance-distilled), so CFG is one row per step.

Variants, each timed per sampling step (one guided prediction, everything the guider does)
------------------------------------------------------------------------------------------
``cfg``            CFGGuider (what KSampler runs): cond + uncond in one batched call.
``pag``            CFG + ComfyUI's PerturbedAttentionGuidance (comfy_extras.nodes_pag), scale 3:
                   a separate pass with U-Net middle-block self-attention replaced by V. On
                   Flux the node's U-Net patch never applies, so it is a plain extra pass
                   (the cost of a separate pass, the reference ASAG's node should match).
``asag``           CFG + the ASAG node (post-CFG, a separate pass like PAG), default layers:
                   the U-Net middle block (the same 10 layers PAG perturbs) / Flux double9.
``guider``         ASAGGuider through SamplerCustomAdvanced: cond, uncond and adversarial rows
                   in one batched call, the adversarial rows' prefix shared (nodes/shared_prefix.py).
``guider_unshared`` the same with the prefix sharing switched off (plain batching).

Timing: a sampler (comfy.samplers.KSAMPLER, Euler) that times each model call with
``time.perf_counter``, torch on 1 thread unless ``--threads`` says otherwise. One warm-up
round, then ``repeats`` rounds that run the variants interleaved (cfg, pag, asag, guider,
guider_unshared, cfg, ...), ``steps`` steps each; reported: the median over all steps of
all rounds. Ratios are ratios of medians.

Memory, measured on separate runs of the same configurations (one sampling run each):
``peak RSS``   freed heap handed back (glibc ``malloc_trim``), VmHWM reset
               (``/proc/self/clear_refs``), then the run; VmHWM minus the RSS at the reset: the
               extra resident memory of the run.
``torch peak`` torch.profiler with profile_memory=True: the running sum of the CPU allocator
               events during the run, its maximum (live torch CPU bytes above the start).
``largest``    the largest single torch CPU allocation of the run.

Checks beyond the table: the shared prefix equals the unshared batched call (max abs
difference of one guided prediction); with every self-attention layer perturbed at 4096
tokens (the U-Net at a 4x128x128 latent: 4096 tokens at level 1), no allocation as large as
one head's dense N x N float32 matrix (full run only; see ``dense_check``); scaling of the step time with the
token count (latent sizes) for CFG, PAG and ASAG, with the Sinkhorn attention and plain SDPA
timed alone at the perturbed layer's shape, plotted to docs/speed_scaling.png.

Output: a table, then exactly one JSON line (the last line of stdout).
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import json
import math
import os
import platform
import statistics
import sys
import time

import torch

from .host import ROOT, pack_module, start_host

TARGETS = {
    "asag_over_pag": 1.05,  # ASAG node step / PAG step, same layers
    "guider_over_asag": 1.0,  # ASAGGuider step / ASAG node step
    "asag_mem_over_pag": 1.10,  # ASAG node torch peak / PAG torch peak, default layers
    "guider_over_cfg": 1.35,  # shared-prefix ASAGGuider step / CFG step, SDXL-shaped, middle block
}

VARIANTS = ("cfg", "pag", "asag", "guider", "guider_unshared")


# ---------------------------------------------------------------------------
# models
# ---------------------------------------------------------------------------

def _init_weights(module, seed):
    """ComfyUI's ops leave weights uninitialised: fill them deterministically (fan-in scaled)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.ndim >= 2:
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(math.prod(p.shape[1:])))
            elif name.endswith("weight") or name.endswith("scale"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.02 * torch.randn(p.shape, generator=g))


def _patcher(model_config, seed=0):
    import comfy.model_management
    import comfy.model_patcher

    model_config.set_inference_dtype(torch.float32, None)
    model = model_config.get_model({})
    _init_weights(model.diffusion_model, seed)
    cpu = torch.device("cpu")
    comfy.model_management.unload_all_models()
    return comfy.model_patcher.ModelPatcher(model, load_device=cpu, offload_device=cpu)


SDXL_SHAPE = {
    "model_channels": 32,
    "num_head_channels": 16,
    "channel_mult": [1, 2, 4],
    "num_res_blocks": [2, 2, 2],
    "transformer_depth": [0, 0, 2, 2, 10, 10],
    "transformer_depth_middle": 10,
    "transformer_depth_output": [0, 0, 0, 2, 2, 2, 10, 10, 10],
    "context_dim": 2048,
    "adm_in_channels": 2816,
}
FLUX_SHAPE = {"hidden_size": 128, "num_heads": 2, "depth": 10, "depth_single_blocks": 20, "axes_dim": [8, 28, 28],
              "context_in_dim": 4096, "vec_in_dim": 768, "mlp_ratio": 4.0}


def sdxl_shaped(**overrides):
    import comfy.supported_models

    cfg = {
        "use_checkpoint": False, "image_size": 32, "in_channels": 4, "out_channels": 4,
        "use_spatial_transformer": True, "legacy": False, "use_linear_in_transformer": True,
        "num_heads": -1, "num_classes": "sequential", "use_temporal_attention": False,
        "use_temporal_resblock": False, **SDXL_SHAPE, **overrides,
    }
    config = comfy.supported_models.SDXL(cfg)
    # SDXL's model config pins 64 channels per head (unet_extra_config); keep the width asked for
    config.unet_config["num_head_channels"] = cfg["num_head_channels"]
    return _patcher(config)


def flux_shaped():
    import comfy.supported_models

    cfg = {"image_model": "flux", "guidance_embed": True, "in_channels": 16, "out_channels": 16, "patch_size": 2,
           "theta": 10000, "qkv_bias": True, **FLUX_SHAPE}
    return _patcher(comfy.supported_models.Flux(cfg))


MODELS = {
    # family: (builder, latent channels, default latent size, cfg, context tokens)
    "sdxl": (sdxl_shaped, 4, 40, 5.0, 77),
    "flux": (flux_shaped, 16, 32, 1.0, 64),
}


def conditioning(family, size, seed=0):
    g = torch.Generator().manual_seed(seed)
    tokens = MODELS[family][4]

    def one():
        px = size * 8
        if family == "sdxl":
            extra = {"pooled_output": torch.randn(1, 1280, generator=g), "width": px, "height": px, "crop_w": 0,
                     "crop_h": 0, "target_width": px, "target_height": px}
            context = torch.randn(1, tokens, 2048, generator=g)
        else:
            extra = {"pooled_output": torch.randn(1, 768, generator=g), "guidance": 3.5}
            context = torch.randn(1, tokens, 4096, generator=g)
        return [[context, extra]]

    return one(), one()


# ---------------------------------------------------------------------------
# guiders and sampling
# ---------------------------------------------------------------------------

def make_guider(host, variant, model, positive, negative, cfg):
    from comfy_extras import nodes_custom_sampler as ncs
    from comfy_extras.nodes_pag import PerturbedAttentionGuidance

    if variant in ("guider", "guider_unshared"):
        guider = host.node("ASAGGuider").execute(model, positive, negative, cfg, 1.5).result[0]
        guider.share_prefix = variant == "guider"
        return guider
    if variant == "pag":
        model = PerturbedAttentionGuidance.execute(model, 3.0).result[0]
    elif variant == "asag":
        model = host.node("ASAG").execute(model, 1.5).result[0]
    elif variant.startswith("asag:"):  # ASAGAdvanced with explicit layers
        model = host.node("ASAGAdvanced").execute(
            model, 1.5, 2, 1.0, "adversarial", variant.split(":", 1)[1], -1.0, -1.0, 0.0, "full"
        ).result[0]
    (guider,) = ncs.CFGGuider().get_guider(model, positive, negative, cfg)
    return guider


def timed_sampler(step_times):
    """Euler, timing every model call (one guided prediction)."""
    import comfy.samplers

    @torch.no_grad()
    def sample(model, x, sigmas, extra_args=None, callback=None, disable=None):
        extra_args = {} if extra_args is None else extra_args
        s_in = x.new_ones([x.shape[0]])
        for i in range(len(sigmas) - 1):
            start = time.perf_counter()
            denoised = model(x, sigmas[i] * s_in, **extra_args)
            step_times.append(time.perf_counter() - start)
            x = x + (x - denoised) / sigmas[i] * (sigmas[i + 1] - sigmas[i])
        return x

    return comfy.samplers.KSAMPLER(sample)


def run(guider, model, family, size, steps, seed=0):
    """Sample ``steps`` Euler steps with SamplerCustomAdvanced; returns (per-step seconds, output)."""
    from comfy_extras import nodes_custom_sampler as ncs

    times = []
    (noise,) = ncs.RandomNoise().get_noise(seed)
    (sigmas,) = ncs.BasicScheduler().get_sigmas(model, "normal", steps, 1.0)
    latent = {"samples": torch.zeros(1, MODELS[family][1], size, size)}
    out, _ = ncs.SamplerCustomAdvanced().sample(noise, guider, timed_sampler(times), sigmas, latent)
    return times, out["samples"]


class SinkhornTimer:
    """Seconds spent inside the Sinkhorn attention during real sampling steps, per variant:
    wraps ``nodes.attention_patch.sinkhorn_attention``, the one place the model calls it from."""

    def __init__(self, host):
        self.module = pack_module(host, "nodes.attention_patch")
        self.variant = None
        self.seconds = {}

    def __enter__(self):
        real = self.real = self.module.sinkhorn_attention

        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return real(*args, **kwargs)
            finally:
                self.seconds[self.variant] = self.seconds.get(self.variant, 0.0) + time.perf_counter() - start

        self.module.sinkhorn_attention = timed
        return self

    def __exit__(self, *exc):
        self.module.sinkhorn_attention = self.real


def time_variants(host, model, family, size, variants, repeats, steps, timer=None):
    """Interleaved rounds. Returns ({variant: [per-step seconds]}, {variant: Sinkhorn seconds
    per step}); the warm-up round is dropped."""
    cfg = MODELS[family][3]
    positive, negative = conditioning(family, size)
    guiders = {v: make_guider(host, v, model, positive, negative, cfg) for v in variants}
    for v in variants:  # warm-up
        run(guiders[v], model, family, size, 1)
    times = {v: [] for v in variants}
    if timer is not None:
        timer.seconds.clear()
    for _ in range(repeats):
        for v in variants:
            if timer is not None:
                timer.variant = v
            times[v] += run(guiders[v], model, family, size, steps)[0]
    sinkhorn = {v: (timer.seconds.get(v, 0.0) if timer else 0.0) / len(times[v]) for v in variants}
    return times, sinkhorn


# ---------------------------------------------------------------------------
# memory
# ---------------------------------------------------------------------------

def _vm(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    return 0


def _trim_heap():
    """Hand freed heap memory back to the OS (glibc), so RSS starts from what is live."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _reset_peak_rss():
    _trim_heap()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


@contextlib.contextmanager
def peak_rss():
    """Extra peak resident memory (bytes) of the block: VmHWM after, minus VmRSS at the reset."""
    result = {}
    ok = _reset_peak_rss()
    base = _vm("VmRSS")
    yield result
    result["peak_rss_extra"] = (_vm("VmHWM") - base) if ok else None
    result["peak_rss"] = _vm("VmHWM")


@contextlib.contextmanager
def torch_allocations():
    """Live torch CPU bytes over the block (peak of the allocator events' running sum),
    the total allocated and the largest single allocation."""
    from torch.profiler import ProfilerActivity, profile

    result = {}
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        yield result
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    events.sort(key=lambda e: e.start_ns())
    live = peak = total = largest = 0
    for e in events:
        if not str(e.device_type()).endswith("CPU"):
            continue
        n = e.nbytes()
        live += n
        peak = max(peak, live)
        if n > 0:
            total += n
            largest = max(largest, n)
    result.update(torch_peak=peak, torch_total=total, torch_largest=largest)
    result["events"] = [(e.start_ns(), e.nbytes()) for e in events if str(e.device_type()).endswith("CPU")]


def _window_stats(events, start_ns, stop_ns):
    """Largest allocation and peak rise of live torch bytes between two time.time_ns() stamps
    (the profiler's clock)."""
    live = peak = largest = 0
    for t, n in events:
        if start_ns <= t <= stop_ns:
            live += n
            peak = max(peak, live)
            largest = max(largest, n)
    return largest, peak


def memory_variants(host, model, family, size, variants, steps):
    """Peak RSS of every variant first (no profiler has run in between, whose buffers would
    lift the RSS of later runs), then the torch allocations of every variant."""
    cfg = MODELS[family][3]
    positive, negative = conditioning(family, size)
    guiders = {v: make_guider(host, v, model, positive, negative, cfg) for v in variants}
    out = {}
    for v in variants:
        run(guiders[v], model, family, size, 1)  # warm
        with peak_rss() as rss:
            run(guiders[v], model, family, size, steps)
        out[v] = dict(rss)
    for v in variants:
        with torch_allocations() as alloc:
            run(guiders[v], model, family, size, steps)
        alloc.pop("events")
        out[v].update(alloc)
    return out


# ---------------------------------------------------------------------------
# checks
# ---------------------------------------------------------------------------

def shared_prefix_diff(host, model, family, size):
    """Max abs difference of one guided prediction (an Euler step to sigma 0), shared vs not."""
    cfg = MODELS[family][3]
    positive, negative = conditioning(family, size)
    outs = {}
    for v in ("guider", "guider_unshared"):
        guider = make_guider(host, v, model, positive, negative, cfg)
        outs[v] = run(guider, model, family, size, 1, seed=3)[1]
    diff = float((outs["guider"] - outs["guider_unshared"]).abs().max())
    return diff, float(outs["guider_unshared"].abs().max())


DENSE_CHECK_HEAD_CHANNELS = 8


def dense_check(host, size):
    """ASAG with every self-attention layer of the SDXL-shaped U-Net perturbed at a latent
    ``size`` (tokens at level 1: (size/2)^2); one step of the ASAG node at cfg 1.

    The U-Net here has 8 channels per head, so its level-1 head count (8) is as close to
    SDXL's (10) as its width allows; the timing model's 4 heads would put the dense logits
    at exactly the 256 MiB budget, where asag_core runs dense by design."""
    from comfy_extras import nodes_custom_sampler as ncs

    model = sdxl_shaped(num_head_channels=DENSE_CHECK_HEAD_CHANNELS)
    guidance = pack_module(host, "nodes.guidance_nodes")
    layers = "d0-d3, m0, u0-u5"
    patched = host.node("ASAGAdvanced").execute(
        model, 1.5, 2, 1.0, "adversarial", layers, -1.0, -1.0, 0.0, "full"
    ).result[0]
    plan = guidance.carried_plan(patched.model_options)
    positive, negative = conditioning("sdxl", size)
    (guider,) = ncs.CFGGuider().get_guider(patched, positive, negative, 1.0)
    tokens = (size // 2) ** 2
    heads = SDXL_SHAPE["model_channels"] * SDXL_SHAPE["channel_mult"][1] // DENSE_CHECK_HEAD_CHANNELS
    # the time window of every Sinkhorn call, to attribute the allocator events to it
    patch_module = pack_module(host, "nodes.attention_patch")
    inner = patch_module.sinkhorn_attention
    windows = []

    def recording(q, k, v, heads_, settings, layer, **layout):
        n = q.shape[2] if layout.get("skip_reshape") else q.shape[1]
        start_ns = time.time_ns()
        try:
            return inner(q, k, v, heads_, settings, layer, **layout)
        finally:
            windows.append((n, heads_, start_ns, time.time_ns()))

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
    per_tokens = {}
    for n, h, start_ns, stop_ns in windows:
        largest, peak = _window_stats(alloc["events"], start_ns, stop_ns)
        row = per_tokens.setdefault(n, {"calls": 0, "heads": h, "largest_alloc_bytes": 0, "peak_extra_bytes": 0,
                                        "dense_logits_bytes": h * n * n * 4})
        row["calls"] += 1
        row["largest_alloc_bytes"] = max(row["largest_alloc_bytes"], largest)
        row["peak_extra_bytes"] = max(row["peak_extra_bytes"], peak)
    at_max = per_tokens.get(tokens, {"calls": 0, "largest_alloc_bytes": 0, "peak_extra_bytes": 0})
    spans = sorted((a, b) for _, _, a, b in windows)
    starts = [a for a, _ in spans]

    def in_sinkhorn(t):
        i = bisect.bisect_right(starts, t) - 1
        return i >= 0 and t <= spans[i][1]

    outside = max((n for t, n in alloc["events"] if not in_sinkhorn(t)), default=0)
    return {
        "latent": [4, size, size], "layers": layers, "perturbed_layers": len(plan.layers),
        "num_head_channels": DENSE_CHECK_HEAD_CHANNELS, "max_tokens": tokens, "heads_at_max_tokens": heads,
        "one_head_nxn_bytes": head_matrix, "dense_logits_bytes": heads * head_matrix,
        "memory_budget_bytes": pack_module(host, "asag_core").DEFAULT_MEMORY_BUDGET_BYTES,
        "step_seconds": step[0], "wall_seconds": wall,
        "sinkhorn_calls_by_tokens": {str(n): row for n, row in sorted(per_tokens.items())},
        "largest_alloc_in_max_token_calls_bytes": at_max["largest_alloc_bytes"],
        "peak_extra_in_max_token_calls_bytes": at_max["peak_extra_bytes"],
        "largest_alloc_bytes": alloc["torch_largest"], "largest_alloc_outside_sinkhorn_bytes": outside,
        "torch_peak_bytes": alloc["torch_peak"], "peak_rss_extra_bytes": rss["peak_rss_extra"],
        "no_dense_nxn_per_head": at_max["calls"] > 0 and at_max["largest_alloc_bytes"] < head_matrix,
    }


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
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


# ---------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------

def machine():
    model_name = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model_name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    import comfyui_version

    return {"cpu": model_name, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(), "comfyui": comfyui_version.__version__,
            "loadavg_start": load}


def _mib(b):
    return None if b is None else round(b / 2**20, 1)


def plot(path, scaling):
    """Top: ms per step vs tokens. Bottom: the cost ASAG adds, against attention's own cost."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fams = [f for f in ("sdxl", "flux") if f in scaling]
    fig, axes = plt.subplots(2, len(fams), figsize=(6.0 * len(fams), 8.4), squeeze=False)
    titles = {"sdxl": "SDXL-shaped U-Net: middle block (10 layers), cfg 5",
              "flux": f"Flux-shaped DiT: double{FLUX_SHAPE['depth'] // 2} (joint attention), cfg 1"}
    for col, fam in enumerate(fams):
        rows = scaling[fam]
        tokens = [r["tokens"] for r in rows]
        ax = axes[0][col]
        for key, label, style in (("cfg", "CFG", "o-"), ("pag", "CFG + PAG (separate pass)", "s-"),
                                  ("asag", "CFG + ASAG node (separate pass)", "^-"),
                                  ("guider", "ASAGGuider (batched, shared prefix)", "v-")):
            ax.plot(tokens, [r["step"][key] * 1e3 for r in rows], style, label=label)
        ax.set_title(titles[fam], fontsize=10)
        ax.set_ylabel("ms per sampling step (median)")
        ax2 = axes[1][col]
        ax2.plot(tokens, [r["attention"]["sinkhorn_in_asag_step"] * 1e3 for r in rows], "r^-",
                 label="Sinkhorn attention inside the ASAG step (measured in the run)")
        ax2.plot(tokens, [r["attention"]["sinkhorn_per_step"] * 1e3 for r in rows], "r:",
                 label="Sinkhorn attention alone x perturbed layers")
        ax2.plot(tokens, [r["attention"]["sdpa_per_step"] * 1e3 for r in rows], "gs:",
                 label="plain SDPA alone x the same layers (attention's own cost)")
        added = [(t, (r["step"]["asag"] - r["step"]["pag"]) * 1e3) for t, r in zip(tokens, rows, strict=True)]
        pos = [(t, a) for t, a in added if a > 0]
        if pos:
            ax2.plot(*zip(*pos, strict=True), "kx", label="ASAG node step - PAG step (where > 0; noisy)")
        ref = rows[-1]["attention"]["sdpa_per_step"] * 1e3
        ax2.plot(tokens, [ref * (t / tokens[-1]) ** 2 for t in tokens], color="0.6", lw=0.8, label="slope N^2")
        ax2.set_ylabel("ms per sampling step")
        ax2.set_xlabel("tokens in the perturbed layer(s)")
        for a in (ax, ax2):
            a.set_xscale("log")
            a.set_yscale("log")
            a.grid(True, which="both", alpha=0.3)
            a.legend(fontsize=7)
    fig.suptitle("ASAG per-step cost vs token count (CPU, float32, 1 thread)", fontsize=11)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None):
    # ComfyUI runs every prompt under inference mode (execution.py); so does this benchmark
    with torch.inference_mode(), contextlib.ExitStack() as stack:
        _main(argv, stack)


def _main(argv, stack):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats and sizes; no 4096-token check, no plot")
    parser.add_argument("--repeats", type=int, default=None, help="interleaved rounds (default 10, quick 3)")
    parser.add_argument("--steps", type=int, default=1, help="sampling steps per run (default 1: the variants "
                                                                 "alternate every step)")
    parser.add_argument("--plot", default=None, help="plot path (default docs/speed_scaling.png; quick: none)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: on a shared machine, OpenMP threads that wait for a "
                             "descheduled sibling make multi-threaded timings erratic)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    quick = args.quick
    repeats = args.repeats or (3 if quick else 10)
    plot_path = args.plot or (None if quick else os.path.join(ROOT, "docs", "speed_scaling.png"))

    host = start_host()
    import comfy.utils

    comfy.utils.PROGRESS_BAR_ENABLED = False
    timer = stack.enter_context(SinkhornTimer(host))
    started = time.perf_counter()
    info = machine()
    results = {}
    models = {}
    for family in ("sdxl", "flux"):
        builder, _, size, _, _ = MODELS[family]
        models[family] = model = builder()
        step, in_run = time_variants(host, model, family, size, VARIANTS, repeats, args.steps, timer)
        med = {v: statistics.median(t) for v, t in step.items()}
        mem = memory_variants(host, model, family, size, VARIANTS, 1 if quick else 2)
        diff, scale = shared_prefix_diff(host, model, family, size)
        results[family] = {"step": med, "sinkhorn_in_step": in_run, "samples": {v: len(t) for v, t in step.items()},
                           "memory": mem, "shared_prefix_max_abs_diff": diff, "output_scale": scale}
        print(f"[{family}] done at {time.perf_counter() - started:.0f}s", file=sys.stderr)

    # scaling with the token count
    scaling = {}
    sizes = {"sdxl": [24, 56] if quick else [24, 40, 56, 72], "flux": [16, 32] if quick else [16, 32, 48, 64]}
    for family in ("sdxl", "flux"):
        rows = []
        for size in sizes[family]:
            big = size > MODELS[family][2]
            step, in_run = time_variants(host, models[family], family, size, ("cfg", "pag", "asag", "guider"),
                                         3 if big else max(3, repeats // 2), args.steps, timer)
            if family == "sdxl":
                channels = SDXL_SHAPE["model_channels"] * SDXL_SHAPE["channel_mult"][-1]
                dim = SDXL_SHAPE["num_head_channels"]
                tokens, heads, layers = (size // 4) ** 2, channels // dim, SDXL_SHAPE["transformer_depth_middle"]
            else:
                heads, dim = FLUX_SHAPE["num_heads"], FLUX_SHAPE["hidden_size"] // FLUX_SHAPE["num_heads"]
                tokens, layers = (size // 2) ** 2 + MODELS["flux"][4], 1
            alone = attention_alone(tokens, heads, dim, 5 if quick else 9, timer.real)
            rows.append({"latent": size, "tokens": tokens, "step": {v: statistics.median(t) for v, t in step.items()},
                         "attention": {"sdpa_per_step": alone["sdpa"] * layers,
                                       "sinkhorn_per_step": alone["sinkhorn"] * layers,
                                       "sinkhorn_in_asag_step": in_run["asag"]}})
        scaling[family] = rows
        print(f"[scaling {family}] done at {time.perf_counter() - started:.0f}s", file=sys.stderr)
    if plot_path:
        plot(plot_path, scaling)

    del models
    dense = None if quick else dense_check(host, 128)
    if dense is not None:
        print(f"[4096 tokens] done at {time.perf_counter() - started:.0f}s", file=sys.stderr)

    # ---- table ----
    def ratios(r):
        s, m = r["step"], r["memory"]
        return {
            "asag_over_pag": s["asag"] / s["pag"],
            "guider_over_asag": s["guider"] / s["asag"],
            "guider_over_cfg": s["guider"] / s["cfg"],
            "asag_node_over_cfg": s["asag"] / s["cfg"],
            "pag_over_cfg": s["pag"] / s["cfg"],
            "guider_unshared_over_cfg": s["guider_unshared"] / s["cfg"],
            "asag_mem_over_pag": m["asag"]["torch_peak"] / m["pag"]["torch_peak"],
            "guider_mem_over_pag": m["guider"]["torch_peak"] / m["pag"]["torch_peak"],
            "asag_rss_over_pag": (m["asag"]["peak_rss"] / m["pag"]["peak_rss"]),
        }

    lines = ["", f"ASAG speed benchmark ({'quick' if quick else 'full'}), CPU float32, {info['cpu']}, "
             f"{info['torch_threads']} threads, torch {info['torch']}, ComfyUI {info['comfyui']}", ""]
    for family, r in results.items():
        size = MODELS[family][2]
        lines.append(f"{family}-shaped, latent {MODELS[family][1]}x{size}x{size}, cfg {MODELS[family][3]}, "
                     f"median of {r['samples']['cfg']} steps per variant")
        lines.append(f"| {'variant':<16} | {'ms/step':>8} | {'x CFG':>6} | {'Sinkhorn ms':>11} | "
                     f"{'peak RSS MiB':>12} | {'RSS +MiB':>8} | {'torch peak MiB':>14} | {'largest alloc MiB':>17} |")
        lines.append("|" + "|".join("-" * (w + 2) for w in (16, 8, 6, 11, 12, 8, 14, 17)) + "|")
        for v in VARIANTS:
            m = r["memory"][v]
            lines.append(f"| {v:<16} | {r['step'][v] * 1e3:8.1f} | {r['step'][v] / r['step']['cfg']:6.3f} | "
                         f"{r['sinkhorn_in_step'][v] * 1e3:11.1f} | {_mib(m['peak_rss']):>12} | "
                         f"{_mib(m['peak_rss_extra']):>8} | {_mib(m['torch_peak']):>14} | "
                         f"{_mib(m['torch_largest']):>17} |")
        rr = ratios(r)
        lines.append("  " + ", ".join(f"{k} {v:.3f}" for k, v in rr.items()))
        lines.append(f"  shared prefix: max |shared - unshared| = {r['shared_prefix_max_abs_diff']:.3g} "
                     f"(output scale {r['output_scale']:.3g})")
        lines.append("")
    for family, rows in scaling.items():
        lines.append(f"scaling, {family}-shaped: ms per step (median); Sinkhorn in-run = inside the ASAG node's "
                     "step; alone = the attention call alone x perturbed layers")
        lines.append(f"| {'latent':>6} | {'tokens':>6} | {'cfg':>8} | {'pag':>8} | {'asag':>8} | {'guider':>8} | "
                     f"{'asag-pag':>8} | {'Sk in-run':>9} | {'Sk alone':>8} | {'SDPA alone':>10} |")
        lines.append("|" + "|".join("-" * (w + 2) for w in (6, 6, 8, 8, 8, 8, 8, 9, 8, 10)) + "|")
        for row in rows:
            s = row["step"]
            lines.append(f"| {row['latent']:>6} | {row['tokens']:>6} | {s['cfg'] * 1e3:8.1f} | {s['pag'] * 1e3:8.1f} | "
                         f"{s['asag'] * 1e3:8.1f} | {s['guider'] * 1e3:8.1f} | {(s['asag'] - s['pag']) * 1e3:8.1f} | "
                         f"{row['attention']['sinkhorn_in_asag_step'] * 1e3:9.1f} | "
                         f"{row['attention']['sinkhorn_per_step'] * 1e3:8.1f} | "
                         f"{row['attention']['sdpa_per_step'] * 1e3:10.2f} |")
        lines.append("")
    if dense is not None:
        lines.append(
            f"every self-attention layer perturbed ({dense['perturbed_layers']} layers, U-Net latent "
            f"{dense['latent']}, {dense['num_head_channels']} channels per head), one ASAG node step at cfg 1: "
            f"{dense['step_seconds']:.1f} s, torch peak {_mib(dense['torch_peak_bytes'])} MiB, "
            f"largest allocation {_mib(dense['largest_alloc_bytes'])} MiB "
            f"(outside the Sinkhorn calls, i.e. ComfyUI's own attention and the rest: "
            f"{_mib(dense['largest_alloc_outside_sinkhorn_bytes'])} MiB)")
        lines.append(f"| {'tokens':>6} | {'heads':>5} | {'calls':>5} | {'dense logits MiB':>16} | "
                     f"{'largest alloc in call MiB':>25} | {'peak rise in call MiB':>21} |")
        lines.append("|" + "|".join("-" * (w + 2) for w in (6, 5, 5, 16, 25, 21)) + "|")
        for n, row in dense["sinkhorn_calls_by_tokens"].items():
            lines.append(f"| {n:>6} | {row['heads']:>5} | {row['calls']:>5} | {_mib(row['dense_logits_bytes']):>16} | "
                         f"{_mib(row['largest_alloc_bytes']):>25} | {_mib(row['peak_extra_bytes']):>21} |")
        lines.append(f"  at {dense['max_tokens']} tokens one head's N x N is {_mib(dense['one_head_nxn_bytes'])} MiB; "
                     f"no allocation that large: {dense['no_dense_nxn_per_head']} (budget "
                     f"{_mib(dense['memory_budget_bytes'])} MiB)")
    print("\n".join(lines), flush=True)

    sdxl = ratios(results["sdxl"])
    targets = {
        "asag_over_pag<=1.05": sdxl["asag_over_pag"] <= TARGETS["asag_over_pag"],
        "guider_over_asag<=1": sdxl["guider_over_asag"] <= TARGETS["guider_over_asag"],
        "asag_mem_over_pag<=1.10": sdxl["asag_mem_over_pag"] <= TARGETS["asag_mem_over_pag"],
        "guider_over_cfg<=1.35": sdxl["guider_over_cfg"] <= TARGETS["guider_over_cfg"],
        "shared_prefix_diff<=1e-5": max(r["shared_prefix_max_abs_diff"] / max(1.0, r["output_scale"])
                                        for r in results.values()) <= 1e-5,
    }
    if dense is not None:
        targets["no_dense_nxn_per_head_at_4096"] = dense["no_dense_nxn_per_head"]
    try:
        info["loadavg_end"] = os.getloadavg()
    except OSError:
        pass
    summary = {
        "benchmark": "speed", "quick": quick,
        "asag_over_pag": round(sdxl["asag_over_pag"], 4),
        "guider_over_asag": round(sdxl["guider_over_asag"], 4),
        "asag_over_cfg": round(sdxl["guider_over_cfg"], 4),
        "asag_node_over_cfg": round(sdxl["asag_node_over_cfg"], 4),
        "pag_over_cfg": round(sdxl["pag_over_cfg"], 4),
        "guider_unshared_over_cfg": round(sdxl["guider_unshared_over_cfg"], 4),
        "asag_mem_over_pag": round(sdxl["asag_mem_over_pag"], 4),
        "asag_rss_over_pag": round(sdxl["asag_rss_over_pag"], 4),
        "shared_prefix_max_abs_diff": max(r["shared_prefix_max_abs_diff"] for r in results.values()),
        "targets": targets,
        "models": {f: {"shape": shape, "latent": [MODELS[f][1], MODELS[f][2], MODELS[f][2]], "cfg": MODELS[f][3],
                       "context_tokens": MODELS[f][4]}
                   for f, shape in (("sdxl", SDXL_SHAPE), ("flux", FLUX_SHAPE))},
        "results": {f: {"ms_per_step": {v: round(t * 1e3, 2) for v, t in r["step"].items()},
                        "ratios": {k: round(v, 4) for k, v in ratios(r).items()},
                        "sinkhorn_ms_per_step": {v: round(t * 1e3, 2) for v, t in r["sinkhorn_in_step"].items()},
                        "memory_mib": {v: {k: _mib(b) for k, b in m.items()} for v, m in r["memory"].items()},
                        "shared_prefix_max_abs_diff": r["shared_prefix_max_abs_diff"],
                        "steps_timed": r["samples"]["cfg"]} for f, r in results.items()},
        "scaling": {f: [{"latent": row["latent"], "tokens": row["tokens"],
                         "ms_per_step": {v: round(t * 1e3, 2) for v, t in row["step"].items()},
                         "sinkhorn_in_asag_step_ms": round(row["attention"]["sinkhorn_in_asag_step"] * 1e3, 3),
                         "sinkhorn_alone_ms_per_step": round(row["attention"]["sinkhorn_per_step"] * 1e3, 3),
                         "sdpa_alone_ms_per_step": round(row["attention"]["sdpa_per_step"] * 1e3, 3)} for row in rows]
                    for f, rows in scaling.items()},
        "dense_check_4096": dense,
        "plot": os.path.relpath(plot_path, ROOT) if plot_path else None,
        "machine": info, "repeats": repeats, "steps_per_run": args.steps,
        "seconds": round(time.perf_counter() - started, 1),
    }
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
