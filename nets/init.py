"""Named weight-initialisation rules for the tensors that no file provides.

A model built from scratch gets one of these rules on every convolution and BatchNorm; a model
whose backbone comes from a file (ImageNet or ``--weights``) gets it too, and the file's tensors
then overwrite it, so loaded tensors are never re-initialised. The rule is recorded in the
checkpoint's spec (``ModelSpec.init``).

Why it matters: every convolution here feeds a BatchNorm, so under Adam a wider initial weight
means a proportionally smaller effective step. PyTorch's default (Kaiming-uniform with
``a=sqrt(5)``, from the fan-in) makes a depthwise 3x3 kernel (fan-in 9) about ten times wider
than N(0, 0.02), and from-scratch training then barely moves the backbone.

- ``normal``: the original release's rule. Convolution weights from N(0, 0.02), their biases 0;
  BatchNorm scales from N(1, 0.02), shifts 0.
- ``kaiming``: torchvision's MobileNetV2 rule. Convolution weights Kaiming-normal from the
  fan-out (PyTorch's ``out_channels * k * k``, not divided by the groups, so depthwise kernels stay
  narrow), biases 0; the classifier (the layer that outputs the class scores) N(0, 0.01), as
  torchvision's classifiers, because fan-out Kaiming on an 11-class 1x1 layer draws std 0.43 and
  starts training from huge logits (a first loss of 7 against 2.3);
  BatchNorm scales 1, shifts 0.
- ``pytorch``: the layers' own defaults (what this toolkit did before the rule was explicit),
  kept to reproduce older runs.
"""

from __future__ import annotations

import torch
from torch import nn

INIT_RULES = ("normal", "kaiming", "pytorch")
DEFAULT_INIT = "normal"
# The original's N(0, 0.02) and N(1, 0.02).
NORMAL_STD = 0.02
# torchvision's classifier rule, used by ``kaiming`` for the class-score layer.
CLASSIFIER_STD = 0.01


_DESCRIPTIONS = {"normal": "conv N(0, 0.02), BN scale N(1, 0.02)",
                 "kaiming": "conv Kaiming-normal (fan-out), classifier N(0, 0.01), BN scale 1",
                 "pytorch": "PyTorch layer defaults"}


def describe_init(rule: str | None) -> str:
    """One line for the run summary: the rule's name and what it draws."""
    rule = rule or DEFAULT_INIT
    return f"{rule} init ({_DESCRIPTIONS[check_init(rule)]})"


def check_init(rule: str) -> str:
    """Return ``rule`` if it is a known rule, else raise a ValueError that lists them."""
    if rule not in INIT_RULES:
        raise ValueError(f"init must be one of {', '.join(INIT_RULES)}; got {rule!r}")
    return rule


@torch.no_grad()
def init_weights(module: nn.Module, rule: str = DEFAULT_INIT, classifier: nn.Conv2d | None = None) -> None:
    """Initialise every convolution and BatchNorm inside ``module`` (itself included) by ``rule``, in place.

    ``classifier`` is the layer that outputs the class scores; ``kaiming`` draws it from
    N(0, :data:`CLASSIFIER_STD`). The draws come from torch's global generator, so a seeded run
    builds the same model.
    """
    check_init(rule)
    if rule == "pytorch":
        for layer in module.modules():
            if isinstance(layer, (nn.Conv2d, nn.BatchNorm2d)):
                layer.reset_parameters()
        return
    for layer in module.modules():
        if isinstance(layer, nn.Conv2d):
            if rule == "normal":
                nn.init.normal_(layer.weight, 0.0, NORMAL_STD)
            elif layer is classifier:
                nn.init.normal_(layer.weight, 0.0, CLASSIFIER_STD)
            else:
                nn.init.kaiming_normal_(layer.weight, mode="fan_out", nonlinearity="relu")
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)
        elif isinstance(layer, nn.BatchNorm2d):
            if rule == "normal":
                nn.init.normal_(layer.weight, 1.0, NORMAL_STD)
            else:
                nn.init.ones_(layer.weight)
            nn.init.zeros_(layer.bias)
