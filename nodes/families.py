"""One record per model family: every family question the pack asks is answered here.

A record says, for the diffusion-model classes of one family:

* ``stacks``: its block stacks in the order they run (the layer grammar's ``b<i>``/``double<i>`` is the
  first, ``single<i>`` the second);
* ``own``: which attention inside a chosen block is the block's own and gets the Sinkhorn plan, by
  what the module is: the paths of those modules inside the block, ``""`` for attention the block's
  own forward calls (Flux's joint attention). Every attention call made inside one of them gets the
  plan over that call's queries and keys, however the model groups its queries (LTXV's guide masks
  split one self-attention into several calls: each gets the rectangular plan of its queries against
  all keys, with uniform marginals). Other attention (cross-attention to text, another modality's
  stream) is left alone. ``None`` only for the generic record, which recognises cross-attention by
  what it attends to (``row_split.keys_are_own_tokens``);
* ``auto``: the default layer, with the reason;
* ``prefix``: whether the blocks before the first perturbed one may run once for a conditional row
  and its adversarial copy (checked exact on that family: its blocks take batch-leading arguments);
* ``batched_text_mask``: whether a text padding mask may ride in a batch with its adversarial copy;
* ``batch_of_one``: the model takes one batch row per call, so the adversarial copy always gets a call
  of its own;
* ``alone_options``: transformer_options entries for a model call that holds adversarial rows only
  (Qwen Image 2.1: no prefix cache, whose slot such a call would share with its conditional partner);

A model is matched by its diffusion-model class; a subclass of a listed class gets its parent's
record without prefix sharing (it may do more between blocks). A class no record lists gets
:data:`GENERIC`: its stacks are found by name and cross-attention by what it attends to.

Adding a well-behaved family is one record here plus its tiny builder in ``tests/``. The README's
families table is generated from these records (``python -m tests.readme_tables``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from . import comfy_contract as contract

BOTH_HOSTS = ("0.3.64", "0.22.0")
NEWER_HOST = ("0.22.0",)
#: in no host the tests run in: read in the 0.38-era files and emulated by stand-ins (tests/test_newer_comfyui.py)
EMULATED = ()


@dataclass(frozen=True)
class Stack:
    """One block stack: ``grammar`` "double" (``b<i>``, ``double<i>``) or "single"; ``paths`` the attribute
    path of its ModuleList in the diffusion model (the first that exists and is not empty)."""

    grammar: str
    paths: tuple


@dataclass(frozen=True)
class Auto:
    """The default layer: block ``int(at * n)`` of the ``n`` blocks of ``stack`` (0.5: the middle)."""

    reason: str
    stack: str = "double"
    at: float = 0.5


@dataclass(frozen=True)
class Family:
    name: str
    #: the ComfyUI model configs (comfy/supported_models.py) this record covers
    models: str
    #: diffusion-model classes as "module.Class"
    classes: tuple
    stacks: tuple
    own: tuple | None
    auto: Auto
    #: what the plan covers in a chosen block
    covers: str
    prefix: bool = False
    batched_text_mask: bool = False
    batch_of_one: bool = False
    alone_options: tuple = ()
    #: ComfyUI's image U-Net: layers are attn1 replace-patch keys, not blocks of a stack
    unet: bool = False
    #: the real hosts its tiny instance is tested in
    hosts: tuple = BOTH_HOSTS


def _one(grammar, *paths):
    return Stack(grammar, tuple(paths))


_DOUBLE_SINGLE = (_one("double", "double_blocks"), _one("single", "single_blocks"))
_MIDDLE = Auto("the middle block of the main stack")
_MIDDLE_DOUBLE = Auto("the middle double block: the joint text+image blocks come first and carry the layout")

FAMILIES = (
    Family(
        "SD1.x, SD2.x, SDXL", "SD15, SD20, SDXL and their variants",
        ("comfy.ldm.modules.diffusionmodules.openaimodel.UNetModel",), (), ("attn1",),
        Auto("every transformer of the middle block, m0: PAG's layer and ComfyUI's PerturbedAttentionGuidance's"),
        "`attn1` self-attention of each chosen transformer", prefix=True, unet=True),
    Family(
        "SD3 / SD3.5 (MMDiT)", "SD3",
        ("comfy.ldm.modules.diffusionmodules.mmdit.OpenAISignatureMMDITWrapper",
         "comfy.ldm.modules.diffusionmodules.mmdit.MMDiT"),
        (_one("double", "joint_blocks"),), ("",), _MIDDLE,
        "the joint text+image attention, and SD3.5's extra image-only self-attention where a block has one",
        prefix=True),
    Family(
        "Flux.1, FLUX.2 (dev, Klein), LongCat-Image", "Flux, FluxSchnell, FluxInpaint, Flux2, LongCatImage",
        ("comfy.ldm.flux.model.Flux",), _DOUBLE_SINGLE, ("",), _MIDDLE_DOUBLE,
        "double block: the joint text+image attention; single block: the joint sequence", prefix=True),
    Family(
        "Chroma, Chroma Radiance", "Chroma, ChromaRadiance",
        ("comfy.ldm.chroma.model.Chroma", "comfy.ldm.chroma_radiance.model.ChromaRadiance"), _DOUBLE_SINGLE,
        ("",), _MIDDLE_DOUBLE, "double block: the joint text+image attention; single block: the joint sequence"),
    Family(
        "HunyuanVideo, HunyuanVideo 1.5, HunyuanImage 2.1",
        "HunyuanVideo (+I2V), HunyuanVideo15 (+SR distilled), HunyuanImage21 (+Refiner)",
        ("comfy.ldm.hunyuan_video.model.HunyuanVideo",), _DOUBLE_SINGLE, ("",), _MIDDLE_DOUBLE,
        "double block: the joint text+video attention; single block: the joint sequence", prefix=True),
    Family(
        "AuraFlow", "AuraFlow", ("comfy.ldm.aura.mmdit.MMDiT",),
        (_one("double", "double_layers"), _one("single", "single_layers")), ("attn",), _MIDDLE_DOUBLE,
        "double layer: the joint text+image attention; single layer: the joint sequence"),
    Family(
        "HiDream-I1", "HiDream", ("comfy.ldm.hidream.model.HiDreamImageTransformer2DModel",),
        (_one("double", "double_stream_blocks"), _one("single", "single_stream_blocks")), ("block.attn1",),
        _MIDDLE_DOUBLE, "the joint text+image attention of the block"),
    Family(
        "Qwen-Image (and Edit)", "QwenImage", ("comfy.ldm.qwen_image.model.QwenImageTransformer2DModel",),
        (_one("double", "transformer_blocks"),), ("attn",), _MIDDLE,
        "the joint attention over text, image and reference-image tokens (Edit's references included: one "
        "call spans them)", prefix=True),
    Family(
        "Wan 2.1 / 2.2 (T2V, I2V, TI2V, and their VACE, camera, HuMo, S2V, Animate, SCAIL, WanDancer variants)",
        "WAN21_T2V, WAN21_I2V, WAN22_T2V and variants", ("comfy.ldm.wan.model.WanModel",),
        (_one("double", "blocks"),), ("self_attn",), _MIDDLE,
        "the block's self-attention; its text (and image) cross-attention is left alone", prefix=True),
    Family(
        "LTX-Video 0.9", "LTXV", ("comfy.ldm.lightricks.model.LTXVModel",),
        # "audio_attn1": LTX-2's audio self-attention, in a block that has one (LTX-2 blocks share LTXV's names)
        (_one("double", "transformer_blocks"),), ("attn1", "audio_attn1"),
        Auto("the middle block (b14 of the 2B's 28 = STG's first)"),
        "the block's self-attention (`attn1`, each of its calls with a guide mask); text cross-attention left alone",
        prefix=True, batched_text_mask=True),
    Family(
        "LTX-2 (audio and video)", "LTXAV", ("comfy.ldm.lightricks.av_model.LTXAVModel",),
        (_one("double", "transformer_blocks"),), ("attn1", "audio_attn1"),
        Auto("block 29 of LTX-2's 48 (the same relative depth at other sizes): the default block of "
             "LTX's own STG node, which perturbs the same two self-attentions", at=29 / 48),
        "video self-attention (`attn1`) and audio self-attention (`audio_attn1`); text and audio↔video "
        "cross-attention left alone", batched_text_mask=True, hosts=NEWER_HOST),
    Family(
        "Mochi", "GenmoMochi", ("comfy.ldm.genmo.joint_model.asymm_models_joint.AsymmDiTJoint",),
        (_one("double", "blocks"),), ("attn",), _MIDDLE, "the joint text+video attention",
        batched_text_mask=True),
    Family(
        "Cosmos Predict2, Anima", "CosmosT2IPredict2, CosmosI2VPredict2, Anima",
        ("comfy.ldm.cosmos.predict2.MiniTrainDIT",), (_one("double", "blocks"),), ("self_attn",), _MIDDLE,
        "the block's self-attention; text cross-attention left alone"),
    Family(
        "Lumina 2, Z-Image", "Lumina2, ZImage, ZImagePixelSpace", ("comfy.ldm.lumina.model.NextDiT",),
        # no prefix sharing: 0.3.64's NextDiT hands its layers per-sample rotary tables that do not narrow by rows
        (_one("double", "layers"),), ("attention",), _MIDDLE, "the joint text+image attention of the layer"),
    Family(
        "Kandinsky 5 (video, image)", "Kandinsky5, Kandinsky5Image", ("comfy.ldm.kandinsky5.model.Kandinsky5",),
        (_one("double", "visual_transformer_blocks"),), ("self_attention",),
        Auto("the middle visual block (the text blocks before them see text alone)"),
        "the visual block's self-attention over the visual tokens; its text cross-attention is left alone",
        prefix=True, hosts=NEWER_HOST),
    Family(
        "HiDream-O1", "HiDreamO1", ("comfy.ldm.hidream_o1.model.HiDreamO1Transformer",),
        (_one("double", "language_model.layers"),), ("self_attn",), _MIDDLE,
        "the attention of the generated rows (timestep token and image) over the whole sequence (text, timestep "
        "token, image); the causal text rows run in raw SDPA, which nothing reaches, and stay as they are",
        hosts=NEWER_HOST),
    Family(
        "Ernie-Image", "ErnieImage", ("comfy.ldm.ernie.model.ErnieImageModel",), (_one("double", "layers"),),
        ("self_attention",), _MIDDLE,
        "the joint image+text attention of the layer; its attention gets no transformer_options, so it is "
        "reached through a per-model object patch", hosts=NEWER_HOST),
    Family(
        "Omnigen2", "Omnigen2", ("comfy.ldm.omnigen.omnigen2.OmniGen2Transformer2DModel",),
        (_one("double", "layers"),), ("attn",), _MIDDLE,
        "the joint attention over text, reference-image and image tokens of the layer"),
    Family(
        "CogVideoX", "CogVideoX_T2V, CogVideoX_I2V, CogVideoX_Inpaint",
        ("comfy.ldm.cogvideo.model.CogVideoXTransformer3DModel",), (_one("double", "blocks"),), ("",), _MIDDLE,
        "the joint text+video attention of the block", prefix=True, hosts=NEWER_HOST),
    Family(
        "Qwen-Image 2.1", "QwenImage21", ("comfy.ldm.qwen_image21.model.QwenImage21Transformer2DModel",),
        (_one("double", "transformer_blocks"),), ("attn",), _MIDDLE,
        "each call of the block's block-causal attention: with its prefix cache, the target image's queries "
        "against the cached text/reference prefix and the target; without, each segment against every key "
        "before its end",
        alone_options=((contract.QWEN_IMAGE21_CACHE, contract.QWEN_IMAGE21_CACHE_OFF),), hosts=EMULATED),
    Family(
        "MiniMax H3", "MiniMaxH3", ("comfy.ldm.minimax.model.MiniMaxH3Model",), (_one("double", "blocks"),),
        ("attn",), _MIDDLE, "the joint attention over the packed text, reference and target audio/video sequence",
        batch_of_one=True, hosts=EMULATED),
    Family(
        "HunyuanDiT", "HunyuanDiT, HunyuanDiT1", ("comfy.ldm.hydit.models.HunYuanDiT",),
        (_one("double", "blocks"),), ("attn1",), _MIDDLE,
        "the block's self-attention (`attn1`); its attention gets no transformer_options, so it is reached "
        "through a per-model object patch"),
)

#: a class no record lists: stacks found by name, cross-attention recognised by what it attends to
GENERIC = Family(
    "other DiTs", "any other", (),
    (Stack("double", ("double_blocks", "double_layers", "joint_blocks", "double_stream_blocks",
                      "transformer_blocks", "blocks", "layers")),
     Stack("single", ("single_blocks", "single_layers", "single_stream_blocks"))),
    None, _MIDDLE, "every attention in the block whose keys are the queries' own tokens")

_BY_CLASS = {name: family for family in FAMILIES for name in family.classes}


def _class_name(cls) -> str:
    return f"{cls.__module__}.{cls.__name__}"


def family_of(diffusion_model) -> Family:
    """The record of a (not compiled) diffusion model: its class's, else the nearest listed base
    class's without prefix sharing, else :data:`GENERIC`."""
    for depth, cls in enumerate(type(diffusion_model).__mro__):
        family = _BY_CLASS.get(_class_name(cls))
        if family is not None:
            return family if depth == 0 else replace(family, prefix=False)
    return GENERIC
