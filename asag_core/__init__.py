"""Pure math of Adversarial Sinkhorn Attention Guidance (arXiv 2511.07499).

No ComfyUI import here: the node glue in ``nodes/`` turns node inputs into calls
of this package and ModelPatcher options.
"""

from .sinkhorn import COSTS, DEFAULT_MEMORY_BUDGET_BYTES, adversarial_attention, logit_sign, sinkhorn_plan

__all__ = [
    "COSTS",
    "DEFAULT_MEMORY_BUDGET_BYTES",
    "adversarial_attention",
    "logit_sign",
    "sinkhorn_plan",
]
