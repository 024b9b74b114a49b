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
STEP_TYPES = dict(x_ptr="*fp32", m_ptr="*fp32", out_ptr="*fp32", s_ptr="*fp32", ring_ptr="*fp32",
                  slots_ptr="*i64", noise_ptr="*fp32", coef_ptr="*fp32", ctl_ptr="*i64", key_ptr="*i64",
                  gw_ptr="*fp32", gr_ptr="*fp32", n="i32",
                  per_sample="i32", last_row="i32", seed_word="i32", stream_word="i32", ctr_lo="i32", ctr_hi="i32",
                  clip="fp32", u_off="i32")
# What the launcher's specialisation gives for 16-byte aligned tensors and n % 16 == 0.
ALIGNED = ("x_ptr", "m_ptr", "out_ptr", "s_ptr", "ring_ptr", "slots_ptr", "noise_ptr", "x0_ptr", "t_ptr", "coef_ptr",
           "ctl_ptr", "key_ptr", "n", "u_off", "gw_ptr", "gr_ptr")


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
    step = dict(HAS_CLIP=True, LOOP=False, KEY_ON_DEVICE=False, BLOCK=4096, C=22, HAS_S=False, H=0, VAR=0,
                GUIDE=False, RESCALE=False, MIRROR=False)
    update = _kernel("update", "_update_kernel")
    out = {
        # ddpm_step/ddim_step with a scalar t: one row, noise drawn, aligned.
        "ddpm_scalar_t": compile_one(update, STEP_TYPES, dict(
            step, ROW_PER_SAMPLE=False, NOISE=2, SHIFT=0, IDX64=False)),
        # A row per sample, unaligned offset, int64 indices, key on device.
        "ddpm_per_sample": compile_one(update, STEP_TYPES, dict(
            step, ROW_PER_SAMPLE=True, NOISE=2, SHIFT=3, IDX64=True, KEY_ON_DEVICE=True)),
        "ddim_per_sample": compile_one(update, STEP_TYPES, dict(
            step, ROW_PER_SAMPLE=True, NOISE=1, SHIFT=0, IDX64=False)),
        # The sampling loop's call (row, call index, ring slots and counters read from device memory).
        "ddpm_loop": compile_one(update, STEP_TYPES, dict(
            step, ROW_PER_SAMPLE=False, NOISE=2, SHIFT=0, IDX64=False, LOOP=True)),
        # A third-order multistep call (two history values read, one pushed) and UniPC-3 (state +
        # three history values), and a DDPM call with a variance channel.
        "dpmpp3m_loop": compile_one(update, STEP_TYPES, dict(
            step, ROW_PER_SAMPLE=False, NOISE=0, SHIFT=0, IDX64=False, LOOP=True, H=2)),
        "unipc3_loop": compile_one(update, STEP_TYPES, dict(
            step, ROW_PER_SAMPLE=False, NOISE=0, SHIFT=0, IDX64=False, LOOP=True, H=3, HAS_S=True)),
        "ddpm_learned_range_loop": compile_one(update, STEP_TYPES, dict(
            step, ROW_PER_SAMPLE=False, NOISE=2, SHIFT=0, IDX64=False, LOOP=True, VAR=1)),
        # Classifier-free guidance (issue 25): both halves of a 2B-row output read, x′ mirrored.
        "ddpm_guided_loop": compile_one(update, STEP_TYPES, dict(
            step, ROW_PER_SAMPLE=False, NOISE=2, SHIFT=0, IDX64=False, LOOP=True, GUIDE=True, MIRROR=True)),
        "dpmpp2m_guided_rescaled_loop": compile_one(update, STEP_TYPES, dict(
            step, ROW_PER_SAMPLE=False, NOISE=0, SHIFT=0, IDX64=False, LOOP=True, H=1, GUIDE=True, RESCALE=True,
            MIRROR=True)),
        "guide_scales": compile_one(_kernel("update", "_guide_scales_kernel"), dict(
            m_ptr="*fp32", gw_ptr="*fp32", ctl_ptr="*i64", gr_ptr="*fp32", per_sample="i32", row="i32",
            u_off="i32", last_row="i32", phi="fp32"), dict(BLOCK=1024)),
        "q_sample": compile_one(_kernel("q_sample", "_q_sample_kernel"), dict(
            x0_ptr="*fp32", noise_ptr="*fp32", out_ptr="*fp32", t_ptr="*i64", sqrt_ab_ptr="*fp32",
            sqrt_1mab_ptr="*fp32", key_ptr="*i64", n="i32", per_sample="i32", last_step="i32",
            seed_word="i32",
            stream_word="i32", ctr_lo="i32", ctr_hi="i32"), dict(
            T_PER_SAMPLE=True, NOISE_GIVEN=False, KEY_ON_DEVICE=False, SHIFT=0, IDX64=False, BLOCK=4096)),
        "randn_bf16": compile_one(_kernel("randn", "_randn_kernel"), dict(
            out_ptr="*bf16", key_ptr="*i64", n="i32", seed_word="i32", stream_word="i32", ctr_lo="i32",
            ctr_hi="i32"), dict(KEY_ON_DEVICE=True, SHIFT=1, IDX64=True, BLOCK=4096)),
    }
    print(json.dumps(out))


if __name__ == "__main__":
    try:
        main()
    except Exception as exc:  # reported to the test, which decides
        print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}))
        sys.exit(0)
