"""Run Triton's randint4x/randn4x under the interpreter for tests/test_philox.py.

Usage: python _triton_philox_probe.py BLOCKS.npy OUT.npz SEED,STREAM,MODE ...
Runs in its own process so that TRITON_INTERPRET=1 is set before triton is imported and the
main pytest process is unaffected. MODE ``tensor`` passes seed64 = stream·2³² + seed as an
int64 tensor (two's complement above 2⁶³); ``int`` passes the seed as a Python int (< 2³¹,
stream 0). OUT.npz gets ints_K / norms_K [4, N] for the K-th configuration.
"""
import os
import sys
os.environ["TRITON_INTERPRET"] = "1"
import numpy as np  # noqa: E402
import torch  # noqa: E402
import triton  # noqa: E402
import triton.language as tl  # noqa: E402


@triton.jit
def _kern_ptr(seed_ptr, off_ptr, i0, i1, i2, i3, n0, n1, n2, n3, N: tl.constexpr):
    seed = tl.load(seed_ptr)
    _body(seed, off_ptr, i0, i1, i2, i3, n0, n1, n2, n3, N)


@triton.jit
def _kern_int(seed, off_ptr, i0, i1, i2, i3, n0, n1, n2, n3, N: tl.constexpr):
    _body(seed, off_ptr, i0, i1, i2, i3, n0, n1, n2, n3, N)


@triton.jit
def _body(seed, off_ptr, i0, i1, i2, i3, n0, n1, n2, n3, N: tl.constexpr):
    k = tl.arange(0, N)
    off = tl.load(off_ptr + k)
    a, b, c, d = tl.randint4x(seed, off)
    tl.store(i0 + k, a)
    tl.store(i1 + k, b)
    tl.store(i2 + k, c)
    tl.store(i3 + k, d)
    x, y, z, w = tl.randn4x(seed, off)
    tl.store(n0 + k, x)
    tl.store(n1 + k, y)
    tl.store(n2 + k, z)
    tl.store(n3 + k, w)


blocks = np.load(sys.argv[1]).astype(np.int64)
N = len(blocks)
off = torch.from_numpy(blocks)
results = {}
for k, spec in enumerate(sys.argv[3:]):
    seed, stream, mode = spec.split(",")
    seed, stream = int(seed), int(stream)
    ints = [torch.empty(N, dtype=torch.int32) for _ in range(4)]
    norms = [torch.empty(N, dtype=torch.float32) for _ in range(4)]
    if mode == "tensor":
        seed64 = (stream << 32) | seed
        seed64 = seed64 - 2**64 if seed64 >= 2**63 else seed64
        _kern_ptr[(1,)](torch.tensor([seed64], dtype=torch.int64), off, *ints, *norms, N=N)
    else:
        _kern_int[(1,)](seed, off, *ints, *norms, N=N)
    results[f"ints_{k}"] = np.stack([i.numpy().view(np.uint32) for i in ints])
    results[f"norms_{k}"] = np.stack([n.numpy() for n in norms])
np.savez(sys.argv[2], **results)
