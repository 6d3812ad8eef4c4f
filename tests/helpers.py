"""Small builders shared by the tests."""

import contextlib
import os
import pickle
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
DEMO_CONFIG = str(ROOT / "configs" / "demo" / "shapes_resnet18_C4.yaml")
# the demo detector shrunk to seconds: width-8 ResNet-18, 96-pixel images, few proposals and RoIs
TINY_DETECTOR = ["model.backbone_options.width=8", "model.min_size=[96]", "model.max_size=160",
                 "solver.ims_per_batch=2", "data.workers=0", "test.vis_images=2", "test.batch_size=2",
                 "model.rpn.pre_nms_topk_train=300", "model.rpn.post_nms_topk_train=64",
                 "model.roi.batch_size_per_image=16"]


def voc_xml(objects, width=60, height=40, filename="x.jpg"):
    body = "".join(f"<object><name>{n}</name><difficult>{int(d)}</difficult><bndbox><xmin>{b[0]}</xmin>"
                   f"<ymin>{b[1]}</ymin><xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
                   for n, b, d in objects)
    return (f"<annotation><filename>{filename}</filename><size><width>{width}</width><height>{height}</height>"
            f"<depth>3</depth></size>{body}</annotation>")


class _Poison:
    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


def write_poisoned_pickle(path: Path, wrap, target: Path) -> None:
    """A pickle (protocol 2, as the model zoo and CIFAR use) whose loading would run `touch target`;
    `wrap(payload)` places the payload where a real file keeps its arrays."""
    with open(path, "wb") as f:
        pickle.dump(wrap(_Poison(target)), f, protocol=2)


@contextlib.contextmanager
def one_thread():
    """Run in-process work on one CPU thread, as the subprocesses it is compared with (OMP_NUM_THREADS=1): other
    thread counts sum in another order, and a few SGD steps of a tiny network amplify that last-bit difference."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def torchrun(*args: str, processes: int = 2) -> subprocess.CompletedProcess:
    """`torchrun --standalone` on the CPU with one thread per process; a failure shows the processes' stderr."""
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                             str(processes), *args], env={**os.environ, "OMP_NUM_THREADS": "1"},
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"torchrun exited {result.returncode}:\n{result.stderr[-4000:]}"
    return result


def detectron2_names(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our C4 or FPN detector's state dict in detectron2's names (`tests/data/detectron2_R50_keys.json` holds the
    real ones, which tests/test_weights_import.py checks this against): the ResNet under `backbone.` (C4) or
    `backbone.bottom_up.` (FPN) as `stem.conv1[.norm]`, `res<N>.<i>.conv<j>[.norm]`, `shortcut[.norm]`; C4's res5
    under `roi_heads.`; the pyramid as `backbone.fpn_lateral<2..5>` / `fpn_output<2..5>`; the RPN under
    `proposal_generator.rpn_head.`; the box head as `fc1` / `fc2`; a K+1-way classifier with background last."""
    out = {}
    for key, value in state_dict.items():
        key = key.replace("backbone.trunk.stages.", "backbone.bottom_up.").replace("backbone.stages.", "backbone.")
        key = key.replace("roi_heads.box_head.res5", "roi_heads.res5").replace("stem.bn1.", "stem.conv1.norm.")
        key = key.replace("downsample.0.", "shortcut.").replace("downsample.1.", "shortcut.norm.")
        for j in (1, 2, 3):
            key = key.replace(f".bn{j}.", f".conv{j}.norm.")
        for i in range(4):
            key = key.replace(f"backbone.fpn.lateral_convs.{i}.", f"backbone.fpn_lateral{i + 2}.")
            key = key.replace(f"backbone.fpn.output_convs.{i}.", f"backbone.fpn_output{i + 2}.")
        key = key.replace("rpn.head.", "proposal_generator.rpn_head.").replace("box_head.fc6.", "box_head.fc1.")
        key = key.replace("box_head.fc7.", "box_head.fc2.")
        if key.startswith("roi_heads.predictor.cls_score."):
            value = torch.cat([value[1:], value[:1]])  # background last
        out[key.replace("roi_heads.predictor.", "roi_heads.box_predictor.")] = value.clone()
    return out
