"""Evaluation during training: validation loss, and mIoU over the val split at full resolution.

The mIoU goes through the same pipeline and metric code as ``get_miou.py`` (letterbox, predict,
resize back, confusion matrix: :func:`utils.evaluation.split.iterate_predictions`), each rank
scoring its share of the split and the counts summed over ranks. A binary model's foreground
probabilities are also counted at every threshold of the sweep (:mod:`utils.evaluation.threshold`);
the threshold with the best foreground IoU becomes the model's (``config["threshold"]``, saved with
the checkpoint) and the scores are those at that threshold.
"""

from __future__ import annotations

import torch

from utils.data.loader import set_loader_epoch, to_device
from utils.data.normalize import Normalization
from utils.data.raster import display_rgb
from utils.evaluation.confusion import ConfusionMatrix
from utils.evaluation.split import iterate_predictions
from utils.evaluation.threshold import SWEEP_THRESHOLDS, ThresholdSweep
from utils.inference.options import InferenceOptions
from utils.inference.predictor import Predictor
from utils.training.builder import RunParts, per_rank
from utils.training.distributed import all_reduce_sum
from utils.training.logger import RunLogger, progress


def training_precision(parts: RunParts) -> str:
    """The precision the run trains in, as :func:`utils.device.resolve_precision` names it."""
    if not parts.options.amp:
        return "fp32"
    return "fp16" if parts.amp_dtype == torch.float16 else "bf16"


@torch.no_grad()
def evaluate(parts: RunParts, epoch: int, logger: RunLogger) -> dict[str, float]:
    """Validation loss on the letterboxed val loader and mIoU, mPA, accuracy over the val split.

    A binary model also gets ``iou``, ``dice`` (foreground) and the chosen ``threshold``.

    Both run in the training precision (autocast under ``--amp``). Three sample predictions go
    to TensorBoard; the net is left in training mode (a backbone frozen with ``--freeze-bn``
    stays in eval mode, see :func:`nets.deeplabv3_plus.freeze_backbone`).
    """
    ctx, net = parts.ctx, parts.net
    net.eval()
    loss_sum = torch.zeros(2, dtype=torch.float64, device=parts.device)
    set_loader_epoch(parts.val_loader, 0)
    for images, labels in progress(parts.val_loader, len(parts.val_loader), "  val loss", ctx.is_main):
        images, labels = to_device(images, labels, parts.device, channels_last=parts.channels_last,
                                   normalization=Normalization.of(parts.spec))
        with torch.autocast(parts.device.type, dtype=parts.amp_dtype, enabled=parts.options.amp):
            logits = net(images)
        loss_sum[0] += parts.criterion(logits.float(), labels).double() * images.shape[0]
        loss_sum[1] += images.shape[0]
    all_reduce_sum(loss_sum, ctx)

    options = InferenceOptions(device=parts.device, batch_size=per_rank(parts.options.batch_size, ctx),
                               precision=training_precision(parts))
    predictor = Predictor(net, parts.spec, options)
    binary = parts.spec.task_obj.thresholded
    sweep = ThresholdSweep(SWEEP_THRESHOLDS, device=parts.device) if binary else None
    matrix = None if binary else ConfusionMatrix(parts.options.num_classes, device=parts.device)
    indices = range(ctx.rank, len(parts.val_set), ctx.world_size)
    samples = []
    for _, image, label, pred, prob in iterate_predictions(predictor, parts.val_set.load_pair, indices,
                                                           progress=ctx.is_main, desc="  val mIoU", with_prob=binary):
        if sweep is not None:
            sweep.update(prob, label)
        else:
            matrix.update(pred, label)
        if len(samples) < 3:
            samples.append((display_rgb(image), label, pred))
    extra: dict[str, float] = {}
    if sweep is not None:
        sweep.all_reduce()
        threshold = sweep.best()
        parts.spec.threshold = threshold
        scores = sweep.scores()[sweep.thresholds.index(threshold)]
        extra = {"iou": float(scores.iou[1]), "dice": float(scores.f1[1]), "threshold": threshold}
    else:
        matrix.all_reduce()
        scores = matrix.scores()
    net.train()
    logger.log_images(epoch, samples)
    val_loss = (loss_sum[0] / loss_sum[1].clamp(min=1)).item()
    if ctx.is_main:
        binary_note = (f", foreground IoU {extra['iou']:.4f}, Dice {extra['dice']:.4f} at threshold "
                       f"{extra['threshold']:g}") if extra else ""
        print(f"epoch {epoch}: val loss {val_loss:.4f}, mIoU {scores.miou:.4f}, mPA {scores.mpa:.4f}, "
              f"accuracy {scores.accuracy:.4f}{binary_note}", flush=True)
    return {"val_loss": val_loss, "miou": float(scores.miou), "mpa": float(scores.mpa),
            "accuracy": float(scores.accuracy), **extra}
