"""Time and peak memory of ASAG attention (dense, chunked) against plain SDPA on CPU.

Run from the repository root::

    python -m benchmarks.attention            # every case (several minutes)
    python -m benchmarks.attention --quick    # N = 1024 only
    python -m benchmarks.attention --cases 4608x24x128,1024x8x64
    python benchmarks/attention.py --methods sdpa,chunked,portable

Cases are N x H x D (Nq = Nk = N, batch 1, float32, ``iterations=2`` unless
``--iterations`` says otherwise,
``lam=1``, cost "adversarial", inputs ``torch.randn``, layout (B, H, N, D)
with ``skip_reshape``/``skip_output_reshape`` so no method pays for a reshape).

Methods
-------
``sdpa``
    ``torch.nn.functional.scaled_dot_product_attention(q, k, v)``: the baseline.
``dense``
    ``adversarial_attention`` forced onto the dense path (``memory_budget_bytes``
    huge): the whole (H, N, N) logits tensor and its temporaries.
``chunked``
    ``adversarial_attention`` forced onto the memory-bounded path with the
    ``chunk_size`` the default (auto) path picks; the table's "auto" column says
    which path the default settings take for that case (small cases fit the
    default 256 MiB budget and run dense). On CPU this is the fused-kernel path.
``portable`` (not run unless asked for)
    the memory-bounded path with the fused CPU kernel hidden: the matmul /
    logsumexp block implementation that other devices use.

Measurement
-----------
Every (case, method) runs in a fresh Python subprocess, so no allocator cache,
heap fragmentation or high-water mark carries over between measurements. In
the subprocess:

1. q, k, v are allocated and filled, and the method is run once on a tiny
   input (loads kernels, starts the thread pool);
2. the peak-RSS mark is reset (Linux: writing ``5`` to ``/proc/self/clear_refs``
   sets ``VmHWM`` to the current RSS) and the current RSS is read as baseline;
3. the method runs once on the real input; **peak extra memory** is
   ``VmHWM - baseline``: every byte the call made resident on top of its inputs,
   its output included (the (1, H, N, D) output is the same for all methods).
   Where ``clear_refs`` is unavailable the fallback is
   ``ru_maxrss - baseline`` (``resource.getrusage``), which is the same number
   provided nothing before the baseline peaked higher (true here: the inputs
   are allocated once and never copied);
4. the method runs ``--repeats`` more times, each run paired with a plain
   SDPA call on the same inputs in the same process (alternating which goes
   first); **time** is the median of the method's warm runs
   (``time.perf_counter``) and **x SDPA** the median of the per-pair ratios, so
   a load change on a shared machine hits both sides of a ratio alike. Once a
   measurement has taken ``--max-seconds`` it stops repeating (at least one
   pair).

CPU timings depend on the machine and on anything else running on it; the
JSON line records the thread count and the load average before and after.

Output: a markdown table, then exactly one JSON line with every row and the
summary at N=4608, H=24, D=128 (the issue's targets: chunked peak below 1/8 of
dense, chunked time at most 3x SDPA).
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

FULL_CASES = [(n, h, d) for n in (1024, 4096, 4608) for h in (8, 24) for d in (64, 128)]
QUICK_CASES = [(n, h, d) for n, h, d in FULL_CASES if n == 1024]
REFERENCE = (4608, 24, 128)
METHODS = ("sdpa", "dense", "chunked", "portable")
DEFAULT_METHODS = ("sdpa", "dense", "chunked")
ITERATIONS = 2
TARGET_MEM = 1 / 8
TARGET_TIME = 3.0


# ---------------------------------------------------------------------------
# child: one measurement
# ---------------------------------------------------------------------------


def _status_bytes(field: str):
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _rss_bytes() -> int:
    rss = _status_bytes("VmRSS")
    if rss is not None:
        return rss
    return _maxrss_bytes()  # no /proc: the high-water mark is the best available


def _maxrss_bytes() -> int:
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r if sys.platform == "darwin" else r * 1024


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _make_call(method, q, k, v, heads, iterations=ITERATIONS):
    import torch.nn.functional as F

    import asag_core.sinkhorn as sk

    n = q.shape[2]
    kw = dict(iterations=iterations, lam=1.0, cost="adversarial", skip_reshape=True, skip_output_reshape=True)
    if method == "sdpa":
        return lambda: F.scaled_dot_product_attention(q, k, v)
    if method == "dense":
        return lambda: sk.adversarial_attention(q, k, v, heads, memory_budget_bytes=1 << 62, **kw)
    if method in ("chunked", "portable"):
        if method == "portable":
            import asag_core.sinkhorn_fused as fused

            fused._FLASH_CPU = None
        rows = sk._auto_chunk_rows(q.shape[0] * heads, n, sk.DEFAULT_MEMORY_BUDGET_BYTES)
        return lambda: sk.adversarial_attention(q, k, v, heads, chunk_size=rows, **kw)
    raise ValueError(f"unknown method {method!r}")


def _child(n, h, d, method, repeats, max_seconds, iterations) -> dict:
    import torch

    sys.path.insert(0, ROOT)
    import asag_core.sinkhorn as sk

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, h, n, d, generator=g) for _ in range(3))
    tiny = [t[:, :, :16].contiguous() for t in (q, k, v)]
    _make_call(method, *tiny, h, iterations)()  # warm-up on a tiny input
    _make_call("sdpa", *tiny, h)()

    dense_bytes = h * n * n * 4
    auto = "dense" if dense_bytes <= sk.DEFAULT_MEMORY_BUDGET_BYTES else "chunked"
    call = _make_call(method, q, k, v, h, iterations)
    sdpa = _make_call("sdpa", q, k, v, h)

    exact = _reset_peak()
    base = _rss_bytes()
    base_max = _maxrss_bytes()
    t0 = time.perf_counter()
    out = call()
    first = time.perf_counter() - t0
    if exact:
        peak = _status_bytes("VmHWM") - base
        mem_method = "VmHWM after clear_refs"
    else:
        peak = _maxrss_bytes() - max(base, base_max)
        mem_method = "ru_maxrss"
    assert out.shape == (1, h, n, d) and bool(torch.isfinite(out).all())
    del out

    def timed(fn):
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0

    times, sdpa_times = [], []
    spent = first
    for i in range(repeats):
        if times and spent > max_seconds:
            break
        if method == "sdpa":
            times.append(timed(call))
            sdpa_times.append(times[-1])
        elif i % 2 == 0:
            sdpa_times.append(timed(sdpa))
            times.append(timed(call))
        else:
            times.append(timed(call))
            sdpa_times.append(timed(sdpa))
        spent += times[-1] + (sdpa_times[-1] if method != "sdpa" else 0.0)
    ratios = [t / s for t, s in zip(times, sdpa_times, strict=True)]
    return {
        "N": n,
        "H": h,
        "D": d,
        "method": method,
        "iterations": iterations,
        "time_s": statistics.median(times),
        "times_s": times,
        "first_s": first,
        "paired_sdpa_times_s": sdpa_times,
        "over_sdpa_time": statistics.median(ratios),
        "peak_extra_bytes": int(peak),
        "memory_method": mem_method,
        "auto_path": auto,
        "threads": torch.get_num_threads(),
    }


# ---------------------------------------------------------------------------
# parent: run the cases, print the table and the JSON line
# ---------------------------------------------------------------------------


def _parse_cases(spec):
    cases = []
    for item in spec.split(","):
        parts = item.strip().lower().split("x")
        if len(parts) != 3 or not all(p.isdigit() for p in parts):
            raise SystemExit(f"--cases wants NxHxD items, e.g. 4608x24x128; got {item!r}")
        cases.append(tuple(int(p) for p in parts))
    return cases


def _run_child(case, method, args) -> dict:
    n, h, d = case
    cmd = [
        sys.executable,
        os.path.abspath(__file__),
        "--child",
        f"{n}x{h}x{d}",
        "--methods",
        method,
        "--repeats",
        str(args.repeats),
        "--max-seconds",
        str(args.max_seconds),
        "--iterations",
        str(args.iterations),
    ]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=args.timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{method} {n}x{h}x{d} failed:\n{proc.stderr[-4000:]}")
    row = json.loads(proc.stdout.strip().splitlines()[-1])
    assert method == "sdpa" or row["iterations"] == args.iterations, row
    return row


def _mib(b):
    return b / 2**20


def _summary(rows, case):
    by = {r["method"]: r for r in rows if (r["N"], r["H"], r["D"]) == case}
    s = {"summary_case": "N={},H={},D={}".format(*case)}
    if "chunked" in by and "dense" in by:
        s["chunked_over_dense_peak_mem"] = by["chunked"]["peak_extra_bytes"] / max(1, by["dense"]["peak_extra_bytes"])
    # time ratios to SDPA: paired in the method's own process (see the docstring)
    for m in ("chunked", "dense", "portable"):
        if m in by:
            s[f"{m}_over_sdpa_time"] = by[m]["over_sdpa_time"]
    if "chunked" in by and "dense" in by:
        s["chunked_over_dense_time"] = by["chunked"]["time_s"] / by["dense"]["time_s"]
    if "chunked_over_dense_peak_mem" in s:
        s["meets_memory_target"] = s["chunked_over_dense_peak_mem"] < TARGET_MEM
    if "chunked_over_sdpa_time" in s:
        s["meets_time_target"] = s["chunked_over_sdpa_time"] <= TARGET_TIME
    return s


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="only the N=1024 cases")
    ap.add_argument("--cases", help="comma-separated NxHxD, e.g. 4608x24x128,1024x8x64")
    ap.add_argument(
        "--methods", default=",".join(DEFAULT_METHODS), help=f"comma-separated subset of {','.join(METHODS)}"
    )
    ap.add_argument("--repeats", type=int, default=3, help="timed warm runs per measurement (median)")
    ap.add_argument("--max-seconds", type=float, default=60.0, help="stop repeating once a measurement took this long")
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

    cases = _parse_cases(args.cases) if args.cases else (QUICK_CASES if args.quick else FULL_CASES)
    load_before = os.getloadavg() if hasattr(os, "getloadavg") else None
    rows = []
    for case in cases:
        for method in methods:
            r = _run_child(case, method, args)
            rows.append(r)
            print(
                f"# {method:8s} N={case[0]} H={case[1]} D={case[2]}: {r['time_s']:.3f} s "
                f"({r['over_sdpa_time']:.2f}x SDPA), "
                f"peak +{_mib(r['peak_extra_bytes']):.0f} MiB",
                file=sys.stderr,
                flush=True,
            )
    load_after = os.getloadavg() if hasattr(os, "getloadavg") else None

    print(
        f"ASAG attention on CPU: batch 1, float32, iterations={args.iterations}; time = median of warm runs; "
        "× SDPA = median ratio to SDPA runs paired in the same process; "
        "peak = resident memory above the inputs (fresh process per row)\n"
    )
    print("| N | H | D | method | auto path | time (s) | × SDPA time | peak extra (MiB) | × dense peak |")
    print("|---:|---:|---:|---|---|---:|---:|---:|---:|")
    for case in cases:
        by = {r["method"]: r for r in rows if (r["N"], r["H"], r["D"]) == case}
        for method in methods:
            r = by[method]
            t_ratio = f"{r['over_sdpa_time']:.2f}"
            m_ratio = f"{r['peak_extra_bytes'] / max(1, by['dense']['peak_extra_bytes']):.3f}" if "dense" in by else ""
            auto = r["auto_path"] if method != "sdpa" else ""
            print(
                f"| {case[0]} | {case[1]} | {case[2]} | {method} | {auto} | {r['time_s']:.3f} | {t_ratio} | "
                f"{_mib(r['peak_extra_bytes']):.1f} | {m_ratio} |"
            )

    summary_case = REFERENCE if REFERENCE in cases else max(cases, key=lambda c: c[0] * c[0] * c[1] * c[2])
    summary = _summary(rows, summary_case)
    print()
    for key in ("chunked_over_dense_peak_mem", "chunked_over_sdpa_time"):
        if key in summary:
            print(f"{summary['summary_case']}: {key} = {summary[key]:.3f}")
    import torch

    record = {
        "benchmark": "asag_attention_cpu",
        "iterations": args.iterations,
        "dtype": "float32",
        "batch": 1,
        "torch": torch.__version__,
        "threads": rows[0]["threads"] if rows else None,
        "cpu_count": os.cpu_count(),
        "loadavg_before": load_before,
        "loadavg_after": load_after,
        "targets": {"chunked_over_dense_peak_mem": f"< {TARGET_MEM}", "chunked_over_sdpa_time": f"<= {TARGET_TIME}"},
        **summary,
        "rows": rows,
    }
    print(json.dumps(record))
    return 0


if __name__ == "__main__":
    if ROOT not in sys.path:
        sys.path.insert(0, ROOT)
    sys.exit(main())
