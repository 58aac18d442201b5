"""TinyViT image encoder in the form LiteMedSAM was trained with.

Adapted from MobileSAM's TinyViT (Copyright (c) 2022 Microsoft, MIT licence; itself adapted from LeViT and
Swin Transformer). Kept here, trimmed to inference and fine-tuning needs, because the official
`segment-anything` package ships only ViT encoders. Submodule names are unchanged so LiteMedSAM's state dict
loads with strict key matching. LiteMedSAM's variant embeds patches with 1x1 convolutions, so its first stage
runs at the full 256x256 input resolution; that stage dominates the encoder's cost.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import nn

from segment_anything.modeling.common import LayerNorm2d


class Conv2dBN(nn.Sequential):
    """Convolution without bias followed by batch norm (keys `c` and `bn`, as in the checkpoint)."""

    def __init__(self, in_chans: int, out_chans: int, kernel: int = 1, stride: int = 1, pad: int = 0,
                 groups: int = 1) -> None:
        super().__init__()
        self.add_module("c", nn.Conv2d(in_chans, out_chans, kernel, stride, pad, groups=groups, bias=False))
        self.add_module("bn", nn.BatchNorm2d(out_chans))


class PatchEmbed(nn.Module):
    def __init__(self, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.seq = nn.Sequential(Conv2dBN(in_chans, embed_dim // 2), nn.GELU(), Conv2dBN(embed_dim // 2, embed_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.seq(x)


class MBConv(nn.Module):
    """Inverted-residual block of the convolutional first stage."""

    def __init__(self, chans: int, expand_ratio: float) -> None:
        super().__init__()
        hidden = int(chans * expand_ratio)
        self.conv1 = Conv2dBN(chans, hidden)
        self.act1 = nn.GELU()
        self.conv2 = Conv2dBN(hidden, hidden, kernel=3, pad=1, groups=hidden)
        self.act2 = nn.GELU()
        self.conv3 = Conv2dBN(hidden, chans)
        self.act3 = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act2(self.conv2(self.act1(self.conv1(x))))
        return self.act3(self.conv3(y) + x)


class PatchMerging(nn.Module):
    """Downsamples by 2, except into the last stage (320 channels), where MobileSAM keeps 64x64 for SAM's neck."""

    def __init__(self, input_resolution: tuple[int, int], dim: int, out_dim: int) -> None:
        super().__init__()
        self.input_resolution = input_resolution
        self.act = nn.GELU()
        self.conv1 = Conv2dBN(dim, out_dim)
        stride = 1 if out_dim in (320, 448, 576) else 2
        self.conv2 = Conv2dBN(out_dim, out_dim, kernel=3, stride=stride, pad=1, groups=out_dim)
        self.conv3 = Conv2dBN(out_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 3:
            h, w = self.input_resolution
            x = x.view(len(x), h, w, -1).permute(0, 3, 1, 2)
        x = self.act(self.conv1(x))
        x = self.act(self.conv2(x))
        return self.conv3(x).flatten(2).transpose(1, 2)


class ConvLayer(nn.Module):
    def __init__(self, dim: int, input_resolution: tuple[int, int], depth: int, out_dim: int,
                 expand_ratio: float) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([MBConv(dim, expand_ratio) for _ in range(depth)])
        self.downsample = PatchMerging(input_resolution, dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.downsample(x)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(self.norm(x))))


class Attention(nn.Module):
    """Window self-attention with LeViT's learned relative-position biases."""

    def __init__(self, dim: int, key_dim: int, num_heads: int, resolution: tuple[int, int]) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.key_dim = key_dim
        self.scale = key_dim ** -0.5
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * key_dim * num_heads)
        self.proj = nn.Linear(key_dim * num_heads, dim)
        points = list(itertools.product(range(resolution[0]), range(resolution[1])))
        offsets: dict[tuple[int, int], int] = {}
        idxs = []
        for p1 in points:
            for p2 in points:
                offset = (abs(p1[0] - p2[0]), abs(p1[1] - p2[1]))
                idxs.append(offsets.setdefault(offset, len(offsets)))
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, len(offsets)))
        self.register_buffer("attention_bias_idxs", torch.LongTensor(idxs).view(len(points), len(points)),
                             persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        qkv = self.qkv(self.norm(x)).view(b, n, self.num_heads, -1)
        q, k, v = qkv.split([self.key_dim] * 3, dim=3)
        bias = self.attention_biases[:, self.attention_bias_idxs]
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                             attn_mask=bias.to(q.dtype), scale=self.scale)
        return self.proj(out.transpose(1, 2).reshape(b, n, -1))


class TinyViTBlock(nn.Module):
    def __init__(self, dim: int, input_resolution: tuple[int, int], num_heads: int, window_size: int,
                 mlp_ratio: float, local_conv_size: int) -> None:
        super().__init__()
        self.input_resolution = input_resolution
        self.window_size = window_size
        self.attn = Attention(dim, dim // num_heads, num_heads, (window_size, window_size))
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.local_conv = Conv2dBN(dim, dim, kernel=local_conv_size, pad=local_conv_size // 2, groups=dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = self.input_resolution
        b, length, c = x.shape
        ws = self.window_size
        shortcut = x
        if h == ws and w == ws:
            x = self.attn(x)
        else:
            x = x.view(b, h, w, c)
            pad_b, pad_r = (ws - h % ws) % ws, (ws - w % ws) % ws
            if pad_b or pad_r:
                x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))
            ph, pw = h + pad_b, w + pad_r
            nh, nw = ph // ws, pw // ws
            x = x.view(b, nh, ws, nw, ws, c).transpose(2, 3).reshape(b * nh * nw, ws * ws, c)
            x = self.attn(x)
            x = x.view(b, nh, nw, ws, ws, c).transpose(2, 3).reshape(b, ph, pw, c)
            x = x[:, :h, :w].contiguous().view(b, length, c)
        x = shortcut + x
        x = self.local_conv(x.transpose(1, 2).reshape(b, c, h, w)).view(b, c, length).transpose(1, 2)
        return x + self.mlp(x)


class BasicLayer(nn.Module):
    def __init__(self, dim: int, input_resolution: tuple[int, int], depth: int, num_heads: int,
                 window_size: int, mlp_ratio: float, local_conv_size: int, out_dim: int | None) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([
            TinyViTBlock(dim, input_resolution, num_heads, window_size, mlp_ratio, local_conv_size)
            for _ in range(depth)
        ])
        self.downsample = PatchMerging(input_resolution, dim, out_dim) if out_dim is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.downsample(x) if self.downsample is not None else x


class TinyViT(nn.Module):
    """TinyViT-5M with SAM's neck: (B, 3, 256, 256) in [0, 1] -> (B, 256, 64, 64) image embedding."""

    def __init__(self, img_size: int = 256, in_chans: int = 3,
                 embed_dims: tuple[int, ...] = (64, 128, 160, 320), depths: tuple[int, ...] = (2, 2, 6, 2),
                 num_heads: tuple[int, ...] = (2, 4, 5, 10), window_sizes: tuple[int, ...] = (7, 7, 14, 7),
                 mlp_ratio: float = 4.0, mbconv_expand_ratio: float = 4.0, local_conv_size: int = 3,
                 out_chans: int = 256) -> None:
        super().__init__()
        self.img_size = img_size
        self.patch_embed = PatchEmbed(in_chans, embed_dims[0])
        self.layers = nn.ModuleList()
        for i, depth in enumerate(depths):
            side = img_size // 2 ** (i - 1 if i == len(depths) - 1 else i)
            out_dim = embed_dims[i + 1] if i < len(depths) - 1 else None
            if i == 0:
                self.layers.append(ConvLayer(embed_dims[0], (side, side), depth, out_dim, mbconv_expand_ratio))
            else:
                self.layers.append(BasicLayer(embed_dims[i], (side, side), depth, num_heads[i], window_sizes[i],
                                              mlp_ratio, local_conv_size, out_dim))
        self.embedding_side = img_size // 2 ** (len(depths) - 2)
        self.neck = nn.Sequential(
            nn.Conv2d(embed_dims[-1], out_chans, kernel_size=1, bias=False),
            LayerNorm2d(out_chans),
            nn.Conv2d(out_chans, out_chans, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(out_chans),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rest(self.stem(x))

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        """The patch embedding and the convolutional first stage, at the full input resolution: (B, 3, S, S) ->
        (B, N, C) tokens. A part of its own because bf16 rounding here is what moves masks (encoder_runtime.py runs
        it in fp32 when the rest runs in bf16)."""
        return self.layers[0](self.patch_embed(x))

    def rest(self, x: torch.Tensor) -> torch.Tensor:
        """The attention stages and SAM's neck: the stem's tokens -> (B, 256, 64, 64) image embedding."""
        for layer in self.layers[1:]:
            x = layer(x)
        side = self.embedding_side
        x = x.view(len(x), side, side, -1).permute(0, 3, 1, 2)
        return self.neck(x)
