"""Running a trained model: the predictor, its backends, ONNX export, drawing, and the predict.py application.

- :mod:`~utils.inference.predictor`: :class:`~utils.inference.predictor.Predictor`, the one pipeline.
- :mod:`~utils.inference.backends`: the PyTorch and ONNX Runtime forward passes.
- :mod:`~utils.inference.slide`: sliding-window inference at native resolution (``--slide``).
- :mod:`~utils.inference.postprocess`: probabilities to class maps at the image's size, without
  full-size probabilities.
- :mod:`~utils.inference.fuse`: BatchNorm folding.
- :mod:`~utils.inference.onnx_export`: ONNX export with verification, the ONNX Runtime session.
- :mod:`~utils.inference.visualize`: palettes, mix modes, class counts, index PNGs.
- :mod:`~utils.inference.pipeline`: the batch loop of predict.py's folders and get_miou.py's splits
  (the next batch is read while the last results are written).
- predict.py's application: :mod:`~utils.inference.inputs` (finding images, output paths),
  :mod:`~utils.inference.outputs` (writing results, counts), :mod:`~utils.inference.video`,
  :mod:`~utils.inference.benchmark` (``--fps``), :mod:`~utils.inference.app` (predictor, batches,
  the interactive prompt, export).
"""
