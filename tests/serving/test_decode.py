"""Uploads to pixels: the same decoding as predict.py's files, the header-only size check, the body forms."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from utils.data.io import load_image
from utils.serving.decode import UploadError, decode_image, image_bytes

from .conftest import encode, picture
from .test_api import huge_png_header


def exif_rotated_jpeg(image: np.ndarray) -> bytes:
    """A JPEG whose EXIF says "rotate 90 degrees clockwise to display" (orientation 6)."""
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(image, "JPEG", quality=95, exif=exif.tobytes())


@pytest.mark.parametrize("kind", ["png", "jpeg", "exif_jpeg", "grey_png", "rgba_png", "palette_png", "webp"])
def test_decoding_matches_predict_py_reading_the_same_file(tmp_path, kind):
    image = picture(37, 53, seed=7)
    data = {
        "png": lambda: encode(image),
        "jpeg": lambda: encode(image, "JPEG", quality=90),
        "exif_jpeg": lambda: exif_rotated_jpeg(image),
        "grey_png": lambda: encode(image[:, :, 0]),
        "rgba_png": lambda: encode(np.dstack([image, np.full(image.shape[:2], 90, np.uint8)])),
        "palette_png": lambda: _palette_png(image),
        "webp": lambda: encode(image, "WEBP", lossless=True),
    }[kind]()
    path = tmp_path / f"upload.{kind.split('_')[-1]}"
    path.write_bytes(data)
    decoded = decode_image(data, max_pixels=10**6)
    np.testing.assert_array_equal(decoded, load_image(path))
    if kind == "exif_jpeg":
        assert decoded.shape == (53, 37, 3)  # turned upright
    if kind in ("png", "webp", "rgba_png"):
        np.testing.assert_array_equal(decoded, image)


def _palette_png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).quantize(16).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize(("width", "height", "limit"), [(40000, 40000, 40_000_000), (10000, 5000, 40_000_000),
                                                         (101, 100, 10_000)])
def test_too_many_pixels_is_refused_from_the_header(width, height, limit):
    data = huge_png_header(width, height)
    assert len(data) < 10_000  # nothing decodable: a decoder that tried would fail with another error
    with pytest.raises(UploadError) as caught:
        decode_image(data, max_pixels=limit)
    assert caught.value.status == 413
    assert "--max-pixels" in caught.value.message


def test_at_the_limit_is_decoded():
    image = picture(100, 100)
    assert decode_image(encode(image), max_pixels=10_000).shape == (100, 100, 3)


def test_damaged_and_foreign_bytes():
    png = encode(picture(120, 160))
    cases = {b"GIF89a" + b"\x00" * 20: 415, b"%PDF-1.7 hello": 415, png[:len(png) // 2]: 400}
    for data, status in cases.items():
        with pytest.raises(UploadError) as caught:
            decode_image(data, max_pixels=10**6)
        assert caught.value.status == status


def multipart(fields: dict[str, bytes], boundary: str = "XyZ123") -> tuple[str, bytes]:
    parts = b"".join(
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="f.bin"\r\n'
        f"Content-Type: application/octet-stream\r\n\r\n".encode() + value + b"\r\n"
        for name, value in fields.items())
    return f"multipart/form-data; boundary={boundary}", parts + f"--{boundary}--\r\n".encode()


def test_image_bytes_from_the_multipart_field_or_the_raw_body():
    payload = bytes(range(256)) * 40 + b"\r\n--not-the-boundary\r\n"
    content_type, body = multipart({"note": b"hello", "image": payload})
    assert image_bytes(content_type, body) == payload
    assert image_bytes("image/jpeg", payload) == payload
    for kind, data, status in [(*multipart({"file": payload}), 400), ("application/json", b"{}", 415),
                               (None, payload, 415), ("multipart/form-data", body, 400), ("image/png", b"", 400)]:
        with pytest.raises(UploadError) as caught:
            image_bytes(kind, data)
        assert caught.value.status == status
