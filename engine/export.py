"""Deployment formats: ONNX (PyTorch's torch.export-based exporter; checked with onnxruntime) and TorchScript
(a trace). A model to export takes tensors and returns a tensor or a tuple of them."""

from __future__ import annotations

import inspect
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from engine.checkpoint import atomic_output
from engine.errors import UserError

FORMATS = ("onnx", "torchscript")


def image_dims(batch: bool = False) -> dict[int, Any]:
    """The `dynamic_shapes` entry of an image input for `export_model`: height and width of 32..4096 pixels
    ((C, H, W), one image) and, with `batch`, a leading batch of 1..1024 ((B, C, H, W))."""
    height, width = torch.export.Dim("height", min=32, max=4096), torch.export.Dim("width", min=32, max=4096)
    if batch:
        return {0: torch.export.Dim("batch", min=1, max=1024), 2: height, 3: width}
    return {1: height, 2: width}


def export_model(model: nn.Module, example: tuple[torch.Tensor, ...], path: str | os.PathLike, fmt: str, *,
                 dynamic_shapes: tuple[dict[int, Any], ...], input_names: Sequence[str],
                 output_names: Sequence[str]) -> Path:
    """Write `model` (eval mode) to `path` in `fmt` (one of `FORMATS`), atomically. `dynamic_shapes` gives, per
    input, the `torch.export.Dim` of each dimension that may change size (TorchScript traces are size-generic
    only where the model has no size-dependent Python logic, as in the classifiers)."""
    if fmt not in FORMATS:
        raise UserError(f"unknown export format {fmt!r}; use one of {', '.join(FORMATS)}")
    path = Path(path)
    model = model.eval()
    with atomic_output(path) as tmp, torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporters' deprecation and tracer chatter
        if fmt == "onnx":
            if "dynamo" not in inspect.signature(torch.onnx.export).parameters:
                raise UserError(f"ONNX export needs torch >= 2.5 (its torch.export-based exporter); this is "
                                f"{torch.__version__}")
            program = torch.onnx.export(model, example, dynamo=True, dynamic_shapes=dynamic_shapes,
                                        input_names=list(input_names), output_names=list(output_names),
                                        verbose=False, custom_translation_table=_onnx_translations())
            program.save(str(tmp))
        else:
            torch.jit.trace(model, example, check_trace=False).save(str(tmp))
    return path


def _onnx_translations() -> dict[Any, Any]:
    """ONNX for the torchvision ops whose stock translation does not fit the op: `roi_pool` (onnxscript maps
    the Python `roi_pool(input, boxes, output_size, scale)` signature, not the op's `(input, rois, scale,
    height, width)`; ONNX MaxRoiPool is the same Caffe RoI pooling, rois as (batch index, x1, y1, x2, y2))."""
    from onnxscript import opset18 as op

    def roi_pool(input, rois, spatial_scale: float, pooled_height: int, pooled_width: int):
        pooled = op.MaxRoiPool(input, rois, pooled_shape=(pooled_height, pooled_width), spatial_scale=spatial_scale)
        return pooled, op.Cast(pooled, to=7)  # the op's second output (argmax, int64) is only used for gradients

    return {torch.ops.torchvision.roi_pool.default: roi_pool}


def onnx_outputs(path: str | os.PathLike, inputs: Sequence[tuple[torch.Tensor, ...]],
                 input_names: Sequence[str]) -> list[tuple[torch.Tensor, ...]]:
    """What onnxruntime computes for each input tuple."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return [tuple(torch.from_numpy(g) for g in session.run(None, {n: a.numpy() for n, a in
                                                               zip(input_names, args, strict=True)}))
            for args in inputs]


def torch_outputs(model: nn.Module, inputs: Sequence[tuple[torch.Tensor, ...]]) -> list[tuple[torch.Tensor, ...]]:
    """What `model` (eval mode) computes for each input tuple, on the CPU."""
    device = next(model.parameters()).device
    out = []
    for args in inputs:
        with torch.no_grad():
            result = model.eval()(*(a.to(device) for a in args))
        out.append(tuple(r.cpu() for r in (result if isinstance(result, tuple) else (result,))))
    return out


def max_difference(want: torch.Tensor, have: torch.Tensor) -> float:
    """The largest absolute difference of two tensors; `inf` where their shapes differ."""
    if want.shape != have.shape:
        return float("inf")
    return (want.double() - have.double()).abs().max().item() if want.numel() else 0.0


def detection_differences(want: Sequence[torch.Tensor], have: Sequence[torch.Tensor]) -> dict[str, float]:
    """Two detection sets `(boxes (N, 4), scores (N,), labels (N,))` compared record by record, order aside (two
    detections whose scores differ in the last bits may come out in either order): each detection of `want`,
    best first, is paired with the detection of `have` of the same label, not yet paired, whose box and score are
    nearest (the largest of its coordinate differences and its score difference); returns the count and the
    largest box and score differences over the pairs, `inf` where the counts differ or a detection finds no
    partner of its label."""
    (want_boxes, want_scores, want_labels), (have_boxes, have_scores, have_labels) = (
        [t.double() for t in want], [t.double() for t in have])
    count = float(len(want_boxes))
    if len(want_boxes) != len(have_boxes):
        return {"count": count, "boxes": float("inf"), "scores": float("inf")}
    box_gap = (want_boxes[:, None] - have_boxes[None]).abs().amax(-1)
    score_gap = (want_scores[:, None] - have_scores[None]).abs()
    cost = torch.maximum(box_gap, score_gap).masked_fill(want_labels[:, None] != have_labels[None], float("inf"))
    boxes = scores = 0.0
    taken = torch.zeros(len(have_boxes), dtype=torch.bool)
    for i in torch.argsort(want_scores, descending=True, stable=True).tolist():
        j = int(cost[i].masked_fill(taken, float("inf")).argmin()) if len(have_boxes) else -1
        if j < 0 or not torch.isfinite(cost[i, j]):
            return {"count": count, "boxes": float("inf"), "scores": float("inf")}
        taken[j] = True
        boxes, scores = max(boxes, box_gap[i, j].item()), max(scores, score_gap[i, j].item())
    return {"count": count, "boxes": boxes, "scores": scores}
