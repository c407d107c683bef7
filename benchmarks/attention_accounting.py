"""What an attention call costs on a GPU, counted on the meta device: ops, bytes moved, temporaries, FLOPs.

Nothing runs: on the meta device every op only computes shapes, so a call at video length is
counted in seconds, without a GPU. The meta device takes the same path as CUDA
(``asag_core.sinkhorn_paths``: the kernel path), so the counts are those of the CUDA call.

- ``ops``: every aten op dispatched (a ``TorchDispatchMode``), views included;
  ``kernel_ops`` the non-view ones, each a kernel launch on a GPU;
- ``bytes_moved``: input plus output bytes of every non-view op (a tensor's elements times their
  size, but a broadcast view only the storage it spans);
- ``largest_temporary``: the largest tensor any op returned;
- ``flops``: torch's FLOP counter (matmuls and the attention kernels; elementwise work is not counted).

``h100_estimate`` turns that into a time: an estimate, not a measurement, from a roofline with
per-launch overhead, ``max(flops / 600 TFLOP/s, bytes / 3 TB/s) + kernel_ops * 5 us`` (600 TFLOP/s:
effective dense bf16 of an H100 SXM in attention kernels, ~60 % of its 989 peak; 3 TB/s: ~90 % of
its 3.35 TB/s HBM3). ``flash_baseline`` counts the layer's own flash attention at the same shape the
same way. Used by ``benchmarks.attention`` and importable by other benchmarks (the cost table).
"""

from __future__ import annotations

import os
import sys

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import FlopCounterMode

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

#: The estimate's machine: effective bf16 dense FLOP/s, HBM bytes/s, seconds per kernel launch.
H100 = {"flops_per_s": 600e12, "bytes_per_s": 3e12, "launch_s": 5e-6}

#: The issue's targets for the Sinkhorn call at the Wan shape (bf16, counted on meta).
WAN_TARGETS = {"ops": 500, "largest_temporary": 512 * 2**20, "bytes_moved": 100e9}

#: (name, batch, heads, tokens, head dim) of the issue's shapes.
SHAPES = [("sdxl", 1, 20, 1024, 64), ("flux", 1, 24, 4608, 128), ("wan", 1, 40, 32760, 128)]


def _span_bytes(t: torch.Tensor) -> int:
    """Bytes of the tensor's elements, or of the storage it spans if less (a stride-0 broadcast)."""
    if t.numel() == 0:
        return 0
    extent = 1 + sum((size - 1) * abs(stride) for size, stride in zip(t.shape, t.stride(), strict=True))
    return min(extent, t.numel()) * t.element_size()


class _Counter(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = self.kernel_ops = self.bytes_moved = self.largest = 0
        self.by_op = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.ops += 1
        name = func.overloadpacket.__name__
        self.by_op[name] = self.by_op.get(name, 0) + 1
        if not func.is_view and name not in ("detach", "alias", "lift_fresh"):
            self.kernel_ops += 1
            tensors = [x for x in tree_flatten((args, kwargs))[0] + tree_flatten(out)[0] if isinstance(x, torch.Tensor)]
            self.bytes_moved += sum(_span_bytes(t) for t in tensors)
            self.largest = max([self.largest] + [_span_bytes(t) for t in tree_flatten(out)[0]
                                                 if isinstance(t, torch.Tensor)])
        return out


def account(fn, *args, **kwargs) -> dict:
    """Counts of ``fn(*args, **kwargs)`` (meta tensors): ops, kernel_ops, bytes_moved, largest_temporary, flops."""
    flops = FlopCounterMode(display=False)
    with flops, _Counter() as counter:
        fn(*args, **kwargs)
    return {
        "ops": counter.ops,
        "kernel_ops": counter.kernel_ops,
        "bytes_moved": counter.bytes_moved,
        "largest_temporary": counter.largest,
        "flops": flops.get_total_flops(),
        "ops_by_name": dict(sorted(counter.by_op.items(), key=lambda kv: -kv[1])),
    }


def h100_estimate(counts: dict, machine=H100) -> float:
    """Seconds on an H100-class GPU: max(FLOPs / rate, bytes / bandwidth) + launches * overhead (an estimate)."""
    roof = max(counts["flops"] / machine["flops_per_s"], counts["bytes_moved"] / machine["bytes_per_s"])
    return roof + counts["kernel_ops"] * machine["launch_s"]


def meta_qkv(b, h, n, d, dtype=torch.bfloat16, dv=None):
    """q, k, v (B, H, N, D) on the meta device."""
    return tuple(torch.empty(b, h, n, x, device="meta", dtype=dtype) for x in (d, d, dv or d))


def flash_baseline(q, k, v) -> dict:
    """The layer's own attention at this shape: one CUDA flash-attention call (counted, not run)."""
    return account(lambda: torch.ops.aten._scaled_dot_product_flash_attention(q, k, v, 0.0, False, False))


def sinkhorn_call(q, k, v, **settings):
    """The pack's attention on (B, H, N, D) tensors with the node's defaults (2 iterations, lam 1, adversarial)."""
    from asag_core import adversarial_attention

    kw = dict(iterations=2, lam=1.0, cost="adversarial", skip_reshape=True, skip_output_reshape=True)
    kw.update(settings)
    return adversarial_attention(q, k, v, q.shape[1], **kw)


def shape_report(name, b, h, n, d, dtype=torch.bfloat16, **settings) -> dict:
    """Counts, estimate and path of the Sinkhorn call and of flash attention at one shape."""
    from asag_core import attention_path

    q, k, v = meta_qkv(b, h, n, d, dtype)
    ours, flash = account(sinkhorn_call, q, k, v, **settings), flash_baseline(q, k, v)
    return {
        "shape": name, "batch": b, "heads": h, "tokens": n, "head_dim": d, "dtype": str(dtype).replace("torch.", ""),
        "path": attention_path(q, k, v, h, skip_reshape=True),
        "sinkhorn": {key: ours[key] for key in ("ops", "kernel_ops", "bytes_moved", "largest_temporary", "flops")},
        "sinkhorn_h100_s": h100_estimate(ours),
        "flash": {key: flash[key] for key in ("ops", "kernel_ops", "bytes_moved", "largest_temporary", "flops")},
        "flash_h100_s": h100_estimate(flash),
        "sinkhorn_ops_by_name": ours["ops_by_name"],
    }


def report(shapes=SHAPES, dtype=torch.bfloat16) -> list:
    return [shape_report(*shape, dtype=dtype) for shape in shapes]


def markdown(rows) -> str:
    lines = [
        "| shape | B×H×N×D | path | ops (kernels) | moved (GB) | largest temp (MiB) | TFLOP | "
        "H100 est. (ms) | flash est. (ms) | × flash |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        s = r["sinkhorn"]
        lines.append(
            f"| {r['shape']} | {r['batch']}×{r['heads']}×{r['tokens']}×{r['head_dim']} | {r['path']} | "
            f"{s['ops']} ({s['kernel_ops']}) | {s['bytes_moved'] / 1e9:.1f} | {s['largest_temporary'] / 2**20:.0f} | "
            f"{s['flops'] / 1e12:.2f} | {r['sinkhorn_h100_s'] * 1e3:.2f} | {r['flash_h100_s'] * 1e3:.2f} | "
            f"{r['sinkhorn_h100_s'] / r['flash_h100_s']:.1f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown(report()))
