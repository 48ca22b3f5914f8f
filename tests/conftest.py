"""Test set-up: import dynast_core from this checkout, and the test helpers from tests/."""
import sys
from pathlib import Path

import pytest
import torch

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
SHARED = ROOT.parent / "shared"
for p in (str(ROOT), str(TESTS)):
    if p not in sys.path:
        sys.path.insert(0, p)

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture
def shared_dir():
    """../shared beside the checkout (real weights and sample images); skipped where absent."""
    if not SHARED.is_dir():
        pytest.skip("../shared is not present beside the checkout")
    return SHARED


@pytest.fixture(autouse=True)
def _float_mode_restored():
    """A CPU trainer switches denormal flushing on for the process (TrainOptions.flush_denormal); later tests
    compare exact results (ties among underflowed weights), so each test starts from the default."""
    yield
    torch.set_flush_denormal(False)
