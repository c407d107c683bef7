"""The benchmarks' shared measuring helpers: random-weight models, timed sampling, memory, the machine.

- ``patcher``: a ModelPatcher around a random-weight model built from a ComfyUI model config, with
  the host tests' own builder (``tests/tiny_models.py``: one place for how tiny models are made);
  ``hold_batch_slot`` and ``with_extra_row``: the separate-pass and one-more-row references;
- ``timed_sampler`` / ``sample_timed``: Euler through SamplerCustomAdvanced, each model call
  (one guided prediction) timed as (thread CPU seconds, wall seconds);
- ``interleaved``: run variants in interleaved rounds after one warm-up round;
- ``SinkhornTimer``: seconds inside the pack's Sinkhorn attention, per variant;
- memory: ``peak_rss`` (VmHWM), ``torch_allocations`` (allocator events), ``window_stats``,
  and ``model_calls`` (diffusion-model calls and rows);
- ``machine`` and ``mib`` for the reports.

Times are the sampling thread's CPU time (``time.thread_time``): on a shared machine the wall clock
also counts the time other jobs hold the core, while with 1 torch thread all of a step's work runs
on this thread.
"""

from __future__ import annotations

import contextlib
import os
import platform
import statistics
import sys
import time

import torch

from .host import TESTS, pack_module


def _tests_on_path():
    if TESTS not in sys.path:
        sys.path.insert(0, TESTS)


def patcher(model_config, seed=0, dtype=torch.float32):
    """A ModelPatcher (CPU) of ``model_config``'s model with deterministic random weights."""
    _tests_on_path()
    from tiny_models import _patcher

    return _patcher(model_config, seed=seed, dtype=dtype)


def hold_batch_slot(model):
    """The tests' way to make another node hold ``sampler_calc_cond_batch_function``
    (``tests/sampling.py``), which sends the ASAG node's adversarial branch to a separate pass."""
    _tests_on_path()
    from sampling import hold_batch_slot as held

    return held(model)


def with_extra_row(model):
    """A clone whose batched call also computes one more copy of the cond rows and drops it:
    what one more row in CFG's call costs the plain model (no ASAG), inputs and output included."""
    import comfy.samplers

    def one_more_row(args):
        conds = list(args["conds"])
        return comfy.samplers.calc_cond_batch(args["model"], conds + [conds[0]], args["input"], args["sigma"],
                                              args["model_options"])[:-1]

    held = model.clone()
    held.set_model_sampler_calc_cond_batch_function(one_more_row)
    return held


# ---------------------------------------------------------------------------
# timing
# ---------------------------------------------------------------------------

def timed_sampler(step_times):
    """Euler, timing every model call (one guided prediction): (thread CPU seconds, wall seconds)."""
    import comfy.samplers

    @torch.no_grad()
    def sample(model, x, sigmas, extra_args=None, callback=None, disable=None):
        extra_args = {} if extra_args is None else extra_args
        s_in = x.new_ones([x.shape[0]])
        for i in range(len(sigmas) - 1):
            start, start_cpu = time.perf_counter(), time.thread_time()
            denoised = model(x, sigmas[i] * s_in, **extra_args)
            step_times.append((time.thread_time() - start_cpu, time.perf_counter() - start))
            x = x + (x - denoised) / sigmas[i] * (sigmas[i + 1] - sigmas[i])
        return x

    return comfy.samplers.KSAMPLER(sample)


def sample_timed(guider, model, latent, steps, seed=0, scheduler="normal"):
    """Sample ``steps`` Euler steps with SamplerCustomAdvanced from ``latent`` (a tensor);
    returns ([(CPU s, wall s) per step], output)."""
    from comfy_extras import nodes_custom_sampler as ncs

    times = []
    (noise,) = ncs.RandomNoise().get_noise(seed)
    (sigmas,) = ncs.BasicScheduler().get_sigmas(model, scheduler, steps, 1.0)
    out, _ = ncs.SamplerCustomAdvanced().sample(noise, guider, timed_sampler(times), sigmas, {"samples": latent})
    return times, out["samples"]


def interleaved(runs: dict, repeats: int, steps: int = 1, timer=None) -> dict:
    """``runs``: {variant: fn(steps) -> [(CPU s, wall s) per step]}. One warm-up step each, then
    ``repeats`` rounds calling every variant in turn for ``steps`` steps; returns {variant:
    [(CPU s, wall s)]}. A ``SinkhornTimer`` is cleared after the warm-up and labelled per call."""
    for fn in runs.values():
        fn(1)
    if timer is not None:
        timer.seconds.clear()
    times = {v: [] for v in runs}
    for _ in range(repeats):
        for v, fn in runs.items():
            if timer is not None:
                timer.variant = v
            times[v] += fn(steps)
    return times


def medians(times: dict) -> tuple[dict, dict]:
    """({variant: median CPU s}, {variant: median wall s}) of interleaved's result."""
    return ({v: statistics.median(c for c, _ in t) for v, t in times.items()},
            {v: statistics.median(w for _, w in t) for v, t in times.items()})


class SinkhornTimer:
    """Seconds spent inside the Sinkhorn attention during real sampling steps, per variant:
    wraps ``nodes.adversarial_call.sinkhorn_attention``, the one place the model calls it from."""

    def __init__(self, host):
        self.module = pack_module(host, "nodes.adversarial_call")
        self.variant = None
        self.seconds = {}

    def __enter__(self):
        real = self.real = self.module.sinkhorn_attention

        def timed(*args, **kwargs):
            start = time.thread_time()
            try:
                return real(*args, **kwargs)
            finally:
                self.seconds[self.variant] = self.seconds.get(self.variant, 0.0) + time.thread_time() - start

        self.module.sinkhorn_attention = timed
        return self

    def __exit__(self, *exc):
        self.module.sinkhorn_attention = self.real


# ---------------------------------------------------------------------------
# memory
# ---------------------------------------------------------------------------

def status_bytes(key):
    """A memory field of /proc/self/status (``VmRSS``, ``VmHWM``) in bytes; None where there is none."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _trim_heap():
    """Hand freed heap memory back to the OS (glibc), so RSS starts from what is live."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def reset_peak_rss() -> bool:
    """Trims the heap and resets the peak-RSS mark (Linux); False where the mark cannot be reset."""
    _trim_heap()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


@contextlib.contextmanager
def peak_rss():
    """Extra peak resident memory (bytes) of the block: VmHWM after, minus VmRSS at the reset."""
    result = {}
    ok = reset_peak_rss()
    base = status_bytes("VmRSS")
    yield result
    result["peak_rss_extra"] = (status_bytes("VmHWM") - base) if ok else None
    result["peak_rss"] = status_bytes("VmHWM")


@contextlib.contextmanager
def torch_allocations():
    """Live torch CPU bytes over the block (peak of the allocator events' running sum),
    the total allocated and the largest single allocation."""
    from torch.profiler import ProfilerActivity, profile

    result = {}
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        yield result
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    events.sort(key=lambda e: e.start_ns())
    live = peak = total = largest = 0
    for e in events:
        if not str(e.device_type()).endswith("CPU"):
            continue
        n = e.nbytes()
        live += n
        peak = max(peak, live)
        if n > 0:
            total += n
            largest = max(largest, n)
    result.update(torch_peak=peak, torch_total=total, torch_largest=largest)
    result["events"] = [(e.start_ns(), e.nbytes()) for e in events if str(e.device_type()).endswith("CPU")]


def window_stats(events, start_ns, stop_ns):
    """Largest allocation and peak rise of live torch bytes between two time.time_ns() stamps
    (the profiler's clock)."""
    live = peak = largest = 0
    for t, n in events:
        if start_ns <= t <= stop_ns:
            live += n
            peak = max(peak, live)
            largest = max(largest, n)
    return largest, peak


@contextlib.contextmanager
def model_calls(model):
    """Counts the diffusion model's forward calls and the rows they computed (to tell which
    path a variant took: the fast path is one call of cond + uncond + adversarial rows)."""
    counts = {"calls": 0, "rows": 0}

    def count(module, args):
        counts["calls"] += 1
        counts["rows"] += args[0].shape[0]

    handle = model.model.diffusion_model.register_forward_pre_hook(count)
    try:
        yield counts
    finally:
        handle.remove()


# ---------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------

def machine():
    model_name = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model_name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    import comfyui_version

    return {"cpu": model_name, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(), "comfyui": comfyui_version.__version__,
            "loadavg_start": load}


def finish_machine(info):
    """Add the load average at the end of the run to ``machine()``'s record."""
    try:
        info["loadavg_end"] = os.getloadavg()
    except OSError:
        pass
    return info


def mib(b):
    return None if b is None else round(b / 2**20, 1)
