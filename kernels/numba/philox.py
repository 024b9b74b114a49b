"""Philox4x32-10 and Triton's uniform/normal mapping as inlined Numba device functions.

Everything is uint64 arithmetic on values < 2³² so that LLVM sees plain 32×32→64 multiplies;
Numba promotes mixed signed/unsigned integers to float64, hence the explicit constants.
"""
import math

import numpy as np
from numba import njit

_ROUND_A = np.uint64(0xD2511F53)
_ROUND_B = np.uint64(0xCD9E8D57)
_KEY_A = np.uint64(0x9E3779B9)
_KEY_B = np.uint64(0xBB67AE85)
_MASK32 = np.uint64(0xFFFFFFFF)
_SHIFT32 = np.uint64(32)
_SCALE = np.float32(4.6566127342e-10)
_U1_MIN = np.float32(1.0e-7)
_TWO_PI = np.float32(6.283185307179586)
_INT32_SIGN = np.uint64(0x80000000)


@njit(inline="always", cache=True)
def philox4x32_10(c0, c1, c2, c3, k0, k1):
    """Ten Philox rounds on uint64-held 32-bit words; returns the four output words."""
    for _ in range(10):
        prod_b = _ROUND_B * c2
        prod_a = _ROUND_A * c0
        c0 = (prod_b >> _SHIFT32) ^ c1 ^ k0
        c1 = prod_b & _MASK32
        c2 = (prod_a >> _SHIFT32) ^ c3 ^ k1
        c3 = prod_a & _MASK32
        k0 = (k0 + _KEY_A) & _MASK32
        k1 = (k1 + _KEY_B) & _MASK32
    return c0, c1, c2, c3


@njit(inline="always", cache=True)
def uint_to_uniform(x):
    """Triton 3.x: bitcast to int32, fold negatives with ~x (= 2³²−1−x as unsigned), scale."""
    if x >= _INT32_SIGN:
        x = _MASK32 - x  # ~x of the int32, which is non-negative
    return np.float32(np.int32(x)) * _SCALE


@njit(inline="always", cache=True)
def box_muller(u1, u2):
    """Triton's pair_uniform_to_normal; transcendental parts in float64, rounded once."""
    u1 = max(_U1_MIN, u1)
    th = np.float64(_TWO_PI * u2)
    r = math.sqrt(-2.0 * math.log(np.float64(u1)))
    return np.float32(r * math.cos(th)), np.float32(r * math.sin(th))


@njit(inline="always", cache=True)
def fill_normals(buf, key0, key1, first_block, num_blocks):
    """buf[4·j + lane] = lane of randn4x(seed64, first_block + j) for j < num_blocks."""
    zero = np.uint64(0)
    for j in range(num_blocks):
        block = np.uint64(first_block + j)
        r0, r1, r2, r3 = philox4x32_10(block & _MASK32, block >> _SHIFT32, zero, zero, key0, key1)
        n0, n1 = box_muller(uint_to_uniform(r0), uint_to_uniform(r1))
        n2, n3 = box_muller(uint_to_uniform(r2), uint_to_uniform(r3))
        buf[4 * j] = n0
        buf[4 * j + 1] = n1
        buf[4 * j + 2] = n2
        buf[4 * j + 3] = n3


@njit(inline="always", cache=True)
def chunk_normals(key0, key1, first_index, count):
    """Normals for global indices first_index … first_index+count-1.

    Returns (buf, shift): index g is at buf[g - first_index + shift]. The buffer is
    chunk-sized (≤ 16 KiB) so it stays in L1: the noise never makes a trip to DRAM.
    """
    first_block = first_index >> 2
    last_block = (first_index + count - 1) >> 2
    num_blocks = last_block - first_block + 1
    buf = np.empty(4 * num_blocks, dtype=np.float32)
    fill_normals(buf, key0, key1, first_block, num_blocks)
    return buf, first_index - 4 * first_block
