"""The layer grammar: which self-attention layers ASAG perturbs.

The grammar is the one users know from sd-perturbed-attention, extended to DiTs:

U-Net (SD1.x, SD2.x, SDXL and their fine-tunes)
    ``d<i>``, ``m<i>``, ``u<i>`` select the i-th *input* (down), *middle* or *output* (up)
    block that contains transformer blocks, counted from 0 among those blocks only
    (SDXL: d0-d3, m0, u0-u5). ``d2.1`` selects transformer 1 inside that block;
    ranges ``d0-d3`` and ``u0.2-5`` and comma lists ``m0, u0.1`` combine freely.
DiT (SD3, Flux, Chroma, AuraFlow, HunyuanDiT, Qwen-Image, Wan, HunyuanVideo, LTXV, ...)
    ``b<i>`` is block i of the main stack (SD3's joint blocks, Wan's blocks, ...; for
    models with two stacks it is the double/joint stack); ``double<i>`` and ``single<i>``
    name Flux-style stacks explicitly; ranges such as ``single10-20``.
``auto``
    the family's documented default, a spec in this grammar that the caller supplies
    (the pack's family records, ``nodes/families.py``).

Parsing is pure; :func:`resolve_layers` checks a parsed spec against a model's
:class:`LayerCatalog`, naming the model's valid layers when a layer is missing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Optional

UNET_PARTS = {"d": "input", "m": "middle", "u": "output"}
DIT_STACKS = {"b": "double", "double": "double", "single": "single"}

_UNET_RE = re.compile(r"^(?P<part>[dmu])(?P<block>\d+(?:-\d+)?)(?:\.(?P<tf>\d+(?:-\d+)?))?$")
_DIT_RE = re.compile(r"^(?P<stack>b|double|single)(?P<block>\d+(?:-\d+)?)$")

GRAMMAR_HELP = (
    "U-Net: d<i>, m<i>, u<i>, optional .<transformer> (e.g. m0, d4, u0.3, d0-d3, u0.2-5); "
    "DiT: b<i>, double<i>, single<i> (e.g. b7, b4-b9, double5, single10-20); comma-separated, or 'auto'"
)


class LayerSpecError(ValueError):
    """A ``layers`` string that does not parse or names layers the model lacks."""


@dataclass(frozen=True)
class UNetLayer:
    """One self-attention layer of a U-Net: the key ComfyUI uses for attn1 patches."""

    part: str  # "input" | "middle" | "output"
    block_id: int  # ComfyUI's block number (index into input_blocks/output_blocks; 0 for middle)
    transformer_index: int  # BasicTransformerBlock index inside the SpatialTransformer

    @property
    def patch_key(self) -> tuple:
        return (self.part, self.block_id, self.transformer_index)


@dataclass(frozen=True)
class DiTLayer:
    """One block of a DiT: the key ComfyUI uses for ``patches_replace["dit"]``."""

    stack: str  # "double" | "single"
    index: int

    @property
    def patch_key(self) -> tuple:
        return (f"{self.stack}_block", self.index)


@dataclass(frozen=True)
class LayerCatalog:
    """What a model offers. For a U-Net, ``unet[part]`` lists, in order, the
    (block_id, transformer count) of each block holding transformers. For a DiT,
    ``dit[stack]`` is the block count of that stack."""

    family: str
    unet: dict = field(default_factory=dict)
    dit: dict = field(default_factory=dict)

    @property
    def is_unet(self) -> bool:
        return bool(self.unet)

    @property
    def is_empty(self) -> bool:
        """No layer at all (a model with no self-attention ASAG can reach)."""
        return not any(self.unet.values()) and not any(self.dit.values())

    def describe(self) -> str:
        """The valid layer names, compactly (for error messages and tooltips)."""
        parts = []
        if self.is_unet:
            for letter, part in UNET_PARTS.items():
                blocks = self.unet.get(part, [])
                if blocks:
                    names = [f"{letter}{i}" + (f".0-{n - 1}" if n > 1 else "") for i, (_, n) in enumerate(blocks)]
                    parts.append(", ".join(names))
        else:
            for stack in ("double", "single"):
                n = self.dit.get(stack, 0)
                if n:
                    prefix = "b" if stack == "double" and "single" not in self.dit else stack
                    parts.append(f"{prefix}0-{prefix}{n - 1}" if prefix == "b" else f"{prefix}0-{n - 1}")
        return "; ".join(parts) if parts else "(none)"


def _range(text: str, what: str, token: str) -> range:
    text = text.strip()
    if "-" in text:
        lo, hi = (int(p) for p in text.split("-"))
        if hi < lo:
            raise LayerSpecError(f"layers: {what} range '{token}' runs backwards ({lo} > {hi})")
        return range(lo, hi + 1)
    return range(int(text), int(text) + 1)


@dataclass(frozen=True)
class _Selector:
    kind: str  # "unet" | "dit"
    group: str  # unet part or dit stack
    blocks: range
    transformers: Optional[range] = None
    token: str = ""


def _drop_repeated_prefix(token: str, raw: str) -> str:
    """"d0-d3" and "b4-b9" mean "d0-3" and "b4-9"; a range across prefixes ("d0-u3") is an error."""
    m = re.match(r"^([a-z]+)[\d.]+-([a-z]+)(?=\d)", token)
    if m is None:
        return token
    first, second = m.groups()
    if first != second:
        raise LayerSpecError(
            f"layers: '{raw}' ranges from {first} to {second}; a range stays in one part or stack "
            f"(e.g. {first}0-{first}3, or list both: {raw.replace('-', ', ', 1)}). {GRAMMAR_HELP}"
        )
    return token[: m.end(1)] + token[m.end(1):].replace(f"-{second}", "-", 1)


def parse_layer_spec(spec: str) -> Optional[list]:
    """Parse a ``layers`` string. Returns None for ``auto``; raises LayerSpecError."""
    if not isinstance(spec, str):
        raise LayerSpecError(f"layers must be a string, got {type(spec).__name__}")
    text = spec.strip().lower()
    if text == "auto":
        return None
    if not text:
        raise LayerSpecError(f"layers is empty; use 'auto' or a list. {GRAMMAR_HELP}")
    selectors = []
    for raw in text.split(","):
        written = raw.strip().replace(" ", "")  # quoted in messages as the user wrote it
        if not written:
            raise LayerSpecError(f"layers '{spec}' has an empty item between commas. {GRAMMAR_HELP}")
        token = _drop_repeated_prefix(written, raw.strip())
        m = _UNET_RE.match(token)
        if m:
            tf = m.group("tf")
            selectors.append(
                _Selector(
                    "unet",
                    UNET_PARTS[m.group("part")],
                    _range(m.group("block"), "block", written),
                    _range(tf, "transformer", written) if tf is not None else None,
                    written,
                )
            )
            continue
        m = _DIT_RE.match(token)
        if m:
            selectors.append(
                _Selector("dit", DIT_STACKS[m.group("stack")], _range(m.group("block"), "block", written), None,
                          written)
            )
            continue
        raise LayerSpecError(f"layers: cannot read '{raw.strip()}'. {GRAMMAR_HELP}")
    return selectors


def _missing_block(sel: _Selector, count: int, catalog: LayerCatalog, valid: str) -> LayerSpecError:
    """The error for a selector naming a block past the ``count`` blocks of its part or stack."""
    if len(sel.blocks) > 1 and sel.blocks.start < count:
        return LayerSpecError(
            f"layers: '{sel.token}' runs past the end: the {catalog.family} model has {count} such blocks "
            f"(0-{count - 1}); its layers are: {valid}"
        )
    return LayerSpecError(f"layers: '{sel.token}' is not in the {catalog.family} model; its layers are: {valid}")


def resolve_layers(spec: str, catalog: LayerCatalog, auto: Optional[str] = None) -> list:
    """Turn a ``layers`` string into concrete UNetLayer / DiTLayer keys for this model; ``auto`` is the
    model's default layer spec (its family's), which ``"auto"`` stands for."""
    selectors = parse_layer_spec(spec)
    if catalog.is_empty:
        # an empty U-Net catalog would otherwise read as a DiT in the messages below
        raise LayerSpecError(f"layers '{spec}': the {catalog.family} model has no self-attention ASAG can reach")
    if selectors is None:
        if auto is None or parse_layer_spec(auto) is None:
            raise LayerSpecError(f"layers 'auto': the {catalog.family} model has no default layer; name one: "
                                 f"{catalog.describe()}")
        return resolve_layers(auto, catalog)
    valid = catalog.describe()
    out = []
    for sel in selectors:
        if sel.kind == "unet":
            if not catalog.is_unet:
                raise LayerSpecError(
                    f"layers: '{sel.token}' is a U-Net layer but the model is a {catalog.family} DiT; "
                    f"its layers are: {valid}"
                )
            blocks = catalog.unet.get(sel.group, [])
            for i in sel.blocks:
                if i >= len(blocks):
                    raise _missing_block(sel, len(blocks), catalog, valid)
                block_id, n = blocks[i]
                tfs = sel.transformers if sel.transformers is not None else range(n)
                for t in tfs:
                    if t >= n:
                        raise LayerSpecError(
                            f"layers: '{sel.token}' asks for transformer {t} but that block has {n}; "
                            f"the {catalog.family} model's layers are: {valid}"
                        )
                    out.append(UNetLayer(sel.group, block_id, t))
        else:
            if catalog.is_unet:
                raise LayerSpecError(
                    f"layers: '{sel.token}' is a DiT layer but the model is a {catalog.family} U-Net; "
                    f"its layers are: {valid}"
                )
            n = catalog.dit.get(sel.group, 0)
            for i in sel.blocks:
                if i >= n:
                    raise _missing_block(sel, n, catalog, valid)
                out.append(DiTLayer(sel.group, i))
    # keep order, drop repeats ("m0, m0.0")
    return list(dict.fromkeys(out))
