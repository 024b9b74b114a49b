"""Small convolutional U-Net ε-network for images [B, C, H, W] (improved-diffusion layout)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .embedding import LabelEmbedding, SinusoidalEmbedding, check_int, time_rows


def _groups(channels: int, max_groups: int) -> int:
    """Largest group count ≤ max_groups that divides ``channels`` (GroupNorm needs a divisor)."""
    return max(g for g in range(1, max_groups + 1) if channels % g == 0)


class ResBlock(nn.Module):
    """GroupNorm → SiLU → conv; GroupNorm scaled and shifted by the time embedding → SiLU →
    dropout → conv; + skip.

    The time embedding modulates *after* the second GroupNorm (improved-diffusion's
    ``use_scale_shift_norm``): an additive bias before it would be erased whenever a group
    holds one channel (e.g. 8 channels in 8 groups), leaving the net blind to t.
    """

    def __init__(self, cin: int, cout: int, temb: int, groups: int, dropout: float):
        super().__init__()
        self.norm1 = nn.GroupNorm(_groups(cin, groups), cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.temb = nn.Linear(temb, 2 * cout)
        self.norm2 = nn.GroupNorm(_groups(cout, groups), cout)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x, emb):
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.temb(F.silu(emb))[:, :, None, None].chunk(2, dim=1)  # [R, C, 1, 1] each
        h = self.norm2(h) * (1.0 + scale) + shift
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class Attention(nn.Module):
    """Single-head self-attention over the H·W positions, written with matmul/softmax (exports to ONNX)."""

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.norm = nn.GroupNorm(_groups(channels, groups), channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)
        self.scale = channels ** -0.5

    def forward(self, x, emb=None):
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, c, h * w).unbind(1)
        attn = torch.softmax(torch.matmul(q.transpose(1, 2), k) * self.scale, dim=-1)  # [B, HW, HW]
        out = torch.matmul(v, attn.transpose(1, 2)).reshape(b, c, h, w)
        return x + self.proj(out)


class UNet(nn.Module):
    """ε̂ = UNet(x_t, t) for x_t float [B, in_channels, H, W], t int64 [B]; output like x_t — or, with
    ``learn_sigma``, [B, 2·in_channels, H, W] = [prediction | v] (Nichol & Dhariwal 2021's variance
    interpolation; ``variance="learned_range"``).

    Levels ``channel_mults`` (×base_channels) with ``num_res_blocks`` residual blocks each and a
    stride-2 downsample between levels, so H and W must be divisible by 2^(len(channel_mults)−1).
    The middle (lowest resolution) has ResBlock → attention (optional) → ResBlock. The output
    conv starts at zero, so an untrained net predicts ε̂ = 0.

    Shared t (fastddpm.nets.embedding): the time embedding runs on ``time_rows(t)``; each
    block's scale/shift is then [1, 2C, 1, 1] and broadcasts over the batch.

    Conditional (``num_classes`` = K > 0): a label embedding of K + 1 classes (the last is "no
    label") is added to the time embedding, so every block's scale/shift sees both
    (:class:`~fastddpm.nets.embedding.LabelEmbedding`).
    """

    accepts_shared_t = True

    def __init__(self, in_channels: int = 1, base_channels: int = 32, channel_mults=(1, 2),
                 num_res_blocks: int = 1, attention: bool = True, num_steps: int = 1000,
                 dropout: float = 0.0, norm_groups: int = 8, learn_sigma: bool = False, num_classes: int = 0):
        super().__init__()
        check_int(in_channels, "in_channels")
        check_int(base_channels, "base_channels")
        check_int(num_res_blocks, "num_res_blocks")
        check_int(num_steps, "num_steps")
        check_int(norm_groups, "norm_groups")
        channel_mults = tuple(channel_mults)
        if not channel_mults or any(isinstance(m, bool) or not isinstance(m, int) or m < 1 for m in channel_mults):
            raise ValueError(f"channel_mults must be a non-empty sequence of integers >= 1, got {channel_mults!r}")
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {dropout!r}")
        self.config = dict(in_channels=in_channels, base_channels=base_channels,
                           channel_mults=list(channel_mults), num_res_blocks=num_res_blocks,
                           attention=bool(attention), num_steps=num_steps, dropout=float(dropout),
                           norm_groups=norm_groups)
        if not isinstance(learn_sigma, bool):
            raise ValueError(f"learn_sigma must be True or False, got {learn_sigma!r}")
        if learn_sigma:  # recorded only when set, so that configs of fixed-variance nets stay as they were
            self.config["learn_sigma"] = True
        self.learn_sigma = learn_sigma
        self.num_steps = num_steps
        self.downsample_factor = 2 ** (len(channel_mults) - 1)
        temb = 4 * base_channels
        self.time_embed = nn.Sequential(SinusoidalEmbedding(base_channels), nn.Linear(base_channels, temb),
                                        nn.SiLU(), nn.Linear(temb, temb))
        self.label_embed = LabelEmbedding.make(self.config, num_classes, temb)
        self.num_classes, self.null_label = LabelEmbedding.attributes(self.label_embed)
        self.conv_in = nn.Conv2d(in_channels, base_channels, 3, padding=1)

        chans = [base_channels]
        ch = base_channels
        self.down = nn.ModuleList()
        for level, mult in enumerate(channel_mults):
            for _ in range(num_res_blocks):
                self.down.append(ResBlock(ch, base_channels * mult, temb, norm_groups, dropout))
                ch = base_channels * mult
                chans.append(ch)
            if level != len(channel_mults) - 1:
                self.down.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1))
                chans.append(ch)
        self.mid = nn.ModuleList([ResBlock(ch, ch, temb, norm_groups, dropout)]
                                 + ([Attention(ch, norm_groups)] if attention else [])
                                 + [ResBlock(ch, ch, temb, norm_groups, dropout)])
        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mults))):
            for i in range(num_res_blocks + 1):
                self.up.append(ResBlock(ch + chans.pop(), base_channels * mult, temb, norm_groups, dropout))
                ch = base_channels * mult
            if level != 0:
                self.up.append(nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"),
                                             nn.Conv2d(ch, ch, 3, padding=1)))
        self.norm_out = nn.GroupNorm(_groups(ch, norm_groups), ch)
        self.conv_out = nn.Conv2d(ch, 2 * in_channels if learn_sigma else in_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """x_t: float [B, C, H, W] (H, W divisible by ``downsample_factor``); t: int64 [B], or [1] /
        stride-0 when shared; labels (a conditional net): int64 [B] in [0, num_classes] (the last:
        "no label"; None: no label for every sample)."""
        emb = self.time_embed(time_rows(t))  # [R, 4·base_channels], R = 1 (shared t) or B
        if self.label_embed is not None:
            emb = self.label_embed(emb, labels)  # [B, …] with labels, still [R, …] without
        h = self.conv_in(x_t)
        skips = [h]
        for block in self.down:
            h = block(h, emb) if isinstance(block, ResBlock) else block(h)
            skips.append(h)
        for block in self.mid:
            h = block(h, emb)
        for block in self.up:
            if isinstance(block, ResBlock):
                h = block(torch.cat([h, skips.pop()], dim=1), emb)
            else:
                h = block(h)
        return self.conv_out(F.silu(self.norm_out(h)))
