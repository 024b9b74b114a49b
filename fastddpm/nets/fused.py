"""Export forms of the built-in nets: the same math, arranged for a runtime with one t per call.

What a runtime spends its time on (issue 26, ONNX Runtime's profiler, default ResMLP at
B = 8192, one thread, 2-core AMD EPYC Zen 4): the seven [B, 64] × [64, 64] GEMMs run at ~100
GFLOP/s, 90 % of the measured MatMul peak, and are ~48 % of the call; the rest is one pass per
elementwise node over [B, 64] activations — LayerNormalization 324 µs each, the time
modulation ``· (1 + scale) + shift`` 2 × 155 µs per block, SiLU 152 µs, Sin/Cos 2 × 520 µs,
the broadcast Mul of the Fourier arguments 244 µs. Nothing here changes what the net computes;
the export form only removes passes that a shared t makes redundant:

- ResMLP: ``LayerNorm(h)·(1 + scale) + shift`` with one t is a LayerNorm whose affine weights
  are ``γ·(1 + scale)`` and ``β·(1 + scale) + shift`` ([W] vectors computed once per call):
  two passes per block fewer. The Fourier arguments ``x[:, :, None]·f`` become one MatMul with
  a block-diagonal [D, D·K] frequency matrix (exact: every output is one product plus zeros).
- MLP: ``act(layer(h) + proj(emb))`` → ``act(h·Wᵀ + (b + proj(emb)))``: the time projection
  joins the bias, one pass per layer fewer.
- UNet: ``GroupNorm(h)·(1 + scale) + shift`` → GroupNorm with affine weights
  ``γ·(1 + scale)``, ``β·(1 + scale) + shift``.

Measured (``bench/net_throughput.py``): ResMLP 9.8 → 8.7 ms per call at B = 8192, one
ONNX Runtime thread (the README's Results has the current table).

These forms are valid only when every sample of the call shares t (the folded vectors are one
row): :func:`fastddpm.onnx_fused.export_fused` therefore fixes the graph's ``t`` input to
shape [1], so a per-sample t is refused by the runtime instead of being misread. The outputs
equal the module's to float32 rounding (tests/test_net_runtimes.py: ≤ 1e-5 relative to the
output's scale on odd batch sizes).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .embedding import time_rows
from .mlp import MLP
from .resmlp import ResMLP
from .unet import UNet
from .unet import ResBlock as UNetResBlock


class _Form(nn.Module):
    """Holds the original module (its parameters, shared, not copied) and its config."""

    accepts_shared_t = True

    def __init__(self, module: nn.Module):
        super().__init__()
        self.net = module
        self.config = getattr(module, "config", None)
        self.sample_shape = getattr(module, "sample_shape", None)


class ResMLPForm(_Form):
    """:class:`~fastddpm.nets.ResMLP` with the time modulation folded into each LayerNorm."""

    def __init__(self, module: ResMLP):
        super().__init__(module)
        feats = module.features
        k, d = feats.num_frequencies, feats.dim
        if k:
            fmat = torch.zeros(d, d * k, dtype=feats.freqs.dtype, device=feats.freqs.device)
            for i in range(d):  # x[:, i] · f_j lands in column i·K + j, as flatten(1) orders it
                fmat[i, i * k:(i + 1) * k] = feats.freqs
            self.register_buffer("fmat", fmat, persistent=False)
        self.width = module.config["width"]

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        m = self.net
        emb = m.time_embed(time_rows(t))  # [1, E]
        if m.features.num_frequencies:
            args = x_t @ self.fmat
            feats = torch.cat([x_t, torch.sin(args), torch.cos(args)], dim=1)
        else:
            feats = x_t
        h = m.inp(feats)
        width = (self.width,)
        for block in m.blocks:
            scale, shift = block.time(emb).chunk(2, dim=1)
            g = 1.0 + scale[0]
            norm = block.norm
            r = block.act(F.layer_norm(h, width, norm.weight * g, norm.bias * g + shift[0], norm.eps))
            h = h + block.fc2(block.act(block.fc1(r)))
        return m.out(m.act_out(m.norm_out(h)))


class MLPForm(_Form):
    """:class:`~fastddpm.nets.MLP` with each layer's time projection folded into its bias."""

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        m = self.net
        rows = time_rows(t)
        emb = rows if m.time_embed is None else m.time_embed(rows)
        h = x_t
        for layer, proj, act in zip(m.layers, m.time_proj, m.acts):
            h = act(F.linear(h, layer.weight, layer.bias + proj(emb)[0]))
        return m.out(h)


class UNetForm(_Form):
    """:class:`~fastddpm.nets.UNet` with each block's scale/shift folded into its GroupNorm."""

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        m = self.net
        emb = m.time_embed(time_rows(t))
        h = m.conv_in(x_t)
        skips = [h]
        for block in m.down:
            h = _block(block, h, emb) if isinstance(block, UNetResBlock) else block(h)
            skips.append(h)
        for block in m.mid:
            h = _block(block, h, emb) if isinstance(block, UNetResBlock) else block(h, emb)
        for block in m.up:
            if isinstance(block, UNetResBlock):
                h = _block(block, torch.cat([h, skips.pop()], dim=1), emb)
            else:
                h = block(h)
        return m.conv_out(F.silu(m.norm_out(h)))


def _block(block: UNetResBlock, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
    h = block.conv1(F.silu(block.norm1(x)))
    scale, shift = block.temb(F.silu(emb)).chunk(2, dim=1)  # [1, C] each
    g = 1.0 + scale[0]
    norm = block.norm2
    h = F.group_norm(h, norm.num_groups, norm.weight * g, norm.bias * g + shift[0], norm.eps)
    h = block.conv2(block.dropout(F.silu(h)))
    return block.skip(x) + h


FORMS = {ResMLP: ResMLPForm, MLP: MLPForm, UNet: UNetForm}


def export_form(module: nn.Module):
    """The export form of a built-in unconditional net (exact class match: a subclass may change
    forward), or None for any other module (which is then exported as it is)."""
    form = FORMS.get(type(module))
    if form is None or getattr(module, "num_classes", 0):
        # A conditional net's time embedding has one row per sample (labels), which the folded
        # norm weights cannot hold: it is exported as it is (fastddpm.export_onnx).
        return None
    return form(module).eval()


__all__ = ["FORMS", "MLPForm", "ResMLPForm", "UNetForm", "export_form"]
