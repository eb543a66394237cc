"""The quantize kernels at the shapes of the issue-6 GPT's training step, and their bits on the GPU.

Per (format, RHT, shape, axis): the kernel's time under a CUDA graph from a cold L2 (so launch cost is out, as
in a step run with CUDA graphs, and the operands come from HBM, as in a step; ``--timing warm-graph``: replayed alone,
as until 7491c39) as a fraction of copy bandwidth, in ``values`` mode (bf16 in, the dequantized bf16 operand
out) and ``codes`` mode (codes + scales out); and whether codes, scales and values equal the pure-PyTorch
reference (``ufp4_compile.numerics``) computed on the same GPU tensor, one group pushed through the 2**64
guard of the RHT. X is 8192 x 1024 (and 8192 x 2816 before the down projection); dY has the same shapes.

    python benchmarks/quantize_shapes.py > quantize_shapes.log      # a few seconds per line (GPU)
"""
import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import bench_launch as bench  # noqa: E402
from common import parse_timed_args  # noqa: E402

import ufp4_compile.numerics as ref  # noqa: E402
from ufp4_compile import lowering  # noqa: E402

# The ops' CUDA kernels: without this, torch.ops.ufp4 on CUDA tensors runs the pure-PyTorch reference (and the
# bit check below would compare the reference with itself).
lowering.register()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parse_timed_args(parser)
    if not torch._C._dispatch_has_kernel_for_dispatch_key("ufp4::quantize", "CUDA"):
        print("the ufp4 ops have no CUDA kernels registered (no GPU?): nothing to measure", file=sys.stderr)
        return 2
    seed = torch.tensor(7, device="cuda")
    x0 = torch.empty(16384, 4096, device="cuda", dtype=torch.bfloat16)
    copy_ms = bench(lambda: x0.clone())
    copy_gbs = 2 * x0.numel() * 2 / copy_ms / 1e6
    print(f"copy {copy_gbs:.0f} GB/s", flush=True)
    bad = 0
    specs = [("int4/16/fp32/nearest", 16), ("int4/16/fp32/stochastic", 16), ("e2m1/16/e4m3/nearest", 0),
             ("e2m1/16/e4m3/stochastic", 16), ("e2m1/32/e8m0/stochastic", 16), ("int4/16/e4m3/stochastic", 16)]
    for spec, rht in specs:
        shapes = ((8192, 1024), (8192, 2816)) if spec.startswith("int4/16/fp32") else ((8192, 1024),)
        for shape in shapes:
            for axis in (1, 0):
                x = torch.randn(*shape, device="cuda", dtype=torch.bfloat16) * 3
                x[5, 17] = 1e30  # one group through the 2**64 guard
                q = ref.quantize(x, axis, spec, rht=rht, rht_seed=3, seed=7, offset=16)
                rv, _ = ref.quantize_dequantize(x, axis, spec, rht=rht, rht_seed=3, seed=7, offset=16)
                codes, scales, ts = torch.ops.ufp4.quantize(x, axis, spec, rht, 3, seed, 16)
                values, _ = torch.ops.ufp4.quantize_dequantize(x, axis, spec, rht, 3, seed, 16, torch.bfloat16)
                same_ref = (torch.equal(codes, q.codes) and torch.equal(scales.view(torch.uint8) if scales.element_size() == 1 else scales,
                            q.scales.view(torch.uint8) if q.scales.element_size() == 1 else q.scales)
                            and torch.equal(values.view(torch.int16), rv.view(torch.int16)))
                bad += not same_ref
                for mode in ("values", "codes"):
                    if mode == "values":
                        f = lambda x, s: torch.ops.ufp4.quantize_dequantize(x, axis, spec, rht, 3, s, 16, torch.bfloat16)
                        nbytes = x.numel() * 4
                    else:
                        f = lambda x, s: torch.ops.ufp4.quantize(x, axis, spec, rht, 3, s, 16)
                        nbytes = x.numel() * 2 + x.numel() // 2 + x.numel() // 16 * 4
                    e = bench(lambda: f(x, seed))
                    print(f"{spec:26s} rht{rht:<3d} {str(shape):13s} axis {axis} {mode:6s} {e*1e3:7.1f} us "
                          f"({nbytes/e/1e6/copy_gbs:.2f} of copy)  kernel==reference {same_ref}", flush=True)
    bad += pairs(seed)
    print("MISMATCHES vs reference:", bad)
    return 1 if bad else 0


def pairs(seed) -> int:
    """Two quantizations in one launch against the two single launches, under a CUDA graph (kernel time only;
    the pairing saves a launch, which this leaves out): one tensor's row-wise and column-wise quantizations
    (X's values and codes in the forward, dY's values both ways in the backward) in the one-read dual kernel
    and in the pair kernel (``-pair``: two reads), and two tensors' row-wise values or column-wise codes (X
    and W). Each launch's results against the single launches', bit for bit. Returns the number of
    mismatches."""
    from ufp4_compile.kernels.quantize_pair_launchers import quantize_pair

    bad = 0
    w_seed = torch.tensor(11, device="cuda")
    for spec in ("int4/16/fp32/nearest", "int4/16/fp32/stochastic"):
        for x_shape, w_shape in (((8192, 1024), (1024, 1024)), ((8192, 1024), (2816, 1024)),
                                 ((8192, 2816), (1024, 2816))):
            x = torch.randn(*x_shape, device="cuda", dtype=torch.bfloat16) * 3
            w = torch.randn(*w_shape, device="cuda", dtype=torch.bfloat16)
            cases = {"x row values + x column codes": (((1, 16, torch.bfloat16), (0, 16, None)), None),
                     "x row values + x column codes -pair": (((1, 16, torch.bfloat16), (0, 16, None)), None),
                     "x row values + x column values": (((1, 16, torch.bfloat16), (0, 9, torch.bfloat16)), None),
                     "x row values + x column values -pair": (((1, 16, torch.bfloat16), (0, 9, torch.bfloat16)), None),
                     "x row values + w row values": (((1, 16, torch.bfloat16), (1, 0, torch.bfloat16)), (w, 5, w_seed)),
                     "x column codes + w column codes": (((0, 16, None), (0, 0, None)), (w, 5, w_seed))}
            for name, (jobs, other) in cases.items():
                inputs = [(x, 3, seed), other or (x, 3, seed)]

                def single(job, t, r, s):
                    axis, offset, dtype = job
                    if dtype is None:
                        return torch.ops.ufp4.quantize(t, axis, spec, 16, r, s, offset)
                    return torch.ops.ufp4.quantize_dequantize(t, axis, spec, 16, r, s, offset, dtype)

                dual = not name.endswith("-pair")
                both = quantize_pair(x, spec, 16, 3, seed, jobs, other=other, dual=dual)
                alone = [single(job, *i) for job, i in zip(jobs, inputs)]
                same = all(torch.equal(a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8))
                           for pa, pb in zip(both, alone) for a, b in zip(pa, pb))
                bad += not same
                paired_ms = bench(lambda: quantize_pair(x, spec, 16, 3, seed, jobs, other=other, dual=dual))
                singles_ms = bench(lambda: [single(job, *i) for job, i in zip(jobs, inputs)])
                print(f"pair {spec:26s} x{str(x_shape):13s} w{str(w_shape):13s} {name:37s} "
                      f"{paired_ms*1e3:7.1f} us paired, {singles_ms*1e3:7.1f} us two launches "
                      f"({paired_ms/singles_ms:.2f})  paired==single {same}", flush=True)
    return bad


if __name__ == "__main__":
    sys.exit(main())
