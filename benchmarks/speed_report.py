"""The speed benchmark's report: ratios, targets, the table lines and the JSON summary
(see ``benchmarks/speed.py``; the JSON keys are documented there)."""

from __future__ import annotations

from .measure import mib as _mib
from .speed_models import MODELS, cfg_rows

# JSON key -> its upper bound, as the target's name shows it (unprefixed keys: SDXL-shaped; flux_: Flux-shaped)
TARGETS = {
    "asag_over_pag": "1.05",  # ASAG node step / PAG step, same layers
    "guider_over_asag": "1",  # ASAGGuider step / ASAG node step
    "asag_mem_over_pag": "1.10",  # ASAG node torch peak / PAG torch peak, default layers
    "guider_over_cfg": "1.35",  # ASAGGuider step / CFG step
    "node_over_cfg": "1.35",  # ASAG node step (fast path) / CFG step
    "node_over_guider": "1.03",  # ASAG node step / ASAGGuider step
    "flux_node_over_cfg": "1.75",  # ASAG node step / CFG step, Flux-shaped (cfg 1: CFG is one row)
    "shared_prefix_rel_diff": "1e-5",  # max |shared - unshared| / max(1, output scale)
}

# the fast path's own bookkeeping (index tensors of the shared prefix: tens of bytes) next to a row of MiBs
MEM_SLACK_BYTES = 1024


def ratios(family, r):
    s, m, work = r["step"], r["memory"], r["work"]
    extra_row = m["cfg_extra_row"]["torch_peak"] - m["cfg"]["torch_peak"]
    mem_rise = m["asag"]["torch_peak"] - m["node_separate"]["torch_peak"]
    return {
        "node_over_cfg": s["asag"] / s["cfg"],
        "ideal_node_over_cfg": 1 + work["floor_time"] / cfg_rows(family),
        "floor_time": work["floor_time"],
        "floor_flops": work["floor_flops"],
        "node_over_guider": s["asag"] / s["guider"],
        # on wall-clock time, which other jobs on a shared machine inflate at random
        "node_over_cfg_wall": r["step_wall"]["asag"] / r["step_wall"]["cfg"],
        "node_over_guider_wall": r["step_wall"]["asag"] / r["step_wall"]["guider"],
        "pag_over_cfg_wall": r["step_wall"]["pag"] / r["step_wall"]["cfg"],
        "node_separate_over_cfg": s["node_separate"] / s["cfg"],
        "node_separate_over_pag": s["node_separate"] / s["pag"],
        "guider_over_cfg": s["guider"] / s["cfg"],
        "pag_over_cfg": s["pag"] / s["cfg"],
        "guider_unshared_over_cfg": s["guider_unshared"] / s["cfg"],
        "asag_over_pag": s["asag"] / s["pag"],
        "guider_over_asag": s["guider"] / s["asag"],
        "asag_mem_over_pag": m["asag"]["torch_peak"] / m["pag"]["torch_peak"],
        "guider_mem_over_pag": m["guider"]["torch_peak"] / m["pag"]["torch_peak"],
        "asag_rss_over_pag": m["asag"]["peak_rss"] / m["pag"]["peak_rss"],
        "node_mem_over_separate": m["asag"]["torch_peak"] / m["node_separate"]["torch_peak"],
        "node_mem_rise_over_separate_mib": mem_rise / 2**20,
        # the added row in sampling: its activations, conditioning and output (CFG + one row - CFG)
        "third_row_mib": extra_row / 2**20,
        # the added row's activations alone: one plain model call, peak(3 rows) - peak(2 rows)
        "third_row_activations_mib": (r["row_peaks"][3] - r["row_peaks"][2]) / 2**20,
        "node_mem_excess_over_third_row_bytes": mem_rise - extra_row,
        "node_mem_within_third_row": mem_rise <= extra_row + MEM_SLACK_BYTES,
    }


def family_lines(family, r):
    size = MODELS[family][2]
    lines = [f"{family}-shaped, latent {MODELS[family][1]}x{size}x{size}, cfg {MODELS[family][3]}, "
             f"median of {r['samples']['cfg']} steps per variant",
             f"| {'variant':<16} | {'CPU ms':>8} | {'x CFG':>6} | {'wall ms':>8} | {'calls':>5} | {'rows':>4} | "
             f"{'Sinkhorn ms':>11} | {'peak RSS MiB':>12} | {'RSS +MiB':>8} | {'torch peak MiB':>14} | "
             f"{'largest alloc MiB':>17} |",
             "|" + "|".join("-" * (w + 2) for w in (16, 8, 6, 8, 5, 4, 11, 12, 8, 14, 17)) + "|"]
    for v in r["memory"]:
        m, t = r["memory"][v], r["step"].get(v)
        time_cols = (f"{t * 1e3:8.1f} | {t / r['step']['cfg']:6.3f} | {r['step_wall'][v] * 1e3:8.1f}" if t else
                     f"{'-':>8} | {'-':>6} | {'-':>8}")
        lines.append(f"| {v:<16} | {time_cols} | "
                     f"{m['model_calls_per_step']:>5} | {m['rows_per_step']:>4} | "
                     f"{r['sinkhorn_in_step'].get(v, 0.0) * 1e3:11.1f} | {_mib(m['peak_rss']):>12} | "
                     f"{_mib(m['peak_rss_extra']):>8} | {_mib(m['torch_peak']):>14} | {_mib(m['torch_largest']):>17} |")
    rr = ratios(family, r)
    work = r["work"]
    lines += [
        f"  node / CFG {rr['node_over_cfg']:.3f} "
        f"(ideal 1 + floor/{cfg_rows(family)} = {rr['ideal_node_over_cfg']:.3f}); "
        f"floor = work after the first perturbed layer: {work['floor_time']:.3f} of one row's forward time, "
        f"{work['floor_flops']:.3f} of its FLOPs ({work['gflops_per_row']:.2f} GFLOP/row, "
        f"{work['prefix_modules']} prefix modules)",
        "  " + ", ".join(f"{k} {v:.3f}" for k, v in rr.items() if isinstance(v, float)),
        f"  memory: node fast path torch peak - node separate pass = {rr['node_mem_rise_over_separate_mib']:.2f} MiB; "
        f"one more row in CFG's call (cfg_extra_row - cfg) = {rr['third_row_mib']:.2f} MiB, of which activations "
        f"(one plain model call, peak 3 rows - 2 rows) {rr['third_row_activations_mib']:.2f} MiB; "
        f"excess over that row {rr['node_mem_excess_over_third_row_bytes']} bytes; within one more row "
        f"(+{MEM_SLACK_BYTES} bytes): {rr['node_mem_within_third_row']}",
        f"  shared prefix: max |shared - unshared| node {r['shared_prefix_max_abs_diff']['node']:.3g}, guider "
        f"{r['shared_prefix_max_abs_diff']['guider']:.3g} (output scale {r['output_scale']:.3g})",
        "",
    ]
    return lines


def scaling_lines(family, rows):
    lines = [f"scaling, {family}-shaped: CPU ms per step (median); Sinkhorn in-run = inside the node's separate-pass "
             "step; alone = the attention call alone x perturbed layers",
             f"| {'latent':>6} | {'tokens':>6} | {'cfg':>8} | {'pag':>8} | {'asag':>8} | {'separate':>8} | "
             f"{'sep-pag':>8} | {'Sk in-run':>9} | {'Sk alone':>8} | {'SDPA alone':>10} |",
             "|" + "|".join("-" * (w + 2) for w in (6, 6, 8, 8, 8, 8, 8, 9, 8, 10)) + "|"]
    for row in rows:
        s, a = row["step"], row["attention"]
        lines.append(f"| {row['latent']:>6} | {row['tokens']:>6} | {s['cfg'] * 1e3:8.1f} | {s['pag'] * 1e3:8.1f} | "
                     f"{s['asag'] * 1e3:8.1f} | {s['node_separate'] * 1e3:8.1f} | "
                     f"{(s['node_separate'] - s['pag']) * 1e3:8.1f} | {a['sinkhorn_in_asag_step'] * 1e3:9.1f} | "
                     f"{a['sinkhorn_per_step'] * 1e3:8.1f} | {a['sdpa_per_step'] * 1e3:10.2f} |")
    return lines + [""]


def dense_lines(dense):
    lines = [
        f"every self-attention layer perturbed ({dense['perturbed_layers']} layers, U-Net latent "
        f"{dense['latent']}, {dense['num_head_channels']} channels per head), one ASAG node step at cfg 1: "
        f"{dense['step_seconds']:.1f} s, torch peak {_mib(dense['torch_peak_bytes'])} MiB, "
        f"largest allocation {_mib(dense['largest_alloc_bytes'])} MiB "
        f"(outside the Sinkhorn calls, i.e. ComfyUI's own attention and the rest: "
        f"{_mib(dense['largest_alloc_outside_sinkhorn_bytes'])} MiB)",
        f"| {'tokens':>6} | {'heads':>5} | {'calls':>5} | {'dense logits MiB':>16} | "
        f"{'largest alloc in call MiB':>25} | {'peak rise in call MiB':>21} |",
        "|" + "|".join("-" * (w + 2) for w in (6, 5, 5, 16, 25, 21)) + "|"]
    for n, row in dense["sinkhorn_calls_by_tokens"].items():
        lines.append(f"| {n:>6} | {row['heads']:>5} | {row['calls']:>5} | {_mib(row['dense_logits_bytes']):>16} | "
                     f"{_mib(row['largest_alloc_bytes']):>25} | {_mib(row['peak_extra_bytes']):>21} |")
    lines.append(f"  at {dense['max_tokens']} tokens one head's N x N is {_mib(dense['one_head_nxn_bytes'])} MiB; "
                 f"no allocation that large: {dense['no_dense_nxn_per_head']} (budget "
                 f"{_mib(dense['memory_budget_bytes'])} MiB)")
    return lines


def shared_prefix_rel_diff(results):
    """The shared-prefix difference relative to the output scale (at least 1), worst case."""
    return max(max(r["shared_prefix_max_abs_diff"].values()) / max(1.0, r["output_scale"]) for r in results.values())


def headline(results):
    """The top-level JSON keys: unprefixed = SDXL-shaped, ``flux_`` = Flux-shaped."""
    sdxl, flux = ratios("sdxl", results["sdxl"]), ratios("flux", results["flux"])
    keys = ("node_over_cfg", "ideal_node_over_cfg", "floor_time", "floor_flops", "node_over_guider",
            "node_separate_over_cfg", "node_separate_over_pag", "guider_over_cfg", "pag_over_cfg",
            "node_mem_over_separate", "node_mem_rise_over_separate_mib", "third_row_mib", "third_row_activations_mib")
    out = {
        "asag_over_pag": sdxl["asag_over_pag"],
        "guider_over_asag": sdxl["guider_over_asag"],
        "asag_over_cfg": sdxl["guider_over_cfg"],  # historical name: ASAGGuider / CFG
        "asag_node_over_cfg": sdxl["node_over_cfg"],
        "guider_unshared_over_cfg": sdxl["guider_unshared_over_cfg"],
        "asag_mem_over_pag": sdxl["asag_mem_over_pag"],
        "asag_rss_over_pag": sdxl["asag_rss_over_pag"],
    }
    for k in keys:
        out[k] = sdxl[k]
        out["flux_" + k] = flux[k]
    out = {k: round(v, 4) for k, v in out.items()}
    out["node_mem_excess_over_third_row_bytes"] = sdxl["node_mem_excess_over_third_row_bytes"]
    out["flux_node_mem_excess_over_third_row_bytes"] = flux["node_mem_excess_over_third_row_bytes"]
    out["shared_prefix_max_abs_diff"] = max(max(r["shared_prefix_max_abs_diff"].values()) for r in results.values())
    out["shared_prefix_rel_diff"] = shared_prefix_rel_diff(results)
    out["node_mem_within_third_row"] = sdxl["node_mem_within_third_row"]
    out["flux_node_mem_within_third_row"] = flux["node_mem_within_third_row"]
    return out


def targets_met(head, dense):
    """Each target named after the JSON key it tests."""
    targets = {f"{key}<={limit}": head[key] <= float(limit) for key, limit in TARGETS.items()}
    targets["node_mem_within_third_row"] = head["node_mem_within_third_row"]
    targets["flux_node_mem_within_third_row"] = head["flux_node_mem_within_third_row"]
    if dense is not None:
        targets["no_dense_nxn_per_head_at_4096"] = dense["no_dense_nxn_per_head"]
    return targets


def _ms(times):
    return {v: round(t * 1e3, 2) for v, t in times.items()}


def family_summary(family, r):
    return {"ms_per_step": _ms(r["step"]),
            "wall_ms_per_step": _ms(r["step_wall"]),
            "ratios": {k: (round(v, 4) if isinstance(v, float) else v) for k, v in ratios(family, r).items()},
            "work_after_prefix": r["work"],
            "row_torch_peak_mib": {n: _mib(b) for n, b in r["row_peaks"].items()},
            "sinkhorn_ms_per_step": _ms(r["sinkhorn_in_step"]),
            "memory_mib": {v: {k: (_mib(b) if k.startswith(("peak", "torch")) else b) for k, b in m.items()}
                           for v, m in r["memory"].items()},
            "shared_prefix_max_abs_diff": r["shared_prefix_max_abs_diff"],
            "output_scale": r["output_scale"],
            "steps_timed": r["samples"]["cfg"]}


def scaling_summary(rows):
    return [{"latent": row["latent"], "tokens": row["tokens"],
             "ms_per_step": _ms(row["step"]),
             "sinkhorn_in_asag_step_ms": round(row["attention"]["sinkhorn_in_asag_step"] * 1e3, 3),
             "sinkhorn_alone_ms_per_step": round(row["attention"]["sinkhorn_per_step"] * 1e3, 3),
             "sdpa_alone_ms_per_step": round(row["attention"]["sdpa_per_step"] * 1e3, 3)} for row in rows]


def summary(quick, results, scaling, dense, shapes):
    """The JSON line's measured part (the caller adds plot, machine, repeats and seconds)."""
    head = headline(results)
    return {
        "benchmark": "speed", "quick": quick, **head,
        "targets": targets_met(head, dense),
        "models": {f: {"shape": shape, "latent": [MODELS[f][1], MODELS[f][2], MODELS[f][2]], "cfg": MODELS[f][3],
                       "context_tokens": MODELS[f][4]} for f, shape in shapes.items()},
        "results": {f: family_summary(f, r) for f, r in results.items()},
        "scaling": {f: scaling_summary(rows) for f, rows in scaling.items()},
        "dense_check_4096": dense,
    }
