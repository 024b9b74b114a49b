"""The one fused update of every sampler on the CPU: any row of the generic layout, one pass.

Per element (kernels/coefficients.py; docs/sampling.md "Step math"):

    x̂0c = clip(cx·x + cm·m)
    x′  = yx·x + y0·x̂0c + ym·m + ys·s + y1·h1 + y2·h2 + y3·h3 + σ·z,   σ = yz (· exp(vg·v + vb) | · √v)
    s′  = sx·x + s0·x̂0c + sm·m + ss·s + s1·h1 + s2·h2 + s3·h3            (a run that uses s: every row)
    q   = qx·x + q0·x̂0c + qm·m  → the history ring slot given             (a row that pushes)

The kernel computes no coefficient and knows no sampler: it reads a row of a table already
rounded to the data dtype (row ``ridx[b]`` for sample b: one row for the whole call in the
sampling loop, a row per sample for the public ops' per-sample timesteps).

Specialisation instead of branches: a buffer a call does not use is passed as None, and Numba
compiles (once, cached on disk) a version of the kernel without it — no load, no term, no
branch — so every sampler gets a branch-free loop that vectorises. Loops run over views of one
span (``range(len)`` on slices: with ``range(start, stop)`` over the whole array Numba cannot
prove the index non-negative and the loop stays scalar, 6× slower). ``out=None`` updates x in
place (the store goes to the same view the loads come from, which LLVM vectorises; a distinct
``out`` aliasing x would fail its runtime overlap check and run scalar). The noise of the
call's Philox stream is drawn per chunk into an L1-sized buffer (kernels/numba/philox.py).

Bytes per element (float32): 12 for ddpm/ddim (x, m in; x′ out), +4 per history value read,
+4 for the pushed q, +8 for the state s (in and out).

Classifier-free guidance (docs/sampling.md, "Guidance"): the network ran once over 2B rows, the
conditional outputs c in rows [0, B) of m and the unconditional u in rows [B, 2B); the kernel
reads both halves and uses m = (c + (w − 1)·(c − u))·r_b in place of the output everywhere
above — no [B, D] temporary, no pass of its own (+4 bytes per element: the read of u). r_b is
guidance_rescale's per-sample factor (1 without it; :func:`guide_scales` computes it in one
read of both halves beforehand). ``mirror``: x′ is also stored there (the second half of the
2B-row network input, so the next guided call needs no copy: +4 bytes per element).
"""
import numba
import numpy as np
from numba import njit

from .. import coefficients as KC
from .common import CHUNK, kernel, num_chunks, philox_key
from .philox import chunk_normals

(CX, CM, YX, Y0, YM, YS, Y1, Y2, Y3, YZ, SX, S0, SM, SS, S1, S2, S3, QX, Q0, QM, VG, VB) = range(KC.NUM_COLUMNS)
assert KC.COLUMNS == ("cx", "cm", "yx", "y0", "ym", "ys", "y1", "y2", "y3", "yz", "sx", "s0", "sm", "ss", "s1",
                      "s2", "s3", "qx", "q0", "qm", "vg", "vb"), "kernels/numba/update.py reads the columns by position"

VAR_NONE, VAR_LOG, VAR_SQRT = 0, 1, 2
VAR_MODES = {None: VAR_NONE, "log": VAR_LOG, "sqrt": VAR_SQRT}


# _body and _span are compiled per signature (not inlined): Numba prunes an ``is None`` branch on
# an argument typed None only in the function that receives it.
@njit(cache=True, error_model="numpy")
def _body(cr, x, m, v, u, s, h1, h2, h3, z, out, q, mirror, lo, hi, has_clip, var_mode, tdiv, w1, gr, gv):
    """One span: views of equal length (None: not used by this call, compiled away).

    ``cr``: the row (data dtype); ``out`` None: x is updated in place; ``s`` is read and written
    in place; ``z``: the noise (drawn float32 buffer or given normals); ``v``: the variance channel;
    ``tdiv``: dynamic thresholding's per-sample s (x̂0c = clip(x̂0, −s, s)/s; None: off);
    ``u``: the unconditional output of a guided call, m being the conditional one: the output
    used is (m + w1·(m − u))·gr with w1 = w − 1 (exactly m at w = 1) and gr the sample's rescale
    factor (``gv``: one factor per element instead, when the span holds several samples);
    ``mirror``: a second store of x′.
    """
    dt = x.dtype.type
    cx, cm, yx, y0, ym, ys, y1, y2, y3, yz = cr[CX], cr[CM], cr[YX], cr[Y0], cr[YM], cr[YS], cr[Y1], cr[Y2], cr[Y3], \
        cr[YZ]
    sx, s0, sm, ss, s1, s2, s3, qx, q0, qm = cr[SX], cr[S0], cr[SM], cr[SS], cr[S1], cr[S2], cr[S3], cr[QX], cr[Q0], \
        cr[QM]
    vg, vb = cr[VG], cr[VB]
    for i in range(x.shape[0]):
        xv, mv = x[i], m[i]
        if u is not None:
            if gv is None:
                mv = (mv + w1 * (mv - u[i])) * gr
            else:
                mv = (mv + w1 * (mv - u[i])) * gv[i]
        x0 = cx * xv + cm * mv
        if has_clip:
            x0 = min(max(x0, lo), hi)
        if tdiv is not None:
            x0 = x0 / tdiv
        y = (yx * xv + y0 * x0) + ym * mv
        if s is not None:
            sv = s[i]
            y += ys * sv
            sn = (sx * xv + s0 * x0) + (sm * mv + ss * sv)
        if h1 is not None:
            a1 = h1[i]
            y += y1 * a1
            if s is not None:
                sn += s1 * a1
        if h2 is not None:
            a2 = h2[i]
            y += y2 * a2
            if s is not None:
                sn += s2 * a2
        if h3 is not None:
            a3 = h3[i]
            y += y3 * a3
            if s is not None:
                sn += s3 * a3
        if z is not None:
            zv = dt(z[i])
            if v is not None:
                if var_mode == VAR_LOG:
                    zv *= np.exp(vg * v[i] + vb)
                else:
                    zv *= np.sqrt(v[i])
            y += yz * zv
        if q is not None:
            q[i] = (qx * xv + q0 * x0) + qm * mv
        if s is not None:
            s[i] = sn
        if mirror is not None:
            mirror[i] = y
        if out is None:
            x[i] = y
        else:
            out[i] = y


@njit(cache=True, error_model="numpy")
def _span(cr, x, m, vm, um, s, h1, h2, h3, z, out, q, mirror, a, b, mo, vo, uo, zo, lo, hi, has_clip, var_mode,
          tdiv, w1, gr, gv):
    """Elements [a, b) with row ``cr``: the output at m[k + mo], its variance channel at vm[k + vo],
    the unconditional output at um[k + uo], the noise at z[k − zo], per-element rescale factors at
    gv[k − a]; ``tdiv``, ``w1``, ``gr``: see _body."""
    _body(cr, x[a:b], m[a + mo:b + mo], None if vm is None else vm[a + vo:b + vo],
          None if um is None else um[a + uo:b + uo],
          None if s is None else s[a:b], None if h1 is None else h1[a:b], None if h2 is None else h2[a:b],
          None if h3 is None else h3[a:b], None if z is None else z[a - zo:b - zo],
          None if out is None else out[a:b], None if q is None else q[a:b],
          None if mirror is None else mirror[a:b], lo, hi, has_clip, var_mode, tdiv, w1, gr,
          None if gv is None else gv[:b - a])


@njit(inline="always", cache=True, error_model="numpy")
def _uniform(ridx, r_stride, b_first, b_last):
    """True when samples b_first … b_last read the same row (a stride-0 index, or equal entries)."""
    if r_stride == 0:
        return True
    r0 = ridx[b_first * r_stride]
    for b in range(b_first + 1, b_last + 1):
        if ridx[b * r_stride] != r0:
            return False
    return True


@njit(inline="always", cache=True, error_model="numpy")
def _chunk(coef, ridx, r_stride, x, m, vm, um, uo, s, h1, h2, h3, z, zo, out, q, mirror, start, stop, per_sample, lo,
           hi, has_clip, var_mode, thr, w1, gsc):
    """Elements [start, stop): one span when its samples share a row (the sampling loop: one
    vectorised loop whatever D is), else sample by sample (a row per sample; the variance
    channel's offsets: m holds [mean D | variance D] per sample; dynamic thresholding's
    per-sample bound ``thr[b]``; guidance_rescale's per-sample factor ``gsc[b]``). A guided
    call's unconditional output sits ``uo`` elements after its conditional one."""
    b = start // per_sample
    one = x.dtype.type(1)
    b_last = (stop - 1) // per_sample
    if vm is None and thr is None and _uniform(ridx, r_stride, b, b_last):
        if gsc is None:
            _span(coef[ridx[b * r_stride]], x, m, vm, um, s, h1, h2, h3, z, out, q, mirror, start, stop, 0, 0, uo, zo,
                  lo, hi, has_clip, var_mode, None, w1, one, None)
            return
        # guidance_rescale on a chunk of many samples: their factors spread into an L1-sized
        # buffer (a sample at a time), then the one vectorised span (a span per sample cost
        # 16× the update at D = 2: 2²¹ spans)
        gbuf = np.empty(stop - start, dtype=x.dtype)
        for bb in range(b, b_last + 1):
            lo_e = max(start, bb * per_sample) - start
            hi_e = min(stop, (bb + 1) * per_sample) - start
            g = gsc[bb]
            for e in range(lo_e, hi_e):
                gbuf[e] = g
        _span(coef[ridx[b * r_stride]], x, m, vm, um, s, h1, h2, h3, z, out, q, mirror, start, stop, 0, 0, uo, zo,
              lo, hi, has_clip, var_mode, None, w1, one, gbuf)
        return
    k = start
    while k < stop:
        end = min(stop, (b + 1) * per_sample)
        mo = b * per_sample if vm is not None else 0
        gr = one
        if gsc is not None:
            gr = gsc[b]
        if thr is None:
            _span(coef[ridx[b * r_stride]], x, m, vm, um, s, h1, h2, h3, z, out, q, mirror, k, end, mo,
                  mo + per_sample, mo + uo, zo, lo, hi, has_clip, var_mode, None, w1, gr, None)
        else:  # x̂0c = clip(x̂0, −s_b, s_b)/s_b
            sb = thr[b]
            _span(coef[ridx[b * r_stride]], x, m, vm, um, s, h1, h2, h3, z, out, q, mirror, k, end, mo,
                  mo + per_sample, mo + uo, zo, -sb, sb, True, var_mode, sb, w1, gr, None)
        k = end
        b += 1


@kernel
def _update_kernel(x, m, vm, s, h1, h2, h3, out, q, coef, ridx, r_stride, clip, has_clip, noise, draw, key0, key1,
                   offset, per_sample, var_mode, n_chunks, thr, um, uo, w1, gsc, mirror):
    """Flat contiguous buffers of one dtype; coef [R, C] in that dtype; sample b reads row ridx[b·r_stride];
    ``thr`` [B] (or None): dynamic thresholding's per-sample bound s_b (replaces the clip);
    ``um`` (m itself, or None): a guided call's output, unconditional half ``uo`` elements after
    the conditional one; ``w1`` = w − 1; ``gsc`` [B] (or None): guidance_rescale's factors;
    ``mirror`` (or None): a second store of x′."""
    n = x.shape[0]
    dt = x.dtype.type
    lo, hi = dt(-clip), dt(clip)
    w1d = dt(w1)
    for ch in numba.prange(n_chunks):
        start = ch * CHUNK
        stop = min(n, start + CHUNK)
        if noise is not None:  # given normals (the public ops)
            _chunk(coef, ridx, r_stride, x, m, vm, um, uo, s, h1, h2, h3, noise, 0, out, q, mirror, start, stop,
                   per_sample, lo, hi, has_clip, var_mode, thr, w1d, gsc)
        elif draw:  # drawn here, chunk by chunk, into an L1-sized buffer
            buf, shift = chunk_normals(key0, key1, offset + start, stop - start)
            _chunk(coef, ridx, r_stride, x, m, vm, um, uo, s, h1, h2, h3, buf, start - shift, out, q, mirror, start,
                   stop, per_sample, lo, hi, has_clip, var_mode, thr, w1d, gsc)
        else:
            _chunk(coef, ridx, r_stride, x, m, vm, um, uo, s, h1, h2, h3, None, 0, out, q, mirror, start, stop,
                   per_sample, lo, hi, has_clip, var_mode, thr, w1d, gsc)


def launch_args(x, m, coef, ridx, *, out=None, clip=None, s=None, h=(), q=None, noise=None, draw_noise=False, seed=0,
                stream=0, offset=0, per_sample=1, variance=None, threshold=None, guidance=None, rescale=None,
                mirror=None):
    """The kernel's arguments from keywords: (size, tuple). Flat contiguous arrays of x's dtype;
    ``coef`` [R, C] in that dtype; ``ridx`` int64 [1] or [B].

    ``out``: None updates x in place; ``s``: the state buffer (read and written); ``h``: up to
    three history buffers, most recent first; ``q``: the ring slot this call pushes to (None:
    no push; never one of ``h``); ``noise``: given normals, or ``draw_noise`` from (seed, stream)
    at global offset ``offset``; ``variance``: None | "log" | "sqrt" (m then holds
    2·per_sample values per sample, the variance channel second); ``threshold``: None, or the
    per-sample bounds s [B] (x's dtype) of dynamic thresholding, x̂0c = clip(x̂0, −s_b, s_b)/s_b in
    place of ``clip`` (diffusers' ``thresholding=True``; the caller computes s, e.g. a quantile of
    |x̂0| per sample). Off, it is compiled away: the kernel is the one without it.
    ``guidance``: None, or the scale w of a guided call: m then holds 2B rows, the conditional
    outputs first (B rows, each with its variance channel when ``variance``), and the output used
    is c + (w − 1)·(c − u) (times ``rescale[b]``, guidance_rescale's per-sample factors [B] of
    :func:`guide_scales`, when given); ``mirror``: a flat buffer like x that also receives x′.
    """
    h = tuple(h) + (None,) * (3 - len(h))
    k0, k1 = philox_key(int(seed), int(stream))
    ridx = np.asarray(ridx, dtype=np.int64)
    n = x.shape[0]
    guided = guidance is not None
    if rescale is not None and not guided:
        raise ValueError("rescale (guidance_rescale's factors) applies to a guided call only (guidance=w)")
    return n, (x, m, None if variance is None else m, s, h[0], h[1], h[2], out, q, coef, ridx,
               int(ridx.shape[0] > 1), float(clip or 0.0), clip is not None, noise,
               bool(draw_noise) and noise is None, k0, k1, np.int64(offset), int(per_sample),
               VAR_MODES[variance], num_chunks(n),
               None if threshold is None else np.ascontiguousarray(threshold, dtype=x.dtype),
               m if guided else None, (2 * n if variance is not None else n) if guided else 0,
               float(guidance) - 1.0 if guided else 0.0,
               None if rescale is None else np.ascontiguousarray(rescale, dtype=x.dtype), mirror)


def update(x, m, coef, ridx, **kw) -> None:
    """One fused update (see :func:`launch_args` for the keywords)."""
    n, args = launch_args(x, m, coef, ridx, **kw)
    _update_kernel(n, *args)


def bind(n: int, args: tuple):
    """``call(m)``: the kernel on ``launch_args``' arguments (n, args) with the model output m in
    place of the one given there — for a caller that makes many calls of one size with
    everything but m fixed (the sampling loop binds each call of a batch once). The compiled
    version is picked once (serial below PARALLEL_MIN_ELEMENTS). A guided call's rescale factors
    are read from the array given at binding time, which the caller refills before each call."""
    f = _update_kernel.pick(n)
    x, mid, tail = args[0], args[3:23], args[24:]
    var, guided = args[2] is not None, args[23] is not None
    if var and guided:
        return lambda m: f(x, m, m, *mid, m, *tail)
    if var:
        return lambda m: f(x, m, m, *mid, None, *tail)  # the variance channel is read from m itself
    if guided:
        return lambda m: f(x, m, None, *mid, m, *tail)
    return lambda m: f(x, m, None, *mid, None, *tail)


@njit(parallel=True, cache=True, error_model="numpy")
def _guide_scales(m, batch, per_sample, row, uo, w1, phi, out):
    """out[b] = φ·σ(c_b)/σ(g_b) + (1 − φ) for each sample b (see guide_scales); float64 sums."""
    dt = m.dtype.type
    w1d = dt(w1)
    for b in numba.prange(batch):
        base = b * row
        sc = 0.0
        sc2 = 0.0
        sg = 0.0
        sg2 = 0.0
        for j in range(per_sample):
            c = m[base + j]
            g = c + w1d * (c - m[base + uo + j])  # the guided output exactly as _body forms it
            cf = np.float64(c)
            gf = np.float64(g)
            sc += cf
            sc2 += cf * cf
            sg += gf
            sg2 += gf * gf
        r = 1.0
        if per_sample > 1:
            var_c = max(0.0, (sc2 - sc * sc / per_sample) / (per_sample - 1))
            var_g = max(0.0, (sg2 - sg * sg / per_sample) / (per_sample - 1))
            if var_g > 0.0:
                r = phi * np.sqrt(var_c / var_g) + (1.0 - phi)
        out[b] = dt(r)


def guide_scales(m, batch: int, per_sample: int, guidance: float, rescale: float, *, variance=None, out=None):
    """guidance_rescale's per-sample factors r [B] (m's dtype) for a guided call's output m (flat, 2B rows).

    diffusers' ``rescale_noise_cfg`` (Lin et al. 2023, §3.4): with g = c + (w − 1)·(c − u) the
    guided and c the conditional output of sample b, g ← φ·g·σ(c)/σ(g) + (1 − φ)·g, σ the
    standard deviation over the sample's D elements with Bessel's correction (torch's default
    ``std``); i.e. g·r_b with r_b = φ·σ(c)/σ(g) + 1 − φ. Cost: one read of both halves (8 bytes
    per element of float32) with float64 sums of c, c², g, g² per sample, before the update; the
    update then multiplies by r_b. Where σ(g) = 0 (a constant guided output) or D = 1 the factor
    is 1 (diffusers divides by zero there). ``variance``: the outputs carry a variance channel
    (rows of 2D; only the first D are guided).
    """
    n = batch * per_sample
    row = 2 * per_sample if variance is not None else per_sample
    uo = 2 * n if variance is not None else n
    if out is None:
        out = np.empty(batch, dtype=m.dtype)
    _guide_scales(m, batch, per_sample, row, uo, float(guidance) - 1.0, float(rescale), out)
    return out
