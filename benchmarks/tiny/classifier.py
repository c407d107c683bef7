"""Digit data set and a small CNN digit classifier for the tiny-model benchmarks.

No ComfyUI import here, so the data and the classifier can be used on their own.

Data set
--------
``load_digit_images`` returns scikit-learn's copy of the UCI "Optical Recognition of
Handwritten Digits" test set (``sklearn.datasets.load_digits``: 1,797 grey 8x8 images,
pixel values 0..16, classes 0..9), which ships inside the scikit-learn package (no
download).  Preprocessing, exactly:

1. ``images / 16.0`` -> float32 in [0, 1], shape (N, 1, 8, 8);
2. ``torch.nn.functional.interpolate(x, size=(16, 16), mode="bilinear",
   align_corners=False)`` -> (N, 1, 16, 16), still in [0, 1] (bilinear is a convex
   combination), clamped to [0, 1] for safety.

The diffusion model works on ``2 * image - 1`` (in [-1, 1]); this classifier takes
images in [0, 1].

Classifier
----------
``DigitClassifier``: conv32-conv32-pool-conv64-conv64-pool-fc128-fc10 on 1x16x16
inputs in [0, 1].  ``features(images)`` returns the 128-d penultimate activations
(after ReLU), used for a Fréchet distance between sets of images; ``predict(images)``
returns class indices.  Trained by ``python -m benchmarks.tiny.train`` on a stratified
80 % split of the data (``split_indices``); the held-out 20 % gives its accuracy.
"""

from __future__ import annotations

import os

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

IMAGE_SIZE = 16
NUM_CLASSES = 10
FEATURE_DIM = 128
WEIGHTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "weights")
DEFAULT_CLASSIFIER_WEIGHTS = os.path.join(WEIGHTS_DIR, "digits_classifier.safetensors")


def load_digit_images(size: int = IMAGE_SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    """All 1,797 sklearn digits as ``(images, labels)``.

    images: float32 (N, 1, size, size) in [0, 1], upsampled from 8x8 with bilinear
    interpolation (align_corners=False); labels: int64 (N,) in 0..9.
    """
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.from_numpy(d.images.astype(np.float32) / 16.0).unsqueeze(1)
    if size != 8:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    x = x.clamp(0.0, 1.0).contiguous()
    y = torch.from_numpy(d.target.astype(np.int64))
    return x, y


def split_indices(labels: torch.Tensor, test_fraction: float = 0.2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic stratified train/test split: ``(train_idx, test_idx)``."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(labels))
    tr, te = train_test_split(idx, test_size=test_fraction, random_state=seed, stratify=np.asarray(labels))
    return np.sort(tr), np.sort(te)


class DigitClassifier(nn.Module):
    """Small CNN on (N, 1, 16, 16) images in [0, 1]."""

    def __init__(self, feature_dim: int = FEATURE_DIM, num_classes: int = NUM_CLASSES):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),  # 8x8
            nn.Conv2d(32, 64, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(64, 64, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),  # 4x4
        )
        self.fc = nn.Linear(64 * 4 * 4, feature_dim)
        self.dropout = nn.Dropout(0.3)
        self.head = nn.Linear(feature_dim, num_classes)

    @staticmethod
    def _prepare(images: torch.Tensor) -> torch.Tensor:
        x = images
        if x.ndim == 3:
            x = x.unsqueeze(1)
        x = x.float()
        if x.shape[-2:] != (IMAGE_SIZE, IMAGE_SIZE):
            x = F.interpolate(x, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", align_corners=False)
        return x * 2.0 - 1.0

    def features(self, images: torch.Tensor) -> torch.Tensor:
        h = self.conv(self._prepare(images))
        return F.relu(self.fc(h.flatten(1)))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.features(images)))


class LoadedClassifier:
    """Inference wrapper: eval mode, no grad, batched."""

    def __init__(self, net: DigitClassifier, device: str | torch.device = "cpu"):
        self.net = net.eval().to(device)
        self.device = torch.device(device)

    @torch.no_grad()
    def _batched(self, fn, images: torch.Tensor, batch: int = 512) -> torch.Tensor:
        outs = [fn(images[i : i + batch].to(self.device)).cpu() for i in range(0, len(images), batch)]
        return torch.cat(outs) if outs else torch.empty(0)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """128-d penultimate features of images in [0, 1], (N, 1, H, W) or (N, H, W)."""
        return self._batched(self.net.features, images)

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        return self._batched(self.net, images)

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """Predicted class index (int64, (N,)) of images in [0, 1]."""
        return self.logits(images).argmax(dim=1)


def load_classifier(path: str = DEFAULT_CLASSIFIER_WEIGHTS, device: str | torch.device = "cpu") -> LoadedClassifier:
    from safetensors.torch import load_file

    net = DigitClassifier()
    net.load_state_dict(load_file(path))
    return LoadedClassifier(net, device)


def features(images: torch.Tensor, classifier: LoadedClassifier | None = None) -> torch.Tensor:
    """Penultimate features with the default (shipped) classifier."""
    return (classifier or _default()).features(images)


def predict(images: torch.Tensor, classifier: LoadedClassifier | None = None) -> torch.Tensor:
    """Predicted classes with the default (shipped) classifier."""
    return (classifier or _default()).predict(images)


_DEFAULT: LoadedClassifier | None = None


def _default() -> LoadedClassifier:
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = load_classifier()
    return _DEFAULT
