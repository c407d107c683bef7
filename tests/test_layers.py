"""asag_core.layers: the layer grammar against hand-built catalogs of real model shapes.

Catalog shapes are those of the real models (ComfyUI block numbers, transformer counts): SDXL's
U-Net (d0-d3, m0, u0-u5 with 2 or 10 transformers), SD1.5's (one transformer each), SD3's single
joint stack and Flux's double + single stacks.
"""

import re

import pytest

from asag_core import (
    GRAMMAR_HELP,
    DiTLayer,
    LayerCatalog,
    LayerSpecError,
    UNetLayer,
    parse_layer_spec,
    resolve_layers,
)

SDXL = LayerCatalog(
    "SDXL",
    unet={
        "input": [(4, 2), (5, 2), (7, 10), (8, 10)],
        "middle": [(0, 10)],
        "output": [(0, 10), (1, 10), (2, 10), (3, 2), (4, 2), (5, 2)],
    },
)
SD15 = LayerCatalog(
    "SD15",
    unet={
        "input": [(1, 1), (2, 1), (4, 1), (5, 1), (7, 1), (8, 1)],
        "middle": [(0, 1)],
        "output": [(3, 1), (4, 1), (5, 1), (6, 1), (7, 1), (8, 1), (9, 1), (10, 1), (11, 1)],
    },
)
NO_MIDDLE = LayerCatalog("NoMid", unet={"input": [(1, 1), (2, 3), (4, 2)], "output": [(3, 1)]})
SD3 = LayerCatalog("SD3", dit={"double": 24})
FLUX = LayerCatalog("Flux", dit={"double": 19, "single": 38})
SINGLE_ONLY = LayerCatalog("OnlySingle", dit={"single": 7})

ALL_CATALOGS = [SDXL, SD15, NO_MIDDLE, SD3, FLUX, SINGLE_ONLY]


def every_layer(catalog):
    """All self-attention layers of a catalog, enumerated independently of the parser."""
    out = []
    for part in ("input", "middle", "output"):
        for block_id, n in catalog.unet.get(part, []):
            out += [UNetLayer(part, block_id, t) for t in range(n)]
    for stack in ("double", "single"):
        out += [DiTLayer(stack, i) for i in range(catalog.dit.get(stack, 0))]
    return out


def unet(part, block_id, transformers):
    return [UNetLayer(part, block_id, t) for t in transformers]


# --- U-Net selections -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec,expected",
    [
        ("m0", unet("middle", 0, range(10))),
        ("d0", unet("input", 4, range(2))),
        ("d3", unet("input", 8, range(10))),
        ("u5", unet("output", 5, range(2))),
        ("d2.1", unet("input", 7, [1])),
        ("d2.9", unet("input", 7, [9])),
        ("u0.2-5", unet("output", 0, range(2, 6))),
        ("d0-d1", unet("input", 4, range(2)) + unet("input", 5, range(2))),
        ("d0-1", unet("input", 4, range(2)) + unet("input", 5, range(2))),
        ("d1-1", unet("input", 5, range(2))),
        ("u2-4.1", unet("output", 2, [1]) + unet("output", 3, [1]) + unet("output", 4, [1])),
        ("d2.3-3", unet("input", 7, [3])),
        ("m0.9, d0.0", unet("middle", 0, [9]) + unet("input", 4, [0])),
    ],
)
def test_unet_selections_name_comfyui_blocks_and_transformers(spec, expected):
    assert resolve_layers(spec, SDXL) == expected


def test_whole_unet_range_is_every_layer_in_order():
    spec = "d0-d3, m0, u0-u5"
    assert resolve_layers(spec, SDXL) == every_layer(SDXL)
    assert resolve_layers("d0-5, m0, u0-8", SD15) == every_layer(SD15)


def test_patch_keys_are_comfyuis():
    """ComfyUI keys attn1 patches by (block name, block number, transformer index) and DiT block
    replacements by ("double_block" | "single_block", index)."""
    assert [layer.patch_key for layer in resolve_layers("d2.1, m0.0, u3.1", SDXL)] == [
        ("input", 7, 1),
        ("middle", 0, 0),
        ("output", 3, 1),
    ]
    assert [layer.patch_key for layer in resolve_layers("double3, single5", FLUX)] == [
        ("double_block", 3),
        ("single_block", 5),
    ]


def test_repeats_are_dropped_keeping_first_order():
    assert resolve_layers("u0.1, m0, m0.0, u0.1-2", SDXL) == (
        unet("output", 0, [1]) + unet("middle", 0, range(10)) + unet("output", 0, [2])
    )
    assert resolve_layers("b5, b4-b6", SD3) == [DiTLayer("double", 5), DiTLayer("double", 4), DiTLayer("double", 6)]


@pytest.mark.parametrize(
    "spec",
    [
        "  D0-D1 ,\tM0.3\t, u0.2 - 5\n",
        "d 0 - d 1,m0.3,u0.2-5",
        "d0-1,  m 0.3 ,U0.2-U5",
    ],
)
def test_whitespace_case_and_commas(spec):
    expected = unet("input", 4, range(2)) + unet("input", 5, range(2)) + unet("middle", 0, [3])
    assert resolve_layers(spec, SDXL) == expected + unet("output", 0, range(2, 6))


# --- DiT selections ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "catalog,spec,expected",
    [
        (SD3, "b7", [DiTLayer("double", 7)]),
        (SD3, "b0, b23", [DiTLayer("double", 0), DiTLayer("double", 23)]),
        (SD3, "b4-b6", [DiTLayer("double", i) for i in (4, 5, 6)]),
        (SD3, "double4-6", [DiTLayer("double", i) for i in (4, 5, 6)]),
        (FLUX, "b18", [DiTLayer("double", 18)]),
        (FLUX, "double5", [DiTLayer("double", 5)]),
        (FLUX, "single10-12", [DiTLayer("single", i) for i in (10, 11, 12)]),
        (FLUX, "single10-single12", [DiTLayer("single", i) for i in (10, 11, 12)]),
        (FLUX, "single37, double0", [DiTLayer("single", 37), DiTLayer("double", 0)]),
        (SINGLE_ONLY, "single0-6", [DiTLayer("single", i) for i in range(7)]),
    ],
)
def test_dit_selections(catalog, spec, expected):
    assert resolve_layers(spec, catalog) == expected


# --- auto -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "catalog,auto,expected",
    [
        (SDXL, "m0", unet("middle", 0, range(10))),
        (FLUX, "double9", [DiTLayer("double", 9)]),
        (SINGLE_ONLY, "single3", [DiTLayer("single", 3)]),
    ],
)
def test_auto_stands_for_the_spec_the_caller_gives(catalog, auto, expected):
    """The family's default is a spec of this grammar (nodes/families.py supplies it)."""
    assert resolve_layers(" Auto ", catalog, auto=auto) == expected
    assert parse_layer_spec("AUTO") is None


def test_auto_without_a_default_names_the_model_and_its_layers():
    with pytest.raises(LayerSpecError) as err:
        resolve_layers("auto", SD15)
    assert "SD15" in str(err.value) and SD15.describe() in str(err.value)


@pytest.mark.parametrize(
    "catalog",
    [
        LayerCatalog("Empty"),
        LayerCatalog("NoBlocks", dit={"double": 0, "single": 0}),
        LayerCatalog("NoTransformers", unet={"input": []}),
    ],
)
@pytest.mark.parametrize("spec", ["auto", "b0", "m0"])
def test_a_model_without_reachable_attention_is_named(catalog, spec):
    with pytest.raises(LayerSpecError) as err:
        resolve_layers(spec, catalog, auto="b0")
    assert str(err.value) == f"layers '{spec}': the {catalog.family} model has no self-attention ASAG can reach"


# --- describe: the valid layers, as the errors list them --------------------------------------


@pytest.mark.parametrize(
    "catalog,text",
    [
        (SDXL, "d0.0-1, d1.0-1, d2.0-9, d3.0-9; m0.0-9; u0.0-9, u1.0-9, u2.0-9, u3.0-1, u4.0-1, u5.0-1"),
        (SD15, "d0, d1, d2, d3, d4, d5; m0; u0, u1, u2, u3, u4, u5, u6, u7, u8"),
        (NO_MIDDLE, "d0, d1.0-2, d2.0-1; u0"),
        (SD3, "b0-b23"),
        (FLUX, "double0-18; single0-37"),
        (SINGLE_ONLY, "single0-6"),
        (LayerCatalog("Empty"), "(none)"),
        (LayerCatalog("NoBlocks", unet={"input": []}), "(none)"),
    ],
)
def test_describe_lists_the_valid_layers(catalog, text):
    assert catalog.describe() == text


@pytest.mark.parametrize("catalog", ALL_CATALOGS, ids=lambda c: c.family)
def test_described_layers_are_exactly_the_models_layers(catalog):
    """What an error message offers the user must be accepted as typed, and cover everything."""
    names = re.split(r"[,;] ", catalog.describe())
    resolved = [layer for name in names for layer in resolve_layers(name, catalog)]
    assert resolved == every_layer(catalog)


# --- errors -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "catalog,spec,token",
    [
        (SDXL, "d4", "d4"),
        (SDXL, "m0, m1", "m1"),
        (SDXL, "u6.0", "u6.0"),
        (SDXL, "u6-8", "u6-8"),
        (NO_MIDDLE, "m0", "m0"),
        (SD3, "b24", "b24"),
        (SD3, "single0", "single0"),
        (FLUX, "double19", "double19"),
        (FLUX, "single38-single40", "single38-single40"),
    ],
)
def test_missing_layer_names_it_and_lists_the_models_layers(catalog, spec, token):
    with pytest.raises(LayerSpecError) as err:
        resolve_layers(spec, catalog)
    assert str(err.value) == (
        f"layers: '{token}' is not in the {catalog.family} model; its layers are: {catalog.describe()}"
    )


@pytest.mark.parametrize("catalog,spec,count", [(SDXL, "u3-6", 6), (SDXL, "u3 - u6", 6), (SDXL, "u5-6", 6),
                                                (FLUX, "single30-single38", 38), (SD3, "b20-b30", 24)])
def test_a_range_running_past_the_end_is_quoted_as_written(catalog, spec, count):
    with pytest.raises(LayerSpecError) as err:
        resolve_layers(spec, catalog)
    assert str(err.value) == (
        f"layers: '{spec.replace(' ', '')}' runs past the end: the {catalog.family} model has {count} such blocks "
        f"(0-{count - 1}); its layers are: {catalog.describe()}"
    )


@pytest.mark.parametrize("spec,t,n", [("m0.10", 10, 10), ("d0.2", 2, 2), ("u3.0-2", 2, 2), ("d2-3.9-10", 10, 10)])
def test_missing_transformer_names_it_and_the_block_size(spec, t, n):
    with pytest.raises(LayerSpecError) as err:
        resolve_layers(spec, SDXL)
    assert str(err.value) == (
        f"layers: '{spec}' asks for transformer {t} but that block has {n}; "
        f"the SDXL model's layers are: {SDXL.describe()}"
    )


def test_unet_layer_on_a_dit_and_dit_layer_on_a_unet():
    with pytest.raises(LayerSpecError) as err:
        resolve_layers("b3, m0", FLUX)
    assert str(err.value) == "layers: 'm0' is a U-Net layer but the model is a Flux DiT; its layers are: " + (
        FLUX.describe()
    )
    with pytest.raises(LayerSpecError) as err:
        resolve_layers("m0, double2", SD15)
    assert str(err.value) == "layers: 'double2' is a DiT layer but the model is a SD15 U-Net; its layers are: " + (
        SD15.describe()
    )


def test_any_explicit_layer_on_an_empty_model_names_the_model():
    with pytest.raises(LayerSpecError) as err:
        resolve_layers("m0", LayerCatalog("Empty"))
    assert str(err.value) == "layers 'm0': the Empty model has no self-attention ASAG can reach"


@pytest.mark.parametrize(
    "spec,message",
    [
        ("", f"layers is empty; use 'auto' or a list. {GRAMMAR_HELP}"),
        ("  \t", f"layers is empty; use 'auto' or a list. {GRAMMAR_HELP}"),
        ("m0,,u0", f"layers 'm0,,u0' has an empty item between commas. {GRAMMAR_HELP}"),
        ("m0, ", f"layers 'm0, ' has an empty item between commas. {GRAMMAR_HELP}"),
        (",m0", f"layers ',m0' has an empty item between commas. {GRAMMAR_HELP}"),
        ("m0, x1", f"layers: cannot read 'x1'. {GRAMMAR_HELP}"),
        ("m0, Middle", f"layers: cannot read 'middle'. {GRAMMAR_HELP}"),
        ("d", f"layers: cannot read 'd'. {GRAMMAR_HELP}"),
        ("d1.", f"layers: cannot read 'd1.'. {GRAMMAR_HELP}"),
        ("b1.2", f"layers: cannot read 'b1.2'. {GRAMMAR_HELP}"),
        ("d-1", f"layers: cannot read 'd-1'. {GRAMMAR_HELP}"),
        ("d1-2-3", f"layers: cannot read 'd1-2-3'. {GRAMMAR_HELP}"),
        ("auto, m0", f"layers: cannot read 'auto'. {GRAMMAR_HELP}"),
        ("d3-d1", "layers: block range 'd3-d1' runs backwards (3 > 1)"),
        ("u0.5-2", "layers: transformer range 'u0.5-2' runs backwards (5 > 2)"),
        ("single20-10", "layers: block range 'single20-10' runs backwards (20 > 10)"),
        ("m0, d0-u3", "layers: 'd0-u3' ranges from d to u; a range stays in one part or stack "
                      f"(e.g. d0-d3, or list both: d0, u3). {GRAMMAR_HELP}"),
        ("double0-single5", "layers: 'double0-single5' ranges from double to single; a range stays in one part "
                            f"or stack (e.g. double0-double3, or list both: double0, single5). {GRAMMAR_HELP}"),
        ("d1-u2-3", "layers: 'd1-u2-3' ranges from d to u; a range stays in one part or stack "
                    f"(e.g. d0-d3, or list both: d1, u2-3). {GRAMMAR_HELP}"),
    ],
)
def test_unreadable_specs_say_why_with_the_grammar(spec, message):
    with pytest.raises(LayerSpecError) as err:
        parse_layer_spec(spec)
    assert str(err.value) == message
    assert isinstance(err.value, ValueError)


@pytest.mark.parametrize("spec", [None, 3, ["m0"]])
def test_spec_must_be_a_string(spec):
    with pytest.raises(LayerSpecError) as err:
        parse_layer_spec(spec)
    assert str(err.value) == f"layers must be a string, got {type(spec).__name__}"


def test_grammar_help_shows_every_form_the_parser_reads():
    """Each example the help gives parses; the help names every prefix and 'auto'."""
    examples = [e.strip() for group in re.findall(r"\(e\.g\. ([^)]*)\)", GRAMMAR_HELP) for e in group.split(",")]
    assert len(examples) == 9
    for example in examples:
        assert parse_layer_spec(example)
    for form in ("d<i>", "m<i>", "u<i>", ".<transformer>", "b<i>", "double<i>", "single<i>", "'auto'"):
        assert form in GRAMMAR_HELP
