"""ImageNet backbone weights: find them in ``model_data/`` or download them from the release.

Where each backbone's file comes from is its registry entry (:mod:`nets.registry`). A download
that cannot happen (offline, blocked) fails within seconds with one message that names the file,
the address and where to put a copy by hand. A corrupt or truncated file gets the same treatment
instead of an unpickling traceback.
"""

from __future__ import annotations

import socket
import urllib.error
from pathlib import Path

import torch
from torch import nn

from nets.registry import BackboneEntry, get_backbone
from utils.errors import UserError

MODEL_DIR = Path(__file__).resolve().parents[1] / "model_data"
# Connect/read timeout for the download, so an offline machine fails fast instead of hanging.
DOWNLOAD_TIMEOUT_S = 10.0


def _pretrained_entry(backbone: str) -> BackboneEntry:
    entry = get_backbone(backbone)
    if entry.pretrained_file is None or entry.pretrained_url is None:
        raise UserError(f"the {backbone} backbone has no ImageNet weights file: train without --pretrained")
    return entry


def backbone_weights_path(backbone: str, model_dir: Path | str = MODEL_DIR) -> Path:
    """Where the ImageNet file of ``backbone`` is expected locally."""
    return Path(model_dir) / _pretrained_entry(backbone).pretrained_file


def fetch_backbone_file(backbone: str, model_dir: Path | str = MODEL_DIR) -> Path:
    """Return the local ImageNet file for ``backbone``, downloading it when absent."""
    path = backbone_weights_path(backbone, model_dir)
    if path.is_file():
        return path
    url = _pretrained_entry(backbone).pretrained_url
    path.parent.mkdir(parents=True, exist_ok=True)
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        # download_url_to_file writes to a temporary file and renames it, so an
        # interrupted download never leaves a truncated file at ``path``.
        torch.hub.download_url_to_file(url, str(path), progress=True)
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        reason = getattr(exc, "reason", exc)
        raise UserError(
            f"could not download the ImageNet weights for the {backbone} backbone from {url} ({reason}). "
            f"Download the file by hand and put it at {path}, or train without --pretrained."
        ) from None
    finally:
        socket.setdefaulttimeout(previous)
    return path


def read_backbone_state_dict(path: Path, url: str) -> dict[str, torch.Tensor]:
    """Load a backbone file with ``weights_only=True``; a broken file gives one clear message."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling, zip and EOF errors all mean the same thing here
        raise UserError(
            f"{path} is corrupt or truncated ({type(exc).__name__}). Delete it and download it again "
            f"from {url}, or put a good copy at {path}."
        ) from None
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{path} does not hold a state dict of tensors. Put the file from {url} there.")
    return state


def adapt_input_kernel(weight: torch.Tensor, bands: int) -> torch.Tensor:
    """RGB kernels ``(out, 3, k, k)`` of a first convolution for ``bands`` input bands (timm's convention).

    The RGB kernels are copied for the first three bands, every extra band gets the mean of the RGB
    kernels, and all are scaled by ``3 / bands`` so that the layer's response to a grey input of the
    same level stays the same. Fewer than three bands keep the first ones, scaled the same way.
    """
    if bands == weight.shape[1]:
        return weight
    mean = weight.mean(1, keepdim=True)
    extra = mean.expand(-1, max(bands - weight.shape[1], 0), -1, -1)
    return torch.cat((weight, extra), 1)[:, :bands] * (weight.shape[1] / bands)


def load_imagenet_backbone(backbone_module: nn.Module, backbone: str, model_dir: Path | str = MODEL_DIR,
                           verbose: bool = True, in_channels: int = 3) -> list[str]:
    """Load the ImageNet weights into ``backbone_module``; return the file's unused keys.

    Keys of the file that the backbone does not have (the MobileNetV2 classifier, say)
    are reported. A backbone key missing from the file, or a shape that differs, is an
    error: the file is not the backbone it claims to be. With ``in_channels != 3`` the first
    convolution's RGB kernels are adapted by :func:`adapt_input_kernel`, and the report says so.
    """
    path = fetch_backbone_file(backbone, model_dir)
    entry = get_backbone(backbone)
    url = entry.pretrained_url
    state = read_backbone_state_dict(path, url)
    first = entry.marker_key.removeprefix("backbone.")
    adapted = in_channels != 3 and first in state
    if adapted:
        state = {**state, first: adapt_input_kernel(state[first], in_channels)}
    own = backbone_module.state_dict()
    missing = [k for k in own if k not in state]
    wrong = [f"{k}: file {tuple(state[k].shape)}, model {tuple(v.shape)}"
             for k, v in own.items() if k in state and state[k].shape != v.shape]
    if missing or wrong:
        detail = "; ".join(wrong[:3] + [f"missing {k}" for k in missing[:3]])
        raise UserError(
            f"{path} does not match the {backbone} backbone ({len(missing)} keys missing, "
            f"{len(wrong)} of another shape: {detail}). Replace it with the file from {url}."
        )
    unused = [k for k in state if k not in own]
    backbone_module.load_state_dict({k: state[k] for k in own}, strict=True)
    if verbose:
        print(f"Loaded ImageNet {backbone} backbone from {path}"
              + (f"; {first} adapted from RGB to {in_channels} bands (extra bands: the mean RGB kernel; "
                 f"all scaled by 3/{in_channels})" if adapted else "")
              + (f"; unused keys in the file: {', '.join(_summarise_keys(unused))}" if unused else ""))
    return unused


def _summarise_keys(keys: list[str]) -> list[str]:
    """Group keys by their first two name parts so a report stays one line long."""
    groups: dict[str, int] = {}
    for key in keys:
        prefix = ".".join(key.split(".")[:2])
        groups[prefix] = groups.get(prefix, 0) + 1
    return [f"{p}.* ({n})" for p, n in groups.items()]
