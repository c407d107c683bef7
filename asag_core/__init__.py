"""Pure math of Adversarial Sinkhorn Attention Guidance (arXiv 2511.07499).

No ComfyUI import here: the node glue in ``nodes/`` turns node inputs into calls
of this package and ModelPatcher options.
"""

from .guidance import (
    DEFAULT_ITERATIONS,
    DEFAULT_LAM,
    DEFAULT_SCALE,
    RESCALE_MODES,
    ASAGSettings,
    apply_asag,
    asag_term,
    rescale_term,
)
from .layers import (
    GRAMMAR_HELP,
    DiTLayer,
    LayerCatalog,
    LayerSpecError,
    UNetLayer,
    parse_layer_spec,
    resolve_layers,
)
from .sinkhorn import (
    COSTS,
    DEFAULT_MEMORY_BUDGET_BYTES,
    MASK_THRESHOLD,
    adversarial_attention,
    attention_path,
    logit_sign,
    sinkhorn_plan,
)

__all__ = [
    "COSTS",
    "DEFAULT_ITERATIONS",
    "DEFAULT_LAM",
    "DEFAULT_MEMORY_BUDGET_BYTES",
    "DEFAULT_SCALE",
    "GRAMMAR_HELP",
    "RESCALE_MODES",
    "ASAGSettings",
    "DiTLayer",
    "LayerCatalog",
    "LayerSpecError",
    "MASK_THRESHOLD",
    "UNetLayer",
    "adversarial_attention",
    "attention_path",
    "apply_asag",
    "asag_term",
    "logit_sign",
    "parse_layer_spec",
    "rescale_term",
    "resolve_layers",
    "sinkhorn_plan",
]
