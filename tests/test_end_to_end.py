"""The command-line pipeline: train_det / eval_det --checkpoint / predict, resume after SIGKILL, error paths,
and the demo in a bounded form."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from detection.data.shapes import make_shapes
from engine.cli import run_cli
from tests.helpers import DEMO_CONFIG, TINY_DETECTOR
from tools import demo, eval_det, predict, train_det

ROOT = Path(__file__).resolve().parents[1]

TINY = TINY_DETECTOR


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    out = tmp_path_factory.mktemp("shapes")
    make_shapes(out, num_train=8, num_val=3, seed=1, min_side=96, max_side=128)
    return out


def _train(out, shapes, *extra, backbone="resnet18"):
    return run_cli(train_det.main, ["--config", DEMO_CONFIG, "--data", str(shapes), "--output", str(out),
                                    "--backbone", backbone, "--max-iter", "3", "--no-progress", *TINY, *extra])


@pytest.mark.parametrize("backbone,extra", [("resnet18", []),
                                            ("vgg16", ["model.backbone_options={width: 4, hidden: 32}",
                                                       "model.roi.pooler=roipool"])])
def test_train_det_cli_runs_and_leaves_its_outputs(tmp_path, shapes, backbone, extra, capsys):
    out = tmp_path / backbone
    assert _train(out, shapes, *extra, backbone=backbone) == 0
    assert ("no --weights: training from scratch (He-initialised convolutions, torchvision's anchors and head "
            "initialisation): every layer trains") in capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["iterations"] == 3 and set(metrics) >= {"voc07", "coco"}
    for name in ("model_final.pth", "loss.png", "voc07_mAP.png", "coco_results.json", "config.yaml"):
        assert (out / name).is_file(), name
    assert len(list((out / "detections").glob("*.png"))) == 2
    final = torch.load(out / "model_final.pth", weights_only=True)
    assert final["kind"] == "faster_rcnn" and final["class_names"] == ["ellipse", "rectangle", "triangle"]
    assert set(final["score_thresholds"]) == {"ellipse", "rectangle", "triangle"}  # best F1 on the evaluation set
    assert (out / "analysis" / "analysis.md").is_file() and (out / "analysis" / "confusion.png").is_file()
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["split"] == "train"]
    val = [r for r in records if r["split"] == "val"]
    assert {"rpn_pos_anchors", "rpn_neg_anchors", "roi_fg_fraction", "roi_accuracy"} <= set(train[-1])
    assert {"loss", "loss_cls", "loss_rpn_cls"} <= set(val[-1])  # the validation loss beside the metrics


def test_eval_det_checkpoint_and_predict(tmp_path, shapes, capsys):
    out = tmp_path / "run"
    assert _train(out, shapes) == 0
    ckpt = str(out / "model_final.pth")
    assert run_cli(eval_det.main, ["--checkpoint", ckpt, "--dataset", "shapes", "--data", str(shapes), "--metric",
                                   "voc07", "coco", "--json", str(tmp_path / "m.json"), "--workers", "0",
                                   "--output", str(tmp_path / "eval")]) == 0
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert set(metrics) == {"voc07", "coco"} and set(metrics["coco"]) >= {"AP", "AP50", "AR100", "per_class"}
    assert (tmp_path / "eval" / "coco_results.json").is_file()
    assert run_cli(predict.main, ["--checkpoint", ckpt, "--input", str(shapes / "val"), "--output",
                                  str(tmp_path / "pred"), "--score-thresh", "0.0"]) == 0
    results = json.loads((tmp_path / "pred" / "results.json").read_text())
    # a threshold of 0 keeps every detection the model makes (its own floor lowered): every image has some
    assert {r["file_name"] for r in results} == {p.name for p in (shapes / "val").iterdir()}
    assert all(len(r["bbox"]) == 4 and r["bbox"][2] > 0 and r["bbox"][3] > 0 and 0 <= r["score"] <= 1
               for r in results)
    assert (tmp_path / "pred" / "000001.png").stat().st_size > 0
    capsys.readouterr()


def test_cli_error_paths_are_one_line(tmp_path, shapes, capsys):
    def error_of(tool, argv):
        assert run_cli(tool.main, argv) == 2
        err = [line for line in capsys.readouterr().err.strip().splitlines() if not line.startswith("warning: ")]
        assert len(err) == 1 and err[0].startswith("error: "), err
        return err[0]

    base = ["--config", DEMO_CONFIG, "--output", str(tmp_path / "o"), "--max-iter", "1", *TINY]
    assert "nowhere: dataset folder not found" in error_of(train_det, [*base, "--data", str(tmp_path / "nowhere")])
    assert "unknown model 'resnet5'" in error_of(train_det, [*base, "--data", str(shapes), "--backbone", "resnet5"])
    cls_ckpt = tmp_path / "cls.pth"
    torch.save({"arch": "resnet34", "options": {}, "state_dict": {"fc.weight": torch.zeros(2, 2)}}, cls_ckpt)
    assert "holds resnet34 weights but the detector backbone is resnet18" in error_of(
        train_det, [*base, "--data", str(shapes), "--weights", str(cls_ckpt)])
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"\x80\x02garbage")
    assert "corrupt.pth" in error_of(eval_det, ["--checkpoint", str(corrupt), "--dataset", "shapes", "--data",
                                                str(shapes)])
    assert "a resnet34 classifier checkpoint" in error_of(
        predict, ["--checkpoint", str(cls_ckpt), "--input", str(shapes / "val"), "--output", str(tmp_path / "p")])
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")  # an output folder that cannot be created, whoever runs the tests
    assert "a_file/run: Not a directory" in error_of(train_det, [*base[:2], "--output", str(blocker / "run"),
                                                                 *base[4:], "--data", str(shapes)])


@pytest.mark.slow
def test_a_run_killed_mid_training_resumes_from_its_last_checkpoint(tmp_path, shapes):
    args = [sys.executable, str(ROOT / "tools" / "train_det.py"), "--config", DEMO_CONFIG, "--data", str(shapes),
            "--max-iter", "40", "--no-progress", *TINY, "train.checkpoint_period=2", "train.eval_period=0"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([*args, "--output", str(tmp_path / "once")], check=True, env=env, capture_output=True, timeout=600)
    killed = tmp_path / "killed"
    proc = subprocess.Popen([*args, "--output", str(killed)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 300

    def past_iteration_4() -> bool:  # any checkpoint from iteration 4 on (older ones are pruned as it goes)
        return any(int(p.stem.split("_")[1]) >= 4 for p in killed.glob("checkpoint_*.pth"))

    while not past_iteration_4() and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "model_final.pth").exists(), "the run finished before it could be killed"
    subprocess.run([*args, "--output", str(killed), "--resume"], check=True, env=env, capture_output=True,
                   timeout=600)
    once = torch.load(tmp_path / "once" / "model_final.pth", weights_only=True)["state_dict"]
    resumed = torch.load(killed / "model_final.pth", weights_only=True)["state_dict"]
    assert all(torch.equal(once[k], resumed[k]) for k in once)


@pytest.mark.slow
def test_demo_in_a_bounded_form(tmp_path):
    out = tmp_path / "demo"
    assert run_cli(demo.main, ["--output", str(out), "--num-train", "12", "--num-val", "10", "--cls-iters", "4",
                               "--det-iters", "3", "--workers", "0", "--no-progress", "--small"]) == 0
    report = (out / "REPORT.md").read_text()
    assert "VOC07 mAP" in report and "COCO AP" in report
    for link in ("classifier/curves.png", "detector/loss.png", "eval/pr_curves_voc07.png",
                 "detector/analysis/tide.png", "detector/analysis/analysis.md"):
        assert link in report and (out / link).is_file()
    drawn = report.split("## Detections on validation images")[1]
    assert drawn.count("](detector/detections/") == len(list((out / "detector" / "detections").glob("*.png"))) > 0


@pytest.mark.parametrize("cores, device, workers", [(2, "cpu", 0), (1, "auto", 0), (4, "cpu", 2), (2, "cuda", 2)])
def test_demo_loads_in_the_main_process_on_a_small_cpu(monkeypatch, cores, device, workers):
    """On <= 2 cores that also train, loader workers would take cores from torch's compute threads."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cores)), raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert demo.default_workers(device) == workers
