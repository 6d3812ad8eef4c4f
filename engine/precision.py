"""Mixed precision, one switch for every tool: `--amp none|bf16|fp16` runs the networks under `torch.autocast`."""

from __future__ import annotations

import contextlib

import torch

from engine.errors import UserError

AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}
AMP_CHOICES = tuple(AMP_DTYPES)


def check_amp(amp: str) -> str:
    if amp not in AMP_DTYPES:
        raise UserError(f"--amp {amp!r}: use one of {', '.join(AMP_DTYPES)}")
    return amp


def autocast(device: torch.device | str, amp: str) -> contextlib.AbstractContextManager:
    """`torch.autocast` in `amp`'s dtype on `device`'s type; nothing for `none`."""
    dtype = AMP_DTYPES[check_amp(amp)]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)
