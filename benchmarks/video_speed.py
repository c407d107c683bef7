"""Step cost of ASAG beside STG (ComfyUI's SkipLayerGuidanceDiT) on the same block, on video DiTs.

    python -m benchmarks.video_speed            # both models, two blocks each, Wan also at cfg 1
    python -m benchmarks.video_speed --quick    # 3 rounds, one block per model
    python -m benchmarks.video_speed --attention comfy   # ComfyUI's own CPU attention backend

Attention runs through ComfyUI's PyTorch SDPA function (``attention_pytorch``, what ComfyUI runs on
GPUs), routed by the ``optimized_attention_override`` transformer option as in the cost table
(``cost_models.sdpa_transformer_options``): on a CPU ComfyUI 0.3.64 picks its sub-quadratic
attention instead, whose time grows faster than the batch (measured here: 3 rows cost 1.72x
(Wan) and 2.27x (LTXV) the time of 2, against 1.50x with SDPA), which would charge a batched row
more than its work. ``--attention comfy`` measures with ComfyUI's pick.

Models (ComfyUI's own classes, random weights, ``measure.patcher``), sized so a step takes about a
second on one CPU thread while the block structure and the share of attention stay like the real
models' (Wan 2.1 / 2.2 14B at 480p: attention about half of a block's FLOPs; here 45 %):

``wan``   WAN21_T2V (the layout of Wan 2.1 and of each Wan 2.2 14B expert): 12 blocks of width
          128 (2 heads of 64), FFN 512, text width 256; latent 16 x 5 x 24 x 24 (720 video tokens),
          64 text tokens; cfg 3.5 (the Wan 2.2 14B template) and cfg 1 (LightX2V 4-step LoRAs).
``ltxv``  LTXV: 20 blocks of width 128 (4 heads of 32); latent 128 x 3 x 12 x 16 (576 tokens), 32
          text tokens with their padding mask (what LTXV's T5 hands over); cfg 3.

Variants, each one sampling step (one guided prediction: every model call the guider makes):
``cfg`` CFGGuider alone; ``cfg+row`` CFG whose batched call computes one more copy of the cond
row (no ASAG: what one more row in ComfyUI's call costs, the reference for the node's batched
adversarial row); ``slg bB`` + SkipLayerGuidanceDiT skipping block B (scale 3, start 0,
end 1: active on every step; its own model call of the cond row); ``asag bB`` + the ASAGAdvanced
node with layers ``bB`` (schema defaults otherwise); ``both bB`` both nodes (SLG first, ASAG on
top). Blocks: STG's published ones, Wan 2 and 9 (community: 9-10), LTXV 14 and 19. Interleaved
rounds after a warm-up, median of the steps of all rounds, 1 torch thread, thread CPU time (wall
time beside it), as ``benchmarks.speed``.

Next to each ratio its ideal, counted (FLOPs, ``benchmarks/flops.py``, one cond row of the plain
model, the same way as the cost table ``benchmarks.cost``): ``after_share`` of block B (share of
the row from B on), ``block_share`` (B's own share), r = CFG's rows (2, or 1 at cfg 1):

- ``ideal_shared`` = 1 + after_share / r: ASAG if the adversarial row shared the prefix (the cost
  table's ``ideal_over_cfg`` / ``ideal_over_cfg1``);
- ``ideal_node`` = 1 + node_after_share / r, node_after_share = 1 − the share of
  ``shared_prefix.prefix_modules`` (the embedders are not shared; where the node shares nothing,
  a whole row: 1 + 1 / r);
- ``ideal_slg`` = 1 + (1 − block_share) / r: one row with block B skipped;
- ``ideal_both`` = the sum of the two extra costs; ``cfg+row``'s ideal is 1 + 1 / r.

Model calls and rows per step of each variant are counted (``calls``/``rows``) to show the path,
and the CPU time inside the Sinkhorn attention per step (``sinkhorn_ms``): what the plan itself
costs beyond the ideals, which count the replaced attention as softmax attention.
Output: a table, then one JSON line (the last line of stdout).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from .cost_models import sdpa_transformer_options
from .flops import count_forward
from .host import pack_module, start_host
from .measure import (
    SinkhornTimer,
    finish_machine,
    interleaved,
    machine,
    medians,
    model_calls,
    patcher,
    sample_timed,
    with_extra_row,
)
from .quality_settings import asag_model
from .speed_memory import rows_of

SLG_SCALE = 3.0
WAN = {"image_model": "wan2.1", "model_type": "t2v", "patch_size": (1, 2, 2), "text_len": 512, "in_dim": 16,
       "dim": 128, "ffn_dim": 512, "freq_dim": 64, "text_dim": 256, "out_dim": 16, "num_heads": 2,
       "num_layers": 12, "window_size": (-1, -1), "qk_norm": True, "cross_attn_norm": True, "eps": 1e-6}
LTXV = {"image_model": "ltxv", "in_channels": 128, "num_layers": 20, "attention_head_dim": 32,
        "num_attention_heads": 4, "cross_attention_dim": 128, "caption_channels": 256}
MODELS = {
    # name: (config class, unet_config, latent (C, T, H, W), text tokens, text width, text mask, cfgs, blocks)
    "wan": ("WAN21_T2V", WAN, (16, 5, 24, 24), 64, 256, False, (3.5, 1.0), (2, 9)),
    "ltxv": ("LTXV", LTXV, (128, 3, 12, 16), 32, 256, True, (3.0,), (14, 19)),
}


def build(host, name, attention="sdpa"):
    """The tiny model ``name``; with ``attention`` "sdpa" every attention call goes through ComfyUI's
    SDPA function (the model's own options carry the override: the ASAG node chains to it)."""
    import comfy.supported_models

    cls, cfg = MODELS[name][:2]
    model = patcher(getattr(comfy.supported_models, cls)(dict(cfg)))
    if attention == "sdpa":
        key = pack_module(host, "nodes.comfy_contract").ATTENTION_OVERRIDE
        model.model_options["transformer_options"].update(sdpa_transformer_options(key))
    return model


def conditioning(name, seed=0):
    _, _, _, tokens, width, masked, _, _ = MODELS[name]
    g = torch.Generator().manual_seed(seed)

    def one():
        extra = {"attention_mask": torch.ones(1, tokens, dtype=torch.long)} if masked else {}
        return [[torch.randn(1, tokens, width, generator=g), extra]]

    return one(), one()


def variant_model(host, base, variant):
    """``variant``: "cfg", "cfg+row", "slg <b>", "asag <b>" or "both <b>"."""
    from comfy_extras.nodes_slg import SkipLayerGuidanceDiT

    if variant == "cfg+row":
        return with_extra_row(base)
    kind, _, block = variant.partition(" ")
    model = base
    if kind in ("slg", "both"):
        model = SkipLayerGuidanceDiT.execute(model, SLG_SCALE, 0.0, 1.0, double_layers=block[1:],
                                             single_layers="").result[0]
    if kind in ("asag", "both"):
        model = asag_model(host, model, layers=block)
    return model


def guider_for(model, positive, negative, cfg):
    from comfy_extras import nodes_custom_sampler as ncs

    return ncs.CFGGuider().get_guider(model, positive, negative, cfg)[0]


def latent(name):
    return torch.zeros((1, *MODELS[name][2]))


def step_inputs(host, base, name, cfg):
    """The diffusion model's inputs (args, kwargs) in one CFG step, as ComfyUI hands them over."""
    seen = []
    handle = base.model.diffusion_model.register_forward_pre_hook(
        lambda m, a, k: seen.append((a, k)) if not seen else None, with_kwargs=True)
    try:
        sample_timed(guider_for(base, *conditioning(name), cfg), base, latent(name), 1)
    finally:
        handle.remove()
    return seen[0]


def counted_shares(host, base, name, cfg, blocks):
    """{block: after_share, block_share, node_after_share, prefix_modules} on one cond row."""
    layers_mod, resolve = pack_module(host, "nodes.model_layers"), pack_module(host, "nodes.plan").resolve
    prefix_modules = layers_mod.prefix_modules
    dm = base.model.diffusion_model
    watched, prefixes = {}, {}
    for b in blocks:
        (layer,) = resolve(base, f"b{b}")
        watched[f"b{b}"] = layers_mod.layer_module(dm, layer)
        prefixes[b] = prefix_modules(dm, [layer])
        watched.update({f"prefix b{b} {i}": m for i, m in enumerate(prefixes[b])})
    args, kwargs = rows_of(step_inputs(host, base, name, cfg), 1)
    with torch.inference_mode():
        count = count_forward(lambda: dm(*args, **kwargs), watched)
    out = {}
    for b in blocks:
        names = [f"prefix b{b} {i}" for i in range(len(prefixes[b]))]
        out[b] = {"after_share": count.share_from([f"b{b}"]), "block_share": count.share_inside([f"b{b}"]),
                  "node_after_share": 1.0 - count.share_inside(names) if names else 1.0,
                  "prefix_modules": len(names)}
    return out, count.total


def ideals(shares, rows):
    s = shares
    asag, slg = s["node_after_share"] / rows, (1 - s["block_share"]) / rows
    return {"ideal_shared": 1 + s["after_share"] / rows, "ideal_node": 1 + asag, "ideal_slg": 1 + slg,
            "ideal_both": 1 + asag + slg}


def measure_model(host, name, cfgs, blocks, repeats, timer, attention="sdpa"):
    base = build(host, name, attention)
    positive, negative = conditioning(name)
    shares, row_flops = counted_shares(host, base, name, cfgs[0], blocks)
    runs, paths, reference = {}, {}, {}
    for cfg in cfgs:
        label = "" if cfg == cfgs[0] else f"cfg{cfg:g} "  # the first cfg's rows are unlabelled
        kinds = [f"{k} b{b}" for b in (blocks if not label else blocks[:1]) for k in ("slg", "asag", "both")]
        for v in ["cfg", "cfg+row", *kinds]:
            guider = guider_for(variant_model(host, base, v), positive, negative, cfg)
            runs[label + v] = (lambda n, g=guider: sample_timed(g, base, latent(name), n)[0])
            reference[label + v] = (label + "cfg", 1 if cfg == 1.0 else 2)
            with model_calls(base) as calls:
                sample_timed(guider, base, latent(name), 1)
            paths[label + v] = {"calls": calls["calls"], "rows": calls["rows"]}
    times = interleaved(runs, repeats, timer=timer)
    cpu, wall = medians(times)
    table = {}
    for v in runs:
        cfg_key, rows = reference[v]
        entry = {"ms": cpu[v] * 1e3, "wall_ms": wall[v] * 1e3, "over_cfg": cpu[v] / cpu[cfg_key],
                 "over_cfg_wall": wall[v] / wall[cfg_key],
                 "sinkhorn_ms": timer.seconds.get(v, 0.0) / len(times[v]) * 1e3, **paths[v]}
        kind, _, block = v.removeprefix(cfg_key.removesuffix("cfg")).partition(" ")
        if kind == "cfg+row":
            entry["ideal"] = 1 + 1 / rows
        if block:
            ideal = ideals(shares[int(block[1:])], rows)
            entry["ideal"] = ideal["ideal_slg" if kind == "slg" else "ideal_both" if kind == "both" else "ideal_node"]
            entry["ideal_shared"] = ideal["ideal_shared"] if kind == "asag" else None
        table[v] = entry
    return {"variants": table, "shares": {f"b{b}": s for b, s in shares.items()}, "row_gflops": row_flops / 1e9,
            "cfgs": list(cfgs), "steps_timed": repeats, "latent": list(MODELS[name][2]),
            "text_tokens": MODELS[name][3], "text_mask": MODELS[name][5]}


def lines_for(name, r) -> list[str]:
    out = [f"{name}: row {r['row_gflops']:.2f} GFLOP; shares (after / block / node after): " + ", ".join(
        f"{b} {s['after_share']:.3f} / {s['block_share']:.3f} / {s['node_after_share']:.3f}"
        for b, s in r["shares"].items()),
           f"| {'variant':<12} | {'CPU ms':>8} | {'x CFG':>6} | {'ideal':>6} | {'shared':>6} | {'wall x':>6} | "
           f"{'Sinkhorn ms':>11} | {'calls':>5} | {'rows':>4} |",
           "|" + "|".join("-" * (w + 2) for w in (12, 8, 6, 6, 6, 6, 11, 5, 4)) + "|"]
    for v, e in r["variants"].items():
        ideal = f"{e['ideal']:6.3f}" if "ideal" in e else f"{'-':>6}"
        shared = f"{e['ideal_shared']:6.3f}" if e.get("ideal_shared") else f"{'-':>6}"
        out.append(f"| {v:<12} | {e['ms']:8.1f} | {e['over_cfg']:6.3f} | {ideal} | {shared} | "
                   f"{e['over_cfg_wall']:6.3f} | {e['sinkhorn_ms']:11.1f} | {e['calls']:>5} | {e['rows']:>4} |")
    return out + [""]


def _rounded(obj):
    if isinstance(obj, float):
        return round(obj, 4)
    if isinstance(obj, dict):
        return {k: _rounded(v) for k, v in obj.items()}
    return obj


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.video_speed", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="3 rounds, one block per model, no cfg 1 rows")
    p.add_argument("--repeats", type=int, default=None, help="interleaved rounds (default 15, quick 3)")
    p.add_argument("--models", default="wan,ltxv", help="comma list of wan, ltxv")
    p.add_argument("--attention", choices=("sdpa", "comfy"), default="sdpa",
                   help="sdpa: ComfyUI's SDPA function, as on GPUs (default); comfy: ComfyUI's own CPU pick")
    args = p.parse_args(argv)
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    if not names or any(n not in MODELS for n in names):
        p.error(f"--models {args.models!r}: valid values are {', '.join(MODELS)}")
    torch.set_num_threads(1)
    repeats = args.repeats or (3 if args.quick else 15)
    host = start_host()
    import comfy.utils

    comfy.utils.PROGRESS_BAR_ENABLED = False
    info, started = machine(), time.perf_counter()
    results = {}
    with torch.inference_mode(), SinkhornTimer(host) as timer:
        for name in names:
            _, _, _, _, _, _, cfgs, blocks = MODELS[name]
            if args.quick:
                cfgs, blocks = cfgs[:1], blocks[:1]
            results[name] = measure_model(host, name, cfgs, blocks, repeats, timer, args.attention)
            print(f"[{name}] done at {time.perf_counter() - started:.0f}s", file=sys.stderr, flush=True)
    print("\n".join(["", f"ASAG beside STG, CPU float32, 1 thread, attention {args.attention}, median of "
                           f"{repeats} steps per variant", ""]
                    + [line for n, r in results.items() for line in lines_for(n, r)]), flush=True)
    summary = {"benchmark": "video_speed", "quick": args.quick, "slg_scale": SLG_SCALE, "attention": args.attention,
               "models": {n: {"config": MODELS[n][0], "unet_config": MODELS[n][1]} for n in names},
               "results": _rounded(results), "machine": finish_machine(info), "repeats": repeats,
               "seconds": round(time.perf_counter() - started, 1)}
    print(json.dumps(summary, default=list))


if __name__ == "__main__":
    main()
