r"""How the adversarial prediction enters the sampler.

With :math:`\hat x_c`, :math:`\hat x_u` the conditional and unconditional
predictions, :math:`\hat x_{adv}` the conditional prediction with ASAG's plan in
the chosen self-attention layers, CFG scale :math:`w` and ASAG scale :math:`s`:

.. math::

    \hat x = \hat x_u + w(\hat x_c - \hat x_u) + s(\hat x_c - \hat x_{adv})

(ASAG, arXiv 2511.07499, eq. for :math:`\tilde\epsilon`; the same form as PAG).
ComfyUI's post-CFG hooks see denoised predictions; the combination is linear,
so it holds for :math:`\epsilon`, :math:`x_0` and velocity alike.

Optional CFG-rescale (Lin et al. 2023, "Common Diffusion Noise Schedules and
Sample Steps are Flawed", Alg. 2) shrinks the ASAG term so that the guided
result keeps the per-sample standard deviation of :math:`\hat x_c`:
``full`` measures the std of the whole guided result, ``partial`` of
:math:`\hat x_c + s(\hat x_c - \hat x_{adv})` only (the sd-perturbed-attention
convention).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .layers import parse_layer_spec
from .sinkhorn_checks import check_number, check_params

RESCALE_MODES = ("full", "partial")

DEFAULT_SCALE = 1.5  # the paper's best scale
DEFAULT_ITERATIONS = 2  # the paper: two Sinkhorn iterations suffice
DEFAULT_LAM = 1.0


@dataclass(frozen=True)
class ASAGSettings:
    """Everything ASAG needs besides the model. Validated on construction, so a
    node that builds one either gets a usable value or a ValueError naming the input."""

    scale: float = DEFAULT_SCALE
    iterations: int = DEFAULT_ITERATIONS
    lam: float = DEFAULT_LAM
    cost: str = "adversarial"
    layers: str = "auto"
    start_percent: float = 0.0
    end_percent: float = 1.0
    rescale: float = 0.0
    rescale_mode: str = "full"

    def __post_init__(self):
        check_number("scale", self.scale, minimum=0.0)
        check_params(self.iterations, self.lam, self.cost)  # the Sinkhorn's own check, its wording
        parse_layer_spec(self.layers)  # raises LayerSpecError (a ValueError) naming 'layers'
        check_number("start_percent", self.start_percent, minimum=0.0, maximum=1.0)
        check_number("end_percent", self.end_percent, minimum=0.0, maximum=1.0)
        if self.start_percent > self.end_percent:
            raise ValueError(
                f"start_percent ({self.start_percent}) must not exceed end_percent ({self.end_percent}); "
                "guidance runs from start_percent to end_percent of the schedule, 0 <= start <= end <= 1"
            )
        check_number("rescale", self.rescale, minimum=0.0, maximum=1.0)
        if self.rescale_mode not in RESCALE_MODES:
            raise ValueError(f"rescale_mode must be one of {', '.join(RESCALE_MODES)}; got {self.rescale_mode!r}")


def asag_term(cond: torch.Tensor, adversarial: torch.Tensor, scale: float) -> torch.Tensor:
    """The guidance term s(x_c - x_adv)."""
    return (cond - adversarial) * scale


def rescale_term(term, cond, guided_without_term, rescale: float, mode: str = "full"):
    """CFG-rescale of the ASAG term (Lin et al. 2023, Alg. 2), per sample.

    ``guided_without_term`` is what the term is added to (the CFG result).
    rescale 0 returns the term unchanged; 1 matches the std of ``cond`` fully.
    """
    if rescale == 0.0:
        return term
    if mode not in RESCALE_MODES:
        raise ValueError(f"rescale_mode must be one of {', '.join(RESCALE_MODES)}; got {mode!r}")
    guided = guided_without_term + term if mode == "full" else cond + term
    dims = tuple(range(1, cond.ndim))
    std_cond = cond.std(dim=dims, keepdim=True)
    std_guided = guided.std(dim=dims, keepdim=True)
    factor = torch.where(std_guided > 0, std_cond / std_guided, torch.ones_like(std_guided))
    return term * (rescale * factor + (1.0 - rescale))


def apply_asag(cfg_result, cond, adversarial, settings: ASAGSettings):
    """cfg_result + (rescaled) s(x_c - x_adv)."""
    term = asag_term(cond, adversarial, settings.scale)
    term = rescale_term(term, cond, cfg_result, settings.rescale, settings.rescale_mode)
    return cfg_result + term
