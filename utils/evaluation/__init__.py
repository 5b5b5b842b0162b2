"""Scoring segmentations: the confusion matrix, scores, reports, and evaluating a model on a split.

- :mod:`~utils.evaluation.confusion`: the streaming confusion matrix.
- :mod:`~utils.evaluation.scores`: IoU, recall, precision, F1 and the means.
- :mod:`~utils.evaluation.report`: the text table, metrics.json, confusion_matrix.csv.
- :mod:`~utils.evaluation.plots`: bar charts and the confusion heat map.
- :mod:`~utils.evaluation.png`: the fast index-PNG reader.
- :mod:`~utils.evaluation.folders`: scoring folders of index PNGs.
- :mod:`~utils.evaluation.split`: predicting and scoring a dataset split (``get_miou.py``).
"""
