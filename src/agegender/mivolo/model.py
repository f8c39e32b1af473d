"""MiVOLO: timm's VOLO with a two-input (face, body) patch embedding fused by cross-attention.

Parameter names follow the released MiVOLO checkpoints so that they load strictly:
face-only models keep VOLO's own `patch_embed.conv` / `patch_embed.proj`; face+body models have
`patch_embed.conv1` / `proj1` (face), `conv2` / `proj2` (body) and the fusion block `patch_embed.map`.
The model returns raw outputs: [male logit, female logit, normalised age] (or only the age).
"""

from __future__ import annotations

from typing import Any

import torch
from timm.layers import Mlp, make_divisible, trunc_normal_
from timm.layers.bottleneck_attn import PosEmbedRel
from timm.models.volo import VOLO
from torch import nn

from agegender.mivolo.config import MODEL_SPECS, MiVOLOSpec


def _stem(in_chans: int, hidden: int) -> nn.Sequential:
    """VOLO's convolutional stem: 7x7 stride 2, then two 3x3, each with BatchNorm and ReLU."""
    layers: list[nn.Module] = []
    for cin, k, s in ((in_chans, 7, 2), (hidden, 3, 1), (hidden, 3, 1)):
        layers += [nn.Conv2d(cin, hidden, k, stride=s, padding=k // 2, bias=False), nn.BatchNorm2d(hidden)]
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class CrossAttentionFusion(nn.Module):
    """Fuses face and body token maps: face queries attend to body keys/values and vice versa.

    Scores carry a learned relative position bias; the two results are concatenated, normalised
    with a LayerNorm over [C, H, W] and projected back to `dim` by a 1x1-conv MLP (2C -> 4C -> C).

    Args:
        dim: channels of each input map.
        feat_size: (H, W) of the maps (fixed: the position bias is learned per offset).
        num_heads: attention heads (the released models use 1).
    """

    def __init__(self, dim: int, feat_size: tuple[int, int], num_heads: int = 1) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.dim_head_qk = make_divisible(dim, divisor=8) // num_heads
        self.dim_head_v = dim // num_heads
        self.dim_qk = self.dim_head_qk * num_heads
        self.dim_v = self.dim_head_v * num_heads
        self.scale = self.dim_head_qk**-0.5
        width = 2 * self.dim_qk + self.dim_v
        self.qkv_f = nn.Conv2d(dim, width, 1, bias=False)
        self.qkv_p = nn.Conv2d(dim, width, 1, bias=False)
        self.pos_embed = PosEmbedRel(feat_size, dim_head=self.dim_head_qk, scale=self.scale)
        self.norm = nn.LayerNorm([2 * self.dim_v, *feat_size])
        self.mlp = Mlp(2 * self.dim_v, hidden_features=4 * dim, out_features=dim, act_layer=nn.GELU, use_conv=True)
        for conv in (self.qkv_f, self.qkv_p):
            trunc_normal_(conv.weight, std=conv.weight.shape[1] ** -0.5)
        trunc_normal_(self.pos_embed.height_rel, std=self.scale)
        trunc_normal_(self.pos_embed.width_rel, std=self.scale)

    def _qkv(self, x: torch.Tensor, conv: nn.Conv2d) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b = x.shape[0]
        q, k, v = conv(x).split([self.dim_qk, self.dim_qk, self.dim_v], dim=1)
        q = q.reshape(b * self.num_heads, self.dim_head_qk, -1).transpose(1, 2)
        k = k.reshape(b * self.num_heads, self.dim_head_qk, -1)
        v = v.reshape(b * self.num_heads, self.dim_head_v, -1).transpose(1, 2)
        return q, k, v

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, shape: tuple[int, int, int]) -> torch.Tensor:
        b, h, w = shape
        attn = ((q @ k) * self.scale + self.pos_embed(q)).softmax(dim=-1)
        return (attn @ v).transpose(1, 2).reshape(b, self.dim_v, h, w)

    def forward(self, face: torch.Tensor, body: torch.Tensor) -> torch.Tensor:
        """Fuse two [B, C, H, W] maps into one [B, C, H, W] map."""
        b, _, h, w = face.shape
        q_f, k_f, v_f = self._qkv(face, self.qkv_f)
        q_p, k_p, v_p = self._qkv(body, self.qkv_p)
        fused = torch.cat([self._attend(q_f, k_p, v_p, (b, h, w)), self._attend(q_p, k_f, v_f, (b, h, w))], dim=1)
        return self.mlp(self.norm(fused))


class FaceBodyPatchEmbed(nn.Module):
    """Patch embedding of a 6-channel input: face (channels 0-2) and body (3-5), each with its own stem."""

    def __init__(self, img_size: int, patch_size: int, hidden_dim: int, embed_dim: int, stem_stride: int = 2) -> None:
        super().__init__()
        proj = patch_size // stem_stride
        self.conv1 = _stem(3, hidden_dim)
        self.proj1 = nn.Conv2d(hidden_dim, embed_dim, kernel_size=proj, stride=proj)
        self.conv2 = _stem(3, hidden_dim)
        self.proj2 = nn.Conv2d(hidden_dim, embed_dim, kernel_size=proj, stride=proj)
        grid = ((img_size + 1) // stem_stride) // proj
        self.map = CrossAttentionFusion(embed_dim, feat_size=(grid, grid))
        self.num_patches = (img_size // patch_size) ** 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.map(self.proj1(self.conv1(x[:, :3])), self.proj2(self.conv2(x[:, 3:])))


class MiVOLOModel(VOLO):
    """VOLO whose patch embedding takes a face crop, or a face and a body crop.

    Args:
        spec: the architecture (see `MODEL_SPECS`).
        in_chans: 3 (face only) or 6 (face then body).
        num_classes: 3 (male logit, female logit, normalised age) or 1 (age only).
        **kwargs: VOLO keyword arguments such as `drop_rate`, `drop_path_rate`.
    """

    def __init__(self, spec: MiVOLOSpec, in_chans: int = 6, num_classes: int = 3, **kwargs: Any) -> None:
        if in_chans not in (3, 6):
            raise ValueError(f"in_chans must be 3 (face) or 6 (face + body), got {in_chans}")
        super().__init__(**spec.kwargs(), in_chans=3, num_classes=num_classes, **kwargs)
        self.spec = spec
        self.in_chans = in_chans
        if in_chans == 6:
            self.patch_embed = FaceBodyPatchEmbed(
                spec.img_size, spec.patch_size, spec.stem_hidden_dim, spec.embed_dims[0]
            )
        # meta data of a trained model; set by training or by `load_checkpoint`
        self.min_age: float | None = None
        self.max_age: float | None = None
        self.avg_age: float | None = None

    @property
    def with_persons(self) -> bool:
        """Whether the model takes a body crop (6 input channels)."""
        return self.in_chans == 6

    @property
    def no_gender(self) -> bool:
        return self.num_classes == 1

    def set_age_range(self, min_age: float, max_age: float, avg_age: float | None = None) -> None:
        """Attach the age normalisation: age = out * (max - min) + avg, avg the midpoint by default."""
        self.min_age, self.max_age = float(min_age), float(max_age)
        self.avg_age = float(avg_age) if avg_age is not None else (self.min_age + self.max_age) / 2

    def encode_age(self, age: torch.Tensor) -> torch.Tensor:
        """Years -> the normalised training target."""
        self._check_range()
        return (age - self.avg_age) / (self.max_age - self.min_age)

    def decode_age(self, out: torch.Tensor) -> torch.Tensor:
        """The model's normalised age output -> years."""
        self._check_range()
        return out * (self.max_age - self.min_age) + self.avg_age

    def _check_range(self) -> None:
        if self.min_age is None or self.max_age is None or self.avg_age is None:
            raise RuntimeError("the model has no age range: load it with load_checkpoint or call set_age_range")


def create_mivolo(name: str, *, in_chans: int = 6, num_classes: int = 3, **kwargs: Any) -> MiVOLOModel:
    """Build a registered variant (random weights).

    Args:
        name: a key of `MODEL_SPECS`.
        in_chans: 3 (face only) or 6 (face + body).
        num_classes: 3 (gender logits + age) or 1 (age only).
        **kwargs: VOLO keyword arguments (e.g. `drop_rate=0.1, drop_path_rate=0.1`).
    """
    if name not in MODEL_SPECS:
        raise KeyError(f"unknown MiVOLO variant {name!r}; known: {sorted(MODEL_SPECS)}")
    return MiVOLOModel(MODEL_SPECS[name], in_chans=in_chans, num_classes=num_classes, **kwargs)
