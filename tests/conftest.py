import os
from pathlib import Path

import pytest
import torch

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


@pytest.fixture
def shared_data() -> Path:
    """`../shared/data` beside the checkout; tests that use it skip where it is absent."""
    path = Path(os.environ.get("RESNET_TOOLKIT_SHARED", SHARED)) / "data"
    if not path.is_dir():
        pytest.skip("../shared/data is not present")
    return path
