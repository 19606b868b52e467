"""PyTorch twins of ferjax classifiers, timed the way PyTorch users run them on a CPU.

Used by `python -m ferjax.bench` for side-by-side ratios; PyTorch is optional and never a
dependency of ferjax. Twins use the `channels_last` memory format (PyTorch's recommended CPU
layout), the same optimizer (AdamW) and loss (cross-entropy with label smoothing 0.1) as the JAX
step, bfloat16 autocast when the JAX row computes in bfloat16, and optionally `torch.compile`.
"""
from __future__ import annotations

import os
from typing import Callable

from ferjax.registry import CLASSIFIERS


def _vggface_twin(spec):
    """PyTorch twin of `vggface_fer` (or a `vggface` backbone): resize, grey -> RGB, mean, 13 convs, head."""
    import torch
    import torch.nn as tnn

    fer = hasattr(spec, "hidden")  # the transfer model's head; a plain backbone has fc6-fc8 or none
    layers, cin = [], 3
    for n, width in zip(spec.depths, spec.widths):
        for _ in range(n):
            layers += [tnn.Conv2d(cin, width, 3, padding=1), tnn.ReLU(inplace=True)]
            cin = width
        layers.append(tnn.MaxPool2d(2))
    side = spec.image_size // 32
    if fer:
        head = [tnn.Linear(cin * side * side, spec.hidden), tnn.ReLU(inplace=True), tnn.Dropout(spec.dropout),
                tnn.Linear(spec.hidden, spec.num_classes)]
    elif spec.include_top:
        head = [tnn.Linear(cin * side * side, spec.fc_width), tnn.ReLU(inplace=True), tnn.Dropout(spec.dropout),
                tnn.Linear(spec.fc_width, spec.fc_width), tnn.ReLU(inplace=True), tnn.Dropout(spec.dropout),
                tnn.Linear(spec.fc_width, spec.num_identities)]
    else:
        head = []
    mean = torch.tensor(spec.rgb_mean).view(1, 3, 1, 1)

    class Twin(tnn.Module):
        def __init__(self):
            super().__init__()
            self.body, self.head = tnn.Sequential(*layers), tnn.Sequential(tnn.Flatten(), *head)

        def forward(self, x):  # x: [N,1,48,48] as given to every twin
            x = tnn.functional.interpolate(x, size=(spec.image_size,) * 2, mode="bilinear", align_corners=False)
            return self.head(self.body(x.expand(-1, 3, -1, -1) - mean))

    return Twin()


def torch_twin(name: str):
    """The PyTorch version of a VGGNet-family or VGG-Face classifier (recognised by the fields it
    declares: `rgb_mean` and `depths` for VGG-Face, `convs_per_stage` for VGGNet), or None."""
    import torch.nn as tnn

    spec = CLASSIFIERS.create(name)
    if hasattr(spec, "rgb_mean") and hasattr(spec, "depths"):
        return _vggface_twin(spec)
    if not hasattr(spec, "convs_per_stage"):
        return None
    layers, cin = [], 1
    for width in spec.widths:
        for _ in range(spec.convs_per_stage):
            layers += [tnn.Conv2d(cin, width, 3, padding=1, bias=False), tnn.BatchNorm2d(width),
                       tnn.ReLU(inplace=True)]
            cin = width
        layers.append(tnn.MaxPool2d(2))
    return tnn.Sequential(*layers, tnn.AdaptiveAvgPool2d(1), tnn.Flatten(), tnn.Dropout(spec.dropout),
                          tnn.Linear(cin, spec.hidden), tnn.ReLU(inplace=True),
                          tnn.Dropout(spec.dropout), tnn.Linear(spec.hidden, spec.num_classes))


def make_torch_call(name: str, batch: int, train: bool, dtype: str = "float32",
                    compile: bool = False) -> Callable[[], None] | None:
    """A zero-argument function running one predict or train step of `name`'s twin, or None when
    the classifier has no twin. `compile=True` wraps the net in `torch.compile` (may raise)."""
    import torch

    net = torch_twin(name)
    if net is None:
        return None
    torch.set_num_threads(os.cpu_count() or 1)
    net = net.to(memory_format=torch.channels_last)
    x = torch.randint(0, 255, (batch, 1, 48, 48)).float().contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 7, (batch,))
    fwd = torch.compile(net) if compile else net
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bfloat16")
    if train:
        net.train()
        opt = torch.optim.AdamW(net.parameters(), 2e-3, weight_decay=5e-4)
        lossf = torch.nn.CrossEntropyLoss(label_smoothing=0.1)

        def call():
            opt.zero_grad(set_to_none=True)
            with autocast:
                loss = lossf(fwd((x - 128) / 64), y)
            loss.backward()
            opt.step()
    else:
        net.eval()

        def call():
            with torch.inference_mode(), autocast:
                fwd((x - 128) / 64)

    return call
