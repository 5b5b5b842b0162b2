"""The training run behind ``train.py``, one module per part.

- :mod:`~utils.training.options`: ``TrainOptions``, the typed options a run takes (one field per train.py flag).
- :mod:`~utils.training.args`: validation of the options.
- :mod:`~utils.training.demo`: ``--demo`` settings and data.
- :mod:`~utils.training.schedule`: LR batch scaling and the schedule (torch's ``LambdaLR``).
- :mod:`~utils.training.optim`: the optimizer and the loss's class weights.
- :mod:`~utils.training.builder`: building a run (datasets, loaders, model, loss, optimizer, schedule).
- :mod:`~utils.training.epoch`: one training epoch.
- :mod:`~utils.training.validate`: evaluation during training.
- :mod:`~utils.training.state`: checkpoints and resume.
- :mod:`~utils.training.rng`: seeding and generator states.
- :mod:`~utils.training.stop`: Ctrl-C handling and the resume command.
- :mod:`~utils.training.trainer`: the loop through the phases, ``run_training``.
- :mod:`~utils.training.logger`: summary, progress bars, metrics.csv, TensorBoard, curves.
- :mod:`~utils.training.distributed`: torchrun start-up and reductions.
"""
