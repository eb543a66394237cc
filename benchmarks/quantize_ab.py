"""Two versions of the kernels in one run: one tree's ``ufp4_compile`` (the folder given, which holds it; an
editable install's finder is set aside so the folder's copy is the one imported) timed under CUDA graphs from a
cold L2: the FP32-scale single launches at 8192^2 (codes and values, both axes) and the training step's dual
launches (dY's dual-dequantize, X's and W's two-duals). Run it once per tree, alternating, in one call:

    git archive <old commit> ufp4_compile | tar -x -C /tmp/old
    for r in 1 2; do python benchmarks/quantize_ab.py old /tmp/old; python benchmarks/quantize_ab.py new .; done

Each line: the label, the launch, microseconds (and codes / values as a fraction of copy bandwidth)."""
import os
import sys
# the tree given (not an editable install's finder): only the path finder and its peers stay
sys.meta_path = [f for f in sys.meta_path if "editable" not in repr(f).lower()]
sys.path.insert(0, os.path.abspath(sys.argv[2]))
import torch
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__))))
from common import bench_launch as bench
import ufp4_compile
from ufp4_compile.kernels import quantize as kq
from ufp4_compile.kernels import quantize_pair_launchers as launchers
tree = sys.argv[1]
print(f"# tree {tree}: {ufp4_compile.__file__}", flush=True)
assert os.path.dirname(os.path.dirname(os.path.abspath(ufp4_compile.__file__))) == os.path.abspath(sys.argv[2])
torch.manual_seed(0)
seed = torch.tensor(99, device="cuda")
x = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16) * 2
copy = bench(lambda: x.clone())
gbs = 2 * x.numel() * 2 / copy / 1e6
for spec in ("int4/16/fp32/nearest", "int4/16/fp32/stochastic", "e2m1/16/fp32/nearest", "e2m1/16/fp32/stochastic"):
    for axis in (1, 0):
        s = seed if "stochastic" in spec else None
        ms = bench(lambda: kq.quantize(x, axis, spec, 16, 3, s, 0))
        frac = x.numel() * (2 + 0.5 + 4 / 16) / ms / 1e6 / gbs
        ms_v = bench(lambda: kq.quantize_dequantize(x, axis, spec, 16, 3, s, 0))
        frac_v = x.numel() * 4 / ms_v / 1e6 / gbs
        print(f"{tree} 8192^2 {spec} rht16 axis {axis}: codes {ms*1e3:.1f} us ({frac:.3f} of copy), "
              f"values {ms_v*1e3:.1f} us ({frac_v:.3f})", flush=True)
del x
jobs = ((0, 1 << 33, torch.bfloat16), (1, 123456, torch.bfloat16))
xs = (torch.randn(8192, 1024, device="cuda") * 2).to(torch.bfloat16)
for n in (1024, 3072, 5504):
    for spec in ("int4/16/fp32/stochastic", "e2m1/16/fp32/stochastic"):
        rhts = (16, 16) if spec.startswith("int4") else (0, 16)
        dy = (torch.randn(8192, n, device="cuda") * 1e-3).to(torch.bfloat16)
        w = (torch.randn(n, 1024, device="cuda") * 0.02).to(torch.bfloat16)
        fwd = spec.replace("stochastic", "nearest")
        saved = [(*kq.quantize(t, 0, fwd, 16, rs, None, 0), 0, fwd, torch.bfloat16) for t, rs in ((w, 5), (xs, 7))]
        ms = bench(lambda: launchers.quantize_dual_dequantize(dy, spec, rhts, 3, seed, jobs, saved))
        print(f"{tree} dY dual-dequantize {spec} 8192x{n}: {ms*1e3:.1f} us", flush=True)
for n in (1024, 3072, 5504):
    w = (torch.randn(n, 1024, device="cuda") * 0.02).to(torch.bfloat16)
    fjobs = ((1, 0, torch.bfloat16), (0, 1 << 20, None))
    ms = bench(lambda: launchers.quantize_two_duals("int4/16/fp32/nearest", (xs, 3, None, (16, 16), fjobs),
                                                    (w, 5, None, (16, 16), fjobs)))
    print(f"{tree} X,W two-duals int4/16/fp32/nearest x 8192x1024 w {n}x1024: {ms*1e3:.1f} us", flush=True)
