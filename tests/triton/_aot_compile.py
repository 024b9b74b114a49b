"""Compile the Triton kernels ahead of time for an sm_90 GPU, with no GPU present (Triton's
frontend → PTX → ptxas). Run as a script WITHOUT TRITON_INTERPRET; prints one JSON object:
{variant: {"ld_v4": …, "st_v4": …}} or {"error": …}. Used by test_triton_compile.py."""
import importlib
import json
import re
import sys

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

TARGET = GPUTarget("cuda", 90, 32)
STEP_TYPES = dict(x_ptr="*fp32", m_ptr="*fp32", out_ptr="*fp32", noise_ptr="*fp32", t_ptr="*i64",
                  p_ptr="*i64",
                  ac_ptr="*fp64", key_ptr="*i64", n="i32", per_sample="i32", last_step="i32", seed_word="i32",
                  stream_word="i32", ctr_lo="i32", ctr_hi="i32", clip="fp32", eta="fp32")
# What the launcher's specialisation gives for 16-byte aligned tensors and n % 16 == 0.
ALIGNED = ("x_ptr", "m_ptr", "out_ptr", "noise_ptr", "x0_ptr", "t_ptr", "p_ptr", "ac_ptr", "key_ptr", "n")


def _kernel(module, name):
    return getattr(importlib.import_module(f"fastddpm.kernels.triton.{module}"), name)


def compile_one(fn, types, constexprs, num_warps=8):
    sig = {a: ("constexpr" if a in constexprs else types[a]) for a in fn.arg_names}
    attrs = {(fn.arg_names.index(a),): [["tt.divisibility", 16]] for a in ALIGNED if a in fn.arg_names}
    src = ASTSource(fn=fn, signature=sig, attrs=attrs,
                    constexprs={(fn.arg_names.index(k),): v for k, v in constexprs.items()})
    ptx = triton.compile(src, target=TARGET, options={"num_warps": num_warps}).asm["ptx"]
    return {"ld_v4": len(re.findall(r"ld\.global\.v4", ptx)),
            "st_v4": len(re.findall(r"st\.global\.v4", ptx))}


def main():
    step = dict(HAS_CLIP=True, PREV_IS_T_MINUS_1=False, KEY_ON_DEVICE=False, BLOCK=4096)
    sched = importlib.import_module("fastddpm.kernels.triton.schedule")
    out = {
        # The sampling-loop case: scalar t, noise drawn, aligned.
        "ddpm_scalar_t": compile_one(_kernel("ddpm_step", "_ddpm_step_kernel"), STEP_TYPES, dict(
            step, PRED=0, VAR=0, T_PER_SAMPLE=False, P_PER_SAMPLE=False, NOISE=2, SHIFT=0, IDX64=False)),
        # Per-sample float64 coefficients, unaligned offset, int64 indices, key on device.
        "ddpm_per_sample": compile_one(_kernel("ddpm_step", "_ddpm_step_kernel"), STEP_TYPES, dict(
            step, PRED=2, VAR=1, T_PER_SAMPLE=True, P_PER_SAMPLE=True, NOISE=2, SHIFT=3, IDX64=True,
            KEY_ON_DEVICE=True)),
        "ddim_per_sample": compile_one(_kernel("ddim_step", "_ddim_step_kernel"), STEP_TYPES, dict(
            step, PRED=1, T_PER_SAMPLE=True, P_PER_SAMPLE=False, NOISE=1, SHIFT=0, IDX64=False)),
        "q_sample": compile_one(_kernel("q_sample", "_q_sample_kernel"), dict(
            x0_ptr="*fp32", noise_ptr="*fp32", out_ptr="*fp32", t_ptr="*i64", sqrt_ab_ptr="*fp32",
            sqrt_1mab_ptr="*fp32", key_ptr="*i64", n="i32", per_sample="i32", last_step="i32",
            seed_word="i32",
            stream_word="i32", ctr_lo="i32", ctr_hi="i32"), dict(
            T_PER_SAMPLE=True, NOISE_GIVEN=False, KEY_ON_DEVICE=False, SHIFT=0, IDX64=False, BLOCK=4096)),
        "randn_bf16": compile_one(_kernel("randn", "_randn_kernel"), dict(
            out_ptr="*bf16", key_ptr="*i64", n="i32", seed_word="i32", stream_word="i32", ctr_lo="i32",
            ctr_hi="i32"), dict(KEY_ON_DEVICE=True, SHIFT=1, IDX64=True, BLOCK=4096)),
        "schedule": compile_one(sched._schedule_kernel, dict(betas_ptr="*fp64", out_ptr="*fp64", T="i32"),
                                dict(
            BLOCK=1024, **{k: sched._ROW[v] for k, v in sched._KERNEL_ROWS.items()}), num_warps=4),
        "respace": compile_one(sched._respace_kernel, dict(ac_ptr="*fp64", steps_ptr="*i64", out_ptr="*fp64",
                                                           S="i32"), dict(BLOCK=1024), num_warps=4),
    }
    print(json.dumps(out))


if __name__ == "__main__":
    try:
        main()
    except Exception as exc:  # reported to the test, which decides
        print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}))
        sys.exit(0)
