from collections.abc import Iterator
from pathlib import Path

import pytest

from scratchnn import backend

# CI keeps ../shared beside the clone; the data never comes from a hub in tests.
MNIST_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "mnist"


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    if not MNIST_DIR.is_dir():
        raise FileNotFoundError(f"tests need the MNIST IDX files in {MNIST_DIR} (../shared/data/mnist)")
    return MNIST_DIR


@pytest.fixture(params=["fast", "reference"])
def code_path(request: pytest.FixtureRequest) -> Iterator[str]:
    """A test that takes this runs twice: with the fast backend's functions (registered when blocks is imported,
    as the suite's conftest does), and on the modules' own code only."""
    if request.param == "fast":
        assert backend.fast("linear") is not None
        yield "fast"
    else:
        with backend.reference_only():
            yield "reference"
