"""The ASAG nodes: thin glue from node inputs to asag_core settings and ModelPatcher options."""

from __future__ import annotations

import math

import comfy.samplers
from comfy_api.latest import io

from ..asag_core import (
    COSTS,
    DEFAULT_ITERATIONS,
    DEFAULT_LAM,
    DEFAULT_SCALE,
    GRAMMAR_HELP,
    RESCALE_MODES,
    ASAGSettings,
    apply_asag,
    resolve_layers,
)
from .attention_patch import ASAGPlan, adversarial_call, adversarial_prediction, copy_plan
from .model_layers import family_name, layer_catalog
from .shared_prefix import with_shared_prefix

CATEGORY = "model_patches/asag"

SCALE_TOOLTIP = (
    "ASAG strength s in x + s·(x_cond − x_adversarial), added after CFG. "
    "1.5 is the paper's best; 0 turns ASAG off (no extra model pass)."
)


def make_plan(model, settings: ASAGSettings) -> ASAGPlan:
    """Resolve the layer spec against this model now, so a bad spec fails on the node, and the
    percent window into this model's sigmas, as ComfyUI's own percent inputs do."""
    catalog = layer_catalog(model)
    model_sampling = model.get_model_object("model_sampling")
    # percent 0 is "from the first step" whatever the schedule's top sigma (a flow model maps it to 1.0)
    sigma_start = math.inf if settings.start_percent <= 0.0 else model_sampling.percent_to_sigma(settings.start_percent)
    sigma_end = model_sampling.percent_to_sigma(settings.end_percent)
    return ASAGPlan(settings, tuple(resolve_layers(settings.layers, catalog)), family_name(model),
                    sigma_start=float(sigma_start), sigma_end=float(sigma_end))


def _post_cfg_function(plan: ASAGPlan):
    def asag_post_cfg(args):
        cfg_result = args["denoised"]
        cond = args["cond"]
        sigma = args["sigma"]
        if cond is None or not plan.active_at(float(sigma.max())):
            return cfg_result
        adversarial = adversarial_prediction(
            args["model"], cond, args["input"], sigma, args["model_options"], plan
        )
        return apply_asag(cfg_result, args["cond_denoised"], adversarial, plan.settings)

    # ASAGGuider finds the plan here, and removes this function so ASAG is not applied twice
    asag_post_cfg.asag_plan = plan
    return asag_post_cfg


def patch_model(model, settings: ASAGSettings):
    """A clone of ``model`` carrying ASAG; the input is never touched. Scale 0 returns a
    plain clone, so sampling equals the unpatched model exactly."""
    plan = make_plan(model, settings)
    patched = model.clone()
    if settings.scale == 0:
        return patched
    patched.set_model_sampler_post_cfg_function(_post_cfg_function(plan))
    return patched


def carried_plan(model_options):
    """The ASAG plan a model patched by ASAG/ASAGAdvanced carries (the last one), else None."""
    plans = [getattr(fn, "asag_plan", None) for fn in model_options.get("sampler_post_cfg_function", [])]
    plans = [p for p in plans if p is not None]
    return plans[-1] if plans else None


def without_asag_post_cfg(model_options):
    options = dict(model_options)
    options["sampler_post_cfg_function"] = [
        fn for fn in model_options.get("sampler_post_cfg_function", []) if not hasattr(fn, "asag_plan")
    ]
    return options


def _scale_input():
    return io.Float.Input("scale", default=DEFAULT_SCALE, min=0.0, max=100.0, step=0.05, round=0.01,
                          tooltip=SCALE_TOOLTIP)


class ASAG(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ASAG",
            display_name="Adversarial Sinkhorn Attention Guidance",
            category=CATEGORY,
            description=(
                "Adversarial Sinkhorn Attention Guidance (arXiv 2511.07499). Each step, one extra model pass "
                "replaces self-attention in the default layers with the entropic optimal-transport plan for the "
                "adversarial cost QKᵀ/√d; the sample is pushed away from that degraded prediction. "
                "Works with KSampler, KSamplerAdvanced, SamplerCustom and SamplerCustomAdvanced, at any CFG "
                "(also cfg 1 and distilled models such as Flux)."
            ),
            inputs=[
                io.Model.Input("model",
                               tooltip="The diffusion model to guide (SD1.x/2.x, SDXL, SD3.x, Flux, other DiTs)."),
                _scale_input(),
            ],
            outputs=[io.Model.Output(tooltip="The model with ASAG applied after CFG.")],
        )

    @classmethod
    def execute(cls, model, scale) -> io.NodeOutput:
        return io.NodeOutput(patch_model(model, ASAGSettings(scale=scale)))


class ASAGAdvanced(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ASAGAdvanced",
            display_name="Adversarial Sinkhorn Attention Guidance (Advanced)",
            category=CATEGORY,
            description=(
                "ASAG with every knob: Sinkhorn iterations, λ, the cost (adversarial, or the paper's "
                "similarity and uniform ablations), layers, the part of the schedule it guides (start/end percent) "
                "and CFG-rescale."
            ),
            inputs=[
                io.Model.Input("model", tooltip="The diffusion model to guide."),
                _scale_input(),
                io.Int.Input("iterations", default=DEFAULT_ITERATIONS, min=0, max=100,
                             tooltip="Sinkhorn iterations (row + column normalisation). The paper: 2 suffice; "
                                     "0 = a plain softmax of the adversarial logits."),
                io.Float.Input("lam", default=DEFAULT_LAM, min=0.0, max=100.0, step=0.05, round=0.01,
                               tooltip="λ, the inverse entropic regularisation: logits −λ·QKᵀ/√d. "
                                       "0 gives the uniform plan (all keys equal)."),
                io.Combo.Input("cost", options=list(COSTS), default="adversarial",
                               tooltip="adversarial: cost QKᵀ (ASAG). similarity: cost 1 − QKᵀ, the paper's "
                                       "control (near ordinary attention, little guidance). uniform: the λ→0 "
                                       "plan (the paper's ablation; loses diversity)."),
                io.String.Input("layers", default="auto", multiline=False,
                                tooltip="Self-attention layers to perturb. 'auto': U-Net middle block, DiT middle "
                                        f"block. {GRAMMAR_HELP}."),
                io.Float.Input("start_percent", default=0.0, min=0.0, max=1.0, step=0.001,
                               tooltip="Where in the sampling schedule ASAG starts: 0 = the first (noisiest) step, "
                                       "1 = the end. Converted to a noise level with the model's own schedule, "
                                       "as in ControlNet Apply Advanced and SkipLayerGuidance."),
                io.Float.Input("end_percent", default=1.0, min=0.0, max=1.0, step=0.001,
                               tooltip="Where in the sampling schedule ASAG stops: 1 = guide to the last step. "
                                       "Must not be below start_percent."),
                io.Float.Input("rescale", default=0.0, min=0.0, max=1.0, step=0.01,
                               tooltip="CFG-rescale of the ASAG term (Lin et al. 2023): 0 off, 1 keeps the "
                                       "conditional prediction's standard deviation. Helps against burn "
                                       "at high scale."),
                io.Combo.Input("rescale_mode", options=list(RESCALE_MODES), default="full",
                               tooltip="full: match the std of the whole guided result. partial: of "
                                       "cond + ASAG term only."),
            ],
            outputs=[io.Model.Output(tooltip="The model with ASAG applied after CFG.")],
        )

    @classmethod
    def execute(cls, model, scale, iterations, lam, cost, layers, start_percent, end_percent, rescale,
                rescale_mode) -> io.NodeOutput:
        settings = ASAGSettings(
            scale=scale, iterations=iterations, lam=lam, cost=cost, layers=layers, start_percent=start_percent,
            end_percent=end_percent, rescale=rescale, rescale_mode=rescale_mode,
        )
        return io.NodeOutput(patch_model(model, settings))


class ASAGCFGGuider(comfy.samplers.CFGGuider):
    """CFG + ASAG with cond, uncond and the adversarial branch in one batched model call."""

    #: compute the adversarial rows' prefix (everything before the first perturbed layer)
    #: once, shared with the conditional rows (see shared_prefix.py); False = plain batching
    share_prefix = True

    def __init__(self, model_patcher, plan: ASAGPlan):
        super().__init__(model_patcher)
        self.plan = plan

    def predict_noise(self, x, timestep, model_options={}, seed=None):
        options = without_asag_post_cfg(model_options)
        positive = self.conds.get("positive")
        negative = self.conds.get("negative")
        settings = self.plan.settings
        if positive is None or not self.plan.active_at(float(timestep.max())):
            return comfy.samplers.sampling_function(
                self.inner_model, x, timestep, negative, positive, self.cfg, model_options=options, seed=seed
            )
        skip_uncond = abs(self.cfg - 1.0) < 1e-9 and not options.get("disable_cfg1_optimization", False)
        uncond = None if skip_uncond else negative
        with adversarial_call(self.inner_model, options, self.plan, slots=(2,)) as adv_options:
            if self.share_prefix:
                adv_options = with_shared_prefix(adv_options, self.plan, adversarial_slots=(2,), cond_slot=0)
            cond_pred, uncond_pred, adv_pred = comfy.samplers.calc_cond_batch(
                self.inner_model, [positive, uncond, positive], x, timestep, adv_options
            )
        out = [cond_pred, uncond_pred]
        for fn in options.get("sampler_pre_cfg_function", []):
            out = fn({"conds": [positive, uncond], "conds_out": out, "cond_scale": self.cfg, "timestep": timestep,
                      "input": x, "sigma": timestep, "model": self.inner_model, "model_options": options})
        cfg_result = comfy.samplers.cfg_function(
            self.inner_model, out[0], out[1], self.cfg, x, timestep, model_options=options, cond=positive, uncond=uncond
        )
        return apply_asag(cfg_result, cond_pred, adv_pred, settings)


class ASAGGuider(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ASAGGuider",
            display_name="ASAG Guider (CFG + ASAG)",
            category="sampling/custom_sampling/guiders",
            description=(
                "A GUIDER for SamplerCustomAdvanced: x = x_u + cfg·(x_c − x_u) + scale·(x_c − x_adv), with cond, "
                "uncond and the adversarial branch in one batched model call. Layer and Sinkhorn settings come "
                "from an ASAGAdvanced-patched model if there is one (its own ASAG term is then not applied again), "
                "else the defaults."
            ),
            inputs=[
                io.Model.Input("model", tooltip="The model; may already be patched by ASAG or ASAGAdvanced."),
                io.Conditioning.Input("positive",
                                      tooltip="The prompt conditioning (also drives the adversarial branch)."),
                io.Conditioning.Input("negative", tooltip="The negative / unconditional conditioning."),
                io.Float.Input("cfg", default=8.0, min=0.0, max=100.0, step=0.1, round=0.01,
                               tooltip="Classifier-free guidance scale. 1 skips the uncond pass, as CFGGuider does."),
                _scale_input(),
            ],
            outputs=[io.Guider.Output(tooltip="Connect to SamplerCustomAdvanced's guider input.")],
        )

    @classmethod
    def execute(cls, model, positive, negative, cfg, scale) -> io.NodeOutput:
        plan = carried_plan(model.model_options)
        if plan is None:
            plan = make_plan(model, ASAGSettings(scale=scale))
        else:
            plan = copy_plan(plan, scale=scale)
        guider = ASAGCFGGuider(model, plan)
        guider.set_conds(positive, negative)
        guider.set_cfg(cfg)
        return io.NodeOutput(guider)


NODES = [ASAG, ASAGAdvanced, ASAGGuider]
