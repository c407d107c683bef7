"""Sample quality of ASAG against perturbed-attention baselines on the same layers.

    python -m benchmarks.quality --quick            # < 3 min, main tiny model
    python -m benchmarks.quality --out docs/        # full sweeps, both tiny models

Every method perturbs the **same self-attention layers** (``--layers``; tiny models: ``u3``,
the 64-token decoder layer), in one extra pass after CFG, and adds ``scale·(x_c − x_pert)``:

- ``asag``: the pack's ``ASAGAdvanced`` node (Sinkhorn plan of the adversarial cost);
- ``pag_same_layers``: attention output = V (PAG) on those layers (``benchmarks.perturb``,
  built like ComfyUI's ``nodes_pag.py``: attn1 replace patches in the extra pass only);
- ``zero_same_layers``: attention output = 0 on those layers;
- ``pag_comfy_m0``: ComfyUI's built-in PerturbedAttentionGuidance node (middle block), one
  reference row.

Regimes: ``unconditional`` (null class / empty prompt, cfg 1: the paper's unconditional
setting), ``conditional`` at the FD-best CFG of a reported CFG sweep, and
``conditional_cfg3`` at today's cfg 3 (checkpoint: ``--cfg``).  Every setting is sampled
on the same seeds with the same initial noise (``comfy.sample``), so settings are compared
pairwise per seed.  Metrics against the real set (all 1,797 sklearn digits for the tiny
models; ``benchmarks.tiny.metrics``): ``fd`` = Fréchet distance in classifier features
(lower is better), ``fd_pix``, ``prec``/``rec`` (improved precision/recall, k 5), ``div``
(mean pairwise feature distance within a class; unconditional: within the class the
classifier assigns), ``acc`` (conditional only), ``sat`` (saturated-pixel fraction) and
``move`` (RMS pixel change against the unguided samples of the same seed: how hard the
guidance pushed).

The full run samples the three regimes on both tiny models (``main``, then the weaker
``small``), then, on each model in the unconditional regime at ``ABLATION_SCALE``: each
single self-attention layer (ASAG and PAG), λ, Sinkhorn iterations, and the three costs at
three scales.  Partial results are checkpointed to ``<out>/quality_results.partial.json``
after every setting and reused by a re-run (removed once the run completes); the final JSON
is ``<out>/quality_results.json``, with plots and sample grids (``benchmarks.quality_plots``).
The last stdout line is one JSON object (``layers``, ``regimes.<regime>.{none, asag,
pag_same_layers, ...}``).

With a real checkpoint (GPU), the same regimes and layer-matched rows::

    python -m benchmarks.quality --checkpoint sd_xl_base_1.0.safetensors \\
        --prompts coco_captions.txt --reference-dir coco_val_images/ \\
        [--feature-weights inception.pt] --n 1000 --seeds 5 --steps 30 --cfg 5.0 --size 1024

Prompts (the first N, one image per prompt and seed) go through the checkpoint's CLIP,
images through its VAE.  ``--feature-weights`` is a file you provide (TorchScript mapping
(B, 3, 299, 299) in [0, 1] to features, or a torchvision ``inception_v3`` state dict); without
it ``fd`` is pixel-space (64x64) and is **not** FID.  Layer-matched PAG needs a U-Net.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import asdict

import numpy as np
import torch

from .host import start_host
from .quality_settings import (
    ABLATION_SCALE,
    BUILTIN_PAG_SCALE,
    CHECKPOINT_CFGS,
    METHODS,
    METRICS,
    QUICK_SCALES,
    SCALES,
    TINY_CFGS,
    TINY_LAYERS,
    ZERO_SCALES,
    Setting,
    ablation_settings,
    guided_model,
)
from .tiny import metrics

# --------------------------------------------------------------------------- running


def evaluate(backend, images, regime: str) -> dict:
    f = backend.features(images)
    prec, rec = metrics.precision_recall(backend.real_feat, f, k=5)
    return {
        "fd": metrics.frechet_distance(f, stats_b=backend.feat_stats),
        "fd_pix": metrics.frechet_distance(backend.pixels(images), stats_b=backend.pix_stats),
        "acc": backend.accuracy(regime, images),
        "prec": prec,
        "rec": rec,
        "div": metrics.within_class_diversity(f, backend.labels_for(regime, images)),
        "sat": float((images > 0.9).double().mean()),
    }


class Runner:
    """Samples settings on every seed, caching per-seed metrics in a JSON checkpoint file."""

    def __init__(self, host, backend, seeds, store_path=None, log=print):
        self.host, self.backend, self.seeds, self.path, self.log = host, backend, list(seeds), store_path, log
        self.done = {}
        if store_path and os.path.exists(store_path):
            with open(store_path) as f:
                self.done = json.load(f)
        self._unguided = {}

    def _store_key(self, s: Setting) -> str:
        return f"{self.backend.name}|{s.key()}"

    def unguided(self, s: Setting, seed: int):
        key = (s.regime, s.cfg, seed)
        if key not in self._unguided:
            self._unguided[key] = self.backend.sample(self.backend.model, s.regime, s.cfg, seed)
        return self._unguided[key]

    def run(self, s: Setting) -> list[dict]:
        key = self._store_key(s)
        if key in self.done:
            return self.done[key]["per_seed"]
        model = guided_model(self.host, self.backend.model, s)
        per_seed = []
        for seed in self.seeds:
            t0 = time.perf_counter()
            images = self.backend.sample(model, s.regime, s.cfg, seed)
            dt = time.perf_counter() - t0
            m = evaluate(self.backend, images, s.regime)
            m["s_per_img"] = dt / len(images)
            if s.method == "none":
                self._unguided[(s.regime, s.cfg, seed)] = images
            m["move"] = float((images - self.unguided(s, seed)).pow(2).mean(dim=(1, 2, 3)).sqrt().mean())
            per_seed.append(m)
        self.done[key] = {"setting": asdict(s), "per_seed": per_seed}
        self._save()
        fd = metrics.mean_std([m["fd"] for m in per_seed])
        self.log(f"  [{self.backend.name}] {key:<75s} fd {fd[0]:8.2f} ± {fd[1]:.2f}  {time.strftime('%H:%M:%S')}")
        return per_seed

    def _save(self):
        if not self.path:
            return
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self.done, f)
        os.replace(tmp, self.path)


# --------------------------------------------------------------------------- summaries


def stats(per_seed) -> dict:
    out = {}
    for k in METRICS:
        vals = [m.get(k) for m in per_seed]
        out[k] = None if any(v is None for v in vals) else metrics.mean_std(vals)
    out["fd_per_seed"] = [m["fd"] for m in per_seed]
    return out


def _flat(st: dict) -> dict:
    """stats() with ``fd`` as the mean and ``fd_std`` beside it (the headline keys)."""
    return {**st, "fd": st["fd"][0], "fd_std": st["fd"][1]}


def paired(a, b) -> list:
    """Mean ± std over seeds of the per-seed FD difference a − b (same seed, same noise)."""
    return list(metrics.mean_std([x["fd"] - y["fd"] for x, y in zip(a, b, strict=True)]))


def method_summary(runner, regime, cfg, method, layers, scales) -> dict:
    sweep = {s: runner.run(Setting(regime, cfg, method, s, layers)) for s in scales}
    best = min(scales, key=lambda s: np.mean([m["fd"] for m in sweep[s]]))
    st = stats(sweep[best])
    return {"best_scale": best, "fd": st["fd"][0], "fd_std": st["fd"][1], "at_best": st,
            "sweep": [{"scale": s, **stats(sweep[s])} for s in scales], "_per_seed": sweep}


def regime_summary(runner, regime, cfg, layers, scales, zero_scales) -> dict:
    none = runner.run(Setting(regime, cfg))
    out = {"cfg": cfg, "none": _flat(stats(none))}
    for method, grid in zip(METHODS, (scales, scales, zero_scales), strict=True):
        out[method] = method_summary(runner, regime, cfg, method, layers, grid)
        out[method]["gain_vs_none_at_best"] = paired(out[method]["_per_seed"][out[method]["best_scale"]], none)
    builtin = runner.run(Setting(regime, cfg, "pag_comfy_m0", BUILTIN_PAG_SCALE, "m0"))
    out["pag_comfy_m0"] = {"scale": BUILTIN_PAG_SCALE, "layers": "m0", **_flat(stats(builtin))}
    asag, pag, zero = (out[m]["_per_seed"] for m in METHODS)
    out["asag_minus_pag"] = {
        "at_best": paired(asag[out["asag"]["best_scale"]], pag[out["pag_same_layers"]["best_scale"]]),
        "matched": {f"{s:g}": paired(asag[s], pag[s]) for s in scales},
    }
    out["asag_minus_zero_matched"] = {f"{s:g}": paired(asag[s], zero[s]) for s in zero_scales}
    out["pag_minus_zero_matched"] = {f"{s:g}": paired(pag[s], zero[s]) for s in zero_scales}
    for method in METHODS:
        del out[method]["_per_seed"]
    return out


def cfg_sweep(runner, cfgs) -> list[dict]:
    return [{"cfg": c, **stats(runner.run(Setting("conditional", c)))} for c in cfgs]


def model_summary(runner, layers, scales, zero_scales, cfgs, today_cfg) -> dict:
    """The three regimes: unconditional; conditional at the FD-best CFG of the sweep; at today's CFG."""
    sweep = cfg_sweep(runner, cfgs)
    best_cfg = min(sweep, key=lambda r: r["fd"][0])["cfg"]
    regimes = {"unconditional": regime_summary(runner, "unconditional", 1.0, layers, scales, zero_scales),
               "conditional": regime_summary(runner, "conditional", best_cfg, layers, scales, zero_scales)}
    regimes["conditional"]["cfg_sweep"] = sweep
    if today_cfg != best_cfg:
        regimes[f"conditional_cfg{today_cfg:g}"] = regime_summary(runner, "conditional", today_cfg, layers, scales,
                                                                    zero_scales)
    return {"layers": layers, "regimes": regimes}


def ablation_summary(runner, settings) -> list[dict]:
    return [{**asdict(s), **stats(runner.run(s))} for s in settings]


def real_floor(backend, n: int, seeds) -> list:
    """FD of n real digits (balanced, random per seed) against all: the floor at this n."""
    from .tiny.classifier import load_digit_images

    x, y = load_digit_images()
    g = torch.Generator().manual_seed(0)
    floors = []
    for _ in seeds:
        idx = torch.cat([torch.nonzero(y == d)[:, 0][torch.randperm(int((y == d).sum()), generator=g)[: n // 10]]
                         for d in range(10)])
        floors.append(metrics.frechet_distance(backend.features(x[idx]), stats_b=backend.feat_stats))
    return list(metrics.mean_std(floors))


# --------------------------------------------------------------------------- output


def _ms(v, digits=1):
    return "n/a" if v is None else f"{v[0]:.{digits}f} ± {v[1]:.{digits}f}"


def markdown(name: str, summary: dict) -> str:
    lines = [f"### model `{name}`, layers `{summary['layers']}`", "",
             "| regime | cfg | method | scale | FD ↓ | paired Δ vs unguided | recall | div | move |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for regime, r in summary["regimes"].items():
        row = f"| {regime} | {r['cfg']:g} |"
        n, p = r["none"], r["pag_comfy_m0"]
        lines.append(f"{row} none | – | {n['fd']:.1f} ± {n['fd_std']:.1f} | – | {_ms(n['rec'])} | {_ms(n['div'])} "
                     "| 0 |")
        for m in METHODS:
            b = r[m]["at_best"]
            lines.append(f"{row} {m} | {r[m]['best_scale']:g} (best) | {_ms(b['fd'])} | "
                         f"{_ms(r[m]['gain_vs_none_at_best'])} | {_ms(b['rec'])} | {_ms(b['div'])} | "
                         f"{_ms(b['move'], 3)} |")
        lines.append(f"{row} built-in PAG (m0) | {p['scale']:g} | {p['fd']:.1f} ± {p['fd_std']:.1f} | – | "
                     f"{_ms(p['rec'])} | {_ms(p['div'])} | {_ms(p['move'], 3)} |")
        lines.append(f"{row} ASAG − PAG, each at its best (paired) | | {_ms(r['asag_minus_pag']['at_best'])} | | | | |")
    return "\n".join(lines)


def headline(summary: dict) -> dict:
    """The JSON keys the issue asks for: regimes.<r>.{none.fd, asag/pag_same_layers.{best_scale, fd}}, layers."""
    regimes = {}
    for name, r in summary["regimes"].items():
        regimes[name] = {"cfg": r["cfg"], "none": {"fd": r["none"]["fd"]},
                         **{m: {"best_scale": r[m]["best_scale"], "fd": r[m]["fd"], "fd_std": r[m]["fd_std"]}
                            for m in METHODS},
                         "pag_comfy_m0": {"scale": r["pag_comfy_m0"]["scale"], "fd": r["pag_comfy_m0"]["fd"]},
                         "asag_minus_pag_at_best": r["asag_minus_pag"]["at_best"]}
    return {"layers": summary["layers"], "regimes": regimes}


def _json_default(o):
    return None if isinstance(o, float) and math.isnan(o) else str(o)


# --------------------------------------------------------------------------- CLI


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.quality", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="< 3 min: n 20, 2 seeds, scales 0.25/1, cfgs 1/3, main model")
    p.add_argument("--n", type=int, default=None, help="images per setting and seed (tiny: multiple of 10)")
    p.add_argument("--seeds", type=int, default=None, help="number of seeds (0..seeds-1)")
    p.add_argument("--steps", type=int, default=None, help="sampling steps (tiny default 10, checkpoint 30)")
    p.add_argument("--cfg", type=float, default=None, help="today's CFG (tiny default 3, checkpoint 5)")
    p.add_argument("--layers", default=None, help=f"layers of every method (tiny {TINY_LAYERS!r}, checkpoint 'auto')")
    p.add_argument("--models", default=None, help="tiny models, comma list of main,small (default: main,small; "
                                                  "quick: main)")
    p.add_argument("--no-ablations", action="store_true", help="skip the layer / λ / iteration / cost sweeps")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: 1 for the tiny models)")
    p.add_argument("--out", default=None, help="folder for results JSON, plots and sample grids (e.g. docs/)")
    g = p.add_argument_group("real checkpoint (GPU)")
    g.add_argument("--checkpoint", help="a .safetensors/.ckpt checkpoint with a U-Net, CLIP and VAE")
    g.add_argument("--prompts", help="text file, one prompt a line (the first N are used)")
    g.add_argument("--reference-dir", help="folder of reference images (e.g. COCO val2014)")
    g.add_argument("--reference-limit", type=int, default=None, help="use at most this many reference images")
    g.add_argument("--feature-weights", help="local feature network: TorchScript or torchvision inception_v3 "
                                             "state dict; without it fd is pixel-space, not FID")
    g.add_argument("--negative", default="", help="negative prompt (default empty)")
    g.add_argument("--size", type=int, default=1024, help="image width = height")
    g.add_argument("--sampler", default="euler")
    g.add_argument("--scheduler", default="normal")
    args = p.parse_args(argv)
    _check_paths(p, args)
    _defaults(p, args)
    return args


def _check_paths(p, args):
    if args.checkpoint is None:
        if args.prompts or args.reference_dir or args.feature_weights:
            p.error("--prompts / --reference-dir / --feature-weights need --checkpoint")
        return
    missing = [o for o, v in (("--prompts", args.prompts), ("--reference-dir", args.reference_dir)) if not v]
    if missing:
        p.error(f"--checkpoint needs {' and '.join(missing)}")
    for opt, path in (("--checkpoint", args.checkpoint), ("--prompts", args.prompts),
                      ("--feature-weights", args.feature_weights)):
        if path and not os.path.isfile(path):
            p.error(f"{opt} {path}: no such file")
    if not os.path.isdir(args.reference_dir):
        p.error(f"--reference-dir {args.reference_dir}: no such folder")


def _defaults(p, args):
    real, q = args.checkpoint is not None, args.quick
    args.n = args.n or (1000 if real else (20 if q else 50))
    args.seeds = args.seeds or (2 if q else 5)
    args.steps = args.steps or (30 if real else 10)
    args.cfg = args.cfg if args.cfg is not None else (5.0 if real else 3.0)
    args.layers = args.layers or ("auto" if real else TINY_LAYERS)
    args.scales = QUICK_SCALES if q else SCALES
    args.zero_scales = QUICK_SCALES if q else ZERO_SCALES
    args.cfgs = sorted({1.0, args.cfg} if q else set(CHECKPOINT_CFGS if real else TINY_CFGS) | {args.cfg})
    models = args.models or ("main" if q else "main,small")
    args.models = ["checkpoint"] if real else [m.strip() for m in models.split(",") if m.strip()]
    bad = [m for m in args.models if m not in ("main", "small", "checkpoint")]
    if bad:
        p.error(f"--models {bad}: valid values are main, small")
    if not real and args.n % 10:
        p.error("--n must be a multiple of 10 (balanced digits)")
    if args.n < (2 if real else 10) or args.seeds < 1 or args.steps < 1:
        p.error("--n >= 10 (checkpoint: >= 2), --seeds >= 1, --steps >= 1")


def run_model(host, args, model_name, store, log) -> tuple[dict, object]:
    if model_name == "checkpoint":
        from .quality_backends import CheckpointBackend

        backend = CheckpointBackend(host, args)
    else:
        from .quality_backends import TinyBackend

        backend = TinyBackend(host, args.n, args.steps, model_name)
    runner = Runner(host, backend, range(args.seeds), store, log)
    summary = model_summary(runner, args.layers, args.scales, args.zero_scales, args.cfgs, args.cfg)
    if backend.kind == "tiny":
        summary["real_floor_fd"] = real_floor(backend, args.n, runner.seeds)
    return summary, runner


def main(argv=None):
    args = parse_args(argv)
    threads = args.threads or (None if args.checkpoint else 1)
    if threads:
        torch.set_num_threads(threads)
    log = lambda *a: print(*a, file=sys.stderr, flush=True)  # noqa: E731
    host = start_host()
    t0 = time.perf_counter()
    store = None
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        store = os.path.join(args.out, f"quality{'_quick' if args.quick else ''}_results.partial.json")
    log(f"models {args.models}, {args.seeds} seeds x {args.n} images, {args.steps} steps, layers {args.layers!r}, "
        f"threads {torch.get_num_threads()}")
    models, runners = {}, {}
    for name in args.models:
        models[name], runners[name] = run_model(host, args, name, store, log)
    first = args.models[0]
    for name, runner in runners.items():
        if not args.quick and not args.no_ablations and name != "checkpoint":
            models[name]["ablations"] = ablation_summary(
                runner, ablation_settings(host, runner.backend.model, args.layers, ABLATION_SCALE))
    result = {"backend": "checkpoint" if args.checkpoint else "tiny", "n": args.n, "seeds": list(range(args.seeds)),
              "steps": args.steps, "quick": args.quick, "threads": torch.get_num_threads(),
              "feature_metric": runners[first].backend.feature_name, **headline(models[first]),
              "models": models, "seconds_total": round(time.perf_counter() - t0, 1)}
    for name, summary in models.items():
        print(markdown(name, summary) + "\n")
    if args.out and not args.quick:
        write_outputs(args, result, runners)
        os.remove(store)  # complete: the final JSON holds everything the checkpoint did
    print(json.dumps({k: v for k, v in result.items() if k != "models"} if args.quick else result,
                     separators=(",", ":"), default=_json_default))


def write_outputs(args, result, runners):
    with open(os.path.join(args.out, "quality_results.json"), "w") as f:
        json.dump(result, f, indent=1, default=_json_default)
    if result["backend"] == "tiny":
        from . import quality_plots

        quality_plots.write_all(result, runners, args.out)


if __name__ == "__main__":
    main()
