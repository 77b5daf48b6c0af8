from pathlib import Path

import pytest

# CI keeps ../shared beside the clone; the data never comes from a hub in tests.
MNIST_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "mnist"


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    if not MNIST_DIR.is_dir():
        raise FileNotFoundError(f"tests need the MNIST IDX files in {MNIST_DIR} (../shared/data/mnist)")
    return MNIST_DIR
