"""The ASAG nodes: thin glue from node inputs to asag_core settings and ModelPatcher options."""

from __future__ import annotations

from ..asag_core import (
    COSTS,
    DEFAULT_ITERATIONS,
    DEFAULT_LAM,
    DEFAULT_SCALE,
    GRAMMAR_HELP,
    RESCALE_MODES,
    ASAGSettings,
)
from . import comfy_bridge as bridge
from . import comfy_contract as contract
from .comfy_bridge import io
from .guidance_step import ASAGStep, add_run_lock, carried_plan, install, run_lock
from .plan import ASAGPlan, copy_plan, make_plan
from .unreachable_attention import reach_attention

CATEGORY = "model_patches/asag"

SCALE_TOOLTIP = (
    "ASAG strength s in x + s·(x_cond − x_adversarial), added after CFG. "
    "1.5 is the paper's best; 0 turns ASAG off (no extra work at all)."
)


def patch_model(model, settings: ASAGSettings):
    """A clone of ``model`` carrying ASAG; the input is never touched. Scale 0 returns a
    plain clone, so sampling equals the unpatched model exactly.

    The post-CFG function adds the term; the batched call (fast path) is claimed only if no
    other node holds ``sampler_calc_cond_batch_function`` (else the separate pass runs)."""
    step = ASAGStep(make_plan(model, settings))
    patched = model.clone()
    if settings.scale == 0:
        return patched
    bridge.set_post_cfg_function(patched, step.post_cfg_function)
    if contract.CALC_COND_BATCH not in patched.model_options:
        bridge.set_calc_cond_batch_function(patched, step.calc_cond_batch_function)
    reach_attention(patched, step.plan.layers)
    add_run_lock(patched)
    return patched


def _scale_input():
    return io.Float.Input("scale", default=DEFAULT_SCALE, min=0.0, max=100.0, step=0.05, round=0.01,
                          tooltip=SCALE_TOOLTIP)


class ASAG(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ASAG",
            display_name="ASAG Sinkhorn Guidance",
            category=CATEGORY,
            description=(
                "Adversarial Sinkhorn Attention Guidance (arXiv 2511.07499). Each step, an adversarial copy of the "
                "prompt's prediction (one more batch row in CFG's model call) replaces self-attention in the "
                "default layers with the entropic optimal-transport plan for the adversarial cost QKᵀ/√d; the "
                "sample is pushed away from that degraded prediction. "
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
            display_name="ASAG Sinkhorn (Advanced)",
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


class ASAGCFGGuider(bridge.CFGGuider):
    """CFGGuider with ASAG: ComfyUI's own sampling_function, with the ASAG step's functions in
    the model_options (cond, uncond and the adversarial rows in one batched call when the slot
    is free). Other nodes' pre-CFG, post-CFG and batch functions run as under CFGGuider."""

    def __init__(self, model_patcher, plan: ASAGPlan):
        super().__init__(model_patcher)
        self.step = ASAGStep(plan)

    @property
    def plan(self) -> ASAGPlan:
        return self.step.plan

    def outer_sample(self, *args, **kwargs):
        with run_lock(self.model_patcher.model):  # one sampling of a model at a time (guidance_step.py)
            return super().outer_sample(*args, **kwargs)

    def predict_noise(self, x, timestep, model_options={}, seed=None):
        return bridge.sampling_function(
            self.inner_model, x, timestep, self.conds.get("negative"), self.conds.get("positive"), self.cfg,
            install(model_options, self.step), seed,
        )


class ASAGGuider(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ASAGGuider",
            display_name="ASAG Guider (CFG + ASAG)",
            category="sampling/custom_sampling/guiders",
            description=(
                "A GUIDER for SamplerCustomAdvanced: CFGGuider with ASAG, x = x_u + cfg·(x_c − x_u) + "
                "scale·(x_c − x_adv), with cond, uncond and the adversarial branch in one batched model call "
                "(a separate pass if another node holds the batch slot). Layer and Sinkhorn settings come from an "
                "ASAG/ASAGAdvanced-patched model if there is one (its ASAG term is then replaced, not applied "
                "twice), else the defaults."
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
            model = model.clone()  # a model of its own for the attention ComfyUI calls without transformer_options
            reach_attention(model, plan.layers)
        else:
            plan = copy_plan(plan, scale=scale)
        guider = ASAGCFGGuider(model, plan)
        guider.set_conds(positive, negative)
        guider.set_cfg(cfg)
        return io.NodeOutput(guider)


NODES = [ASAG, ASAGAdvanced, ASAGGuider]
