"""Where the quality benchmark's images and features come from.

``TinyBackend``: a committed tiny digits model (``benchmarks.tiny``), features from the
committed digit classifier.  ``CheckpointBackend``: a real checkpoint through ComfyUI's
own nodes (CLIPTextEncode, EmptyLatentImage, KSampler, the checkpoint's VAE), features
from a network the user provides (never downloaded).  Both offer the same interface:
``sample(model, regime, cfg, seed)``, ``features``, ``pixels``, ``accuracy``,
``labels_for``, ``real_feat`` and the Gaussian statistics of the real set.
"""

from __future__ import annotations

import os

import numpy as np
import torch

from .tiny import metrics


class TinyBackend:
    """A committed digits model; regimes: ``unconditional`` = the null class at cfg 1,
    ``conditional`` = balanced labels (n/10 per digit)."""

    kind = "tiny"

    def __init__(self, host, n: int, steps: int, model: str = "main"):
        from .tiny.classifier import load_classifier, load_digit_images
        from .tiny.model import MODELS, load_tiny_model

        self.host = host
        self.name = model
        self.tiny = load_tiny_model(MODELS[model][1])
        self.model = self.tiny.model_patcher
        self.classifier = load_classifier()
        self.n, self.steps = n, steps
        self.labels = [i % 10 for i in range(n)]
        real, _ = load_digit_images()
        self.real_feat = self.classifier.features(real)
        self.feat_stats = metrics.gaussian_stats(self.real_feat)
        self.pix_stats = metrics.gaussian_stats(real.flatten(1))
        self.feature_name = "classifier-feature FD (128-d, digit CNN)"
        self.pixel_name = "pixel FD (16x16)"

    def sample(self, model, regime: str, cfg: float, seed: int) -> torch.Tensor:
        digits = None if regime == "unconditional" else self.labels
        return self.tiny.sample(digits, batch=self.n, seed=seed, cfg=cfg, steps=self.steps, model_patcher=model)

    def features(self, images):
        return self.classifier.features(images)

    def pixels(self, images):
        return images.flatten(1)

    def accuracy(self, regime, images):
        if regime != "conditional":
            return None
        return (self.classifier.predict(images) == torch.tensor(self.labels)).double().mean().item()

    def labels_for(self, regime: str, images) -> list:
        """Classes for within-class diversity: the asked digit, or (unconditional) the classifier's call."""
        return self.labels if regime == "conditional" else self.classifier.predict(images).tolist()


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
    name = "checkpoint"
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
        self.empty = enc.encode(self.clip, "")[0]  # the unconditional regime's prompt
        device = comfy.model_management.get_torch_device()
        self.feature_net = FeatureNet(args.feature_weights, device) if args.feature_weights else None
        self.feature_size = 299 if self.feature_net else self.PIXEL_SIZE
        self.feature_name = self.feature_net.name if self.feature_net else (
            f"pixel FD ({self.PIXEL_SIZE}x{self.PIXEL_SIZE} RGB; no --feature-weights, NOT FID)")
        self.pixel_name = f"pixel FD ({self.PIXEL_SIZE}x{self.PIXEL_SIZE} RGB)"
        ref = _load_image_folder(args.reference_dir, self.feature_size, args.reference_limit)
        self.real_feat = self.features(ref)
        self.feat_stats = metrics.gaussian_stats(self.real_feat)
        self.pix_stats = metrics.gaussian_stats(self.pixels(ref))
        self.sampler, self.scheduler = args.sampler, args.scheduler

    def sample(self, model, regime: str, cfg: float, seed: int) -> torch.Tensor:
        """One image per prompt (conditional) or as many with the empty prompt (unconditional)."""
        latent_node, ks = self.host.nodes.EmptyLatentImage(), self.host.nodes.KSampler()
        positives = self.positive if regime == "conditional" else [self.empty] * len(self.positive)
        images = []
        for i, pos in enumerate(positives):
            (latent,) = latent_node.generate(self.size, self.size, 1)
            (out,) = ks.sample(model, seed * 1_000_003 + i, self.steps, cfg, self.sampler, self.scheduler, pos,
                               self.negative, latent)
            img = self.vae.decode(out["samples"])  # (1, H, W, 3) in [0, 1]
            img = img.reshape(-1, *img.shape[-3:])[:1].permute(0, 3, 1, 2).float().cpu()
            images.append(_center_resize(img[0], self.feature_size))
        return torch.stack(images)

    def labels_for(self, regime: str, images) -> list:
        """Classes for within-class diversity: the prompt (conditional), one class (unconditional)."""
        return self.labels if regime == "conditional" else [0] * len(images)

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

    def accuracy(self, regime, images):
        return None


