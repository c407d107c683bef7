"""Sample quality of ASAG against its baselines, sampled through ComfyUI.

Default (CPU, no downloads): the committed tiny class-conditional digits model
(``benchmarks.tiny_model``), N images per setting with balanced labels (N/10 per digit),
the same seeds and the same initial noise for every setting, sampled with
``comfy.sample.sample`` on ComfyUI's ModelPatcher patched by this pack's nodes (found and
loaded exactly as the host tests do, ``tests/comfy_host.py``).  Metrics, against all 1,797
real sklearn digits:

- ``fd_feat``: Fréchet distance in the 128-d feature space of the committed digit
  classifier (``benchmarks.classifier``), lower is better.  ``d_fd``: the paired
  difference to plain CFG on the same seed (mean ± std over seeds); the seed-to-seed
  spread of FD itself is much larger than these paired differences.
- ``fd_pix``: the same in pixel space (256-d).
- ``acc``: the classifier's accuracy on the conditional samples.
- ``prec`` / ``rec``: improved precision / recall (Kynkäänniemi et al. 2019, k = 5, real set subsampled to N)
  in classifier-feature space; ``div``: mean pairwise feature distance within a class.
- ``sat``: fraction of pixels above 0.9 (saturated ink); the real digits have 3.8 %.
- ``s/img``: wall seconds per image of the sampling call.

Every metric is mean ± std over the seeds.  The output is one markdown table followed
by exactly one JSON line (the last line of stdout).

With a real checkpoint (GPU), the same settings and table::

    python -m benchmarks.quality --checkpoint sd_xl_base_1.0.safetensors \
        --prompts coco_captions.txt --reference-dir coco_val_images/ \
        [--feature-weights inception.pt] --n 1000 --seeds 3 --steps 30 --cfg 5.0 --size 1024

The checkpoint is loaded with ``comfy.sd.load_checkpoint_guess_config``, prompts (one a
line, the first N used, one image per prompt and seed) are encoded with the checkpoint's
CLIP, images decoded with its VAE.  Nothing is downloaded: ``--feature-weights`` must be a
file you provide (a TorchScript module mapping (B, 3, 299, 299) images in [0, 1] to
(B, D) features, or a torchvision ``inception_v3`` state dict); with it ``fd_feat`` is
FID-style.  Without it ``fd_feat`` falls back to pixel space (images resized to 64x64)
and is **not** FID.  ``acc`` is not defined there and is reported as null.  See
docs/quality.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from benchmarks import metrics  # noqa: E402

# Guidance layers for the tiny model.  Its attn1 layers: d0 = ("input", 3) and u2, u3 =
# ("output", 2/3) at 8x8 (64 tokens); d1, m0, u0, u1 at 4x4 (16 tokens).  "auto" is m0.
# Measured (docs/quality.md): the 4x4 layers barely change the samples (also for PAG on
# m0); the 8x8 layers do, so the tiny benchmark perturbs the 8x8 decoder layer u3.
TINY_LAYERS = "u3"
TINY_SCALE = 1.5  # the paper's best scale


@dataclass
class Setting:
    name: str
    group: str  # "main" | "iterations" | "cost" | "scale"
    cfg: float
    guidance: str = "none"  # "none" | "pag" | "asag"
    scale: float = 0.0
    iterations: int = 2
    cost: str = "adversarial"
    layers: str = "auto"
    also: list = field(default_factory=list)  # other groups this setting belongs to

    def key(self):
        return (self.cfg, self.guidance, self.scale if self.guidance != "none" else 0.0, self.iterations,
                self.cost, self.layers)


def build_settings(cfg: float, scale: float, layers: str, quick: bool) -> list[Setting]:
    """All settings, de-duplicated (a setting shared by two groups is sampled once)."""
    a = dict(guidance="asag", layers=layers)
    main = [
        Setting("no guidance (cfg 1)", "main", 1.0),
        Setting(f"CFG {cfg:g}", "main", cfg),
        Setting(f"CFG + PAG {scale:g} (ComfyUI, m0)", "main", cfg, guidance="pag", scale=scale),
        Setting(f"CFG + ASAG {scale:g}", "main", cfg, scale=scale, **a),
        Setting(f"ASAG {scale:g} alone (cfg 1)", "main", 1.0, scale=scale, **a),
    ]
    iters = [1, 2] if quick else [1, 2, 5, 10]
    costs = ["adversarial", "similarity", "uniform"]
    scales = [0.5, 1.5, 3.0] if quick else [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 5.0]
    extra = (
        [Setting(f"CFG + ASAG, {i} iter", "iterations", cfg, scale=scale, iterations=i, **a) for i in iters]
        + [Setting(f"CFG + ASAG, cost {c}", "cost", cfg, scale=scale, cost=c, **a) for c in costs]
        + [Setting(f"CFG + ASAG, scale {s:g}", "scale", cfg, scale=s, **a) for s in scales]
    )
    out: dict = {}
    for s in main + extra:
        k = s.key() if s.scale != 0.0 or s.guidance == "none" else (s.cfg, "none", 0.0, 2, "adversarial", "auto")
        if k in out:
            out[k].also.append((s.group, s))
        else:
            if s.guidance == "asag" and s.scale == 0.0:  # scale 0 is plain CFG
                s = Setting(s.name, s.group, s.cfg)
                k = s.key()
                if k in out:
                    out[k].also.append((s.group, s))
                    continue
            out[k] = s
    return list(out.values())


# --------------------------------------------------------------------------- backends


class TinyBackend:
    """The committed digits model; features = the committed digit classifier."""

    kind = "tiny"

    def __init__(self, host, n: int, steps: int):
        from benchmarks.classifier import load_classifier, load_digit_images
        from benchmarks.tiny_model import load_tiny_model

        self.host = host
        self.tiny = load_tiny_model()
        self.model = self.tiny.model_patcher
        self.classifier = load_classifier()
        self.steps = steps
        self.labels = [i % 10 for i in range(n)]  # balanced: n/10 per digit
        real, _ = load_digit_images()
        self.real_feat = self.classifier.features(real)
        self.real_pix = real.flatten(1)
        self.feat_stats = metrics.gaussian_stats(self.real_feat)
        self.pix_stats = metrics.gaussian_stats(self.real_pix)
        self.feature_name = "classifier-feature FD (128-d, digit CNN)"
        self.pixel_name = "pixel FD (16x16)"

    def sample(self, model, cfg: float, seed: int) -> torch.Tensor:
        return self.tiny.sample(self.labels, seed=seed, cfg=cfg, steps=self.steps, model_patcher=model)

    def features(self, images):
        return self.classifier.features(images)

    def pixels(self, images):
        return images.flatten(1)

    def accuracy(self, images):
        return (self.classifier.predict(images) == torch.tensor(self.labels)).double().mean().item()


def _load_image_folder(folder: str, size: int, limit: int | None = None) -> torch.Tensor:
    from PIL import Image

    exts = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
    names = sorted(f for f in os.listdir(folder) if f.lower().endswith(exts))
    if limit:
        names = names[:limit]
    if not names:
        raise SystemExit(f"--reference-dir {folder}: no images ({', '.join(exts)})")
    out = []
    for name in names:
        im = Image.open(os.path.join(folder, name)).convert("RGB")
        out.append(_center_resize(torch.from_numpy(np.asarray(im).copy()).float().div(255.0).permute(2, 0, 1), size))
    return torch.stack(out)


def _center_resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """(3, H, W) -> centre square crop -> (3, size, size), bilinear with antialias."""
    h, w = x.shape[-2:]
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    x = x[..., top : top + s, left : left + s]
    return torch.nn.functional.interpolate(x.unsqueeze(0), size=(size, size), mode="bilinear", antialias=True,
                                           align_corners=False)[0].clamp(0, 1)


class FeatureNet:
    """User-provided feature weights (never downloaded): TorchScript or torchvision inception_v3 state dict."""

    def __init__(self, path: str, device):
        self.device = device
        self._normalize = False
        try:
            self.net = torch.jit.load(path, map_location=device).eval()
            self.name = f"FID-style FD ({os.path.basename(path)}, TorchScript)"
            return
        except Exception:  # not TorchScript: try a torchvision inception_v3 state dict
            pass
        try:
            import torchvision
        except ImportError as e:
            raise SystemExit(f"--feature-weights {path}: not TorchScript, and torchvision is missing: {e}") from None
        net = torchvision.models.inception_v3(weights=None, aux_logits=True, init_weights=False)
        state = torch.load(path, map_location="cpu", weights_only=True)
        missing, _ = net.load_state_dict(state, strict=False)
        if len(missing) > 10:
            raise SystemExit(f"--feature-weights {path}: neither TorchScript nor a torchvision inception_v3 "
                             f"state dict ({len(missing)} missing keys)")
        net.fc = torch.nn.Identity()
        self.net = net.eval().to(device)
        self.name = f"FID-style FD (torchvision inception_v3 pool, {os.path.basename(path)})"
        self._normalize = True

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:  # (B, 3, 299, 299) in [0, 1]
        outs = []
        for i in range(0, len(images), 32):
            x = images[i : i + 32].to(self.device)
            if self._normalize:  # torchvision ImageNet normalisation
                mean = torch.tensor([0.485, 0.456, 0.406], device=x.device).view(1, 3, 1, 1)
                std = torch.tensor([0.229, 0.224, 0.225], device=x.device).view(1, 3, 1, 1)
                x = (x - mean) / std
            f = self.net(x)
            if isinstance(f, (tuple, list)):
                f = f[0]
            outs.append(f.float().flatten(1).cpu())
        return torch.cat(outs)


class CheckpointBackend:
    """A real checkpoint via ComfyUI: load_checkpoint_guess_config, its CLIP and VAE."""

    kind = "checkpoint"
    PIXEL_SIZE = 64  # fallback / pixel-space FD resolution

    def __init__(self, host, args):
        import comfy.model_management
        import comfy.sd

        self.host = host
        self.steps = args.steps
        self.size = args.size
        with open(args.prompts, encoding="utf-8") as f:
            prompts = [line.strip() for line in f if line.strip()]
        if len(prompts) < args.n:
            raise SystemExit(f"--prompts {args.prompts}: {len(prompts)} prompts, --n {args.n} needs that many")
        self.prompts = prompts[: args.n]
        self.labels = list(range(len(self.prompts)))  # "class" = prompt; diversity needs >= 2 per prompt
        out = comfy.sd.load_checkpoint_guess_config(args.checkpoint, output_vae=True, output_clip=True)
        self.model, self.clip, self.vae = out[0], out[1], out[2]
        if self.clip is None or self.vae is None:
            raise SystemExit(f"--checkpoint {args.checkpoint}: needs a CLIP and a VAE inside the checkpoint")
        enc = host.nodes.CLIPTextEncode()
        self.positive = [enc.encode(self.clip, p)[0] for p in self.prompts]
        self.negative = enc.encode(self.clip, args.negative)[0]
        device = comfy.model_management.get_torch_device()
        self.feature_net = FeatureNet(args.feature_weights, device) if args.feature_weights else None
        self.feature_size = 299 if self.feature_net else self.PIXEL_SIZE
        self.feature_name = self.feature_net.name if self.feature_net else (
            f"pixel FD ({self.PIXEL_SIZE}x{self.PIXEL_SIZE} RGB; no --feature-weights, NOT FID)")
        self.pixel_name = f"pixel FD ({self.PIXEL_SIZE}x{self.PIXEL_SIZE} RGB)"
        ref = _load_image_folder(args.reference_dir, self.feature_size, args.reference_limit)
        self.real_feat = self.features(ref)
        self.real_pix = self.pixels(ref)
        self.feat_stats = metrics.gaussian_stats(self.real_feat)
        self.pix_stats = metrics.gaussian_stats(self.real_pix)
        self.sampler, self.scheduler = args.sampler, args.scheduler

    def sample(self, model, cfg: float, seed: int) -> torch.Tensor:
        latent_node, ks = self.host.nodes.EmptyLatentImage(), self.host.nodes.KSampler()
        images = []
        for i, pos in enumerate(self.positive):
            (latent,) = latent_node.generate(self.size, self.size, 1)
            (out,) = ks.sample(model, seed * 1_000_003 + i, self.steps, cfg, self.sampler, self.scheduler, pos,
                               self.negative, latent)
            img = self.vae.decode(out["samples"])  # (1, H, W, 3) in [0, 1]
            img = img.reshape(-1, *img.shape[-3:])[:1].permute(0, 3, 1, 2).float().cpu()
            images.append(_center_resize(img[0], self.feature_size))
        return torch.stack(images)

    def features(self, images):
        if self.feature_net is None:
            return self.pixels(images)
        if images.shape[-1] != 299:
            images = torch.stack([_center_resize(x, 299) for x in images])
        return self.feature_net(images)

    def pixels(self, images):
        if images.shape[-1] != self.PIXEL_SIZE:
            images = torch.nn.functional.interpolate(images, size=(self.PIXEL_SIZE,) * 2, mode="bilinear",
                                                     antialias=True, align_corners=False)
        return images.flatten(1)

    def accuracy(self, images):
        return None


# --------------------------------------------------------------------------- running


def start_comfy_host():
    """ComfyUI with this pack loaded, found as the host tests find it (tests/comfy_host.py)."""
    try:
        from benchmarks.host import start_host  # shared helper, when present
    except ImportError:
        tests = os.path.join(ROOT, "tests")
        if tests not in sys.path:
            sys.path.insert(0, tests)
        import comfy_host

        host = comfy_host.start_host()
        if host is None:
            raise SystemExit(comfy_host.HOW_TO) from None
        return host
    return start_host()



def patched_model(host, base, s: Setting):
    if s.guidance == "none":
        return base
    if s.guidance == "pag":
        from comfy_extras.nodes_pag import PerturbedAttentionGuidance

        return PerturbedAttentionGuidance.execute(base, s.scale).result[0]
    return host.node("ASAGAdvanced").execute(
        base, scale=s.scale, iterations=s.iterations, lam=1.0, cost=s.cost, layers=s.layers,
        start_percent=0.0, end_percent=1.0, rescale=0.0, rescale_mode="full",
    ).result[0]


def evaluate(backend, images) -> dict:
    f = backend.features(images)
    p = backend.pixels(images)
    prec, rec = metrics.precision_recall(backend.real_feat, f, k=5)
    return {
        "fd_feat": metrics.frechet_distance(f, stats_b=backend.feat_stats),
        "fd_pix": metrics.frechet_distance(p, stats_b=backend.pix_stats),
        "acc": backend.accuracy(images),
        "prec": prec,
        "rec": rec,
        "div": metrics.within_class_diversity(f, backend.labels),
        "sat": float((images > 0.9).double().mean()),
    }


def run_all(host, backend, settings, seeds, log=print, keep_images=None):
    """{setting index: {"per_seed": [metric dicts]}}; keep_images: setting names whose seed-0 images to keep."""
    results = []
    kept = {}
    for s in settings:
        model = patched_model(host, backend.model, s)
        per_seed = []
        for seed in seeds:
            t0 = time.perf_counter()
            images = backend.sample(model, s.cfg, seed)
            dt = time.perf_counter() - t0
            m = evaluate(backend, images)
            m["s_per_img"] = dt / len(images)
            per_seed.append(m)
            if keep_images is not None and seed == seeds[0]:
                kept[s.name] = images
        results.append(per_seed)
        fd = [m["fd_feat"] for m in per_seed]
        log(f"  {s.name:<40s} fd_feat {np.mean(fd):8.2f}  ({time.perf_counter():.0f})")
    return results, kept


def summarize(settings, results, cfg_index):
    rows = []
    base = results[cfg_index]
    for s, per_seed in zip(settings, results, strict=False):
        row = {"name": s.name, "groups": [s.group] + [g for g, _ in s.also], "cfg": s.cfg, "guidance": s.guidance,
               "scale": s.scale, "iterations": s.iterations if s.guidance == "asag" else None,
               "cost": s.cost if s.guidance == "asag" else None, "layers": s.layers if s.guidance == "asag" else None}
        for k in ("fd_feat", "fd_pix", "acc", "prec", "rec", "div", "sat", "s_per_img"):
            vals = [m[k] for m in per_seed]
            if any(v is None for v in vals):
                row[k] = None
                continue
            row[k] = metrics.mean_std(vals)
        d = [m["fd_feat"] - b["fd_feat"] for m, b in zip(per_seed, base, strict=False)]
        row["d_fd"] = metrics.mean_std(d)
        dp = [m["fd_pix"] - b["fd_pix"] for m, b in zip(per_seed, base, strict=False)]
        row["d_fd_pix"] = metrics.mean_std(dp)
        row["per_seed_fd_feat"] = [m["fd_feat"] for m in per_seed]
        rows.append(row)
    return rows


def _fmt(v, digits=2, pct=False):
    if v is None:
        return "n/a"
    m, s = v
    if pct:
        return f"{100 * m:.1f} ± {100 * s:.1f}"
    return f"{m:.{digits}f} ± {s:.{digits}f}"


def markdown_table(rows) -> str:
    head = ("| setting | group | fd_feat ↓ | Δfd_feat vs CFG (paired) | fd_pix ↓ | acc % | precision % | recall % "
            "| div (within class) | sat % | s/img |")
    lines = [head, "|" + " --- |" * 11]
    order = {"main": 0, "iterations": 1, "cost": 2, "scale": 3}
    expanded = []
    for r in rows:
        for g in r["groups"]:
            expanded.append((order[g], g, r))
    for _, g, r in sorted(expanded, key=lambda t: t[0]):
        lines.append(
            f"| {r['name']} | {g} | {_fmt(r['fd_feat'])} | {_fmt(r['d_fd'])} | {_fmt(r['fd_pix'])} | "
            f"{_fmt(r['acc'], pct=True)} | {_fmt(r['prec'], pct=True)} | {_fmt(r['rec'], pct=True)} | "
            f"{_fmt(r['div'])} | {_fmt(r['sat'], pct=True)} | {_fmt(r['s_per_img'], 3)} |"
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------- docs output


def _sweep(rows, group, x_of):
    pts = []
    for r in rows:
        if group in r["groups"] or (group == "scale" and r["guidance"] == "none" and r["cfg"] != 1.0):
            x = x_of(r)
            if x is not None:
                pts.append((x, r))
    return sorted(pts, key=lambda t: t[0])


def write_plots(rows, out_dir, cfg_row, pag_row):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for group, x_of, xlabel, fname in (
        ("scale", lambda r: r["scale"] if r["guidance"] in ("asag", "none") else None, "ASAG scale s",
         "quality_vs_scale.png"),
        ("iterations", lambda r: r["iterations"], "Sinkhorn iterations", "quality_vs_iterations.png"),
    ):
        pts = _sweep(rows, group, x_of)
        if not pts:
            continue
        xs = [p[0] for p in pts]
        fig, axes = plt.subplots(1, 4, figsize=(15, 3.4))
        for ax, (key, label) in zip(axes, (("fd_feat", "classifier-feature FD ↓"), ("fd_pix", "pixel FD ↓"),
                                           ("prec", "precision"), ("rec", "recall")), strict=False):
            m = np.array([p[1][key][0] for p in pts])
            s = np.array([p[1][key][1] for p in pts])
            ax.errorbar(xs, m, yerr=s, marker="o", capsize=3, label="CFG + ASAG")
            for ref, style, lab in ((cfg_row, "--", "CFG"), (pag_row, ":", "CFG + PAG (m0)")):
                if ref is not None and ref[key] is not None:
                    ax.axhline(ref[key][0], ls=style, color="grey" if style == "--" else "tab:red", label=lab)
            ax.set_xlabel(xlabel)
            ax.set_title(label)
            if group == "iterations":
                ax.set_xscale("log")
                ax.set_xticks(xs)
                ax.set_xticklabels([str(x) for x in xs])
        axes[0].legend(fontsize=8)
        fig.suptitle(f"tiny digits model, mean ± std over seeds ({group} sweep)")
        fig.tight_layout()
        fig.savefig(os.path.join(out_dir, fname), dpi=90)
        plt.close(fig)


def write_grid(kept: dict, names: list[str], labels, path: str, per_digit: int = 2):
    """Columns = settings (same seed, same noise), rows = digits 0-9 (per_digit samples each)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n in names if n in kept]
    labels = list(labels)
    idx = [[i for i, y in enumerate(labels) if y == d][:per_digit] for d in range(10)]
    fig, axes = plt.subplots(10, len(names), figsize=(2.3 * len(names), 11))
    for c, name in enumerate(names):
        imgs = kept[name]
        for d in range(10):
            tiles = [imgs[i, 0].numpy() for i in idx[d]]
            ax = axes[d, c]
            ax.imshow(np.concatenate(tiles, axis=1), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if d == 0:
                ax.set_title(name, fontsize=9)
            if c == 0:
                ax.set_ylabel(str(d))
    fig.suptitle("same seed and noise in every column (seed 0)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


# --------------------------------------------------------------------------- CLI


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.quality", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="< 3 min: n 30, 2 seeds, iterations 1/2, scales 0.5/1.5/3, no plots/grid")
    p.add_argument("--n", type=int, default=None, help="images per setting and seed (tiny: multiple of 10)")
    p.add_argument("--seeds", type=int, default=None, help="number of seeds (0..seeds-1)")
    p.add_argument("--steps", type=int, default=None, help="sampling steps (tiny default 10, checkpoint 30)")
    p.add_argument("--cfg", type=float, default=None, help="CFG scale (tiny default 3, checkpoint 5)")
    p.add_argument("--scale", type=float, default=TINY_SCALE, help="ASAG / PAG scale of the main rows")
    p.add_argument("--layers", default=None, help=f"ASAG layers (tiny default {TINY_LAYERS!r}, checkpoint 'auto')")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: 1 for the tiny model)")
    p.add_argument("--out", default=None, help="folder for results JSON, plots and the sample grid (e.g. docs/)")
    g = p.add_argument_group("real checkpoint (GPU)")
    g.add_argument("--checkpoint", help="a .safetensors/.ckpt checkpoint with UNet/DiT, CLIP and VAE")
    g.add_argument("--prompts", help="text file, one prompt a line (the first N are used)")
    g.add_argument("--reference-dir", help="folder of reference images (e.g. COCO val2014)")
    g.add_argument("--reference-limit", type=int, default=None, help="use at most this many reference images")
    g.add_argument("--feature-weights", help="local feature network: TorchScript or torchvision inception_v3 "
                                             "state dict; without it fd_feat is pixel-space, not FID")
    g.add_argument("--negative", default="", help="negative prompt (default empty)")
    g.add_argument("--size", type=int, default=1024, help="image width = height")
    g.add_argument("--sampler", default="euler")
    g.add_argument("--scheduler", default="normal")
    args = p.parse_args(argv)

    real = args.checkpoint is not None
    if real:
        missing = [o for o, v in (("--prompts", args.prompts), ("--reference-dir", args.reference_dir)) if not v]
        if missing:
            p.error(f"--checkpoint needs {' and '.join(missing)}")
        for opt, path in (("--checkpoint", args.checkpoint), ("--prompts", args.prompts),
                          ("--feature-weights", args.feature_weights)):
            if path and not os.path.isfile(path):
                p.error(f"{opt} {path}: no such file")
        if not os.path.isdir(args.reference_dir):
            p.error(f"--reference-dir {args.reference_dir}: no such folder")
    elif args.prompts or args.reference_dir or args.feature_weights:
        p.error("--prompts / --reference-dir / --feature-weights need --checkpoint")
    q = args.quick
    args.n = args.n or ((30 if q else 100) if not real else 1000)
    args.seeds = args.seeds or (2 if q else 3)
    args.steps = args.steps or (10 if not real else 30)
    args.cfg = args.cfg if args.cfg is not None else (5.0 if real else 3.0)
    args.layers = args.layers or ("auto" if real else TINY_LAYERS)
    if not real and args.n % 10:
        p.error("--n must be a multiple of 10 (balanced digits)")
    if args.n < (2 if real else 10) or args.seeds < 1 or args.steps < 1:
        p.error("--n >= 10 (checkpoint: >= 2), --seeds >= 1, --steps >= 1")
    return args


def main(argv=None):
    args = parse_args(argv)
    real = args.checkpoint is not None
    threads = args.threads or (None if real else 1)
    if threads:
        torch.set_num_threads(threads)
    log = lambda *a: print(*a, file=sys.stderr, flush=True)  # noqa: E731
    host = start_comfy_host()
    t_start = time.perf_counter()
    backend = CheckpointBackend(host, args) if real else TinyBackend(host, args.n, args.steps)
    settings = build_settings(args.cfg, args.scale, args.layers, args.quick)
    seeds = list(range(args.seeds))
    log(f"{len(settings)} settings x {len(seeds)} seeds x {args.n} images, {args.steps} steps, "
        f"layers {args.layers!r}, threads {torch.get_num_threads()}")
    cfg_index = next(i for i, s in enumerate(settings) if s.guidance == "none" and s.cfg == args.cfg)
    grid_names = [settings[cfg_index].name] + [s.name for s in settings if s.group == "main" and s.guidance != "none"
                                              and s.cfg != 1.0]
    results, kept = run_all(host, backend, settings, seeds, log=log, keep_images=set(grid_names))
    rows = summarize(settings, results, cfg_index)
    total = time.perf_counter() - t_start

    real_floor = None
    if not real:  # FD of N real digits (per seed a random balanced subset) vs all: the floor at this N
        g = torch.Generator().manual_seed(0)
        from benchmarks.classifier import load_digit_images

        x, y = load_digit_images()
        floors = []
        for _ in seeds:
            idx = torch.cat([torch.nonzero(y == d)[:, 0][torch.randperm(int((y == d).sum()), generator=g)
                                                         [: args.n // 10]] for d in range(10)])
            floors.append(metrics.frechet_distance(backend.features(x[idx]), stats_b=backend.feat_stats))
        real_floor = metrics.mean_std(floors)

    what = "checkpoint " + os.path.basename(args.checkpoint) if real else "tiny digits model"
    how = f"{args.sampler}/{args.scheduler} (KSampler node)" if real else "euler/karras (comfy.sample.sample)"
    print(f"## ASAG sample quality ({what})")
    print()
    print(f"{args.n} images per setting and seed, seeds {seeds}, {args.steps} steps "
          f"{how}, CFG {args.cfg:g}, ASAG layers {args.layers!r}, "
          f"torch threads {torch.get_num_threads()}. fd_feat = {backend.feature_name}; "
          f"fd_pix = {backend.pixel_name}. Mean ± std over seeds.")
    if real_floor:
        print(f"Reference: fd_feat of {args.n} real digits vs all 1,797 = {real_floor[0]:.2f} ± {real_floor[1]:.2f}.")
    print()
    print(markdown_table(rows))
    print()
    summary = {
        "backend": backend.kind, "n": args.n, "seeds": seeds, "steps": args.steps, "cfg": args.cfg,
        "scale": args.scale, "layers": args.layers, "threads": torch.get_num_threads(), "quick": args.quick,
        "feature_metric": backend.feature_name, "real_floor_fd_feat": real_floor, "seconds_total": round(total, 1),
        "rows": rows,
    }
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        tag = "quality_quick" if args.quick else "quality"
        with open(os.path.join(args.out, f"{tag}_results.json"), "w") as f:
            json.dump(summary, f, indent=1)
        cfg_row = rows[cfg_index]
        pag_row = next((r for r in rows if r["guidance"] == "pag"), None)
        if not args.quick:
            write_plots(rows, args.out, cfg_row, pag_row)
            if not real:
                write_grid(kept, grid_names, backend.labels, os.path.join(args.out, "quality_grid.png"))
    print(json.dumps(summary, separators=(",", ":"), default=lambda o: None if isinstance(o, float) and
                     math.isnan(o) else str(o)))


if __name__ == "__main__":
    main()
