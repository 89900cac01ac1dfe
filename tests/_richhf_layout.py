"""Test helper: a module with the attribute layout of the RichHF re-implementation (github.com/youweiliang/RichHF,
model.py: ``vit``, ``t5``, ``visual_token_projection``, ``heatmap_predictor`` / ``score_predictor`` with their
Sequential indices), and its ViT keys renamed to the transformers-4.x names the released checkpoint was saved
with. Written from the documented structure (facts), not from their code."""
from __future__ import annotations

import re

import torch
from torch import nn


class _Scale(nn.Module):
    """RMS norm over channels (mean of squares, eps 1e-8, no mean subtraction, no bias), times ``scale``."""

    def __init__(self, c):
        super().__init__()
        self.scale = nn.Parameter(torch.randn(c, 1, 1))

    def forward(self, x):
        return x * (x.square().mean(dim=1, keepdim=True) + 1e-8).rsqrt() * self.scale


def _conv(a, b):
    return nn.Conv2d(a, b, 3, padding=1)


class RefHeatmap(nn.Module):
    def __init__(self, cin, stem, up, last):
        super().__init__()
        self.conv_layers = nn.Sequential(_conv(cin, stem[0]), nn.ReLU(), _Scale(stem[0]), _conv(stem[0], stem[1]),
                                         nn.ReLU(), _Scale(stem[1]))
        self.deconv_layers, self.conv_layers2 = nn.ModuleList(), nn.ModuleList()
        c = stem[1]
        for o in up:
            self.deconv_layers.append(nn.Sequential(nn.ConvTranspose2d(c, o, 3, 2, 1, 1), _Scale(o), nn.ReLU()))
            self.conv_layers2.append(nn.Sequential(_conv(o, o), _Scale(o), nn.ReLU(), _conv(o, o), _Scale(o)))
            c = o
        self.last_conv1, self.last_conv2 = _conv(c, last), _conv(last, 1)

    def forward(self, x):   # documented order: stem; per stage x = relu(deconv(x) + block(deconv(x))); outputs
        x = self.conv_layers(x)
        for up, block in zip(self.deconv_layers, self.conv_layers2):
            x = up(x)
            x = torch.relu(x + block(x))
        return torch.sigmoid(self.last_conv2(torch.relu(self.last_conv1(x))))[:, 0]


class RefScore(nn.Module):
    def __init__(self, cin, convs, fc, grid):
        super().__init__()
        layers, c = [], cin
        for o in convs:
            layers += [_conv(c, o), _Scale(o), nn.ReLU()]
            c = o
        self.conv_layers = nn.Sequential(*layers)
        self.linear_layers = nn.Sequential(nn.Linear(c * grid * grid, fc[0]), nn.ReLU(), nn.Linear(fc[0], fc[1]),
                                           nn.ReLU(), nn.Linear(fc[1], 1), nn.Sigmoid())

    def forward(self, x):
        return self.linear_layers(self.conv_layers(x).flatten(1))[:, 0]


class RefRAHF(nn.Module):
    def __init__(self, cfg, multi_head=True):
        super().__init__()
        from transformers import T5Config, T5ForConditionalGeneration, ViTConfig, ViTModel
        cfg = cfg.resolved()
        self.vit = ViTModel(ViTConfig(**cfg.vit), add_pooling_layer=True)
        self.t5 = T5ForConditionalGeneration(T5Config(**cfg.t5))
        d = cfg.d_model
        self.visual_token_projection = nn.Linear(cfg.vit["hidden_size"], d)
        hm = lambda: RefHeatmap(d, cfg.heatmap_stem, cfg.heatmap_up, cfg.heatmap_last)  # noqa: E731
        sc = lambda: RefScore(d, cfg.score_convs, cfg.score_fc, cfg.grid)  # noqa: E731
        if multi_head:
            self.heatmap_predictor = nn.ModuleDict({t: hm() for t in cfg.heatmap_types})
            self.score_predictor = nn.ModuleDict({t: sc() for t in cfg.score_types})
        else:
            self.heatmap_predictor, self.score_predictor = hm(), sc()


# transformers 5 ViT names -> transformers 4 names (the checkpoint's)
_V5_TO_V4 = [(r"^vit\.layers\.(\d+)\.", r"vit.encoder.layer.\1."),
             (r"\.attention\.q_proj\.", ".attention.attention.query."),
             (r"\.attention\.k_proj\.", ".attention.attention.key."),
             (r"\.attention\.v_proj\.", ".attention.attention.value."),
             (r"\.attention\.o_proj\.", ".attention.output.dense."),
             (r"\.mlp\.fc1\.", ".intermediate.dense."), (r"\.mlp\.fc2\.", ".output.dense.")]


def richhf_state_dict(cfg, multi_head=True, seed=0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    sd = RefRAHF(cfg, multi_head).state_dict()
    out = {}
    for k, v in sd.items():
        if k.startswith("vit."):
            for a, b in _V5_TO_V4:
                k = re.sub(a, b, k)
        out[k] = v
    return out
