"""Data, metrics, training loop, callbacks and the predictor of the DeepLabV3+ toolkit."""
