"""Time and peak memory of the ASAG attention's paths on CPU against SDPA, and its GPU cost counted on meta.

Run from the repository root::

    python -m benchmarks.attention              # the issue's cases, the video case, the meta accounting
    python -m benchmarks.attention --quick      # N = 1024 only, no video case
    python -m benchmarks.attention --cases 4608x4x128 --methods sdpa,default,kernel
    python -m benchmarks.attention --video-only # 32,760 tokens, one head

Cases are N x H x D (Nq = Nk = N, batch 1, float32, 1 torch thread, ``iterations=2``, ``lam=1``,
cost "adversarial", inputs ``torch.randn``, layout (B, H, N, D) with ``skip_reshape`` /
``skip_output_reshape``, so no method pays for a reshape).

Methods
-------
``sdpa``      ``torch.nn.functional.scaled_dot_product_attention(q, k, v)``: the baseline.
``default``   ``adversarial_attention`` with its defaults; the "path" column is
              ``asag_core.attention_path`` for the same call (the code's own rule: blocked on CPU).
``dense``     ``path="dense"``: the reference (the whole (H, N, N) logits), at any size.
``kernel``    ``path="kernel"``: the CUDA path's code with PyTorch's CPU flash kernel standing in for
              the CUDA kernels (one fused call per half-step, O(N) memory); not what the CPU runs by
              default, shown as the fully fused alternative.

Measurement
-----------
Every (case, method) runs in a fresh Python subprocess, so no allocator cache, heap fragmentation
or high-water mark carries over. In it: inputs made, the method warmed up on a tiny input; the
peak-RSS mark reset (Linux ``/proc/self/clear_refs``; else ``ru_maxrss``) and the RSS read as
baseline; one call; **peak extra** = ``VmHWM - baseline`` (every byte the call made resident,
its output included). Then ``--repeats`` calls, each paired with an SDPA call on the same inputs
(alternating which goes first). **x SDPA** is the median of the per-pair ratios of CPU time
(``time.thread_time``: with one torch thread the calling thread does the work, and other jobs on
a shared machine do not count); the wall-clock ratio is reported beside it. The JSON line records
the load average before and after.

GPU accounting (``benchmarks/attention_accounting.py``): the SDXL, Flux and Wan shapes in bf16,
counted on the meta device (which takes the CUDA path), with an H100-class time estimate beside the
layer's own flash attention estimated the same way.

Output: markdown tables, then exactly one JSON line with every row, the targets and the accounting.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from benchmarks.measure import reset_peak_rss, status_bytes  # noqa: E402

CASES = [(1024, 24, 128), (4608, 4, 128), (1024, 8, 64), (1024, 10, 64)]
QUICK_CASES = [c for c in CASES if c[0] == 1024]
TARGET_CASES = [(1024, 24, 128), (4608, 4, 128)]
VIDEO_CASE = (32760, 1, 128)
VIDEO_METHODS = ("sdpa", "default", "kernel")
METHODS = ("sdpa", "default", "dense", "kernel")
ITERATIONS = 2
TARGET_TIME = 2.5  # default path x SDPA at the target cases


# ---------------------------------------------------------------------------
# child: one measurement
# ---------------------------------------------------------------------------


def _maxrss_bytes() -> int:
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r if sys.platform == "darwin" else r * 1024


def _make_call(method, q, k, v, iterations=ITERATIONS):
    import torch.nn.functional as F

    from asag_core import adversarial_attention, attention_path

    kw = dict(iterations=iterations, lam=1.0, cost="adversarial", skip_reshape=True, skip_output_reshape=True)
    if method == "sdpa":
        return (lambda: F.scaled_dot_product_attention(q, k, v)), "sdpa"
    if method in ("dense", "kernel"):
        kw["path"] = method
    return (lambda: adversarial_attention(q, k, v, q.shape[1], **kw)), attention_path(q, k, v, q.shape[1], **kw)


def _first_call(call):
    exact = reset_peak_rss()
    base, base_max = status_bytes("VmRSS") or _maxrss_bytes(), _maxrss_bytes()
    t0 = time.perf_counter()
    out = call()
    first = time.perf_counter() - t0
    peak = status_bytes("VmHWM") - base if exact else _maxrss_bytes() - max(base, base_max)
    return out, first, int(peak), "VmHWM after clear_refs" if exact else "ru_maxrss"


def _paired_times(call, sdpa, repeats, max_seconds, spent):
    """(method CPU s, SDPA CPU s, method wall s, SDPA wall s) per pair, alternating the order."""
    pairs = []
    for i in range(repeats):
        if pairs and spent > max_seconds:
            break
        row = {}
        for name in (("sdpa", "call") if i % 2 == 0 else ("call", "sdpa")):
            fn = sdpa if name == "sdpa" else call
            c0, w0 = time.thread_time(), time.perf_counter()
            fn()
            row[name] = (time.thread_time() - c0, time.perf_counter() - w0)
        pairs.append((row["call"][0], row["sdpa"][0], row["call"][1], row["sdpa"][1]))
        spent += row["call"][1] + row["sdpa"][1]
    return pairs


def _child(n, h, d, method, repeats, max_seconds, iterations) -> dict:
    import torch

    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, h, n, d, generator=g) for _ in range(3))
    tiny = [t[:, :, :16].contiguous() for t in (q, k, v)]
    _make_call(method, *tiny, iterations)[0]()  # warm-up on a tiny input
    _make_call("sdpa", *tiny)[0]()
    call, path = _make_call(method, q, k, v, iterations)
    sdpa = _make_call("sdpa", q, k, v)[0]
    out, first, peak, mem_method = _first_call(call)
    assert out.shape == (1, h, n, d) and bool(torch.isfinite(out).all())
    del out
    pairs = _paired_times(call, sdpa, repeats, max_seconds, first)
    return {
        "N": n, "H": h, "D": d, "method": method, "path": path, "iterations": iterations,
        "cpu_time_s": statistics.median(p[0] for p in pairs),
        "over_sdpa_cpu_time": statistics.median(p[0] / p[1] for p in pairs),
        "over_sdpa_wall_time": statistics.median(p[2] / p[3] for p in pairs),
        "pairs_cpu_wall_s": pairs, "first_s": first,
        "peak_extra_bytes": peak, "memory_method": mem_method, "threads": torch.get_num_threads(),
    }


# ---------------------------------------------------------------------------
# parent: run the cases, print the tables and the JSON line
# ---------------------------------------------------------------------------


def _parse_cases(spec):
    cases = []
    for item in spec.split(","):
        parts = item.strip().lower().split("x")
        if len(parts) != 3 or not all(p.isdigit() for p in parts):
            raise SystemExit(f"--cases wants NxHxD items, e.g. 4608x4x128; got {item!r}")
        cases.append(tuple(int(p) for p in parts))
    return cases


def _run_child(case, method, args) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", "x".join(map(str, case)), "--methods", method,
           "--repeats", str(args.repeats), "--max-seconds", str(args.max_seconds), "--iterations", str(args.iterations)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=args.timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{method} {case} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _measure(cases, methods, args):
    rows = []
    for case in cases:
        for method in methods:
            r = _run_child(case, method, args)
            rows.append(r)
            print(f"# {method:8s} {'x'.join(map(str, case))} ({r['path']}): {r['cpu_time_s']:.3f} s CPU, "
                  f"{r['over_sdpa_cpu_time']:.2f}x SDPA, peak +{r['peak_extra_bytes'] / 2**20:.0f} MiB",
                  file=sys.stderr, flush=True)
    return rows


def _table(rows, title):
    lines = [title, "", "| N | H | D | method | path | CPU time (s) | × SDPA (CPU) | × SDPA (wall) | "
             "peak extra (MiB) |", "|---:|---:|---:|---|---|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['N']} | {r['H']} | {r['D']} | {r['method']} | {r['path']} | {r['cpu_time_s']:.3f} | "
                     f"{r['over_sdpa_cpu_time']:.2f} | {r['over_sdpa_wall_time']:.2f} | "
                     f"{r['peak_extra_bytes'] / 2**20:.1f} |")
    return "\n".join(lines)


def _targets(rows, meta):
    out = {}
    by = {(r["N"], r["H"], r["D"], r["method"]): r for r in rows}
    for n, h, d in TARGET_CASES:
        default, kernel = by.get((n, h, d, "default")), by.get((n, h, d, "kernel"))
        if default:
            out[f"default_over_sdpa_{n}x{h}x{d}"] = {"value": default["over_sdpa_cpu_time"], "target": TARGET_TIME,
                                                     "met": default["over_sdpa_cpu_time"] <= TARGET_TIME}
        if default and kernel:  # the default's peak against the fully fused path's (O(N) memory)
            out[f"default_peak_over_kernel_{n}x{h}x{d}"] = {
                "value": default["peak_extra_bytes"] / max(1, kernel["peak_extra_bytes"]), "target": 1.0,
                "met": default["peak_extra_bytes"] <= kernel["peak_extra_bytes"]}
    from benchmarks.attention_accounting import WAN_TARGETS

    wan = next((m for m in meta if m["shape"] == "wan"), None)
    if wan:
        for key, limit in WAN_TARGETS.items():
            out[f"wan_meta_{key}"] = {"value": wan["sinkhorn"][key], "target": limit,
                                      "met": wan["sinkhorn"][key] <= limit}
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="only the N=1024 cases, no video case")
    ap.add_argument("--cases", help="comma-separated NxHxD, e.g. 4608x4x128,1024x8x64")
    ap.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated subset of {','.join(METHODS)}")
    ap.add_argument("--video-only", action="store_true", help="only the 32,760-token one-head case (and meta)")
    ap.add_argument("--no-video", action="store_true", help="skip the 32,760-token case")
    ap.add_argument("--no-meta", action="store_true", help="skip the meta-device accounting")
    ap.add_argument("--repeats", type=int, default=5, help="timed pairs per measurement (median)")
    ap.add_argument("--max-seconds", type=float, default=60.0, help="stop pairing once a measurement took this long")
    ap.add_argument("--iterations", type=int, default=ITERATIONS, help="Sinkhorn iterations (default 2)")
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds before a subprocess is abandoned")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    for m in methods:
        if m not in METHODS:
            raise SystemExit(f"unknown method {m!r}; choose from {', '.join(METHODS)}")
    if args.child:
        ((n, h, d),) = _parse_cases(args.child)
        print(json.dumps(_child(n, h, d, methods[0], args.repeats, args.max_seconds, args.iterations)))
        return 0

    load_before = os.getloadavg() if hasattr(os, "getloadavg") else None
    cases = [] if args.video_only else (_parse_cases(args.cases) if args.cases else
                                        (QUICK_CASES if args.quick else CASES))
    rows = _measure(cases, methods, args)
    video = [] if args.quick or args.no_video else _measure([VIDEO_CASE], VIDEO_METHODS, args)
    load_after = os.getloadavg() if hasattr(os, "getloadavg") else None
    meta = []
    if not args.no_meta:
        from benchmarks.attention_accounting import markdown, report

        meta = report()
    header = (f"ASAG attention on CPU: batch 1, float32, 1 thread, iterations={args.iterations}; × SDPA = median "
              "ratio to SDPA calls paired in the same process (CPU time; wall beside it); peak = resident memory "
              f"above the inputs (fresh process per row); load average {load_before} -> {load_after}")
    if rows:
        print(_table(rows, header) + "\n")
    if video:
        print(_table(video, "Video length: 32,760 tokens, one head, D 128") + "\n")
    if meta:
        print("GPU cost counted on the meta device (bf16, batch 1; H100 time is an estimate: max(FLOPs / 600 "
              "TFLOP/s, bytes / 3 TB/s) + 5 us per kernel launch)\n")
        print(markdown(meta) + "\n")
    import torch

    targets = _targets(rows, meta)
    for key, t in targets.items():
        print(f"{key}: {t['value']:.4g} (target <= {t['target']:.4g}) {'met' if t['met'] else 'MISSED'}")
    print(json.dumps({
        "benchmark": "asag_attention", "iterations": args.iterations, "dtype": "float32", "batch": 1,
        "torch": torch.__version__, "threads": 1, "cpu_count": os.cpu_count(),
        "loadavg_before": load_before, "loadavg_after": load_after, "targets": targets,
        "rows": rows, "video_rows": video, "meta": meta,
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
