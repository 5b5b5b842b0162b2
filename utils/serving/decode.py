"""Uploads to images, in memory: the body's form (multipart field ``image`` or a raw ``image/*`` body), the
pixel-count check from the header, then the decoding predict.py does.

Every refusal is an :class:`UploadError` carrying its HTTP status: 413 for a body or an image too large,
415 for something that is not an image (or not sent as one), 400 for a damaged or truncated image.
Nothing here touches the file system: multipart bodies are parsed from the bytes in memory (Starlette's
form parser would spool parts over 1 MiB to temporary files).
"""

from __future__ import annotations

import io

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from utils.data.io import exif_orientation, image_to_rgb

FIELD = "image"


class UploadError(Exception):
    """A request the service refuses: ``status`` is the HTTP status, the message says what to send instead."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def image_bytes(content_type: str | None, body: bytes) -> bytes:
    """The image of a request body: the multipart field ``image``, or the body itself for ``image/*``."""
    kind, params = parse_options_header(content_type or "")
    if kind == b"multipart/form-data":
        return _multipart_field(body, params.get(b"boundary"))
    if kind.startswith(b"image/"):
        if not body:
            raise UploadError(400, "the request body is empty: send the image's bytes")
        return body
    shown = kind.decode("latin-1") or "none"
    raise UploadError(415, f"Content-Type {shown}: send the image as the multipart field '{FIELD}' "
                      "(curl -F image=@photo.jpg) or as the raw body with an image/* Content-Type")


def _multipart_field(body: bytes, boundary: bytes | None) -> bytes:
    """The bytes of the part named ``image`` of a multipart/form-data body."""
    if not boundary:
        raise UploadError(400, "multipart/form-data without a boundary: let the client build the form")
    parts: list[tuple[dict[str, str], bytearray]] = []
    header = {"field": b"", "value": b""}

    def on_part_begin() -> None:
        parts.append(({}, bytearray()))

    def on_header_field(data: bytes, start: int, end: int) -> None:
        header["field"] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        header["value"] += data[start:end]

    def on_header_end() -> None:
        parts[-1][0][header["field"].decode("latin-1").lower()] = header["value"].decode("latin-1")
        header.update(field=b"", value=b"")

    def on_part_data(data: bytes, start: int, end: int) -> None:
        parts[-1][1].extend(data[start:end])

    parser = MultipartParser(boundary, {"on_part_begin": on_part_begin, "on_header_field": on_header_field,
                                        "on_header_value": on_header_value, "on_header_end": on_header_end,
                                        "on_part_data": on_part_data})
    try:
        parser.write(body)
        parser.finalize()
    except MultipartParseError as exc:
        raise UploadError(400, f"the multipart body cannot be parsed ({exc})") from None
    for headers, data in parts:
        _, options = parse_options_header(headers.get("content-disposition", ""))
        if options.get(b"name") == FIELD.encode():
            if not data:
                raise UploadError(400, f"the multipart field '{FIELD}' is empty: attach the image file")
            return bytes(data)
    raise UploadError(400, f"the multipart body has no field '{FIELD}': send the file as {FIELD}=@photo.jpg")


def upload_image(content_type: str | None, body: bytes, max_pixels: int) -> np.ndarray:
    """uint8 (H, W, 3) RGB of a request body: :func:`image_bytes`, then :func:`decode_image`."""
    return decode_image(image_bytes(content_type, body), max_pixels)


def decode_image(data: bytes, max_pixels: int) -> np.ndarray:
    """uint8 (H, W, 3) RGB of an image file's bytes, decoded as :func:`utils.data.io.load_image` decodes a file
    (EXIF orientation applied, any mode to RGB; complete plain RGB JPEGs and PNGs by OpenCV).

    The size is read from the header first (PIL opens lazily), so an image over ``max_pixels`` is refused
    before any pixel is decoded.
    """
    try:
        image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        # Pillow's own limit (far above the default --max-pixels) stops it before the header check below.
        raise UploadError(413, f"the image holds more than {max_pixels} pixels, the most this service takes "
                          f"(--max-pixels): downscale it first ({exc})") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        raise UploadError(415, "the upload is not an image this service can read (JPEG, PNG, BMP, TIFF, "
                          "WebP...)") from None
    with image:
        width, height = image.size
        if width * height > max_pixels:
            raise UploadError(413, f"the image is {width}x{height} = {width * height} pixels; this service "
                              f"takes at most {max_pixels} (--max-pixels): downscale it first")
        if width * height == 0:
            raise UploadError(400, f"the image is {width}x{height}: it has no pixels")
        try:
            if not _opencv_decodes_exactly(image, data):
                image.load()
                return image_to_rgb(image)
        except (OSError, SyntaxError, ValueError) as exc:
            raise UploadError(400, f"the image is damaged or truncated ({exc}): send the complete file") from None
    array = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    if array is None or array.shape[:2] != (height, width):
        raise UploadError(400, "the image is damaged or truncated: send the complete file")
    return cv2.cvtColor(array, cv2.COLOR_BGR2RGB)


def _opencv_decodes_exactly(image: Image.Image, data: bytes) -> bool:
    """The rule of :func:`utils.data.io.load_image`, on bytes: plain RGB PNGs, and RGB JPEGs without an
    orientation tag that end with their end-of-image marker (OpenCV fills a cut-off JPEG with grey)."""
    if image.mode != "RGB" or image.format not in ("PNG", "JPEG") or exif_orientation(image) != 1:
        return False
    return image.format == "PNG" or data.endswith(b"\xff\xd9")
