r"""The Sinkhorn iteration of the ASAG plan, written once, over a small backend interface.

The plan of :mod:`asag_core.sinkhorn` is fixed by its column potentials :math:`g`: starting at
:math:`g = 0`, every iteration is a row update then a column update,

.. math::

    f_i &= -\operatorname{logsumexp}_j (L_{ij} + g_j) \\
    g_j &= -\operatorname{logsumexp}_i (L_{ij} + f_i) + \log(N_q / N_k),

and the attention output is :math:`\operatorname{softmax}_j(L_{ij} + g_j)\,V`. Only the two
log-sum-exps and the output touch the :math:`N_q \times N_k` logits, so that is all a backend
provides (the potentials are the interface, as in POT's ``ot.bregman`` solvers; Peyré & Cuturi
2019, §4.4):

``row_lse(g)``
    :math:`\operatorname{logsumexp}_j (L_{ij} + g_j)` for every row (``g`` None means 0);
``column_lse(f)``
    :math:`\operatorname{logsumexp}_i (L_{ij} + f_i)` for every column;
``output(g)``
    :math:`\operatorname{softmax}_j(L_{ij} + g_j)\,V`.

The shapes of ``f`` and ``g`` are the backend's own (a row and a column axis of its heads); this
module never looks inside them. :func:`column_potentials` runs the iteration; a backend may replace
one whole iteration (``step``) by an equivalent computation that is cheaper on its hardware, as the
blocked CPU backend does (one row softmax per block gives both updates,
:mod:`asag_core.sinkhorn_blocked`); its fallback then uses the half-steps below.

Empty lines, once for every backend. A row (column) whose pairs are all masked has no admissible
plan mass. Its log-sum-exp is :math:`-\infty` where the backend computes it exactly, or whatever
finite value a fused kernel returns for it (PyTorch's CPU flash kernel returns 0); :func:`line_potential` sets
its potential to 0: every pair of that line is :math:`-\infty` in both updates and in the output,
so any finite value gives the same plan, and 0 is the definition's choice. A backend whose
log-sum-exp of an empty line is not exactly :math:`-\infty` says which lines are admissible
(``row_ok``, ``col_ok``, bool, shaped like ``f`` and ``g``); None means the log-sum-exp already says
it. NaN is never replaced: it reaches the output, as in attention.

:class:`DenseBackend` is the reference: the whole logits in one tensor, each half-step one
``torch.logsumexp``; :func:`asag_core.sinkhorn.sinkhorn_plan` is its plan. The other backends are
held to it by the tests.

References: M. Cuturi, "Sinkhorn Distances", NeurIPS 2013; G. Peyré, M. Cuturi, "Computational
Optimal Transport", 2019, §4.4 (log-domain Sinkhorn); POT, ``ot.bregman.sinkhorn_log``.
"""

from __future__ import annotations

import torch

from .sinkhorn_common import log_ratio, zero_masked_rows


def line_potential(minus_lse: torch.Tensor, ok=None) -> torch.Tensor:
    """The potential of each line from its negated log-sum-exp: 0 for a line without an admissible pair
    (``+inf``, or ``ok`` False there), NaN kept."""
    potential = minus_lse.masked_fill(minus_lse == float("inf"), 0.0)
    return potential if ok is None else torch.where(ok, potential, torch.zeros((), dtype=potential.dtype,
                                                                               device=potential.device))


class Backend:
    """What the iteration needs of the logits: the two log-sum-exps and the output (module docstring).

    Subclasses set ``ratio`` (:math:`\\log(N_q/N_k)`) and, where their log-sum-exp of an empty line is
    not exactly -inf, ``row_ok`` / ``col_ok``."""

    ratio = 0.0
    row_ok = None
    col_ok = None

    def row_lse(self, g):
        raise NotImplementedError

    def column_lse(self, f):
        raise NotImplementedError

    def output(self, g):
        raise NotImplementedError

    def step(self, g):
        """One Sinkhorn iteration: the new column potentials from ``g`` (None for 0)."""
        return column_potential(self, row_potential(self, g))


def row_potential(backend: Backend, g):
    """The row update :math:`f = -\\operatorname{logsumexp}_j(L + g)`, empty rows 0."""
    return line_potential(backend.row_lse(g).neg(), backend.row_ok)


def column_potential(backend: Backend, f):
    """The column update :math:`g = -\\operatorname{logsumexp}_i(L + f) + \\log(N_q/N_k)`, empty columns 0."""
    return line_potential(backend.column_lse(f).neg().add(backend.ratio), backend.col_ok)


def column_potentials(backend: Backend, iterations: int):
    """The column potentials after ``iterations`` Sinkhorn iterations from g = 0; None for 0 iterations."""
    g = None
    for _ in range(iterations):
        g = backend.step(g)
    return g


def solve(backend: Backend, iterations: int):
    """The attention output of the plan after ``iterations`` iterations."""
    return backend.output(column_potentials(backend, iterations))


class DenseBackend(Backend):
    """The reference: ``logits`` (B, H, Nq, Nk) held whole (masked pairs -inf); f (B, H, Nq, 1), g (B, H, 1, Nk).

    Its log-sum-exps are exact, -inf on empty lines, so it needs no ``row_ok`` / ``col_ok``; ``rows_ok``
    (the rows with an admissible key, or None) only zeroes the plan's empty rows, whose softmax is NaN."""

    def __init__(self, logits, v=None, rows_ok=None):
        self.logits, self.v, self.rows_ok = logits, v, rows_ok
        self.ratio = log_ratio(logits.shape[-2], logits.shape[-1])

    def row_lse(self, g):
        return torch.logsumexp(self.logits if g is None else self.logits + g, dim=-1, keepdim=True)

    def column_lse(self, f):
        return torch.logsumexp(self.logits + f, dim=-2, keepdim=True)

    def plan(self, g):
        """:math:`\\operatorname{softmax}_j(L_{ij} + g_j)`, rows without an admissible key 0."""
        plan = torch.softmax(self.logits if g is None else self.logits + g, dim=-1)
        return zero_masked_rows(plan, self.rows_ok)

    def output(self, g):
        return torch.matmul(self.plan(g), self.v)
