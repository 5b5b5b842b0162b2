"""Accuracy against the original: the original release as published and ours, one recipe, scored alike.

Both codebases train from scratch on CamVid (11 classes) with issue 24's recipe: input 192x256,
batch 8, Adam lr 5e-4 (3e-4 after the batch scaling both do, cosine to 3e-6), weight decay 0, no
frozen phase, no pretrained weights. Each trained model (the original's ``last_epoch_weights.pth``,
our ``last.pth``) is then scored by OUR ``get_miou.py`` on the val split. Every run is a subprocess
whose command is printed; the markdown table (epochs x seed x codebase x init rule x head, val
mIoU) and the machine are printed at the end, and after every run into ``<out>/results.md``.

The original is not part of this repository. Get it with ``git clone
https://github.com/bubbliiiing/deeplabv3-plus-pytorch`` (or ``git archive`` of a mirror) into a
folder outside the repo and pass it as ``--original``. It is run as published: this script only
writes a copy of its ``train.py`` (``train_bench_<run>.py`` in that folder) whose module-level
settings are changed to the recipe (CPU, classes, no weights, input size, Adam, lr, no freeze,
epochs, seed, dataset path, workers, save folder, its own mIoU callback off) and prints every
change. Its loader wants ``VOCdevkit/VOC2007/JPEGImages/*.jpg``; CamVid's images are PNG, so a
folder of ``.jpg``-named symlinks to them is made under ``--out`` (Pillow opens by content). The
original also imports scipy, which this toolkit does not need: give it an interpreter that has it
with ``--original-python``.

Run (hours on two CPU cores; a run whose weights exist in ``--out`` is scored, not retrained):

    .venv/bin/python -m bench.bench_accuracy --original /tmp/original \\
        --original-python /tmp/orig-venv/bin/python --data-root ../shared/datasets/camvid \\
        --epochs 8 30 --seeds 11 5 --inits normal kaiming --heads standard separable --out /tmp/accuracy
"""

from __future__ import annotations

import argparse
import ast
import json
import math
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from bench.common import machine_description
from nets.init import INIT_RULES

REPO = Path(__file__).resolve().parents[1]
CODEBASES = ("original", "ours")


@dataclass(frozen=True)
class Run:
    """One training run of the table."""

    codebase: str
    epochs: int
    seed: int
    init: str = "normal"  # the original's own rule: N(0, 0.02) convolutions, N(1, 0.02) BN scales
    head: str = "standard"

    @property
    def name(self) -> str:
        if self.codebase == "original":
            return f"original_e{self.epochs}_s{self.seed}"
        return f"ours_{self.init}_{self.head}_e{self.epochs}_s{self.seed}"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default=str(REPO.parent / "shared" / "datasets" / "camvid"),
                        help="CamVid in the VOC layout [%(default)s]")
    parser.add_argument("--original", metavar="PATH", help="folder of the original repository (needed to run it)")
    parser.add_argument("--original-python", default=sys.executable,
                        help="interpreter for the original; it needs scipy besides torch [%(default)s]")
    parser.add_argument("--codebases", nargs="+", choices=CODEBASES, default=list(CODEBASES))
    parser.add_argument("--epochs", type=int, nargs="+", default=[8])
    parser.add_argument("--seeds", type=int, nargs="+", default=[11])
    parser.add_argument("--inits", nargs="+", choices=INIT_RULES, default=["normal", "kaiming"],
                        help="our initialisation rules to run")
    parser.add_argument("--heads", nargs="+", choices=("standard", "separable"), default=["standard"],
                        help="our heads to run (the original has the standard one)")
    parser.add_argument("--out", default="bench/out/accuracy", help="runs, logs and results go here [%(default)s]")
    parser.add_argument("--input-size", type=int, nargs=2, default=(192, 256), metavar=("H", "W"))
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=5e-4, help="lr for batch 16 before both codebases' scaling")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--dry-run", action="store_true", help="print the commands and the original's changes only")
    args = parser.parse_args(argv)
    if "original" in args.codebases and not args.original:
        parser.error("--original PATH is needed to run the original (or pass --codebases ours)")
    return args


def plan(args: argparse.Namespace) -> list[Run]:
    """The runs in order: per schedule and seed, ours for each rule and head, then the original."""
    runs = []
    for epochs in args.epochs:
        for seed in args.seeds:
            if "ours" in args.codebases:
                runs += [Run("ours", epochs, seed, init, head) for head in args.heads for init in args.inits]
            if "original" in args.codebases:
                runs.append(Run("original", epochs, seed))
    return runs


def run_command(command: list[str], log: Path, cwd: Path = REPO, append: bool = False) -> float:
    """Run ``command`` (printed first) with its output in ``log``; fail loudly; return its wall seconds."""
    print(f"$ (cd {shlex.quote(str(cwd))} && {shlex.join(command)}) >{'>' if append else ''} {log} 2>&1", flush=True)
    start = time.perf_counter()
    with open(log, "a" if append else "w") as handle:
        status = subprocess.run(command, cwd=cwd, stdout=handle, stderr=subprocess.STDOUT).returncode
    if status:
        raise SystemExit(f"exit status {status}; see {log}")
    return time.perf_counter() - start


def ours_command(args: argparse.Namespace, run: Run, save_dir: Path) -> list[str]:
    """train.py with the recipe. --eval-period = epochs: one validation, after the last epoch."""
    data = Path(args.data_root)
    return [sys.executable, "train.py", "--data-root", str(data), "--classes", str(data / "classes.txt"),
            "--input-size", *map(str, args.input_size), "--batch-size", str(args.batch_size),
            "--optimizer", "adam", "--lr", str(args.lr), "--weight-decay", "0", "--freeze-epochs", "0",
            "--epochs", str(run.epochs), "--seed", str(run.seed), "--init", run.init, "--head", run.head,
            "--workers", str(args.workers), "--eval-period", str(run.epochs), "--save-period", "100000",
            "--device", "cpu", "--save-dir", str(save_dir)]


def original_settings(args: argparse.Namespace, run: Run, save_dir: Path, voc: Path) -> dict[str, str]:
    """The original train.py's module-level settings this recipe changes, as Python source."""
    batch, (height, width) = str(args.batch_size), args.input_size
    num_classes = len(Path(args.data_root, "classes.txt").read_text().split())
    return {
        "Cuda": "False",
        "seed": str(run.seed),
        "num_classes": str(num_classes),
        "backbone": '"mobilenet"',
        "pretrained": "False",
        "model_path": '""',  # no file: the original then applies its weights_init (N(0, 0.02))
        "downsample_factor": "16",
        "input_shape": f"[{height}, {width}]",
        "Init_Epoch": "0",
        "Freeze_Epoch": "0",
        "UnFreeze_Epoch": str(run.epochs),
        "Freeze_batch_size": batch,
        "Unfreeze_batch_size": batch,
        "Freeze_Train": "False",
        "Init_lr": repr(args.lr),
        "Min_lr": "Init_lr * 0.01",
        "optimizer_type": '"adam"',
        "weight_decay": "0",
        "lr_decay_type": '"cos"',
        "save_period": str(run.epochs),  # one ep*.pth at the end; last_epoch_weights.pth is what is scored
        "save_dir": repr(str(save_dir)),
        "eval_flag": "False",  # its own mIoU callback; the model is scored by our get_miou.py instead
        "eval_period": str(run.epochs),
        "VOCdevkit_path": repr(str(voc)),
        "num_workers": str(args.workers),
    }


def patch_settings(source: str, settings: dict[str, str]) -> tuple[str, list[str]]:
    """Replace each ``    name = value`` line of the original train.py's settings block; returns (source, changes).

    The settings block runs from ``if __name__ == "__main__":`` to its first ``seed_everything(`` call
    (later lines pass the same names as keyword arguments). Every setting must occur there exactly once,
    so an upstream change that moves one fails here instead of silently training another recipe.
    """
    begin = source.index('if __name__ == "__main__":')
    end = source.index("seed_everything(", begin)
    block, changes = source[begin:end], []
    for name, value in settings.items():
        pattern = re.compile(rf"^(?P<lead>[ \t]+{re.escape(name)}[ \t]*=[ \t]*)(?P<old>[^#\n]*?)"
                             r"(?P<tail>[ \t]*(#.*)?)$", re.MULTILINE)
        matches = list(pattern.finditer(block))
        if len(matches) != 1:
            raise SystemExit(f"the original train.py's settings have {len(matches)} '{name} = ...' lines, expected 1")
        match = matches[0]
        old = match["old"].strip()
        if not _same_value(old, value):
            changes.append(f"{name}: {old} -> {value}")
        block = block[:match.start()] + match["lead"] + value + match["tail"] + block[match.end():]
    return source[:begin] + block + source[end:], changes


def _same_value(old: str, new: str) -> bool:
    """Whether two setting sources are the same literal ('cos' and "cos"), so only real changes are listed."""
    try:
        return ast.literal_eval(old) == ast.literal_eval(new)
    except (ValueError, SyntaxError):
        return old == new


def original_dataset(args: argparse.Namespace, out: Path) -> Path:
    """A VOCdevkit for the original: VOC2007/JPEGImages/<name>.jpg symlinks to CamVid's PNGs, the label
    and split folders linked whole. Nothing is copied. Returns the VOCdevkit folder."""
    data = Path(args.data_root).resolve()
    voc = out / "original_VOCdevkit"
    images = voc / "VOC2007" / "JPEGImages"
    images.mkdir(parents=True, exist_ok=True)
    for folder in ("SegmentationClass", "ImageSets"):
        link = voc / "VOC2007" / folder
        if not link.is_symlink():
            link.symlink_to(data / folder, target_is_directory=True)
    for png in sorted((data / "JPEGImages").iterdir()):
        link = images / f"{png.stem}.jpg"
        if not link.is_symlink():
            link.symlink_to(png)
    return voc


def train_original(args: argparse.Namespace, run: Run, save_dir: Path, log: Path) -> float:
    original = Path(args.original).resolve()
    voc = original_dataset(args, Path(args.out).resolve())
    source, changes = patch_settings((original / "train.py").read_text(encoding="utf-8"),
                                     original_settings(args, run, save_dir, voc))
    script = original / f"train_bench_{run.name}.py"
    print(f"original train.py -> {script}, settings changed:\n  " + "\n  ".join(changes), flush=True)
    if args.dry_run:
        print(f"$ (cd {original} && {args.original_python} {script.name})")
        return 0.0
    script.write_text(source, encoding="utf-8")
    return run_command([args.original_python, script.name], log, cwd=original)


def score(args: argparse.Namespace, weights: Path, report: Path, log: Path) -> dict:
    """Our get_miou.py on the val split; returns its metrics.json."""
    data = Path(args.data_root)
    run_command([sys.executable, "get_miou.py", "--weights", str(weights), "--data-root", str(data),
                 "--classes", str(data / "classes.txt"), "--input-size", *map(str, args.input_size),
                 "--device", "cpu", "--out", str(report), "--no-progress"], log)
    return json.loads((report / "metrics.json").read_text())


def minutes(seconds: float) -> str:
    return "n/a (resumed)" if math.isnan(seconds) else f"{seconds / 60:.1f}"


def table(results: list[dict], machine: str) -> str:
    rows = ["| epochs | seed | codebase | init | head | val mIoU % | pixel accuracy % | train minutes |",
            "|---:|---:|---|---|---|---:|---:|---:|"]
    order = sorted(results, key=lambda r: (r["epochs"], -r["seed"], r["codebase"] != "original", r["head"], r["init"]))
    for r in order:
        init = "normal (its own)" if r["codebase"] == "original" else r["init"]
        rows.append(f"| {r['epochs']} | {r['seed']} | {r['codebase']} | {init} | {r['head']} | {r['miou'] * 100:.2f} "
                    f"| {r['accuracy'] * 100:.2f} | {minutes(r['train_s'])} |")
    return "\n".join(rows) + f"\n\nMachine: {machine}, fp32.\n"


def main(args: argparse.Namespace) -> int:
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    results_file = out / "results.json"
    results = json.loads(results_file.read_text()) if results_file.is_file() else []
    done = {r["name"] for r in results}
    machine = machine_description("cpu")
    for run in plan(args):
        if run.name in done:
            print(f"{run.name}: already scored in {results_file}")
            continue
        save_dir = out / run.name
        weights = save_dir / ("last_epoch_weights.pth" if run.codebase == "original" else "last.pth")
        # Written only when training returns: both codebases save their last weights every epoch,
        # so weights alone may be an interrupted run's.
        finished = save_dir / "train_seconds.json"
        train_s = 0.0
        if finished.is_file():
            print(f"{run.name}: trained in an earlier call, scoring {weights}")
            train_s = float(json.loads(finished.read_text()))
        elif run.codebase == "original":
            if save_dir.is_dir() and not args.dry_run:  # it cannot resume: train again from the start
                print(f"{run.name}: {save_dir} holds an unfinished run, training it again from the start")
                shutil.rmtree(save_dir)
            train_s = train_original(args, run, save_dir, out / f"{run.name}.log")
        else:
            command = ours_command(args, run, save_dir)
            resumed = weights.is_file()
            if resumed:  # an unfinished run: ours resumes exactly where it stopped
                print(f"{run.name}: {weights} is an unfinished run, resuming it")
                command += ["--resume", str(weights)]
            if args.dry_run:
                print("$ " + shlex.join(command))
            else:
                seconds = run_command(command, out / f"{run.name}.log", append=resumed)
                train_s = float("nan") if resumed else seconds  # a resumed run's earlier time is unknown
        if args.dry_run:
            continue
        finished.write_text(json.dumps(train_s))
        metrics = score(args, weights, save_dir / "miou", out / f"{run.name}.miou.log")
        results.append({**asdict(run), "name": run.name, "miou": metrics["miou"],
                        "accuracy": metrics["accuracy"], "train_s": train_s})
        results_file.write_text(json.dumps(results, indent=1))
        (out / "results.md").write_text(table(results, machine))
        print(f"{run.name}: val mIoU {metrics['miou'] * 100:.2f}% after {minutes(train_s)} min of training", flush=True)
    if results:
        print(table(results, machine))
    return 0


if __name__ == "__main__":
    sys.exit(main(parse_args()))
