"""Decoding image files for every task, with errors that name the file."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from PIL import Image, UnidentifiedImageError

from engine.errors import UserError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


@contextmanager
def _open(path: str | os.PathLike) -> Iterator[Image.Image]:
    """PIL's open, with a missing or undecodable file as a one-line `UserError` naming it."""
    try:
        with Image.open(path) as img:
            yield img
    except FileNotFoundError:
        raise UserError(f"{path}: image file not found") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise UserError(f"{path}: unreadable image ({exc})") from None


def load_rgb(path: str | os.PathLike) -> Image.Image:
    """Decode an image file fully (so truncation is caught here) as RGB."""
    with _open(path) as img:
        img.load()
        return img.convert("RGB")


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """(width, height) from the file's header, without decoding the pixels."""
    with _open(path) as img:
        return img.size
