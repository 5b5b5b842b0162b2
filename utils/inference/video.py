"""predict.py's video mode: a video file or a camera, segmented frame by frame, saved and/or shown.

An FPS overlay (exponentially smoothed) is drawn on each frame. A frame is encoded into the
output while the next one is decoded. ``--show`` needs a display and
a GUI-enabled OpenCV; without them the run saves instead, or explains why it cannot.
"""

from __future__ import annotations

import os
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import cv2
from tqdm import tqdm

from utils.errors import UserError
from utils.inference.options import OutputOptions, VideoOptions
from utils.inference.outputs import Run, record
from utils.inference.predictor import Predictor
from utils.inference.visualize import make_palette, mix


def display_available() -> bool:
    """Whether cv2.imshow can open a window: a GUI-enabled OpenCV build and a display."""
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return False
    try:
        cv2.namedWindow("DeepLabV3+")
    except cv2.error:
        return False  # opencv-python-headless has no highgui backend
    return True


def open_video(source: str) -> tuple[cv2.VideoCapture, bool]:
    """Open a video file or camera index; a clear UserError when it cannot be opened."""
    is_camera = source.isdigit()
    if not is_camera and not Path(source).is_file():
        raise UserError(f"video file {source} not found (a camera is given by its index, like --video 0)")
    # OpenCV logs its own backend warnings for a missing camera; our error line says it better.
    level = cv2.utils.logging.getLogLevel()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
    try:
        capture = cv2.VideoCapture(int(source) if is_camera else source)
        ok = capture.isOpened() and capture.grab()
    finally:
        cv2.utils.logging.setLogLevel(level)
    if not ok:
        capture.release()
        if is_camera:
            raise UserError(f"camera {source} does not exist or cannot be opened; check the index (0 is the "
                            "first camera) and that no other program uses it")
        raise UserError(f"cannot open video {source}: unreadable file or a codec OpenCV lacks")
    capture.release()  # grab() consumed a frame: reopen to start at the beginning
    return cv2.VideoCapture(int(source) if is_camera else source), is_camera


def check_not_input(save: str, source: str) -> None:
    """UserError when the output video ``save`` is the input file ``source`` (after resolving links): writing
    it would truncate the video while it is still being read."""
    if not source.isdigit() and Path(save).resolve() == Path(source).resolve():
        raise UserError(f"the output video {save} is the input video {source}: writing it would destroy the input "
                        "while it is read. Choose another --save name or --out folder")


def run_video(predictor: Predictor, video: VideoOptions, outputs: OutputOptions, run: Run) -> None:
    """Segment a video or camera stream frame by frame with an FPS overlay; save and/or show it."""
    show = video.show
    if show and not display_available():
        if not video.save:
            raise UserError("--show needs a display and an OpenCV build with GUI support (this one is headless "
                            "or DISPLAY is unset); use --save out.mp4 instead")
        print("warning: no display available, --show ignored; saving to " + video.save, file=sys.stderr)
        show = False
    save = video.save
    if not save and not show and not video.source.isdigit():
        save = str(outputs.out_dir / f"{Path(video.source).stem}.mp4")
    if save:
        check_not_input(save, video.source)  # before the capture opens, so nothing is touched
    capture, is_camera = open_video(video.source)
    if not save and not show:
        capture.release()
        raise UserError("camera mode needs --show or --save out.mp4")
    fps_in = capture.get(cv2.CAP_PROP_FPS) or 25.0
    total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) if not is_camera else None
    palette = make_palette(predictor.num_classes)
    writer = None
    fps = 0.0
    progress = tqdm(total=total if total and total > 0 else None, unit="frame", file=sys.stderr)
    # The previous frame is encoded while the next one is decoded (both single-threaded), and is
    # finished before the forward pass, which uses every core itself.
    encoder = ThreadPoolExecutor(1)
    encoding: Future | None = None
    try:
        while True:
            ok, frame = capture.read()
            if encoding is not None:
                encoding.result()
            if not ok:
                break
            started = time.perf_counter()
            rgb = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
            mask = predictor.predict([rgb])[0]
            out = cv2.cvtColor(mix(rgb, mask, outputs.mix, outputs.alpha, palette), cv2.COLOR_RGB2BGR)
            # Exponential smoothing keeps the overlay readable while it still follows real changes.
            fps = 1.0 / max(time.perf_counter() - started, 1e-6) if fps == 0 else \
                0.9 * fps + 0.1 / max(time.perf_counter() - started, 1e-6)
            cv2.putText(out, f"fps= {fps:.2f}", (10, 40), cv2.FONT_HERSHEY_SIMPLEX, 1, (0, 255, 0), 2)
            if outputs.count:
                record(run, f"frame {progress.n}", mask, predictor.num_classes)
            if save:
                if writer is None:
                    Path(save).parent.mkdir(parents=True, exist_ok=True)
                    height, width = out.shape[:2]
                    writer = cv2.VideoWriter(save, cv2.VideoWriter_fourcc(*"mp4v"), fps_in, (width, height))
                    if not writer.isOpened():
                        raise UserError(f"cannot write video {save}: check the folder and use a .mp4 or .avi name")
                encoding = encoder.submit(writer.write, out)
            if show:
                cv2.imshow("DeepLabV3+", out)
                if cv2.waitKey(1) & 0xFF in (ord("q"), 27):
                    break
            progress.update(1)
    finally:
        encoder.shutdown()
        progress.close()
        capture.release()
        if writer is not None:
            writer.release()
            run.written.append(Path(save))
        if show:
            cv2.destroyAllWindows()
    if progress.n == 0:
        raise UserError(f"video {video.source} gave no frames")
    if save:
        print(f"saved {save} ({progress.n} frames)")
