"""The paper's augmentation and test-time views, built from torchvision transforms (torch RNG only, so
`engine.sampler.SeededDataset` makes them reproducible)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from PIL import Image
from torchvision import transforms as T
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.transforms import functional as F

from engine.errors import UserError

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)

# AlexNet's PCA colour augmentation: eigen-decomposition of ImageNet's RGB covariance (pixels in 0..1)
PCA_EIGVAL = torch.tensor([0.2175, 0.0188, 0.0045])
PCA_EIGVEC = torch.tensor([[-0.5675, 0.7192, 0.4009],
                           [-0.5808, -0.0045, -0.8140],
                           [-0.5836, -0.6948, 0.4203]])


class RandomShorterSideCrop:
    """The paper's scale augmentation and random crop in one resampling: the shorter side resized to a size
    uniform in [min_size, max_size], then a `crop_size` square cut at a random place.

    It draws the same random numbers, in the same order, as torchvision's `Resize(size)` then `RandomCrop`, and
    gives the same pixels (PIL's resize of a box reads the filter's support around the box, as resizing the
    whole image and cutting does), but resamples only the crop: a few times less work per image, which is what
    lets a few CPU cores feed a GPU (see docs/benchmarks.md).
    """

    def __init__(self, min_size: int, max_size: int, crop_size: int) -> None:
        if min_size < crop_size:
            raise UserError(f"data.scale_range: the shorter side must stay >= the crop ({crop_size}), got "
                            f"[{min_size}, {max_size}]")
        self.min_size, self.max_size, self.crop_size = min_size, max_size, crop_size

    def draw(self, width: int, height: int) -> tuple[int, int, int, int]:
        """(resized width, resized height, crop top, crop left) for an image of this size, from the torch RNG."""
        size = int(torch.randint(self.min_size, self.max_size + 1, ()).item())
        if width <= height:  # torchvision's rule: the longer side truncated
            new_width, new_height = size, int(size * height / width)
        else:
            new_width, new_height = int(size * width / height), size
        top = int(torch.randint(0, new_height - self.crop_size + 1, (1,)).item())
        left = int(torch.randint(0, new_width - self.crop_size + 1, (1,)).item())
        return new_width, new_height, top, left

    def __call__(self, image: Image.Image) -> Image.Image:
        width, height = image.size
        new_width, new_height, top, left = self.draw(width, height)
        crop = self.crop_size
        sx, sy = width / new_width, height / new_height
        return image.resize((crop, crop), Image.BILINEAR,
                            box=(left * sx, top * sy, (left + crop) * sx, (top + crop) * sy))


class PCALighting:
    """Adds eigvec @ (alpha * eigval), alpha ~ N(0, alphastd), to every pixel of a 0..1 RGB tensor."""

    def __init__(self, alphastd: float = 0.1) -> None:
        self.alphastd = alphastd

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        if self.alphastd == 0:
            return image
        alpha = torch.randn(3) * self.alphastd
        rgb = PCA_EIGVEC @ (alpha * PCA_EIGVAL)
        return image + rgb.view(3, 1, 1)


def _normalize(style: str) -> T.Normalize:
    mean, std = (IMAGENET_MEAN, IMAGENET_STD) if style == "imagenet" else (CIFAR_MEAN, CIFAR_STD)
    return T.Normalize(mean, std)


PAD_FILLS = ("mean", "zero")


def train_transform(style: str, crop_size: int, scale_range: Sequence[int] = (256, 480),
                    lighting: float = 0.1, pad_fill: str = "mean") -> T.Compose:
    """ImageNet: random shorter side in `scale_range`, random crop, flip, PCA lighting, normalise.
    CIFAR: 4-pixel padding, random crop, flip, normalise; `pad_fill` "mean" pads with the dataset mean colour
    (what zero padding after mean subtraction gives, the paper's order), "zero" with black pixels (torchvision's
    reference scripts)."""
    if style == "imagenet":
        return T.Compose([RandomShorterSideCrop(*scale_range, crop_size), T.RandomHorizontalFlip(),
                          T.ToTensor(), PCALighting(lighting), _normalize(style)])
    if pad_fill not in PAD_FILLS:
        raise UserError(f"data.pad_fill must be one of {', '.join(PAD_FILLS)}, got {pad_fill!r}")
    fill = tuple(round(255 * m) for m in CIFAR_MEAN) if pad_fill == "mean" else 0
    return T.Compose([T.RandomCrop(crop_size, padding=crop_size // 8, fill=fill), T.RandomHorizontalFlip(),
                      T.ToTensor(), _normalize(style)])


class DeviceTrainTransform:
    """The ImageNet training transform of `train_transform` on a batch, done where the model runs: the JPEGs
    decoded together by `torchvision.io.decode_jpeg(device=...)` (nvJPEG on CUDA), then scale, crop, flip, PCA
    lighting and normalisation as tensor operations, for when there are too few CPU cores to feed the GPU
    (`data.decode_on_device`). Items are `(image, path)`, the image what `engine.images.read_for_device_decoding`
    reads: JPEG bytes, or an image already decoded on the CPU; the path names a file that fails to decode.
    Each image draws the same random numbers in the same order as `train_transform`, from the torch RNG of the
    process that calls it."""

    def __init__(self, crop_size: int, scale_range: Sequence[int], lighting: float, device: torch.device) -> None:
        self.crop = RandomShorterSideCrop(*scale_range, crop_size)
        self.lighting, self.device = PCALighting(lighting), torch.device(device)
        self.mean = torch.tensor(IMAGENET_MEAN, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD, device=self.device).view(1, 3, 1, 1)

    def decode(self, items: Sequence[tuple[torch.Tensor, str]]) -> list[torch.Tensor]:
        encoded = [i for i, (image, _) in enumerate(items) if image.dim() == 1]  # the decoder takes them from the host
        images = [image if image.dim() == 1 else image.to(self.device, non_blocking=True) for image, _ in items]
        if encoded:
            try:
                decoded = decode_jpeg([images[i] for i in encoded], mode=ImageReadMode.RGB, device=self.device)
            except RuntimeError as exc:
                failed, reason = "a batch of JPEGs", exc
                for i in encoded:  # one at a time, to name the file
                    try:
                        decode_jpeg(images[i], mode=ImageReadMode.RGB, device=self.device)
                    except RuntimeError as alone:
                        failed, reason = items[i][1], alone
                        break
                reason = str(reason).rsplit(", ", 1)[-1]  # after torchvision's source location
                raise UserError(f"{failed}: JPEG does not decode on {self.device}: {reason}") from None
            for i, image in zip(encoded, decoded, strict=True):
                images[i] = image
        return images

    def __call__(self, items: Sequence[tuple[torch.Tensor, str]]) -> torch.Tensor:
        crops, offsets = [], []
        for image in self.decode(items):
            height, width = image.shape[-2:]
            new_width, new_height, top, left = self.crop.draw(width, height)
            resized = F.resize(image.float(), [new_height, new_width], antialias=True)
            crop = resized[:, top:top + self.crop.crop_size, left:left + self.crop.crop_size]
            crops.append(crop.flip(-1) if torch.rand(1) < 0.5 else crop)
            offsets.append(self.lighting(torch.zeros(3, 1, 1)).view(3))
        batch = torch.stack(crops).div_(255).add_(torch.stack(offsets).to(self.device).view(-1, 3, 1, 1))
        return batch.sub_(self.mean).div_(self.std)


class MultiScale:
    """The whole image at every shorter side in `scales`, for fully-convolutional testing (a list of tensors)."""

    def __init__(self, scales: Sequence[int], normalize: T.Normalize) -> None:
        self.scales, self.normalize = list(scales), normalize

    def __call__(self, image: Image.Image) -> list[torch.Tensor]:
        return [self.normalize(F.to_tensor(F.resize(image, s, antialias=True))) for s in self.scales]


def eval_transform(style: str, mode: str, crop_size: int, resize: int,
                   scales: Sequence[int] = (224, 256, 384, 480, 640)):
    """`center`: resize + centre crop (CIFAR: the image as it is); `ten_crop`: 4 corners + centre and their
    flips, stacked; `multi_scale`: see `MultiScale`."""
    norm = _normalize(style)
    if mode == "multi_scale":
        return MultiScale(scales, norm)
    resize_ops = [T.Resize(resize, antialias=True)] if style == "imagenet" else []
    if mode == "ten_crop":
        return T.Compose([*resize_ops, T.TenCrop(crop_size),
                          T.Lambda(lambda crops: torch.stack([norm(F.to_tensor(c)) for c in crops]))])
    if mode == "center":
        return T.Compose([*resize_ops, T.CenterCrop(crop_size), T.ToTensor(), norm])
    raise ValueError(f"unknown test mode {mode!r}; valid: center, ten_crop, multi_scale")
