"""The speed benchmark's models, conditioning and guided variants (see ``benchmarks/speed.py``).

``sdxl``: ComfyUI's UNetModel with SDXL's block structure at model_channels 32; ``flux``: ComfyUI's
Flux with 10 double + 20 single blocks at hidden 128. Random weights (``measure.patcher``).
"""

from __future__ import annotations

import torch

from .measure import _tests_on_path, hold_batch_slot, patcher, sample_timed, with_extra_row

VARIANTS = ("cfg", "pag", "asag", "node_separate", "guider", "guider_unshared")
SCALING_VARIANTS = ("cfg", "pag", "asag", "node_separate")

SDXL_SHAPE = {
    "model_channels": 32,
    "num_head_channels": 16,
    "channel_mult": [1, 2, 4],
    "num_res_blocks": [2, 2, 2],
    "transformer_depth": [0, 0, 2, 2, 10, 10],
    "transformer_depth_middle": 10,
    "transformer_depth_output": [0, 0, 0, 2, 2, 2, 10, 10, 10],
    "context_dim": 2048,
    "adm_in_channels": 2816,
}
FLUX_SHAPE = {"hidden_size": 128, "num_heads": 2, "depth": 10, "depth_single_blocks": 20, "axes_dim": [8, 28, 28],
              "context_in_dim": 4096, "vec_in_dim": 768, "mlp_ratio": 4.0}


def sdxl_shaped(**overrides):
    import comfy.supported_models

    cfg = {
        "use_checkpoint": False, "image_size": 32, "in_channels": 4, "out_channels": 4,
        "use_spatial_transformer": True, "legacy": False, "use_linear_in_transformer": True,
        "num_heads": -1, "num_classes": "sequential", "use_temporal_attention": False,
        "use_temporal_resblock": False, **SDXL_SHAPE, **overrides,
    }
    config = comfy.supported_models.SDXL(cfg)
    # SDXL's model config pins 64 channels per head (unet_extra_config); keep the width asked for
    config.unet_config["num_head_channels"] = cfg["num_head_channels"]
    return patcher(config)


def flux_shaped():
    """FLUX_SHAPE as a tiny Flux checkpoint through ComfyUI's detection (each host's own Flux config)."""
    _tests_on_path()
    import tiny_checkpoints as tc

    shape = FLUX_SHAPE
    hand = tc.Hand("speed model: 2 heads of 64 (detection fixes 128 per head)",
                   overrides={k: shape[k] for k in ("axes_dim", "num_heads", "hidden_size", "context_in_dim")})
    seed = tc.flux_seed(hidden=shape["hidden_size"], depth=shape["depth"], single=shape["depth_single_blocks"],
                        context=shape["context_in_dim"], pooled=shape["vec_in_dim"], mlp_ratio=shape["mlp_ratio"],
                        head_dim=shape["hidden_size"] // shape["num_heads"])
    return tc.load_tiny(tc.seed_tensors(seed), hand=hand)


MODELS = {
    # family: (builder, latent channels, default latent size, cfg, context tokens)
    "sdxl": (sdxl_shaped, 4, 40, 5.0, 77),
    "flux": (flux_shaped, 16, 32, 1.0, 64),
}


def cfg_rows(family):
    """Rows of CFG's batched call: cond + uncond, or cond alone at cfg 1 (ComfyUI skips uncond)."""
    return 1 if MODELS[family][3] == 1.0 else 2


def conditioning(family, size, seed=0):
    g = torch.Generator().manual_seed(seed)
    tokens = MODELS[family][4]

    def one():
        px = size * 8
        if family == "sdxl":
            extra = {"pooled_output": torch.randn(1, 1280, generator=g), "width": px, "height": px, "crop_w": 0,
                     "crop_h": 0, "target_width": px, "target_height": px}
            context = torch.randn(1, tokens, 2048, generator=g)
        else:
            extra = {"pooled_output": torch.randn(1, 768, generator=g), "guidance": 3.5}
            context = torch.randn(1, tokens, 4096, generator=g)
        return [[context, extra]]

    return one(), one()


def make_guider(host, variant, model, positive, negative, cfg):
    from comfy_extras import nodes_custom_sampler as ncs
    from comfy_extras.nodes_pag import PerturbedAttentionGuidance

    if variant in ("guider", "guider_unshared"):
        guider = host.node("ASAGGuider").execute(model, positive, negative, cfg, 1.5).result[0]
        guider.step.share_prefix = variant == "guider"
        return guider
    if variant == "pag":
        model = PerturbedAttentionGuidance.execute(model, 3.0).result[0]
    elif variant in ("asag", "node_separate"):
        if variant == "node_separate":
            model = hold_batch_slot(model)
        model = host.node("ASAG").execute(model, 1.5).result[0]
    elif variant == "cfg_extra_row":
        model = with_extra_row(model)
    (guider,) = ncs.CFGGuider().get_guider(model, positive, negative, cfg)
    return guider


def run(guider, model, family, size, steps, seed=0):
    """Sample ``steps`` Euler steps with SamplerCustomAdvanced; returns ([(CPU s, wall s) per step], output)."""
    return sample_timed(guider, model, torch.zeros(1, MODELS[family][1], size, size), steps, seed)
