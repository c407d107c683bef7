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
                   nodes/adversarial_call.py).
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
model work that is not in the shared prefix (``model_layers.prefix_modules`` for the node's
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

Modules, by what they measure: ``speed_models`` (the two models, conditioning, variants),
``speed_step`` (step timing, scaling, the attention alone, the shared prefix's exactness),
``speed_memory`` (peak RSS, torch peak, one row's activations, the 4096-token check),
``speed_floor`` (the work after the prefix), ``speed_report`` (ratios, targets, table, JSON),
``speed_plot``; shared helpers in ``measure`` (timing, memory, machine) and ``flops``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time

import torch

from .host import ROOT, start_host
from .measure import SinkhornTimer, finish_machine, machine, medians
from .speed_floor import work_after_prefix
from .speed_memory import dense_check, memory_variants, model_inputs, row_activations
from .speed_models import FLUX_SHAPE, MODELS, SDXL_SHAPE, VARIANTS
from .speed_plot import plot
from .speed_report import dense_lines, family_lines, scaling_lines, summary
from .speed_step import measure_scaling, shared_prefix_diff, time_variants


def measure_family(host, family, repeats, steps, quick, timer):
    """Everything at the family's default size: step times, memory, the plain model's row
    activations and work after the prefix, the shared-prefix check."""
    builder, _, size, _, _ = MODELS[family]
    model = builder()
    step, in_run = time_variants(host, model, family, size, VARIANTS, repeats, steps, timer)
    inputs = model_inputs(host, model, family, size)
    diffs, scale = shared_prefix_diff(host, model, family, size)
    cpu, wall = medians(step)
    result = {"step": cpu, "step_wall": wall,
              "sinkhorn_in_step": in_run,
              "samples": {v: len(t) for v, t in step.items()},
              "memory": memory_variants(host, model, family, size, VARIANTS + ("cfg_extra_row",), 1 if quick else 2),
              "row_peaks": row_activations(model, inputs),
              "work": work_after_prefix(host, model, inputs, 5 if quick else 15),
              "shared_prefix_max_abs_diff": diffs, "output_scale": scale}
    return model, result


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats and sizes; no 4096-token check, no plot")
    parser.add_argument("--repeats", type=int, default=None, help="interleaved rounds (default 20, quick 3)")
    parser.add_argument("--steps", type=int, default=1, help="sampling steps per run (default 1: the variants "
                                                                 "alternate every step)")
    parser.add_argument("--plot", default=None, help="plot path (default docs/speed_scaling.png; quick: none)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: on a shared machine, OpenMP threads that wait for a "
                             "descheduled sibling make multi-threaded timings erratic)")
    return parser.parse_args(argv)


def _main(argv, stack):
    args = parse_args(argv)
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

    out = summary(quick, results, scaling, dense, {"sdxl": SDXL_SHAPE, "flux": FLUX_SHAPE})
    out.update({"plot": os.path.relpath(plot_path, ROOT) if plot_path else None,
                "machine": finish_machine(info), "repeats": repeats, "steps_per_run": args.steps,
                "seconds": round(time.perf_counter() - started, 1)})
    print(json.dumps(out), flush=True)


def main(argv=None):
    # ComfyUI runs every prompt under inference mode (execution.py); so does this benchmark
    with torch.inference_mode(), contextlib.ExitStack() as stack:
        _main(argv, stack)


if __name__ == "__main__":
    main()
