"""Classification data, transforms, evaluation and training through `tools/train_cls.py`."""

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torchvision import transforms as T
from torchvision.transforms import functional as TF

import backbones
from classification.data import CIFAR10, ImageFolder, SyntheticImages, collate_skip_bad, read_cifar_batch
from classification.evaluate import topk_errors
from classification.precise_bn import recompute_bn_stats
from classification.transforms import (
    DeviceTrainTransform,
    PCALighting,
    RandomShorterSideCrop,
    eval_transform,
    train_transform,
)
from engine.cli import run_cli
from engine.errors import UserError
from engine.images import load_rgb, read_for_device_decoding
from tests.helpers import one_thread, torchrun, write_poisoned_pickle
from tools import analyze_responses, eval_cls, train_cls

ROOT = Path(__file__).resolve().parents[1]

COLOURS = np.array([[220, 30, 30], [30, 200, 40], [40, 60, 220], [230, 220, 40], [200, 40, 200],
                    [40, 210, 210], [120, 60, 20], [250, 150, 60], [128, 128, 128], [20, 20, 20]], dtype=np.float64)


def _class_images(labels, size, seed):
    """Noisy images whose colour and a bright quadrant identify the class: learnable in a few steps."""
    rng = np.random.default_rng(seed)
    images = []
    for label in labels:
        img = COLOURS[label] * rng.uniform(0.6, 1.0) + rng.normal(0, 25, (size, size, 3))
        q = size // 2
        y, x = divmod(label % 4, 2)
        img[y * q:(y + 1) * q, x * q:(x + 1) * q] += 40
        images.append(np.clip(img, 0, 255).astype(np.uint8))
    return np.stack(images)


@pytest.fixture
def cifar_dir(tmp_path):
    """The official python layout with 40 images per batch file (pickle protocol 2, bytes keys)."""
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    for i, name in enumerate([*(f"data_batch_{k}" for k in range(1, 6)), "test_batch"]):
        labels = [j % 10 for j in range(40)]
        data = _class_images(labels, 32, seed=i).transpose(0, 3, 1, 2).reshape(40, 3072)
        with open(root / name, "wb") as f:
            pickle.dump({b"batch_label": name.encode(), b"labels": labels, b"data": data,
                         b"filenames": [b"x.png"] * 40}, f, protocol=2)
    return root


@pytest.fixture
def imagenet_dir(tmp_path):
    """ImageNet folder layout with JPEGs of odd sizes."""
    root = tmp_path / "imagenet"
    for split, n in (("train", 6), ("val", 2)):
        for c, wnid in enumerate(["n01440764", "n01443537", "n01484850"]):
            folder = root / split / wnid
            folder.mkdir(parents=True)
            for i, img in enumerate(_class_images([c] * n, 48, seed=c * 10 + len(split))):
                Image.fromarray(img[:, : 40 + i]).save(folder / f"{wnid}_{i}.JPEG", quality=95)
    return root


def test_cifar_batches_read_back_exactly(cifar_dir):
    with open(cifar_dir / "test_batch", "rb") as f:
        raw = pickle.load(f, encoding="bytes")
    images, labels = read_cifar_batch(cifar_dir / "test_batch")
    assert labels == raw[b"labels"]
    assert np.array_equal(images[3], raw[b"data"][3].reshape(3, 32, 32).transpose(1, 2, 0))
    assert len(CIFAR10(cifar_dir.parent, "train")) == 200 and len(CIFAR10(cifar_dir, "test")) == 40
    assert len(CIFAR10(cifar_dir, "train45k")) == 180 and len(CIFAR10(cifar_dir, "val5k")) == 20


def test_cifar_reader_refuses_code_and_wrong_files(cifar_dir, tmp_path):
    write_poisoned_pickle(cifar_dir / "data_batch_2", lambda payload: {b"data": payload}, tmp_path / "pwned")
    with pytest.raises(UserError, match=r"data_batch_2: not a CIFAR-10 python batch \(refusing to load posix.system"):
        CIFAR10(cifar_dir, "train")
    assert not (tmp_path / "pwned").exists()
    (cifar_dir / "test_batch").write_text("hello")
    with pytest.raises(UserError, match="test_batch: not a CIFAR-10 python batch"):
        CIFAR10(cifar_dir, "test")
    (cifar_dir / "data_batch_2").unlink()
    with pytest.raises(UserError, match="data_batch_2: CIFAR-10 batch file not found"):
        CIFAR10(cifar_dir, "train")
    with open(cifar_dir / "data_batch_2", "wb") as f:
        pickle.dump({b"data": np.zeros((3, 10), np.uint8), b"labels": [0, 1, 2]}, f, protocol=2)
    with pytest.raises(UserError, match="N x 3072 uint8"):
        CIFAR10(cifar_dir, "train")


def test_image_folder_errors_name_the_folder(imagenet_dir):
    ds = ImageFolder(imagenet_dir / "train")
    assert ds.classes == ["n01440764", "n01443537", "n01484850"] and len(ds) == 18
    with pytest.raises(UserError, match="test: dataset split folder not found"):
        ImageFolder(imagenet_dir / "test")
    (imagenet_dir / "train" / "n09999999").mkdir()
    with pytest.raises(UserError, match="n09999999: class folder has no images"):
        ImageFolder(imagenet_dir / "train")


def test_paper_transforms_shapes_and_determinism():
    image = Image.fromarray(_class_images([1], 300, 0)[0][:, :260])
    tf = train_transform("imagenet", 224)
    torch.manual_seed(0)
    a = tf(image)
    torch.manual_seed(0)
    assert torch.equal(a, tf(image)) and a.shape == (3, 224, 224)
    assert eval_transform("imagenet", "ten_crop", 224, 256)(image).shape == (10, 3, 224, 224)
    views = eval_transform("imagenet", "multi_scale", 224, 256, scales=[224, 256])(image)
    assert [tuple(v.shape) for v in views] == [(3, 258, 224), (3, 295, 256)]  # 300 x 260 image
    assert train_transform("cifar", 32)(Image.fromarray(_class_images([0], 32, 0)[0])).shape == (3, 32, 32)
    # PCA lighting adds one colour offset to every pixel, along ImageNet's principal components
    shifted = PCALighting(0.1)(torch.zeros(3, 4, 4))
    assert torch.allclose(shifted, shifted[:, :1, :1].expand(3, 4, 4)) and shifted.abs().sum() > 0


def test_the_one_pass_scale_crop_gives_torchvisions_resize_then_crop():
    rng = np.random.default_rng(0)
    smooth = torch.nn.functional.interpolate(torch.from_numpy(rng.random((1, 3, 40, 50))).float(), size=(375, 500),
                                             mode="bicubic").clamp(0, 1)[0]
    landscape = Image.fromarray((smooth.permute(1, 2, 0).numpy() * 255).astype(np.uint8))
    reference = T.RandomCrop(224)
    for image in (landscape, landscape.transpose(Image.Transpose.ROTATE_90), landscape.resize((1200, 700))):
        for seed in range(4):
            torch.manual_seed(seed)
            size = int(torch.randint(256, 481, ()).item())  # what the paper's recipe draws, then torchvision's ops
            expected = np.asarray(reference(TF.resize(image, size, antialias=True)), dtype=int)
            torch.manual_seed(seed)
            got = np.asarray(RandomShorterSideCrop(256, 480, 224)(image), dtype=int)
            # PIL's fixed-point filter weights round a little differently for a box: a level or two, rarely
            assert got.shape == expected.shape == (224, 224, 3)
            assert np.abs(got - expected).max() <= 2 and (got != expected).mean() < 0.03


def test_large_jpegs_decode_at_a_smaller_scale_only_when_asked(tmp_path):
    pixels = np.asarray(Image.radial_gradient("L").resize((1600, 1000)).convert("RGB"))
    Image.fromarray(pixels).save(tmp_path / "big.jpg", quality=95)
    Image.fromarray(pixels).save(tmp_path / "big.png")
    assert load_rgb(tmp_path / "big.jpg").size == (1600, 1000) == load_rgb(tmp_path / "big.png", 300).size
    # libjpeg scales by 1/2, 1/4 or 1/8: the smallest of those keeping the shorter side (1000) >= what is asked
    small = load_rgb(tmp_path / "big.jpg", 300)
    assert small.size == (800, 500)  # 1/4 would give 250 < 300
    assert load_rgb(tmp_path / "big.jpg", 250).size == (400, 250)  # 1/4 exactly
    assert load_rgb(tmp_path / "big.jpg", 600).size == (1600, 1000)  # 1000 cannot be halved and stay >= 600
    # the same picture: within a few levels of decoding whole and resizing
    whole = np.asarray(load_rgb(tmp_path / "big.jpg").resize(small.size, Image.BILINEAR), dtype=float)
    assert np.abs(np.asarray(small, dtype=float) - whole).mean() < 2


def test_decoding_on_the_device_gives_the_cpu_transforms_images(tmp_path):
    smooth = torch.nn.functional.interpolate(torch.rand(3, 3, 6, 8, generator=torch.Generator().manual_seed(0)),
                                             size=(90, 120), mode="bicubic").clamp(0, 1)
    arrays = [(p.permute(1, 2, 0).numpy() * 255).astype(np.uint8) for p in smooth]
    paths = [tmp_path / "wide.jpg", tmp_path / "tall.jpg", tmp_path / "wide.png"]
    Image.fromarray(arrays[0]).save(paths[0], quality=95)
    Image.fromarray(arrays[1]).transpose(Image.Transpose.ROTATE_90).save(paths[1], quality=95)
    Image.fromarray(arrays[2]).save(paths[2])
    items = [(read_for_device_decoding(p), str(p)) for p in paths]
    assert [i.dim() for i, _ in items] == [1, 1, 3]  # JPEG bytes, bytes, a PNG decoded on the CPU
    cpu = train_transform("imagenet", 48, scale_range=(56, 80))
    for seed in range(3):
        torch.manual_seed(seed)
        expected = torch.stack([cpu(load_rgb(p)) for p in paths])
        torch.manual_seed(seed)
        got = DeviceTrainTransform(48, (56, 80), 0.1, torch.device("cpu"))(items)
        # the same draws (scale, crop, flip, lighting); PIL's and torch's resampling differ by a level or so
        assert got.shape == expected.shape == (3, 3, 48, 48)
        assert (got - expected).abs().mean() < 0.02 and (got - expected).abs().max() < 0.1  # a wrong flip: > 1


def test_a_jpeg_that_fails_to_decode_on_the_device_is_named(tmp_path):
    """A truncated JPEG passes the header check in the loader's worker; the batched decoder then fails, and
    the error names the file (the batch alone cannot tell which)."""
    noise = np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    for name in ("good.jpg", "cut.jpg"):
        Image.fromarray(noise).save(tmp_path / name, quality=95)
    data = (tmp_path / "cut.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[:len(data) // 2])
    folder = tmp_path / "train" / "grey"
    folder.mkdir(parents=True)
    for name in ("good.jpg", "cut.jpg"):
        (tmp_path / name).rename(folder / name)
    dataset = ImageFolder(tmp_path / "train", encoded=True)
    images, _, _ = collate_skip_bad([dataset[0], dataset[1]])
    with pytest.raises(UserError, match=r"cut\.jpg: JPEG does not decode on cpu: Image is incomplete or truncated"):
        DeviceTrainTransform(32, (36, 48), 0.1, torch.device("cpu"))(images)
    assert DeviceTrainTransform(32, (36, 48), 0.1, torch.device("cpu"))(images[1:]).shape == (1, 3, 32, 32)


def test_topk_errors_by_hand():
    probs = torch.tensor([[0.1, 0.6, 0.3], [0.5, 0.2, 0.3], [0.2, 0.3, 0.5]])
    labels = torch.tensor([1, 2, 1])
    assert topk_errors(probs, labels, ks=(1, 2)) == [2, 0]  # label 2 is 2nd in row 2, label 1 2nd in row 3
    assert topk_errors(probs, labels, ks=(1, 5)) == [2, 0]  # k capped at the number of classes


def test_recompute_bn_gives_the_plain_average_of_batch_statistics():
    model = nn.Sequential(nn.BatchNorm2d(3))
    batches = [torch.randn(4, 3, 5, 5) * (i + 1) + i for i in range(3)]
    recompute_bn_stats(model, iter([(b,) for b in batches]), 3, torch.device("cpu"))
    expected_mean = torch.stack([b.mean((0, 2, 3)) for b in batches]).mean(0)
    expected_var = torch.stack([b.transpose(0, 1).flatten(1).var(1) for b in batches]).mean(0)
    torch.testing.assert_close(model[0].running_mean, expected_mean)
    torch.testing.assert_close(model[0].running_var, expected_var)
    assert model[0].momentum == 0.1


def test_synthetic_images_are_deterministic_and_shared_across_splits():
    train, val = SyntheticImages(20, seed=0), SyntheticImages(20, seed=1)
    assert np.array_equal(np.asarray(train[3][0]), np.asarray(SyntheticImages(20, seed=0)[3][0]))
    assert torch.equal(train.patterns, val.patterns) and train[3][1] == val[3][1] == 3


def _train(tmp_path, name, *args):
    out = tmp_path / name
    code = run_cli(train_cls.main, ["--output", str(out), "--no-progress", "--workers", "0", *args])
    return code, out


@pytest.mark.slow
def test_cifar_resnet20_learns_a_tiny_cifar_set(cifar_dir, tmp_path):
    code, out = _train(tmp_path, "c20", "--arch", "cifar_resnet20", "--dataset", "cifar10", "--data",
                       str(cifar_dir.parent), "--max-iter", "80", "--batch-size", "40", "--lr", "0.05",
                       "train.checkpoint_period=100")
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["count"] == 40 and metrics["error"] < 40  # chance is 90%
    final = torch.load(out / "model_final.pth", weights_only=True)
    assert final["arch"] == "cifar_resnet20" and final["num_classes"] == 10
    model = backbones.build_model("cifar_resnet20")
    model.load_state_dict(final["state_dict"])  # torchvision-style keys, strict
    assert (out / "curves.png").stat().st_size > 0 and (out / "tensorboard").is_dir()


def test_imagenet_layout_runs_the_full_pipeline_and_evaluation_modes(imagenet_dir, tmp_path, capsys):
    code, out = _train(tmp_path, "r18", "--arch", "resnet18", "--dataset", "imagenet", "--data", str(imagenet_dir),
                       "--max-iter", "2", "--batch-size", "6", "data.crop_size=32", "data.scale_range=[36,48]",
                       "data.test_resize=36", "model.options.width=8", "--recompute-bn", "2")
    assert code == 0
    for flag in ("--ten-crop", "--multi-scale"):
        assert run_cli(eval_cls.main, ["--checkpoint", str(out / "model_final.pth"), "--dataset", "imagenet", "--data",
                                       str(imagenet_dir), flag, "--workers", "0", "--json", str(tmp_path / "m.json"),
                                       "data.crop_size=32", "data.test_resize=36", "data.test_scales=[32,40]"]) == 0
        metrics = json.loads((tmp_path / "m.json").read_text())
        assert metrics["count"] == 6 and 0 <= metrics["error"] <= 100
    assert "top-1 error" in capsys.readouterr().out
    code, _ = _train(tmp_path, "r18_on_device", "--arch", "resnet18", "--dataset", "imagenet", "--data",
                     str(imagenet_dir), "--max-iter", "2", "--batch-size", "6", "data.crop_size=32",
                     "data.scale_range=[36,48]", "data.test_resize=36", "model.options.width=8",
                     "data.decode_on_device=true", "--recompute-bn", "1")
    assert code == 0


def test_resume_gives_the_same_weights_as_one_run(tmp_path):
    common = ["--arch", "cifar_resnet20", "--batch-size", "16", "model.options.width=4",
              "data.synthetic.train_size=64", "data.synthetic.val_size=16", "train.checkpoint_period=3"]
    assert _train(tmp_path, "once", *common, "--max-iter", "8")[0] == 0
    assert _train(tmp_path, "twice", *common, "--max-iter", "5")[0] == 0
    code, out = _train(tmp_path, "twice", *common, "--max-iter", "8", "--resume", "--workers", "2")
    assert code == 0
    once = torch.load(tmp_path / "once" / "model_final.pth", weights_only=True)["state_dict"]
    twice = torch.load(out / "model_final.pth", weights_only=True)["state_dict"]
    assert all(torch.equal(once[k], twice[k]) for k in once)
    assert torch.load(out / "checkpoint_0000008.pth", weights_only=True)["iteration"] == 8


@pytest.mark.slow
def test_two_process_ddp_equals_one_process_with_the_same_global_batch(tmp_path):
    common = ["--arch", "cifar_resnet20", "--batch-size", "16", "--max-iter", "4", "--no-progress", "--workers", "0",
              "model.options.width=4", "data.synthetic.train_size=64", "data.synthetic.val_size=16"]
    single = tmp_path / "single"
    with one_thread():
        assert run_cli(train_cls.main, ["--output", str(single), *common, "--accumulate", "2"]) == 0
    ddp = tmp_path / "ddp"
    torchrun(str(ROOT / "tools" / "train_cls.py"), "--output", str(ddp), *common, "--device", "cpu")
    a = torch.load(single / "model_final.pth", weights_only=True)["state_dict"]
    b = torch.load(ddp / "model_final.pth", weights_only=True)["state_dict"]
    params = [k for k in a if "running" not in k and "num_batches" not in k]
    for k in params:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)


def test_bad_images_stop_with_one_line_or_are_skipped_and_counted(imagenet_dir, tmp_path, capsys):
    bad = imagenet_dir / "train" / "n01443537" / "n01443537_2.JPEG"
    bad.write_bytes(bad.read_bytes()[:300])  # truncated JPEG
    args = ["--arch", "resnet18", "--dataset", "imagenet", "--data", str(imagenet_dir), "--max-iter", "3",
            "--batch-size", "6", "data.crop_size=32", "data.scale_range=[36,48]", "data.test_resize=36",
            "model.options.width=8"]
    code, _ = _train(tmp_path, "fails", *args, "--workers", "1")
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("error: ") and "n01443537_2.JPEG: unreadable image" in err[-1]
    code, out = _train(tmp_path, "skips", *args, "--skip-bad-images")
    assert code == 0
    assert json.loads((out / "metrics.json").read_text())["skipped_images"] >= 1
    code, _ = _train(tmp_path, "nodata", "--dataset", "imagenet", "--data", str(tmp_path / "nowhere"))
    assert code == 2 and "nowhere/train: dataset split folder not found" in capsys.readouterr().err


def test_eval_accepts_a_torchvision_state_dict_and_fig7_analysis(tmp_path, capsys):
    import torchvision

    plain = tmp_path / "tv_resnet18.pth"
    torch.save(torchvision.models.resnet18(num_classes=10).state_dict(), plain)
    small = ["--dataset", "synthetic", "--workers", "0", "data.synthetic.val_size=20"]
    assert run_cli(eval_cls.main, ["--weights", str(plain), *small, "--json", str(tmp_path / "m.json")]) == 0
    assert json.loads((tmp_path / "m.json").read_text())["arch"] == "resnet18"  # guessed from the keys

    paths = []
    for arch in ("cifar_plain20", "cifar_resnet20"):
        model = backbones.build_model(arch, width=4)
        paths.append(tmp_path / f"{arch}.pth")
        torch.save({"arch": arch, "options": {"width": 4}, "state_dict": model.state_dict()}, paths[-1])
    out = tmp_path / "fig7.png"
    assert run_cli(analyze_responses.main, ["--checkpoint", *map(str, paths), "--dataset", "synthetic",
                                            "--batches", "1", "--batch-size", "10", "--output", str(out)]) == 0
    stds = json.loads(out.with_suffix(".json").read_text())
    assert set(stds) == {"cifar_plain20", "cifar_resnet20"} and all(len(v) == 19 for v in stds.values())
    assert out.stat().st_size > 0
