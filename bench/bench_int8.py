"""INT8 against fp32 ONNX for a trained checkpoint: val mIoU of both exports, and the forward time.

Accuracy: the checkpoint is exported (static, at its input size) and quantized with each calibration
method (``--methods``, with the default float layers) and each float-layer set (``--float-layers``, with
the first method) through :func:`utils.inference.quantize.quantize_onnx`; the fp32 file and every int8
file are scored by ``get_miou.py --onnx`` itself on ``--split``. Speed: ONNX Runtime (and OpenVINO with
``--openvino``, when installed) forward of the fp32 and the int8 file at each ``--sizes`` (``model`` is
the checkpoint's size; other sizes get their own static export, quantized with the first method),
batch 1, median of interleaved rounds.

Run: ``.venv/bin/python -m bench.bench_int8 --weights logs/best.pth --data-root ../shared/datasets/camvid``
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

import get_miou
from bench.common import interleaved, machine_description
from utils.checkpoint import load_model
from utils.inference.onnx_export import export_onnx, make_session
from utils.inference.quantize import (
    CALIBRATION_METHODS,
    FLOAT_LAYERS,
    QuantizeOptions,
    int8_dot_flags,
    quantize_onnx,
)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", required=True, help="a checkpoint from train.py")
    parser.add_argument("--data-root", required=True, help="dataset in the VOC layout (calibration and scoring)")
    parser.add_argument("--split", default="val", help="scored split (default: %(default)s)")
    parser.add_argument("--calib-split", default="train", help="default: %(default)s")
    parser.add_argument("--calib-images", type=int, default=64, help="default: %(default)s")
    parser.add_argument("--methods", nargs="+", choices=CALIBRATION_METHODS, default=list(CALIBRATION_METHODS),
                        help="calibration methods to compare (default: all)")
    parser.add_argument("--float-layers", nargs="*", default=["first-conv,classifier"], metavar="L1,L2|none",
                        help=f"float-layer sets to compare, each a comma list of {', '.join(FLOAT_LAYERS)} or "
                        "'none' (default: %(default)s)")
    parser.add_argument("--sizes", nargs="*", default=["512x512", "model"], metavar="HxW|model",
                        help="forward sizes to time (default: %(default)s; none skips the speed table)")
    parser.add_argument("--rounds", type=int, default=20, help="interleaved timing rounds (default: %(default)s)")
    parser.add_argument("--threads", type=int, help="runtime threads (default: all cores)")
    parser.add_argument("--openvino", action="store_true", help="also time OpenVINO on the same files")
    parser.add_argument("--no-accuracy", action="store_true", help="skip the mIoU table")
    parser.add_argument("--out", help="keep the ONNX files and reports here (default: a temporary folder)")
    return parser.parse_args(argv)


def layer_set(text: str) -> tuple[str, ...]:
    return () if text == "none" else tuple(part for part in text.split(",") if part)


def miou(onnx_path: Path, args: argparse.Namespace, out: Path) -> float:
    """val mIoU in % of ``get_miou.py --onnx`` (its tables kept out of this output)."""
    flags = ["--onnx", str(onnx_path), "--data-root", args.data_root, "--split", args.split, "--out", str(out),
             "--device", "cpu", "--no-progress"]
    with contextlib.redirect_stdout(io.StringIO()):
        get_miou.main(get_miou.parse_args(flags))
    return 100 * float(json.loads((out / "metrics.json").read_text())["miou"])


def quantize(fp32: Path, target: Path, args: argparse.Namespace, method: str, layers: tuple[str, ...]):
    options = QuantizeOptions(args.data_root, calib_split=args.calib_split, calib_images=args.calib_images,
                              method=method, float_layers=layers, threads=args.threads)
    return quantize_onnx(fp32, target, options)


def accuracy_rows(model, spec, args: argparse.Namespace, work: Path) -> list[str]:
    fp32 = work / "fp32.onnx"
    export_onnx(model, fp32, spec.input_size, spec=spec)
    reference = miou(fp32, args, work / "miou_fp32")
    rows = [f"| fp32 export | - | - | {reference:.2f} | - | - |"]
    default_layers = layer_set(args.float_layers[0]) if args.float_layers else ()
    configs = [(method, default_layers) for method in args.methods]
    configs += [(args.methods[0], layer_set(text)) for text in args.float_layers[1:]]
    for method, layers in configs:
        name = f"int8_{method}_{'-'.join(layers) or 'none'}"
        report = quantize(fp32, work / f"{name}.onnx", args, method, layers)
        score = miou(work / f"{name}.onnx", args, work / f"miou_{name}")
        rows.append(f"| int8 | {method} | {', '.join(layers) or 'none'} | {score:.2f} | {score - reference:+.2f} | "
                    f"{100 * report.agreement:.2f}% |")
        print(rows[-1], flush=True)
    return rows


def runners(path: Path, shape: tuple[int, ...], threads: int | None, openvino: bool) -> dict[str, Callable[[], object]]:
    """Forward callables of one file by runtime name, on one fixed random input."""
    x = np.random.default_rng(0).random(shape, dtype=np.float32)
    session = make_session(path, threads=threads)
    name = session.get_inputs()[0].name
    out = {"onnxruntime": lambda: session.run(None, {name: x})}
    if openvino:
        import openvino as ov

        config = {"INFERENCE_PRECISION_HINT": "f32"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        compiled = ov.Core().compile_model(str(path), "CPU", config)
        out["openvino"] = lambda: compiled([x])
    return out


def speed_rows(model, spec, args: argparse.Namespace, work: Path) -> list[str]:
    rows = []
    for text in args.sizes:
        size = tuple(spec.input_size) if text == "model" else tuple(int(v) for v in text.lower().split("x"))
        sized = spec.replace(input_size=size)
        fp32, int8 = work / f"speed_fp32_{size[0]}x{size[1]}.onnx", work / f"speed_int8_{size[0]}x{size[1]}.onnx"
        export_onnx(model, fp32, size, spec=sized)
        quantize(fp32, int8, args, args.methods[0], layer_set(args.float_layers[0]) if args.float_layers else ())
        shape = (1, spec.in_channels, *size)
        candidates = {}
        for precision, path in (("fp32", fp32), ("int8", int8)):
            for runtime, fn in runners(path, shape, args.threads, args.openvino).items():
                candidates[f"{runtime} {precision}"] = fn
        times = interleaved(candidates, args.rounds, warmup=2)
        runtimes = [name.split()[0] for name in candidates if name.endswith("fp32")]
        base = times["onnxruntime fp32"][1]
        for runtime in runtimes:
            f32, i8 = times[f"{runtime} fp32"][1], times[f"{runtime} int8"][1]
            rows.append(f"| {size[0]}x{size[1]} | {runtime} | {f32 * 1e3:.1f} | {i8 * 1e3:.1f} | {i8 / f32:.2f}x | "
                        f"{f32 / base:.2f}x | {i8 / base:.2f}x |")
            print(rows[-1], flush=True)
    return rows


def main(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    model, spec = load_model(args.weights, device="cpu")
    flags = int8_dot_flags()
    print(f"machine: {machine_description('cpu')}; int8 dot-product flags: {', '.join(sorted(flags or [])) or 'none'}")
    print(f"model: {args.weights} ({spec.backbone}, {spec.head} head, {spec.num_classes} classes, input "
          f"{spec.input_size[0]}x{spec.input_size[1]}); calibration: {args.calib_images} {args.calib_split} images")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.out) if args.out else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        if not args.no_accuracy:
            rows = accuracy_rows(model, spec, args, work)
            print(f"\n| model | calibration | float layers | {args.split} mIoU % | vs fp32 (points) | "
                  "pixel agreement with fp32 (calibration images) |")
            print("|---|---|---|---:|---:|---:|")
            print("\n".join(rows))
        if args.sizes:
            rows = speed_rows(model, spec, args, work)
            print(f"\nforward, batch 1, median of {args.rounds} interleaved rounds:\n")
            print("| input (HxW) | runtime | fp32 ms | int8 ms | int8 / fp32 | fp32 vs ORT fp32 | int8 vs ORT fp32 |")
            print("|---|---|---:|---:|---:|---:|---:|")
            print("\n".join(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(parse_args()))
