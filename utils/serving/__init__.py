"""The HTTP service of ``serve.py``: options, upload decoding, the micro-batching model worker, the app and its page."""
