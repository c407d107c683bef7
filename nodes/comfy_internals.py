"""Every ComfyUI internal the pack touches, in one place.

Nothing else in ``nodes/`` imports ComfyUI (``tests/test_comfy_internals.py`` checks it).
Each entry says what it relies on and which ComfyUI versions were read for it: **0.3.64**
(the host the tests run in) and the newest stored files of the **0.38 era** (comfy/samplers.py
311c014, comfy/model_base.py 094c74c1, comfy/model_patcher.py 08d0e51,
comfy/ldm/modules/attention.py 05080f60; see README "Supported ComfyUI versions").
What changed between the two, and how the pack copes, is written beside the entry.
"""

from __future__ import annotations

import inspect

import comfy.patcher_extension
import comfy.samplers
from comfy.ldm.modules import attention as _attention
from comfy_api.latest import ComfyExtension, io  # the V3 node API (public): schemas and the extension

__all__ = ["ComfyExtension", "io"]

# ---------------------------------------------------------------------------------------------
# model_options keys (ModelPatcher.model_options; same in 0.3.64 and 0.38)
# ---------------------------------------------------------------------------------------------

#: sampling_function hands the step's conds to this function instead of calc_cond_batch (one per model)
CALC_COND_BATCH = "sampler_calc_cond_batch_function"
#: cfg_function runs these after CFG, in order, with the args listed in POST_CFG_ARGS
POST_CFG = "sampler_post_cfg_function"
#: calc_cond_batch calls it instead of apply_model: fn(apply_model, {"input", "timestep", "c", "cond_or_uncond"})
MODEL_FUNCTION_WRAPPER = "model_function_wrapper"
TRANSFORMER_OPTIONS = "transformer_options"
#: set by ComfyUI's TorchCompileModel (comfy_api.torch_helpers.torch_compile.TORCH_COMPILE_KWARGS)
TORCH_COMPILE_KWARGS = "torch_compile_kwargs"

# ---------------------------------------------------------------------------------------------
# transformer_options keys. calc_cond_batch builds one dict per model call from
# model_options["transformer_options"] (0.3.64 and 0.38: merge_nested_dicts, shallow). 0.38's
# BaseModel._apply_model hands the diffusion model a shallow .copy() of it, so the pack never
# mutates a dict after handing it on: it passes dicts of its own down instead.
# ---------------------------------------------------------------------------------------------

#: per chunk of the batch, the index of its cond in the calc_cond_batch call
COND_OR_UNCOND = "cond_or_uncond"
#: per chunk, the uuid of its cond entry
UUIDS = "uuids"
#: the sampling run's sigma schedule (one tensor object per run; 0.38 multi-GPU moves it per device)
SAMPLE_SIGMAS = "sample_sigmas"
PATCHES_REPLACE = "patches_replace"
#: U-Net self-attention replace patches: patches_replace["attn1"][(block, id, index)] or [(block, id)]
ATTN1 = "attn1"
#: every ComfyUI attention function is wrapped by wrap_attn, which calls
#: transformer_options[ATTENTION_OVERRIDE](func, *args, **kwargs) when the caller passes transformer_options
ATTENTION_OVERRIDE = "optimized_attention_override"
WRAPPERS = "wrappers"
#: keys of the extra_options dict an attn1 replace patch gets (built from transformer_options)
N_HEADS = "n_heads"
ATTN_PRECISION = "attn_precision"

#: wrapper kinds (comfy.patcher_extension.WrappersMP; same names in 0.3.64 and 0.38).
#: APPLY_MODEL wrappers run as fn(executor, x, t, c_concat, c_crossattn, control, transformer_options,
#: **kwargs), with executor.class_obj the BaseModel that runs the call (0.38 multi-GPU: a per-device copy).
APPLY_MODEL = comfy.patcher_extension.WrappersMP.APPLY_MODEL
#: OUTER_SAMPLE wrappers run as fn(executor, *args, **kwargs), executor.class_obj the CFGGuider
OUTER_SAMPLE = comfy.patcher_extension.WrappersMP.OUTER_SAMPLE

#: a processed cond entry (the lists calc_cond_batch gets): its uuid, and its model conditions
#: ("attention_mask" is the text padding mask Lumina 2 / HunyuanVideo / LTXV read)
COND_UUID = "uuid"
MODEL_CONDS = "model_conds"
TEXT_MASK = "attention_mask"


# ---------------------------------------------------------------------------------------------
# functions and classes
# ---------------------------------------------------------------------------------------------

def calc_cond_batch(model, conds, x, sigma, model_options):
    """ComfyUI's batched model evaluation: one prediction per cond list (0.3.64 and 0.38; 0.38 may run
    it on per-device model copies when model_options holds "multigpu_clones")."""
    return comfy.samplers.calc_cond_batch(model, conds, x, sigma, model_options)


def sampling_function(model, x, timestep, uncond, cond, cfg, model_options, seed):
    """ComfyUI's CFG step: batch hook, pre-CFG, CFG and post-CFG functions in ComfyUI's order."""
    return comfy.samplers.sampling_function(model, x, timestep, uncond, cond, cfg, model_options=model_options,
                                            seed=seed)


def batch_function_args(args: dict) -> tuple:
    """(conds, x, sigma, model, model_options) from the args sampling_function hands a CALC_COND_BATCH
    function (keys "conds", "input", "sigma", "model", "model_options"; 0.3.64 and 0.38). ``model`` is
    the BaseModel, ``conds`` [cond, uncond or None]."""
    return args["conds"], args["input"], args["sigma"], args["model"], args["model_options"]


def post_cfg_args(args: dict) -> tuple:
    """(cfg_result, cond, cond_denoised, x, sigma, model, model_options) from the args cfg_function hands
    each POST_CFG function (keys "denoised", "cond", "cond_denoised", "input", "sigma", "model",
    "model_options"; 0.3.64 and 0.38). ``input`` is the same tensor object the batch function got."""
    return (args["denoised"], args["cond"], args["cond_denoised"], args["input"], args["sigma"], args["model"],
            args["model_options"])


#: the guider ASAGGuider extends; relies on outer_sample(...), predict_noise(x, timestep, model_options, seed),
#: and the attributes inner_model, conds, cfg, model_patcher (0.3.64 and 0.38)
CFGGuider = comfy.samplers.CFGGuider


def plain_attention(q, k, v, heads, attn_precision, transformer_options):
    """The attention ComfyUI would run for an attn1 layer without a replace patch (0.3.64 and 0.38)."""
    return _attention.optimized_attention(q, k, v, heads, attn_precision=attn_precision,
                                          transformer_options=transformer_options)


#: the parameters of ComfyUI's attention functions, in positional order (0.3.64 and 0.38). 0.38 adds
#: keyword-only extras the pack passes on or honours: scale=, enable_gqa=, low_precision_attention=.
ATTENTION_PARAMS = ("q", "k", "v", "heads", "mask", "attn_precision", "skip_reshape", "skip_output_reshape")
#: 0.38 keyword arguments the Sinkhorn attention honours (the logit scale, and k/v with fewer heads than q)
ATTENTION_SCALE, ATTENTION_GQA = "scale", "enable_gqa"


def attention_functions() -> frozenset:
    """ComfyUI's attention functions (wrap_attn-wrapped ``attention_*`` and ``optimized_attention*``),
    as a module that calls one of them by a global name sees it (for models whose attention gets no
    transformer_options, see ``unreachable_attention.py``)."""
    found = set()
    for name, value in vars(_attention).items():
        if callable(value) and (name.startswith("attention_") or name.startswith("optimized_attention")):
            found.add(value)
    return frozenset(found)


# ModelPatcher methods (0.3.64 and 0.38). clone() copies model_options: 0.3.64 with copy.deepcopy,
# 0.38 with a list/dict-only deep copy that shares every other object between the clones, so what
# the pack keeps there (functions, plans) is immutable or safe to share.

def add_outer_sample_wrapper(model_patcher, key, wrapper) -> None:
    model_patcher.add_wrapper_with_key(OUTER_SAMPLE, key, wrapper)


def set_post_cfg_function(model_patcher, function) -> None:
    model_patcher.set_model_sampler_post_cfg_function(function)


def set_calc_cond_batch_function(model_patcher, function) -> None:
    model_patcher.set_model_sampler_calc_cond_batch_function(function)


def add_object_patch(model_patcher, key, value) -> None:
    """An attribute of the model (dotted path from the BaseModel) set while the patcher's model is
    loaded for sampling and restored after; clones (and 0.38's per-device copies) carry it."""
    model_patcher.add_object_patch(key, value)


def guider_model(executor):
    """The BaseModel an OUTER_SAMPLE wrapper's guider samples."""
    return executor.class_obj.model_patcher.model


def executing_model(executor):
    """The BaseModel an APPLY_MODEL wrapper's call runs on: the model itself, or on 0.38 with several
    GPUs the per-device copy (a fresh model from the loader, not an attribute of ours)."""
    return executor.class_obj


def model_sampling(base_model):
    """The model sampling a BaseModel samples with now (ModelSampling* nodes set it as an object
    patch, applied when the model is loaded for sampling): percent_to_sigma(p) (0.3.64 and 0.38)."""
    return base_model.model_sampling


def diffusion_model(base_model):
    return base_model.diffusion_model


def family_name(model_patcher) -> str:
    """A readable family for messages: the model config's class (SD15, SDXL, Flux...)."""
    model = model_patcher.model
    config = getattr(model, "model_config", None)
    return type(config).__name__ if config is not None else type(model.diffusion_model).__name__


def uncompiled(module):
    """The module under torch.compile's wrapper (TorchCompileModel patches diffusion_model with it)."""
    return getattr(module, "_orig_mod", module)


def is_compiled(module) -> bool:
    return hasattr(module, "_orig_mod")


# ---------------------------------------------------------------------------------------------
# model classes and attributes (0.3.64 and 0.38)
# ---------------------------------------------------------------------------------------------

#: ComfyUI's image U-Net (SD1.x/2.x/SDXL): input_blocks / middle_block / output_blocks, each block a
#: TimestepEmbedSequential whose children run in order; a SpatialTransformer child has norm, proj_in and
#: transformer_blocks (BasicTransformerBlocks, each with attn1: self-attention unless disable_self_attn)
UNET_CLASS = ("comfy.ldm.modules.diffusionmodules.openaimodel", "UNetModel")
UNET_PARTS = {"input_blocks": "input", "middle_block": "middle", "output_blocks": "output"}
#: named_modules() of a U-Net: input_blocks.<id>.<child>.transformer_blocks.<t>, middle_block.<child>.…
UNET_TRANSFORMER_BLOCK_RE = r"^(?:(input_blocks|output_blocks)\.(\d+)|(middle_block))\.\d+\.transformer_blocks\.(\d+)$"
TRANSFORMER_BLOCKS, SPATIAL_NORM, SPATIAL_PROJ_IN = "transformer_blocks", "norm", "proj_in"
SELF_ATTENTION, SELF_ATTENTION_DISABLED = "attn1", "disable_self_attn"
#: the video U-Nets (SVD): their temporal layers mix the rows of a chunk
TEMPORAL_RESBLOCKS = "use_temporal_resblocks"
VIDEO_TRANSFORMER_CLASS_NAME = "SpatialVideoTransformer"
#: DiTs whose block stacks are modules called with batch-leading tensors only, and whose forward does
#: nothing between two blocks of a stack but pass the output on (Flux and HunyuanVideo join their
#: streams between the stacks, on the full batch): the shared prefix may narrow each block's rows.
#: Exact classes (0.3.64): subclasses such as Wan's VACE or camera models are not included, nor Chroma
#: (its blocks get their modulations as named tuples of batch-leading tensors).
PREFIX_SHAREABLE_DITS = frozenset({
    ("comfy.ldm.flux.model", "Flux"),
    ("comfy.ldm.modules.diffusionmodules.mmdit", "MMDiT"),
    ("comfy.ldm.modules.diffusionmodules.mmdit", "OpenAISignatureMMDITWrapper"),
    ("comfy.ldm.wan.model", "WanModel"),
    ("comfy.ldm.lightricks.model", "LTXVModel"),
    ("comfy.ldm.hunyuan_video.model", "HunyuanVideo"),
    ("comfy.ldm.qwen_image.model", "QwenImageTransformer2DModel"),
})
#: attribute names of DiT block stacks: the main (double/joint) stack first, then Flux-style single stacks.
#: Numbering matches patches_replace["dit"] keys ("double_block", i) / ("single_block", i).
DOUBLE_STACKS = (
    "double_blocks", "double_layers", "joint_blocks", "double_stream_blocks", "transformer_blocks", "blocks", "layers"
)
SINGLE_STACKS = ("single_blocks", "single_layers", "single_stream_blocks")


#: DiTs that take a batch of text padding masks ("attention_mask" model conds), so a masked cond and its
#: adversarial copy can share a call (0.3.64: LTXV's and Mochi's masks are batch-leading in every use).
#: Other families with such masks get the copy in a call of its own: 0.3.64's HunyuanVideo writes the mask
#: into a batch-1 attention mask, Lumina 2 sums it into per-sample lengths it expects one of; and a family
#: not read yet is given the safe call.
BATCHED_TEXT_MASK_DITS = frozenset({
    ("comfy.ldm.lightricks.model", "LTXVModel"),
    ("comfy.ldm.genmo.joint_model.asymm_models_joint", "AsymmDiTJoint"),
})


def class_id(obj) -> tuple:
    cls = type(obj)
    return cls.__module__, cls.__name__


def takes_transformer_options(module) -> bool:
    """Whether a module's forward accepts transformer_options (HunyuanDiT's attention does not, in
    0.3.64 and 0.38; nor does 0.38's Ernie-Image)."""
    try:
        parameters = inspect.signature(type(module).forward).parameters
    except (TypeError, ValueError):
        return True
    return TRANSFORMER_OPTIONS in parameters or any(p.kind is p.VAR_KEYWORD for p in parameters.values())
