"""Sample-quality metrics for the benchmarks (no ComfyUI import, no downloads).

All functions take plain tensors / arrays:

- :func:`frechet_distance` -- Fréchet distance between Gaussians fitted to two feature
  sets (the formula of FID, Heusel et al. 2017); with Inception-v3 pool features it *is*
  FID, with the digit classifier's 128-d features it is "classifier-feature FD", with raw
  pixels "pixel FD".
- :func:`precision_recall` -- improved precision and recall (Kynkäänniemi et al. 2019):
  k-NN balls around each real / generated feature vector approximate the two manifolds;
  precision = fraction of generated samples inside the real manifold, recall = fraction
  of real samples inside the generated manifold.
- :func:`within_class_diversity` -- mean pairwise Euclidean feature distance between
  samples of the same class, averaged over classes.
"""

from __future__ import annotations

import numpy as np
import torch


def _np(x) -> np.ndarray:
    if torch.is_tensor(x):
        x = x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64)


LOW_RANK_DIM = 1024  # above this feature width, never form D x D covariances


def gaussian_stats(features):
    """(mean, covariance) of (N, D) features; for D > LOW_RANK_DIM (mean, centred data / sqrt(N-1))."""
    f = _np(features).reshape(len(features), -1)
    mu = f.mean(axis=0)
    if f.shape[1] > LOW_RANK_DIM:
        return mu, ("lowrank", (f - mu) / np.sqrt(max(len(f) - 1, 1)))
    return mu, np.cov(f, rowvar=False)


def frechet_distance(a, b=None, *, stats_b=None) -> float:
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)) of two feature sets (N, D).

    ``stats_b`` may be given instead of ``b`` (precomputed :func:`gaussian_stats`).
    Tr (S_a S_b)^(1/2) is the sum of square roots of the eigenvalues of the symmetric PSD
    matrix S_a^(1/2) S_b S_a^(1/2) (no complex parts, exact for singular covariances).  For
    wide features (D > LOW_RANK_DIM, e.g. raw pixels of large images) the same eigenvalues
    come from the N x N matrix (A B^T)(B A^T) with A, B the scaled centred data, so no
    D x D matrix is formed.
    """
    mu_a, s_a = gaussian_stats(a)
    mu_b, s_b = stats_b if stats_b is not None else gaussian_stats(b)
    diff = mu_a - mu_b
    if isinstance(s_a, tuple) or isinstance(s_b, tuple):
        A = s_a[1] if isinstance(s_a, tuple) else None
        B = s_b[1] if isinstance(s_b, tuple) else None
        if A is None or B is None:
            raise ValueError("both feature sets must be wide (D > LOW_RANK_DIM) or both narrow")
        m = (A @ B.T) @ (B @ A.T)
        tr_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)).sum()
        return float(diff @ diff + (A * A).sum() + (B * B).sum() - 2.0 * tr_sqrt)
    w, v = np.linalg.eigh(s_a)
    root_a = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    m = root_a @ s_b @ root_a
    tr_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)).sum()
    return float(diff @ diff + np.trace(s_a) + np.trace(s_b) - 2.0 * tr_sqrt)


def _kth_nn_radius(x: torch.Tensor, k: int) -> torch.Tensor:
    d = torch.cdist(x, x)
    # k+1-th smallest (the 0-th is the point itself)
    return d.kthvalue(min(k + 1, len(x)), dim=1).values


def precision_recall(real, fake, k: int = 5, subsets: int = 5, seed: int = 0) -> tuple[float, float]:
    """Improved precision / recall (Kynkäänniemi et al. 2019) with k-NN manifolds.

    Both manifolds are built from sets of equal size (as in the paper): when there are
    more real than generated vectors, the real set is subsampled to ``len(fake)``
    (``subsets`` seeded random draws, results averaged); otherwise the generated
    manifold's k-NN radii would be much larger and recall would saturate at 1.
    """
    real = torch.as_tensor(_np(real)).reshape(len(real), -1)
    fake = torch.as_tensor(_np(fake)).reshape(len(fake), -1)
    g = torch.Generator().manual_seed(seed)
    draws = [real] if len(real) <= len(fake) else [real[torch.randperm(len(real), generator=g)[: len(fake)]]
                                                   for _ in range(subsets)]
    r_fake = _kth_nn_radius(fake, k)
    ps, rs = [], []
    for r in draws:
        r_real = _kth_nn_radius(r, k)
        d = torch.cdist(fake, r)  # (F, R)
        ps.append((d <= r_real.unsqueeze(0)).any(dim=1).double().mean().item())
        rs.append((d.T <= r_fake.unsqueeze(0)).any(dim=1).double().mean().item())
    return float(np.mean(ps)), float(np.mean(rs))


def within_class_diversity(features, labels) -> float:
    """Mean pairwise Euclidean distance between same-class feature vectors, averaged over classes."""
    f = torch.as_tensor(_np(features)).reshape(len(features), -1)
    labels = torch.as_tensor(np.asarray(labels))
    vals = []
    for c in labels.unique():
        x = f[labels == c]
        n = len(x)
        if n < 2:
            continue
        d = torch.cdist(x, x)
        vals.append((d.sum() / (n * (n - 1))).item())
    return float(np.mean(vals)) if vals else float("nan")


def total_variation(images) -> float:
    """Mean absolute difference of neighbouring pixels (both directions), averaged over images.

    Salt-and-pepper noise left in a sample raises it; smooth strokes keep it low."""
    x = torch.as_tensor(images).double()
    tv = (x[..., 1:, :] - x[..., :-1, :]).abs().mean(dim=(-1, -2)) + (x[..., :, 1:] - x[..., :, :-1]).abs().mean(
        dim=(-1, -2))
    return float(tv.mean())


def mean_std(values) -> tuple[float, float]:
    v = np.asarray(list(values), dtype=np.float64)
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0
