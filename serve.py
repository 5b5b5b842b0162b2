"""Serve a trained DeepLabV3+ over HTTP: a JSON/PNG API, OpenAPI docs and a page to try it.

Examples::

    python serve.py --weights logs/demo/best.pth                  # http://127.0.0.1:8000/
    python serve.py --onnx model.onnx --port 9000 --max-batch 8
    curl -F image=@photo.jpg http://127.0.0.1:8000/v1/segment -o mask.png

The flags map to :class:`utils.serving.options.ServeOptions` and the predictor's options here, once; the
service is :func:`utils.serving.app.create_app`, run by uvicorn. SIGTERM (or Ctrl-C) finishes the
requests in flight, then exits (0 for SIGTERM).
"""

from __future__ import annotations

import argparse
import signal
import socket
import sys
from collections.abc import Sequence

import torch
import uvicorn

from utils.data.io import read_class_names
from utils.device import PRECISIONS
from utils.errors import ArgumentParser, UserError, run_cli
from utils.evaluation.threshold import threshold_arg
from utils.inference.cli import add_slide_arguments, build_predictor
from utils.serving.app import create_app
from utils.serving.memory import limit_malloc_arenas
from utils.serving.options import ServeOptions


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = ArgumentParser(description="Serve a DeepLabV3+ model over HTTP (API, OpenAPI docs at /docs, a page "
                            "at /).")
    model = parser.add_mutually_exclusive_group(required=True)
    model.add_argument("--weights", help="checkpoint from train.py or an original release .pth")
    model.add_argument("--onnx", metavar="PATH", help="an ONNX export, run with ONNX Runtime")
    parser.add_argument("--host", default=ServeOptions.host,
                        help="address to bind (default: %(default)s, this machine only; 0.0.0.0 for all)")
    parser.add_argument("--port", type=int, default=ServeOptions.port, help="TCP port (default: %(default)s)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: %(default)s)")
    parser.add_argument("--precision", choices=PRECISIONS, default="fastest",
                        help="as predict.py: fastest (default), auto, fp32, fp16 or bf16")
    parser.add_argument("--threads", type=int, help="CPU threads for PyTorch / ONNX Runtime (default: all cores)")
    parser.add_argument("--max-batch", type=int, default=ServeOptions.max_batch,
                        help="images per forward pass at most (default: %(default)s)")
    parser.add_argument("--batch-wait-ms", type=float, default=ServeOptions.batch_wait_ms,
                        help="how long a batch waits for more requests (default: %(default)s)")
    parser.add_argument("--max-queue", type=int, default=ServeOptions.max_queue,
                        help="requests waiting for the model at most; beyond: 503 (default: %(default)s)")
    parser.add_argument("--max-upload-mb", type=float, default=ServeOptions.max_upload_mb,
                        help="largest request body in MiB; beyond: 413 (default: %(default)s)")
    parser.add_argument("--max-pixels", type=int, default=ServeOptions.max_pixels,
                        help="largest image (width x height, read from its header); beyond: 413 "
                        "(default: %(default)s)")
    parser.add_argument("--classes", metavar="FILE", help="class names, one per line; must match the checkpoint")
    parser.add_argument("--threshold", type=threshold_arg, metavar="P",
                        help="binary models: the default foreground threshold (default: the checkpoint's)")
    parser.add_argument("--tta", action="store_true", help="test-time augmentation by default (requests may "
                        "override it with tta=false)")
    add_slide_arguments(parser)
    # predict.py's model overrides that build_predictor reads; the service keeps the checkpoint's.
    parser.set_defaults(input_size=None, downsample_factor=None)
    return parser.parse_args(argv)


def serve_options(args: argparse.Namespace) -> ServeOptions:
    """The :class:`ServeOptions` of the flags; a bad value is a one-line error naming the flag."""
    try:
        return ServeOptions(host=args.host, port=args.port, max_batch=args.max_batch,
                            batch_wait_ms=args.batch_wait_ms, max_queue=args.max_queue,
                            max_upload_mb=args.max_upload_mb, max_pixels=args.max_pixels)
    except ValueError as exc:
        field = str(exc).split()[0]
        flag = "--" + field.replace("_", "-")
        raise UserError(f"{flag}: {exc}") from None


def bind(host: str, port: int) -> socket.socket:
    """The socket to listen on, bound before the model loads: a taken port is a one-line error at once."""
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as exc:
        raise UserError(f"cannot listen on {host}:{port} ({exc.strerror or exc}): choose another --port, or stop "
                        "what uses it") from None
    return sock


def _exit_on_sigterm(signum: int, frame: object) -> None:
    # uvicorn handles SIGTERM while it runs (it finishes the requests in flight), then raises it again for
    # the handler it found: this one, so a terminated service exits 0 instead of dying by the signal.
    sys.exit(0)


def main(args: argparse.Namespace) -> int:
    options = serve_options(args)
    limit_malloc_arenas()  # before the decoding threads exist: see utils/serving/memory.py
    if args.threads:
        torch.set_num_threads(args.threads)
    sock = bind(options.host, options.port)
    args.batch_size = options.max_batch
    names = read_class_names(args.classes) if args.classes else None
    predictor = build_predictor(args, names, progress=False)
    try:
        app = create_app(predictor, options)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    host, port = sock.getsockname()[:2]
    print(f"serving {args.weights or args.onnx} on http://{host}:{port}/ (API docs: /docs)", flush=True)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    uvicorn.Server(uvicorn.Config(app, log_level="info")).run(sockets=[sock])
    return 0


if __name__ == "__main__":
    run_cli(lambda argv: main(parse_args(argv)))
