"""Per-step cost of ASAG against CFG and ComfyUI's PerturbedAttentionGuidance, on CPU.

Run from the repository root::

    python -m benchmarks.speed            # everything, ~12 min on 2 shared cores; writes docs/speed_scaling.png
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
``asag``           CFG + the ASAG node, default layers (the U-Net middle block, the same 10 layers PAG
                   perturbs / Flux double5), on its fast path: cond, uncond and adversarial rows in one
                   batched call, the adversarial rows' prefix shared (nodes/guidance_step.py,
                   nodes/shared_prefix.py).
``node_separate``  the same node with ``sampler_calc_cond_batch_function`` held by another node (a
                   pass-through, tests/sampling.py ``hold_batch_slot``), so its adversarial branch is a
                   separate pass like PAG's (what ``asag`` measured before the fast path).
``guider``         ASAGGuider through SamplerCustomAdvanced: CFGGuider's sampling_function with the same
                   step installed (the node's fast path, by another route).
``guider_unshared`` the same with the prefix sharing switched off (plain batching).
Every variant's diffusion-model calls and rows per step are counted (``calls``/``rows`` in the
table): the fast path is 1 call of 3 rows at cfg > 1, the separate pass 2 calls.

Timing: a sampler (comfy.samplers.KSAMPLER, Euler) that times each model call, torch on 1
thread unless ``--threads`` says otherwise. One warm-up round, then ``repeats`` rounds that run
the variants interleaved (cfg, pag, asag, node_separate, guider, guider_unshared, cfg, ...),
``steps`` steps each; reported: the median over all steps of all rounds. Ratios are ratios of
medians. Times are the sampling thread's CPU time (``time.thread_time``): on a shared machine
the wall clock also counts the time other jobs hold the core (wall-clock spreads of 50 % were
seen), while with 1 torch thread all of the step's work runs on this thread. Wall-clock medians
are reported next to them (``wall ms``, ``*_wall`` ratios); with ``--threads`` > 1 only those
count the other threads' work.

The floor: what the fast path's adversarial row costs at best, i.e. the fraction of one row's
model work that is not in the shared prefix (``shared_prefix.prefix_modules`` for the node's
default layers; the embedders, which are not shared, count as not shared). Counted on one cond
row of the plain model, two ways: time inside the prefix modules over the whole forward time
(hooks, median of several calls) -> ``floor_time``; FLOPs (torch.utils.flop_counter, with
CPU SDPA counted) -> ``floor_flops``. The ideal node / CFG is ``1 + floor_time / r``, r the
rows of CFG's call (2; 1 at cfg 1, Flux).

Memory, measured on separate runs of the same configurations (one sampling run each):
``peak RSS``   freed heap handed back (glibc ``malloc_trim``), VmHWM reset
               (``/proc/self/clear_refs``), then the run; VmHWM minus the RSS at the reset: the
               extra resident memory of the run.
``torch peak`` torch.profiler with profile_memory=True: the running sum of the CPU allocator
               events during the run, its maximum (live torch CPU bytes above the start).
``largest``    the largest single torch CPU allocation of the run.
The fast path's bound (``node_mem_within_third_row``): its torch peak may exceed the separate
pass's by at most what one more row costs the plain model: ``cfg_extra_row`` (memory only: CFG
whose batched call also computes a copy of the cond rows, through ComfyUI's calc_cond_batch)
minus ``cfg`` - that row's activations, conditioning and output (``third_row_mib``); 1 KiB of
slack for the shared prefix's index tensors. Its activations alone, torch peak(3 rows) - torch
peak(2 rows) of one plain diffusion-model call on ready inputs, are reported next to it
(``third_row_activations_mib``). At cfg 1 (Flux) the "third" row is the second.

Checks beyond the table: the shared prefix equals plain batching (max abs difference of one
guided prediction, the node's fast path and ASAGGuider, ``share_prefix`` on vs off); with
every self-attention layer perturbed at 4096 tokens (the U-Net at a 4x128x128 latent: 4096
tokens at level 1), no allocation as large as one head's dense N x N float32 matrix (full run
only; see ``dense_check``); scaling of the step time with the token count (latent sizes) for
CFG, PAG and the node on both paths, with the Sinkhorn attention and plain SDPA timed alone at
the perturbed layer's shape, plotted to docs/speed_scaling.png.

Output: a table, then exactly one JSON line (the last line of stdout). Top-level keys without a
prefix are SDXL-shaped, ``flux_`` ones Flux-shaped; ``targets`` names each target after the key
it tests (``key<=bound``).
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

# JSON key -> its upper bound, as the target's name shows it (unprefixed keys: SDXL-shaped; flux_: Flux-shaped)
TARGETS = {
    "asag_over_pag": "1.05",  # ASAG node step / PAG step, same layers
    "guider_over_asag": "1",  # ASAGGuider step / ASAG node step
    "asag_mem_over_pag": "1.10",  # ASAG node torch peak / PAG torch peak, default layers
    "guider_over_cfg": "1.35",  # ASAGGuider step / CFG step
    "node_over_cfg": "1.35",  # ASAG node step (fast path) / CFG step
    "node_over_guider": "1.03",  # ASAG node step / ASAGGuider step
    "flux_node_over_cfg": "1.75",  # ASAG node step / CFG step, Flux-shaped (cfg 1: CFG is one row)
    "shared_prefix_rel_diff": "1e-5",  # max |shared - unshared| / max(1, output scale)
}

# the fast path's own bookkeeping (index tensors of the shared prefix: tens of bytes) next to a row of MiBs
MEM_SLACK_BYTES = 1024

VARIANTS = ("cfg", "pag", "asag", "node_separate", "guider", "guider_unshared")
SCALING_VARIANTS = ("cfg", "pag", "asag", "node_separate")


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
        guider.step.share_prefix = variant == "guider"
        return guider
    if variant == "pag":
        model = PerturbedAttentionGuidance.execute(model, 3.0).result[0]
    elif variant in ("asag", "node_separate"):
        if variant == "node_separate":
            from sampling import hold_batch_slot  # tests/sampling.py: how the tests force the separate pass

            model = hold_batch_slot(model)
        model = host.node("ASAG").execute(model, 1.5).result[0]
    elif variant == "cfg_extra_row":
        model = with_extra_row(model)
    (guider,) = ncs.CFGGuider().get_guider(model, positive, negative, cfg)
    return guider


def with_extra_row(model):
    """A clone whose batched call also computes one more copy of the cond rows and drops it:
    what one more row in CFG's call costs the plain model (no ASAG), inputs and output included."""
    import comfy.samplers

    def one_more_row(args):
        conds = list(args["conds"])
        return comfy.samplers.calc_cond_batch(args["model"], conds + [conds[0]], args["input"], args["sigma"],
                                              args["model_options"])[:-1]

    held = model.clone()
    held.set_model_sampler_calc_cond_batch_function(one_more_row)
    return held


def timed_sampler(step_times):
    """Euler, timing every model call (one guided prediction): (thread CPU seconds, wall seconds)."""
    import comfy.samplers

    @torch.no_grad()
    def sample(model, x, sigmas, extra_args=None, callback=None, disable=None):
        extra_args = {} if extra_args is None else extra_args
        s_in = x.new_ones([x.shape[0]])
        for i in range(len(sigmas) - 1):
            start, start_cpu = time.perf_counter(), time.thread_time()
            denoised = model(x, sigmas[i] * s_in, **extra_args)
            step_times.append((time.thread_time() - start_cpu, time.perf_counter() - start))
            x = x + (x - denoised) / sigmas[i] * (sigmas[i + 1] - sigmas[i])
        return x

    return comfy.samplers.KSAMPLER(sample)


def run(guider, model, family, size, steps, seed=0):
    """Sample ``steps`` Euler steps with SamplerCustomAdvanced; returns ([(CPU s, wall s) per step], output)."""
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
            start = time.thread_time()
            try:
                return real(*args, **kwargs)
            finally:
                self.seconds[self.variant] = self.seconds.get(self.variant, 0.0) + time.thread_time() - start

        self.module.sinkhorn_attention = timed
        return self

    def __exit__(self, *exc):
        self.module.sinkhorn_attention = self.real


def time_variants(host, model, family, size, variants, repeats, steps, timer=None):
    """Interleaved rounds. Returns ({variant: [(CPU s, wall s) per step]}, {variant: Sinkhorn CPU
    seconds per step}); the warm-up round is dropped."""
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


@contextlib.contextmanager
def model_calls(model):
    """Counts the diffusion model's forward calls and the rows they computed (to tell which
    path a variant took: the fast path is one call of cond + uncond + adversarial rows)."""
    counts = {"calls": 0, "rows": 0}

    def count(module, args):
        counts["calls"] += 1
        counts["rows"] += args[0].shape[0]

    handle = model.model.diffusion_model.register_forward_pre_hook(count)
    try:
        yield counts
    finally:
        handle.remove()


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


# ---------------------------------------------------------------------------
# the plain model: one row's activations, and the work after the first perturbed layer
# ---------------------------------------------------------------------------

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


def _rows(inputs, n):
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
        args, kwargs = _rows(inputs, n)
        dm(*args, **kwargs)  # warm
        with torch_allocations() as alloc:
            dm(*args, **kwargs)
        peaks[n] = alloc["torch_peak"]
    return peaks


def _cpu_sdpa_flops(q, k, v, *args, out_shape=None, **kwargs):
    from torch.utils.flop_counter import sdpa_flop_count

    return sdpa_flop_count(q, k, v)


def work_after_prefix(host, model, inputs, repeats):
    """The fraction of one cond row's model work that is NOT in the shared prefix (the modules
    ``shared_prefix.prefix_modules`` lists for the ASAG node's default layers): the part the
    fast path's adversarial row adds to the batched call. Measured two ways on one row of the
    plain model: forward time (median over ``repeats`` calls) and FLOPs (torch's FLOP counter,
    matmuls, convolutions and attention; elementwise work uncounted)."""
    from torch.utils.flop_counter import FlopCounterMode

    node_model = host.node("ASAG").execute(model, 1.5).result[0]
    plan = pack_module(host, "nodes.guidance_nodes").carried_plan(node_model.model_options)
    dm = model.model.diffusion_model
    prefix = pack_module(host, "nodes.shared_prefix").prefix_modules(dm, plan.layers)
    args, kwargs = _rows(inputs, 1)
    clock = {"in": 0.0, "start": 0.0}
    flops = FlopCounterMode(display=False, custom_mapping={
        torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flops})

    def enter(module, a):
        clock["start"] = time.thread_time()
        clock["flops_start"] = flops.get_total_flops()

    def leave(module, a, out):
        clock["in"] += time.thread_time() - clock["start"]
        clock["flops_in"] = clock.get("flops_in", 0) + flops.get_total_flops() - clock["flops_start"]

    handles = [h for m in prefix for h in (m.register_forward_pre_hook(enter), m.register_forward_hook(leave))]
    try:
        dm(*args, **kwargs)  # warm
        shares = []
        for _ in range(repeats):
            clock["in"] = 0.0
            start = time.thread_time()
            dm(*args, **kwargs)
            shares.append(clock["in"] / (time.thread_time() - start))
        clock["flops_in"] = 0
        with flops:
            dm(*args, **kwargs)
    finally:
        for h in handles:
            h.remove()
    total = flops.get_total_flops()
    return {"floor_time": 1.0 - statistics.median(shares), "floor_flops": 1.0 - clock["flops_in"] / total,
            "prefix_modules": len(prefix), "perturbed_layers": len(plan.layers), "gflops_per_row": total / 1e9}


# ---------------------------------------------------------------------------
# checks
# ---------------------------------------------------------------------------

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
        model, 1.5, 2, 1.0, "adversarial", layers, 0.0, 1.0, 0.0, "full"
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
        "step_seconds": step[0][1], "wall_seconds": wall,
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
            start = time.thread_time()
            fn()
            times[name].append(time.thread_time() - start)
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
                                  ("asag", "CFG + ASAG node (batched, shared prefix)", "^-"),
                                  ("node_separate", "CFG + ASAG node, separate pass (slot held)", "v--")):
            ax.plot(tokens, [r["step"][key] * 1e3 for r in rows], style, label=label)
        ax.set_title(titles[fam], fontsize=10)
        ax.set_ylabel("CPU ms per sampling step (median)")
        ax2 = axes[1][col]
        ax2.plot(tokens, [r["attention"]["sinkhorn_in_asag_step"] * 1e3 for r in rows], "r^-",
                 label="Sinkhorn attention inside the ASAG separate-pass step (measured in the run)")
        ax2.plot(tokens, [r["attention"]["sinkhorn_per_step"] * 1e3 for r in rows], "r:",
                 label="Sinkhorn attention alone x perturbed layers")
        ax2.plot(tokens, [r["attention"]["sdpa_per_step"] * 1e3 for r in rows], "gs:",
                 label="plain SDPA alone x the same layers (attention's own cost)")
        added = [(t, (r["step"]["node_separate"] - r["step"]["pag"]) * 1e3) for t, r in zip(tokens, rows, strict=True)]
        pos = [(t, a) for t, a in added if a > 0]
        if pos:
            ax2.plot(*zip(*pos, strict=True), "kx", label="ASAG separate-pass step - PAG step (where > 0; noisy)")
        ref = rows[-1]["attention"]["sdpa_per_step"] * 1e3
        ax2.plot(tokens, [ref * (t / tokens[-1]) ** 2 for t in tokens], color="0.6", lw=0.8, label="slope N^2")
        ax2.set_ylabel("CPU ms per sampling step")
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


def measure_family(host, family, repeats, steps, quick, timer):
    """Everything at the family's default size: step times, memory, the plain model's row
    activations and work after the prefix, the shared-prefix check."""
    builder, _, size, _, _ = MODELS[family]
    model = builder()
    step, in_run = time_variants(host, model, family, size, VARIANTS, repeats, steps, timer)
    inputs = model_inputs(host, model, family, size)
    diffs, scale = shared_prefix_diff(host, model, family, size)
    result = {"step": {v: statistics.median(c for c, _ in t) for v, t in step.items()},
              "step_wall": {v: statistics.median(w for _, w in t) for v, t in step.items()},
              "sinkhorn_in_step": in_run,
              "samples": {v: len(t) for v, t in step.items()},
              "memory": memory_variants(host, model, family, size, VARIANTS + ("cfg_extra_row",), 1 if quick else 2),
              "row_peaks": row_activations(model, inputs),
              "work": work_after_prefix(host, model, inputs, 5 if quick else 15),
              "shared_prefix_max_abs_diff": diffs, "output_scale": scale}
    return model, result


def measure_scaling(host, model, family, sizes, repeats, steps, quick, timer):
    rows = []
    for size in sizes:
        big = size > MODELS[family][2]
        step, in_run = time_variants(host, model, family, size, SCALING_VARIANTS,
                                     3 if big else max(3, repeats // 2), steps, timer)
        if family == "sdxl":
            channels = SDXL_SHAPE["model_channels"] * SDXL_SHAPE["channel_mult"][-1]
            dim = SDXL_SHAPE["num_head_channels"]
            tokens, heads, layers = (size // 4) ** 2, channels // dim, SDXL_SHAPE["transformer_depth_middle"]
        else:
            heads, dim = FLUX_SHAPE["num_heads"], FLUX_SHAPE["hidden_size"] // FLUX_SHAPE["num_heads"]
            tokens, layers = (size // 2) ** 2 + MODELS["flux"][4], 1
        alone = attention_alone(tokens, heads, dim, 5 if quick else 9, timer.real)
        rows.append({"latent": size, "tokens": tokens,
                     "step": {v: statistics.median(c for c, _ in t) for v, t in step.items()},
                     "attention": {"sdpa_per_step": alone["sdpa"] * layers,
                                   "sinkhorn_per_step": alone["sinkhorn"] * layers,
                                   "sinkhorn_in_asag_step": in_run["node_separate"]}})
    return rows


def cfg_rows(family):
    """Rows of CFG's batched call: cond + uncond, or cond alone at cfg 1 (ComfyUI skips uncond)."""
    return 1 if MODELS[family][3] == 1.0 else 2


def ratios(family, r):
    s, m, work = r["step"], r["memory"], r["work"]
    extra_row = m["cfg_extra_row"]["torch_peak"] - m["cfg"]["torch_peak"]
    mem_rise = m["asag"]["torch_peak"] - m["node_separate"]["torch_peak"]
    return {
        "node_over_cfg": s["asag"] / s["cfg"],
        "ideal_node_over_cfg": 1 + work["floor_time"] / cfg_rows(family),
        "floor_time": work["floor_time"],
        "floor_flops": work["floor_flops"],
        "node_over_guider": s["asag"] / s["guider"],
        # on wall-clock time, which other jobs on a shared machine inflate at random
        "node_over_cfg_wall": r["step_wall"]["asag"] / r["step_wall"]["cfg"],
        "node_over_guider_wall": r["step_wall"]["asag"] / r["step_wall"]["guider"],
        "pag_over_cfg_wall": r["step_wall"]["pag"] / r["step_wall"]["cfg"],
        "node_separate_over_cfg": s["node_separate"] / s["cfg"],
        "node_separate_over_pag": s["node_separate"] / s["pag"],
        "guider_over_cfg": s["guider"] / s["cfg"],
        "pag_over_cfg": s["pag"] / s["cfg"],
        "guider_unshared_over_cfg": s["guider_unshared"] / s["cfg"],
        "asag_over_pag": s["asag"] / s["pag"],
        "guider_over_asag": s["guider"] / s["asag"],
        "asag_mem_over_pag": m["asag"]["torch_peak"] / m["pag"]["torch_peak"],
        "guider_mem_over_pag": m["guider"]["torch_peak"] / m["pag"]["torch_peak"],
        "asag_rss_over_pag": m["asag"]["peak_rss"] / m["pag"]["peak_rss"],
        "node_mem_over_separate": m["asag"]["torch_peak"] / m["node_separate"]["torch_peak"],
        "node_mem_rise_over_separate_mib": mem_rise / 2**20,
        # the added row in sampling: its activations, conditioning and output (CFG + one row - CFG)
        "third_row_mib": extra_row / 2**20,
        # the added row's activations alone: one plain model call, peak(3 rows) - peak(2 rows)
        "third_row_activations_mib": (r["row_peaks"][3] - r["row_peaks"][2]) / 2**20,
        "node_mem_excess_over_third_row_bytes": mem_rise - extra_row,
        "node_mem_within_third_row": mem_rise <= extra_row + MEM_SLACK_BYTES,
    }


def family_lines(family, r):
    size = MODELS[family][2]
    lines = [f"{family}-shaped, latent {MODELS[family][1]}x{size}x{size}, cfg {MODELS[family][3]}, "
             f"median of {r['samples']['cfg']} steps per variant",
             f"| {'variant':<16} | {'CPU ms':>8} | {'x CFG':>6} | {'wall ms':>8} | {'calls':>5} | {'rows':>4} | "
             f"{'Sinkhorn ms':>11} | {'peak RSS MiB':>12} | {'RSS +MiB':>8} | {'torch peak MiB':>14} | "
             f"{'largest alloc MiB':>17} |",
             "|" + "|".join("-" * (w + 2) for w in (16, 8, 6, 8, 5, 4, 11, 12, 8, 14, 17)) + "|"]
    for v in r["memory"]:
        m, t = r["memory"][v], r["step"].get(v)
        time_cols = (f"{t * 1e3:8.1f} | {t / r['step']['cfg']:6.3f} | {r['step_wall'][v] * 1e3:8.1f}" if t else
                     f"{'-':>8} | {'-':>6} | {'-':>8}")
        lines.append(f"| {v:<16} | {time_cols} | "
                     f"{m['model_calls_per_step']:>5} | {m['rows_per_step']:>4} | "
                     f"{r['sinkhorn_in_step'].get(v, 0.0) * 1e3:11.1f} | {_mib(m['peak_rss']):>12} | "
                     f"{_mib(m['peak_rss_extra']):>8} | {_mib(m['torch_peak']):>14} | {_mib(m['torch_largest']):>17} |")
    rr = ratios(family, r)
    work = r["work"]
    lines += [
        f"  node / CFG {rr['node_over_cfg']:.3f} "
        f"(ideal 1 + floor/{cfg_rows(family)} = {rr['ideal_node_over_cfg']:.3f}); "
        f"floor = work after the first perturbed layer: {work['floor_time']:.3f} of one row's forward time, "
        f"{work['floor_flops']:.3f} of its FLOPs ({work['gflops_per_row']:.2f} GFLOP/row, "
        f"{work['prefix_modules']} prefix modules)",
        "  " + ", ".join(f"{k} {v:.3f}" for k, v in rr.items() if isinstance(v, float)),
        f"  memory: node fast path torch peak - node separate pass = {rr['node_mem_rise_over_separate_mib']:.2f} MiB; "
        f"one more row in CFG's call (cfg_extra_row - cfg) = {rr['third_row_mib']:.2f} MiB, of which activations "
        f"(one plain model call, peak 3 rows - 2 rows) {rr['third_row_activations_mib']:.2f} MiB; "
        f"excess over that row {rr['node_mem_excess_over_third_row_bytes']} bytes; within one more row "
        f"(+{MEM_SLACK_BYTES} bytes): {rr['node_mem_within_third_row']}",
        f"  shared prefix: max |shared - unshared| node {r['shared_prefix_max_abs_diff']['node']:.3g}, guider "
        f"{r['shared_prefix_max_abs_diff']['guider']:.3g} (output scale {r['output_scale']:.3g})",
        "",
    ]
    return lines


def scaling_lines(family, rows):
    lines = [f"scaling, {family}-shaped: CPU ms per step (median); Sinkhorn in-run = inside the node's separate-pass "
             "step; alone = the attention call alone x perturbed layers",
             f"| {'latent':>6} | {'tokens':>6} | {'cfg':>8} | {'pag':>8} | {'asag':>8} | {'separate':>8} | "
             f"{'sep-pag':>8} | {'Sk in-run':>9} | {'Sk alone':>8} | {'SDPA alone':>10} |",
             "|" + "|".join("-" * (w + 2) for w in (6, 6, 8, 8, 8, 8, 8, 9, 8, 10)) + "|"]
    for row in rows:
        s, a = row["step"], row["attention"]
        lines.append(f"| {row['latent']:>6} | {row['tokens']:>6} | {s['cfg'] * 1e3:8.1f} | {s['pag'] * 1e3:8.1f} | "
                     f"{s['asag'] * 1e3:8.1f} | {s['node_separate'] * 1e3:8.1f} | "
                     f"{(s['node_separate'] - s['pag']) * 1e3:8.1f} | {a['sinkhorn_in_asag_step'] * 1e3:9.1f} | "
                     f"{a['sinkhorn_per_step'] * 1e3:8.1f} | {a['sdpa_per_step'] * 1e3:10.2f} |")
    return lines + [""]


def dense_lines(dense):
    lines = [
        f"every self-attention layer perturbed ({dense['perturbed_layers']} layers, U-Net latent "
        f"{dense['latent']}, {dense['num_head_channels']} channels per head), one ASAG node step at cfg 1: "
        f"{dense['step_seconds']:.1f} s, torch peak {_mib(dense['torch_peak_bytes'])} MiB, "
        f"largest allocation {_mib(dense['largest_alloc_bytes'])} MiB "
        f"(outside the Sinkhorn calls, i.e. ComfyUI's own attention and the rest: "
        f"{_mib(dense['largest_alloc_outside_sinkhorn_bytes'])} MiB)",
        f"| {'tokens':>6} | {'heads':>5} | {'calls':>5} | {'dense logits MiB':>16} | "
        f"{'largest alloc in call MiB':>25} | {'peak rise in call MiB':>21} |",
        "|" + "|".join("-" * (w + 2) for w in (6, 5, 5, 16, 25, 21)) + "|"]
    for n, row in dense["sinkhorn_calls_by_tokens"].items():
        lines.append(f"| {n:>6} | {row['heads']:>5} | {row['calls']:>5} | {_mib(row['dense_logits_bytes']):>16} | "
                     f"{_mib(row['largest_alloc_bytes']):>25} | {_mib(row['peak_extra_bytes']):>21} |")
    lines.append(f"  at {dense['max_tokens']} tokens one head's N x N is {_mib(dense['one_head_nxn_bytes'])} MiB; "
                 f"no allocation that large: {dense['no_dense_nxn_per_head']} (budget "
                 f"{_mib(dense['memory_budget_bytes'])} MiB)")
    return lines


def shared_prefix_rel_diff(results):
    """The shared-prefix difference relative to the output scale (at least 1), worst case."""
    return max(max(r["shared_prefix_max_abs_diff"].values()) / max(1.0, r["output_scale"]) for r in results.values())


def headline(results):
    """The top-level JSON keys: unprefixed = SDXL-shaped, ``flux_`` = Flux-shaped."""
    sdxl, flux = ratios("sdxl", results["sdxl"]), ratios("flux", results["flux"])
    keys = ("node_over_cfg", "ideal_node_over_cfg", "floor_time", "floor_flops", "node_over_guider",
            "node_separate_over_cfg", "node_separate_over_pag", "guider_over_cfg", "pag_over_cfg",
            "node_mem_over_separate", "node_mem_rise_over_separate_mib", "third_row_mib", "third_row_activations_mib")
    out = {
        "asag_over_pag": sdxl["asag_over_pag"],
        "guider_over_asag": sdxl["guider_over_asag"],
        "asag_over_cfg": sdxl["guider_over_cfg"],  # historical name: ASAGGuider / CFG
        "asag_node_over_cfg": sdxl["node_over_cfg"],
        "guider_unshared_over_cfg": sdxl["guider_unshared_over_cfg"],
        "asag_mem_over_pag": sdxl["asag_mem_over_pag"],
        "asag_rss_over_pag": sdxl["asag_rss_over_pag"],
    }
    for k in keys:
        out[k] = sdxl[k]
        out["flux_" + k] = flux[k]
    out = {k: round(v, 4) for k, v in out.items()}
    out["node_mem_excess_over_third_row_bytes"] = sdxl["node_mem_excess_over_third_row_bytes"]
    out["flux_node_mem_excess_over_third_row_bytes"] = flux["node_mem_excess_over_third_row_bytes"]
    out["shared_prefix_max_abs_diff"] = max(max(r["shared_prefix_max_abs_diff"].values()) for r in results.values())
    out["shared_prefix_rel_diff"] = shared_prefix_rel_diff(results)
    out["node_mem_within_third_row"] = sdxl["node_mem_within_third_row"]
    out["flux_node_mem_within_third_row"] = flux["node_mem_within_third_row"]
    return out


def targets_met(head, dense):
    """Each target named after the JSON key it tests."""
    targets = {f"{key}<={limit}": head[key] <= float(limit) for key, limit in TARGETS.items()}
    targets["node_mem_within_third_row"] = head["node_mem_within_third_row"]
    targets["flux_node_mem_within_third_row"] = head["flux_node_mem_within_third_row"]
    if dense is not None:
        targets["no_dense_nxn_per_head_at_4096"] = dense["no_dense_nxn_per_head"]
    return targets


def _main(argv, stack):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats and sizes; no 4096-token check, no plot")
    parser.add_argument("--repeats", type=int, default=None, help="interleaved rounds (default 20, quick 3)")
    parser.add_argument("--steps", type=int, default=1, help="sampling steps per run (default 1: the variants "
                                                                 "alternate every step)")
    parser.add_argument("--plot", default=None, help="plot path (default docs/speed_scaling.png; quick: none)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: on a shared machine, OpenMP threads that wait for a "
                             "descheduled sibling make multi-threaded timings erratic)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    quick = args.quick
    repeats = args.repeats or (3 if quick else 20)
    plot_path = args.plot or (None if quick else os.path.join(ROOT, "docs", "speed_scaling.png"))

    host = start_host()
    import comfy.utils

    comfy.utils.PROGRESS_BAR_ENABLED = False
    timer = stack.enter_context(SinkhornTimer(host))
    started = time.perf_counter()
    info = machine()
    results, models = {}, {}
    for family in ("sdxl", "flux"):
        models[family], results[family] = measure_family(host, family, repeats, args.steps, quick, timer)
        print(f"[{family}] done at {time.perf_counter() - started:.0f}s", file=sys.stderr)

    sizes = {"sdxl": [24, 56] if quick else [24, 40, 56, 72], "flux": [16, 32] if quick else [16, 32, 48, 64]}
    scaling = {}
    for family in ("sdxl", "flux"):
        scaling[family] = measure_scaling(host, models[family], family, sizes[family], repeats, args.steps, quick,
                                          timer)
        print(f"[scaling {family}] done at {time.perf_counter() - started:.0f}s", file=sys.stderr)
    if plot_path:
        plot(plot_path, scaling)

    del models
    dense = None if quick else dense_check(host, 128)
    if dense is not None:
        print(f"[4096 tokens] done at {time.perf_counter() - started:.0f}s", file=sys.stderr)

    lines = ["", f"ASAG speed benchmark ({'quick' if quick else 'full'}), CPU float32, {info['cpu']}, "
             f"{info['torch_threads']} threads, torch {info['torch']}, ComfyUI {info['comfyui']}", ""]
    for family, r in results.items():
        lines += family_lines(family, r)
    for family, rows in scaling.items():
        lines += scaling_lines(family, rows)
    if dense is not None:
        lines += dense_lines(dense)
    print("\n".join(lines), flush=True)

    try:
        info["loadavg_end"] = os.getloadavg()
    except OSError:
        pass
    head = headline(results)
    summary = {
        "benchmark": "speed", "quick": quick, **head,
        "targets": targets_met(head, dense),
        "models": {f: {"shape": shape, "latent": [MODELS[f][1], MODELS[f][2], MODELS[f][2]], "cfg": MODELS[f][3],
                       "context_tokens": MODELS[f][4]}
                   for f, shape in (("sdxl", SDXL_SHAPE), ("flux", FLUX_SHAPE))},
        "results": {f: {"ms_per_step": {v: round(t * 1e3, 2) for v, t in r["step"].items()},
                        "wall_ms_per_step": {v: round(t * 1e3, 2) for v, t in r["step_wall"].items()},
                        "ratios": {k: (round(v, 4) if isinstance(v, float) else v)
                                   for k, v in ratios(f, r).items()},
                        "work_after_prefix": r["work"],
                        "row_torch_peak_mib": {n: _mib(b) for n, b in r["row_peaks"].items()},
                        "sinkhorn_ms_per_step": {v: round(t * 1e3, 2) for v, t in r["sinkhorn_in_step"].items()},
                        "memory_mib": {v: {k: (_mib(b) if k.startswith(("peak", "torch")) else b)
                                           for k, b in m.items()} for v, m in r["memory"].items()},
                        "shared_prefix_max_abs_diff": r["shared_prefix_max_abs_diff"],
                        "output_scale": r["output_scale"],
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
