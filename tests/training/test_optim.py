"""The optimizers of the original recipe and the loss's class weights (given by hand or median frequency)."""

from __future__ import annotations

import pytest
import torch

from utils.errors import UserError
from utils.training.optim import build_optimizer, parse_class_weights


def test_optimizers_follow_the_recipe():
    param = [torch.nn.Parameter(torch.zeros(1))]
    sgd = build_optimizer("sgd", param, 0.1, 0.9, 1e-4)
    assert isinstance(sgd, torch.optim.SGD) and sgd.defaults["nesterov"] and sgd.defaults["momentum"] == 0.9
    assert isinstance(build_optimizer("adamw", param, 1e-3, 0.9, 1e-2), torch.optim.AdamW)
    adam = build_optimizer("adam", param, 1e-3, 0.8, 0)
    assert type(adam) is torch.optim.Adam and adam.defaults["betas"] == (0.8, 0.999)


def test_class_weights(train_data_root):
    from utils.data.dataset import SegmentationDataset

    dataset = SegmentationDataset(train_data_root, "train", (64, 64), 4, True)
    assert parse_class_weights("1, 2,2,0.5", 4, dataset).tolist() == [1.0, 2.0, 2.0, 0.5]
    with pytest.raises(UserError, match="4 classes"):
        parse_class_weights("1,2", 4, dataset)
    auto = parse_class_weights("auto", 4, dataset)
    assert auto.shape == (4,) and bool((auto > 0).all())
    # Background covers most pixels, so median-frequency balancing gives it the smallest weight.
    assert int(auto.argmin()) == 0
