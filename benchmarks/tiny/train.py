"""Train the tiny digits diffusion model and the digit classifier, on CPU.

    python -m benchmarks.tiny.train --out benchmarks/tiny/weights/ [--minutes 25] [--quick]
    python -m benchmarks.tiny.train --model small --skip-classifier --steps 400 --minutes 60

Data: scikit-learn's ``load_digits`` (UCI optical digits, 1,797 8x8 images, shipped
inside the scikit-learn package).  Each image is scaled to [0, 1] (``/16``) and
upsampled 8x8 -> 16x16 with ``torch.nn.functional.interpolate(mode="bilinear",
align_corners=False)`` (``benchmarks.tiny.classifier.load_digit_images``); the diffusion
model sees ``2 * image - 1`` in [-1, 1].

1. Classifier (``benchmarks.tiny.classifier.DigitClassifier``): trained on a stratified 80 %
   split (seed 0; 1,437 images) with light augmentation (random shifts of up to 1 pixel
   at 16x16, Gaussian pixel noise of std 0.05), Adam lr 1e-3, batch 64; accuracy reported
   on the held-out 20 % (360 images).  Saved as ``digits_classifier.safetensors``.
2. Diffusion model (``benchmarks.tiny.model``: ComfyUI UNetModel in a BaseModel):
   trained on all 1,797 images, no augmentation.  EPS-prediction MSE with ComfyUI's
   default discrete schedule: t uniform in 0..999, alpha-bar from the model's own
   ``model_sampling.sigmas`` (alpha_bar = 1 / (1 + sigma^2)), x_t = sqrt(ab) x0 +
   sqrt(1 - ab) eps -- exactly what ``BaseModel.apply_model`` feeds the UNet at
   sigma_t (``calculate_input`` divides x0 + sigma eps by sqrt(sigma^2 + 1), and
   ``timestep`` maps sigma back to t).  Class dropout: with probability 0.12 the class
   tokens are replaced by the null row (10), for classifier-free guidance.  AdamW
   (lr 1e-3, weight decay 0.01, 100 warm-up steps, cosine decay to 5 %), batch 64,
   gradient clipping at 1.0, EMA of all weights (decay 0.999 with the usual
   (1+n)/(10+n) warm-up); the EMA weights are saved as
   ``tiny_digits_unet.safetensors`` (UNet under ``model.diffusion_model.``, the
   (11, 4, 64) table as ``class_embedding``).
   The run stops at ``--steps`` or when the time budget (``--minutes`` minus the
   time already spent) is used up, whichever comes first; the learning-rate schedule
   follows max(step / steps, elapsed / budget) so a run cut short by the clock still
   ends annealed.  With the clock not binding, a run is deterministic (seeded).
3. Check: conditional samples (10 per digit) through ``comfy.sample.sample``
   (euler, karras, 20 steps) at cfg 1 and cfg 3, classified by the classifier.

Everything is seeded (``--seed``, default 0).  torch uses ``--threads`` threads, default
1: on a 2-core machine shared with other jobs, 1 thread measured 3-5x faster per step
than 2 (0.9-1.3 s vs 3-9 s for a batch of 64), because 2 threads stall on each other
when the cores are oversubscribed; pass ``--threads 2`` on an idle machine.
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import time

import numpy as np
import torch
import torch.nn.functional as F

from .classifier import DigitClassifier, LoadedClassifier, load_digit_images, split_indices


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def random_shift(x: torch.Tensor, gen: torch.Generator, max_shift: int = 1) -> torch.Tensor:
    """Shift each image by up to ``max_shift`` pixels (zero padding)."""
    n, _, h, w = x.shape
    p = max_shift
    padded = F.pad(x, (p, p, p, p))
    dx = torch.randint(0, 2 * p + 1, (n,), generator=gen)
    dy = torch.randint(0, 2 * p + 1, (n,), generator=gen)
    out = torch.empty_like(x)
    for i in range(n):
        out[i] = padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w]
    return out


def train_classifier(images, labels, train_idx, test_idx, epochs: int, seed: int):
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    net = DigitClassifier()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    xtr, ytr = images[train_idx], labels[train_idx]
    xte, yte = images[test_idx], labels[test_idx]
    steps_per_epoch = math.ceil(len(xtr) / 64)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * steps_per_epoch)
    for ep in range(epochs):
        net.train()
        perm = torch.randperm(len(xtr), generator=gen)
        tot = 0.0
        for i in range(0, len(xtr), 64):
            b = perm[i : i + 64]
            x = random_shift(xtr[b], gen)
            x = (x + 0.05 * torch.randn(x.shape, generator=gen)).clamp(0, 1)
            loss = F.cross_entropy(net(x), ytr[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            tot += loss.item() * len(b)
        acc = (LoadedClassifier(net).predict(xte) == yte).float().mean().item()
        log(f"classifier epoch {ep + 1}/{epochs} loss {tot / len(xtr):.4f} held-out acc {acc:.4f}")
        net.train()
    net.eval()
    acc = (LoadedClassifier(net).predict(xte) == yte).float().mean().item()
    return net, acc


@torch.no_grad()
def eval_loss(unet, emb, x0, labels, ab, seed: int = 1234, n: int = 512) -> float:
    """Fixed-noise eps MSE on ``n`` (image, t, eps) triples, conditional."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, len(x0), (n,), generator=g)
    t = torch.randint(0, len(ab), (n,), generator=g)
    eps = torch.randn((n,) + x0.shape[1:], generator=g)
    a = ab[t].view(-1, 1, 1, 1)
    xt = a.sqrt() * x0[idx] + (1 - a).sqrt() * eps
    tot = 0.0
    for i in range(0, n, 128):
        s = slice(i, i + 128)
        pred = unet(xt[s], t[s].float(), context=emb[labels[idx[s]]])
        tot += F.mse_loss(pred, eps[s], reduction="sum").item()
    return tot / eps.numel()


def check_samples(weights_path: str, classifier: LoadedClassifier, per_class: int, cfgs=(1.0, 3.0)):
    from .model import load_tiny_model

    tiny = load_tiny_model(weights_path)
    digits = [d for d in range(10) for _ in range(per_class)]
    results = {}
    for cfg in cfgs:
        t0 = time.time()
        imgs = tiny.sample(digits, seed=0, steps=20, cfg=cfg, sampler_name="euler", scheduler="karras")
        pred = classifier.predict(imgs)
        acc = (pred == torch.tensor(digits)).float().mean().item()
        results[cfg] = acc
        log(f"samples cfg {cfg}: class accuracy {acc:.3f} ({len(digits)} samples, {time.time() - t0:.1f}s)")
    return results


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="benchmarks/tiny/weights/")
    ap.add_argument("--model", choices=("main", "small"), default="main",
                    help="which UNet config (benchmarks.tiny.model.MODELS) and weights file name")
    ap.add_argument("--minutes", type=float, default=25.0, help="total wall-time budget (classifier + diffusion)")
    ap.add_argument("--steps", type=int, default=3000, help="diffusion training steps (upper bound)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a shared 2-core box)")
    ap.add_argument("--classifier-epochs", type=int, default=15)
    ap.add_argument("--skip-classifier", action="store_true",
                    help="keep the classifier in --out (for a second diffusion model judged by the same classifier)")
    ap.add_argument("--check-per-class", type=int, default=10, help="samples per digit for the final check")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="smoke run: 150 steps, 2 classifier epochs")
    args = ap.parse_args(argv)
    if args.quick:
        args.steps = min(args.steps, 150)
        args.classifier_epochs = 2
        args.check_per_class = min(args.check_per_class, 2)
    return args


def classifier_step(args, images, labels) -> LoadedClassifier:
    """Train and save the classifier, or (``--skip-classifier``) load the one in ``--out``."""
    from safetensors.torch import save_file

    from .classifier import load_classifier

    clf_path = os.path.join(args.out, "digits_classifier.safetensors")
    if args.skip_classifier:
        log(f"classifier: kept {clf_path}")
        return load_classifier(clf_path)
    train_idx, test_idx = split_indices(labels, 0.2, seed=0)
    log(f"data: {len(images)} images {tuple(images.shape[1:])}, classifier split {len(train_idx)}/{len(test_idx)}")
    clf_net, clf_acc = train_classifier(images, labels, train_idx, test_idx, args.classifier_epochs, args.seed)
    save_file({k: v.contiguous() for k, v in clf_net.state_dict().items()}, clf_path,
              metadata={"held_out_accuracy": f"{clf_acc:.4f}"})
    log(f"classifier held-out accuracy {clf_acc:.4f} -> {clf_path}")
    return LoadedClassifier(clf_net)


def learning_rate(args, step: int, progress: float) -> float:
    """Linear warm-up, then cosine decay to 5 % following max(step progress, clock progress)."""
    warmup = min(100, args.steps // 10)
    if step < warmup:
        return args.lr * (step + 1) / warmup
    return args.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


class Trainer:
    """The diffusion model, its optimiser and EMA copy; ``step`` runs one batch."""

    def __init__(self, args, unet_config, images, labels):
        from .model import alphas_cumprod, new_training_model

        self.args, self.labels = args, labels
        base, self.emb = new_training_model(args.seed, unet_config)
        self.unet = base.diffusion_model
        self.unet.train()
        self.ab = alphas_cumprod(base)
        self.x0_all = images * 2.0 - 1.0
        nparams = sum(p.numel() for p in self.unet.parameters()) + self.emb.numel()
        log(f"unet params {nparams / 1e6:.3f}M, config {unet_config}")
        self.params = list(self.unet.parameters()) + [self.emb]
        self.opt = torch.optim.AdamW(self.params, lr=args.lr, weight_decay=0.01)
        self.ema_unet = copy.deepcopy(self.unet).eval()
        self.ema_emb = self.emb.detach().clone()
        for p in self.ema_unet.parameters():
            p.requires_grad_(False)
        self.gen = torch.Generator().manual_seed(args.seed + 7)
        torch.manual_seed(args.seed + 7)
        self.perm, self.pos = torch.randperm(len(self.x0_all), generator=self.gen), 0

    def batch(self):
        n = self.args.batch
        if self.pos + n > len(self.perm):
            self.perm, self.pos = torch.randperm(len(self.x0_all), generator=self.gen), 0
        b = self.perm[self.pos : self.pos + n]
        self.pos += n
        y = self.labels[b].clone()
        y[torch.rand(len(b), generator=self.gen) < 0.12] = 10  # class dropout, for CFG
        return self.x0_all[b], y

    def step(self, step: int, lr: float) -> float:
        for g in self.opt.param_groups:
            g["lr"] = lr
        x0, y = self.batch()
        t = torch.randint(0, len(self.ab), (len(x0),), generator=self.gen)
        eps = torch.randn(x0.shape, generator=self.gen)
        a = self.ab[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * eps
        loss = F.mse_loss(self.unet(xt, t.float(), context=self.emb[y]), eps)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.opt.step()
        decay = min(0.999, (1 + step) / (10 + step))
        with torch.no_grad():
            for pe, p in zip(self.ema_unet.parameters(), self.unet.parameters(), strict=True):
                pe.lerp_(p, 1 - decay)
            self.ema_emb.lerp_(self.emb.detach(), 1 - decay)
        return loss.item()

    def eval_loss(self) -> float:
        return eval_loss(self.ema_unet, self.ema_emb, self.x0_all, self.labels, self.ab)


def train_diffusion(args, trainer: Trainer, budget_s: float) -> tuple[int, float]:
    """Runs until ``--steps`` or the clock; returns (steps done, mean loss of the last 200)."""
    t0 = time.time()
    recent, step = [], 0
    while step < args.steps:
        elapsed = time.time() - t0
        if elapsed > budget_s:
            log(f"time budget reached at step {step}")
            break
        lr = learning_rate(args, step, max(step / args.steps, elapsed / max(budget_s, 1e-6)))
        recent = (recent + [trainer.step(step, lr)])[-200:]
        step += 1
        if step % 50 == 0 or step == 1:
            el = time.time() - t0
            log(f"step {step}/{args.steps} loss {recent[-1]:.4f} avg200 {np.mean(recent):.4f} lr {lr:.2e} "
                f"{el / step * 1000:.0f} ms/step elapsed {el / 60:.1f} min")
        if step % 500 == 0:
            log(f"step {step} eval loss (EMA, fixed noise) {trainer.eval_loss():.4f}")
    log(f"diffusion done: {step} steps in {(time.time() - t0) / 60:.1f} min")
    return step, float(np.mean(recent)) if recent else float("nan")


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    t_start = time.time()
    os.makedirs(args.out, exist_ok=True)
    from .model import MODELS, save_weights

    unet_config, default_path = MODELS[args.model]
    images, labels = load_digit_images()
    classifier = classifier_step(args, images, labels)

    trainer = Trainer(args, unet_config, images, labels)
    budget = args.minutes * 60.0 - (time.time() - t_start) - (90.0 if not args.quick else 10.0)
    step, final_avg = train_diffusion(args, trainer, budget)
    ema_eval = trainer.eval_loss()
    w_path = os.path.join(args.out, os.path.basename(default_path))
    meta = {"steps": step, "train_loss_last200": f"{final_avg:.4f}", "ema_eval_loss": f"{ema_eval:.4f}",
            "seed": args.seed, "data": "sklearn load_digits (UCI optical digits, 1797 images), 8x8 -> 16x16 bilinear"}
    save_weights(w_path, trainer.ema_unet.state_dict(), trainer.ema_emb, metadata=meta, unet_config=unet_config)
    log(f"saved {w_path} ({os.path.getsize(w_path) / 1e6:.2f} MB), train loss avg(last 200) {final_avg:.4f}, "
        f"EMA eval loss {ema_eval:.4f}")

    accs = check_samples(w_path, classifier, args.check_per_class)
    log(f"SUMMARY wall {(time.time() - t_start) / 60:.1f} min | model {args.model} | diffusion steps {step} | "
        f"train loss {final_avg:.4f} | EMA eval loss {ema_eval:.4f} | "
        + " | ".join(f"cfg {c} acc {a:.3f}" for c, a in accs.items()))


if __name__ == "__main__":
    main()
