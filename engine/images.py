"""Decoding image files for every task, with errors that name the file.

Images are read as people see them: a JPEG's EXIF orientation (a phone photo taken upright is often stored
sideways with an "orientation" tag) is applied on decoding, and `image_size` reports the displayed size, so
annotations, training, evaluation, prediction and drawing all agree on one orientation.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from engine.errors import UserError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
EXIF_ORIENTATION = 0x0112
_TRANSPOSED = (5, 6, 7, 8)  # orientations that swap width and height


@contextmanager
def _open(path: str | os.PathLike) -> Iterator[Image.Image]:
    """PIL's open, with a missing or undecodable file as a one-line `UserError` naming it. An image whose
    header declares more than Pillow's `Image.MAX_IMAGE_PIXELS` (~89 million; a "decompression bomb", which
    Pillow only warns about below twice that) is refused before any pixel is decoded: memory stays flat."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                yield img
    except FileNotFoundError:
        raise UserError(f"{path}: image file not found") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise UserError(f"{path}: image too large to decode safely ({exc})") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise UserError(f"{path}: unreadable image ({exc})") from None


def exif_orientation(img: Image.Image) -> int:
    """The EXIF orientation tag (1: as stored; 2..8: mirrored and/or rotated), 1 when absent or invalid."""
    try:
        value = img.getexif().get(EXIF_ORIENTATION, 1)
    except (OSError, ValueError, SyntaxError):  # a corrupt EXIF block: the pixels as stored
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def load_rgb(path: str | os.PathLike, min_side: int | None = None) -> Image.Image:
    """Decode an image file fully (so truncation is caught here) as RGB, in its displayed orientation.

    `min_side`: the caller only needs the shorter side this large, so a large JPEG may be decoded at 1/2, 1/4
    or 1/8 of its size (libjpeg's DCT scaling, several times faster than decoding it whole and resizing); the
    shorter side stays >= `min_side`. Other formats, and JPEGs too small to scale, decode as they are."""
    with _open(path) as img:
        if min_side is not None and img.format == "JPEG":
            width, height = img.size
            shorter = min(width, height)
            if shorter >= 2 * min_side:
                img.draft("RGB", (-(-width * min_side // shorter), -(-height * min_side // shorter)))
        img.load()
        if exif_orientation(img) != 1:
            img = ImageOps.exif_transpose(img)
        return img.convert("RGB")


def read_for_device_decoding(path: str | os.PathLike) -> torch.Tensor:
    """A JPEG stored upright, as its encoded bytes (1-D uint8), for a batched decoder on the device
    (`torchvision.io.decode_jpeg(device=...)`); any other image (another format, an EXIF rotation) decoded
    here, as a (3, H, W) uint8 tensor. The header is checked as for `load_rgb` (missing, unreadable, too large)."""
    with _open(path) as img:
        if img.format == "JPEG" and img.mode in ("RGB", "L") and exif_orientation(img) == 1:
            return torch.frombuffer(bytearray(Path(path).read_bytes()), dtype=torch.uint8)
    return torch.from_numpy(np.array(load_rgb(path))).permute(2, 0, 1).contiguous()


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """(width, height) as displayed (EXIF orientation applied), from the file's header without decoding."""
    with _open(path) as img:
        width, height = img.size
        return (height, width) if exif_orientation(img) in _TRANSPOSED else (width, height)
