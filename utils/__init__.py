"""Everything behind the four scripts, grouped by concern.

- :mod:`utils.data`: reading and checking datasets, transforms (letterbox, augmentation), loaders.
- :mod:`utils.training`: the training loop of ``train.py`` and its parts (schedule, epoch, checkpoints).
- :mod:`utils.inference`: the predictor, its PyTorch/ONNX backends and the ``predict.py`` application.
- :mod:`utils.evaluation`: the confusion matrix, scores, reports and ``get_miou.py``'s split scoring.
- Shared leaves: :mod:`utils.errors` (user errors, CLI exit, the ``--input-size`` check of every script),
  :mod:`utils.device` (device and precision), :mod:`utils.checkpoint` (weights and checkpoints),
  :mod:`utils.summary` (parameters and FLOPs).
"""
