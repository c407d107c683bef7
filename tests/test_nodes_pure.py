"""The pure parts of nodes/, without a host: the row split, the own-token rule, the shared prefix's
narrowing, the percent window, the hand-over between a step's two functions, and the family records."""

from __future__ import annotations

import dataclasses
import gc
from collections import namedtuple

import pytest
import torch
from pack_modules import pure

rows = pure("nodes.row_split")
families = pure("nodes.families")


# ---- which rows are adversarial, and what other patches see ---------------------------------

def test_marked_tags_adversarial_chunks_and_relabels_them_slot_0():
    to = {"cond_or_uncond": [1, 0, 2], "uuids": ["n", "p", "p*"], "other": 1}
    out = rows.marked(to, {"p*": "p"})
    assert out["cond_or_uncond"] == [1, 0, 0] and out[rows.ADVERSARIAL_ROWS] == [None, None, "p"]
    assert to == {"cond_or_uncond": [1, 0, 2], "uuids": ["n", "p", "p*"], "other": 1}, "the input is not changed"
    assert rows.marked(out, {"x": "y"}) is out, "a tagged dict is not tagged twice"
    assert rows.chunk_flags(out) == [False, False, True] and rows.chunk_flags(to) is None


def test_marked_gives_the_step_its_own_slots_when_the_adversarial_list_goes_first():
    contract = pure("nodes.comfy_contract")
    lists, slots = contract.with_adversarial_conds(["cond", "uncond"], "adversarial")
    assert lists == ["adversarial", "cond", "uncond"] and slots == [0, 0, 1]
    # calc_cond_batch batches the lists in reverse: uncond (list 2), cond (list 1), adversarial (list 0)
    to = {"cond_or_uncond": [2, 1, 0], "uuids": ["n", "p", "p*"]}
    assert rows.marked(to, {"p*": "p"}, slots)["cond_or_uncond"] == [1, 0, 0]
    assert rows.marked({"cond_or_uncond": [0], "uuids": ["p*"]}, {"p*": "p"}, [0])["cond_or_uncond"] == [0]


def test_adversarial_cond_copies_entries_with_own_stable_uuids():
    cond = [{"uuid": "a", "model_conds": {"c": 1}}, {"uuid": "b"}]
    copies, partners = rows.adversarial_cond(cond)
    assert [c["uuid"] for c in copies] == [rows.adversarial_uuid("a"), rows.adversarial_uuid("b")]
    assert partners == {rows.adversarial_uuid("a"): "a", rows.adversarial_uuid("b"): "b"}
    assert copies[0]["model_conds"] is cond[0]["model_conds"] and cond[0]["uuid"] == "a"
    assert rows.adversarial_uuid("a") == rows.adversarial_uuid("a") != rows.adversarial_uuid("b")


def test_row_mask_expands_chunks_to_rows():
    assert rows.row_mask(None, 4) == "none" and rows.row_mask([False, False], 4) == "none"
    assert rows.row_mask([True], 3) == "all"
    assert rows.row_mask([False, True], 4).tolist() == [False, False, True, True]
    with pytest.raises(RuntimeError, match="batch 5"):
        rows.row_mask([False, True], 5)


def test_dispatch_rows_merges_both_calls_in_order():
    x = torch.arange(6.0).view(6, 1)
    mask = rows.row_mask([True, False, True], 6)
    seen = []

    def call(index, adversarial):
        seen.append((adversarial, None if index is None else index.tolist()))
        return rows.take(x, index) * (-1 if adversarial else 10)

    out = rows.dispatch_rows(call, mask, 6)
    assert out.flatten().tolist() == [-0.0, -1.0, 20.0, 30.0, -4.0, -5.0]
    assert seen == [(True, [0, 1, 4, 5]), (False, [2, 3])]
    assert rows.dispatch_rows(call, "all", 6).flatten().tolist() == (-x).flatten().tolist()


def test_plain_row_options_cut_the_per_chunk_lists():
    to = rows.marked({"cond_or_uncond": [0, 1, 0], "uuids": ["p", "n", "p*"], "keep": "x"}, {"p*": "p"})
    plain = rows.plain_row_options(to)
    assert plain == {"cond_or_uncond": [0, 1], "uuids": ["p", "n"], rows.ADVERSARIAL_ROWS: [None, None], "keep": "x"}
    untagged = {"cond_or_uncond": [0]}
    assert rows.plain_row_options(untagged) is untagged


# ---- the generic family's own-token rule ------------------------------------------------------

def _seq(batch, tokens, dim=4):
    return torch.zeros(batch, tokens, dim)


def test_own_token_rule():
    own = rows.keys_are_own_tokens
    assert own(10, 10, None, 2), "attention called in the block itself, equal counts: own tokens"
    assert not own(10, 7, None, 2), "other keys: cross-attention"
    assert own(10, 10, (_seq(2, 10),), 2), "a module handed its own tokens only"
    assert own(10, 10, (_seq(2, 6), _seq(2, 4)), 2), "joint attention over both sequences it was handed"
    assert not own(10, 10, (_seq(2, 10), _seq(2, 10)), 2), "queries from one sequence, keys from another"
    q = _seq(2, 10)
    assert own(10, 10, (q, _seq(2, 10)), 2, exclude=(q,)), "the call's own q is no second source"
    assert own(10, 10, (_seq(3, 10), _seq(2, 10)), 2), "a tensor of another batch is no sequence of this call"


# ---- the shared prefix's rows ----------------------------------------------------------------

@dataclasses.dataclass
class Modulation:  # FLUX.2's modulations reach its blocks as dataclasses of batch-leading tensors
    shift: torch.Tensor
    scale: torch.Tensor


Pair = namedtuple("Pair", "a b")


def _fork():
    to = {"cond_or_uncond": [0, 1, 0], "uuids": ["p*", "n", "p"], rows.ADVERSARIAL_ROWS: ["p", None, None]}
    return rows.plan_fork(6, to, (torch.zeros(6, 2),)), to


def test_narrow_and_widen_reach_into_containers_and_dataclasses():
    fork, to = _fork()
    x = torch.arange(6.0).view(6, 1)
    args = (x, [x, 3], Pair(x, torch.ones(1, 2)), Modulation(x, x + 1), to, torch.ones(2, 6))
    narrow = fork.narrow(args)
    assert narrow[0].flatten().tolist() == [2.0, 3.0, 4.0, 5.0]
    assert narrow[1][0].shape[0] == 4 and narrow[1][1] == 3
    assert isinstance(narrow[2], Pair) and narrow[2].a.shape[0] == 4 and narrow[2].b.shape == (1, 2)
    assert isinstance(narrow[3], Modulation) and narrow[3].scale.flatten().tolist() == [3.0, 4.0, 5.0, 6.0]
    assert narrow[4]["cond_or_uncond"] == [1, 0] and narrow[4][rows.ADVERSARIAL_ROWS] == [None, None]
    assert to["cond_or_uncond"] == [0, 1, 0], "the call's own dict is not changed"
    assert narrow[5].shape == (2, 6), "a tensor whose leading dim is not the batch stays whole"
    wide = fork.widen(Modulation(narrow[0], narrow[0]))
    assert wide.shift.flatten().tolist() == [4.0, 5.0, 2.0, 3.0, 4.0, 5.0], "adversarial rows copy their partner"


def test_a_multiple_of_the_batch_cannot_be_narrowed_exactly():
    fork, to = _fork()
    assert fork.narrowable((torch.zeros(6, 3), torch.zeros(1, 3), torch.zeros(4, 3), {"t": torch.zeros(6)}))
    assert not fork.narrowable((torch.zeros(6, 3), Modulation(torch.zeros(12, 3), torch.zeros(6, 3))))
    assert not fork.narrowable(torch.zeros(24, 3)) and fork.narrowable(torch.zeros(30, 3)), "4 batches stack, 5 don't"
    assert fork.narrowable({"transformer_options": {"x": torch.zeros(12)}}), "transformer_options are the pack's"


def test_rows_with_different_inputs_are_not_paired():
    to = {"cond_or_uncond": [0, 0], "uuids": ["p*", "p"], rows.ADVERSARIAL_ROWS: ["p", None]}
    assert rows.plan_fork(2, to, (torch.tensor([1.0, 1.0]), Modulation(torch.ones(2), torch.ones(2)))) is not None
    assert rows.plan_fork(2, to, (torch.tensor([1.0, 1.0]), Modulation(torch.ones(2), torch.tensor([1.0, 2.0])))) \
        is None


# ---- the percent window ----------------------------------------------------------------------

class _Flow:
    """A flow model's schedule: percent p is sigma 1 - p."""

    def percent_to_sigma(self, percent):
        return 1.0 - percent


def _plan(**settings):
    core = pure("asag_core")
    return pure("nodes.plan").ASAGPlan(core.ASAGSettings(**settings), (), families.GENERIC, "test")


def test_window_bounds_are_inclusive_and_percent_0_is_the_first_step():
    plan = _plan(start_percent=0.25, end_percent=0.75)
    assert plan.window(_Flow()) == (0.75, 0.25)
    assert [plan.active_at(s, _Flow()) for s in (0.8, 0.75, 0.5, 0.25, 0.2)] == [False, True, True, True, False]
    assert _plan().window(_Flow()) == (float("inf"), 0.0), "the default window guides every step"
    assert not _plan(scale=0.0).active_at(0.5, _Flow()), "scale 0 never guides"


# ---- the hand-over -----------------------------------------------------------------------------

def test_handoff_is_taken_once_per_evaluation_and_dies_with_its_input():
    handoff = pure("nodes.handoff")
    h = handoff.Handoff()
    x, y = torch.zeros(1), torch.zeros(1)
    h.put(x, "adv")
    assert h.take(y) is handoff.MISSING and h.take(x) == "adv" and h.take(x) is handoff.MISSING
    h.put(y, None)
    del y
    gc.collect()
    h.put(x, "again")
    assert len(h._entries) == 1, "an entry whose input died is dropped"


def test_once_per_run_says_it_once_per_sigma_schedule():
    once, said = pure("nodes.handoff").OncePerRun(), []
    run_a = {"transformer_options": {"sample_sigmas": torch.ones(3)}}
    run_b = {"transformer_options": {"sample_sigmas": torch.ones(3)}}
    for options in (run_a, run_a, run_b, run_b):
        once(options, lambda: said.append(1))
    assert len(said) == 2


# ---- the family records -------------------------------------------------------------------------

def _instance(module, name, base=object):
    return type(name, (base,), {"__module__": module})()


def test_a_model_is_matched_by_its_class_and_a_subclass_loses_prefix_sharing():
    wan = families.family_of(_instance("comfy.ldm.wan.model", "WanModel"))
    assert "Wan" in wan.name and wan.prefix and wan.own == ("self_attn",)
    base = type("WanModel", (), {"__module__": "comfy.ldm.wan.model"})
    vace = families.family_of(type("VaceWanModel", (base,), {"__module__": "comfy.ldm.wan.model"})())
    assert vace.own == wan.own and not vace.prefix
    assert families.family_of(_instance("somewhere.new", "Model")) is families.GENERIC


def test_every_record_is_complete_and_every_class_has_one_record():
    classes = [name for family in families.FAMILIES for name in family.classes]
    assert len(classes) == len(set(classes))
    for family in families.FAMILIES:
        assert family.classes and family.own and family.auto.reason and family.covers
        assert family.unet or [stack.grammar for stack in family.stacks][:1] == ["double"]
        assert set(family.hosts) <= {"0.3.64", "0.22.0"}


@pytest.mark.parametrize("dit,auto", [({"double": 24}, "double12"), ({"double": 19, "single": 38}, "double9"),
                                      ({"double": 7}, "double3"), ({"single": 7}, "single3")])
def test_auto_is_the_middle_block_of_the_main_stack(dit, auto):
    core, layers = pure("asag_core"), pure("nodes.model_layers")
    assert layers.auto_spec(families.GENERIC, core.LayerCatalog("m", dit=dit)) == auto


def test_ltx2_auto_is_stgs_block_29_of_48():
    core, layers = pure("asag_core"), pure("nodes.model_layers")
    ltx2 = families.family_of(_instance("comfy.ldm.lightricks.av_model", "LTXAVModel"))
    assert layers.auto_spec(ltx2, core.LayerCatalog("LTXAV", dit={"double": 48})) == "double29"
    assert layers.auto_spec(ltx2, core.LayerCatalog("LTXAV", dit={"double": 2})) == "double1"


@pytest.mark.parametrize("unet,auto", [({"middle": [(0, 10)], "input": [(4, 2)]}, "m0"),
                                       ({"input": [(1, 1), (2, 3), (4, 2)], "output": [(3, 1)]}, "d2"),
                                       ({"output": [(3, 1)]}, None)])
def test_unet_auto_is_the_middle_block_else_the_deepest_input_block(unet, auto):
    core, layers = pure("asag_core"), pure("nodes.model_layers")
    unet_family = families.family_of(_instance("comfy.ldm.modules.diffusionmodules.openaimodel", "UNetModel"))
    assert layers.auto_spec(unet_family, core.LayerCatalog("u", unet=unet)) == auto
