"""Reader for the IDX format that MNIST ships in (gzipped or not), and the four MNIST files.

IDX layout (LeCun's page): two zero bytes, a type code, the number of dimensions, then one
big-endian int32 per dimension, then the values in C order. Gzip is detected from the
file's own first bytes, so a renamed file reads the same.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

# IDX type code -> numpy dtype; multi-byte types are big-endian on disk.
_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

# The published file names; some mirrors use a dot before "idx" instead of a dash.
MNIST_FILES: dict[str, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


class IDXError(ValueError):
    """A file that is not a readable IDX file; the message names the file and what is wrong."""


def _read_bytes(path: Path) -> bytes:
    if not path.is_file():
        raise FileNotFoundError(f"IDX file {path} does not exist")
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError) as err:
            raise IDXError(f"{path} starts like gzip but does not decompress: {err}") from err
    return raw


def read_idx(path: str | Path, expected_ndim: int | None = None) -> np.ndarray:
    """Read one IDX file into a numpy array of its stored shape and dtype (native byte order).

    `expected_ndim` (3 for images, 1 for labels) turns a swapped file into a clear error.
    """
    path = Path(path)
    data = _read_bytes(path)
    if len(data) < 4:
        raise IDXError(f"{path} is {len(data)} bytes long, too short for an IDX header (4 bytes at least)")
    zero, type_code, ndim = data[:2], data[2], data[3]
    magic = int.from_bytes(data[:4], "big")
    if zero != b"\x00\x00" or type_code not in _DTYPES or ndim == 0:
        raise IDXError(
            f"{path} has magic number 0x{magic:08x}, which is not an IDX header: expected two zero "
            f"bytes, a type code in {{{', '.join(f'0x{c:02x}' for c in _DTYPES)}}} and a dimension "
            "count (MNIST images have 0x00000803, labels 0x00000801)"
        )
    if expected_ndim is not None and ndim != expected_ndim:
        raise IDXError(
            f"{path} has magic number 0x{magic:08x} ({ndim} dimensions) but {expected_ndim} were "
            f"expected (0x{0x800 + expected_ndim:08x}); are the images and labels files swapped?"
        )
    header = 4 + 4 * ndim
    if len(data) < header:
        raise IDXError(f"{path} ends inside its header: {ndim} dimensions need {header} bytes, got {len(data)}")
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = _DTYPES[type_code]
    want = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    got = len(data) - header
    if got != want:
        raise IDXError(f"{path} declares shape {shape} of {dtype} ({want} bytes of data) but holds {got} bytes")
    array = np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)
    return array.astype(dtype.newbyteorder("="), copy=True)  # writable, native order


def find_idx_file(data_dir: str | Path, stem: str) -> Path:
    """The path of `stem` in `data_dir`, gzipped or not, with '-idx' or '.idx' in its name."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise FileNotFoundError(f"MNIST data folder {data_dir} does not exist")
    candidates = [stem, stem.replace("-idx", ".idx")]
    for name in candidates:
        for suffix in ("", ".gz"):
            path = data_dir / f"{name}{suffix}"
            if path.is_file():
                return path
    present = sorted(p.name for p in data_dir.iterdir())[:10]
    raise FileNotFoundError(
        f"{data_dir} has no {stem} (or {stem}.gz); it should hold the four MNIST IDX files "
        f"{', '.join(n for pair in MNIST_FILES.values() for n in pair)} (gzipped or not). "
        f"Found: {', '.join(present) or 'nothing'}"
    )


def read_mnist_split(data_dir: str | Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [n, 28, 28], labels uint8 [n]) of the 'train' or 'test' split in `data_dir`."""
    if split not in MNIST_FILES:
        raise ValueError(f"MNIST split must be one of {sorted(MNIST_FILES)}, got {split!r}")
    images_name, labels_name = MNIST_FILES[split]
    images_path = find_idx_file(data_dir, images_name)
    labels_path = find_idx_file(data_dir, labels_name)
    images = read_idx(images_path, expected_ndim=3)
    labels = read_idx(labels_path, expected_ndim=1)
    if images.shape[1:] != (28, 28):
        raise IDXError(f"{images_path} holds images of {images.shape[1]}x{images.shape[2]} pixels; MNIST's are 28x28")
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        bad = int(labels.max()) if labels.max() > 9 else int(labels.min())
        raise IDXError(f"{labels_path} holds the label {bad}; MNIST's labels are the digits 0 to 9")
    if images.shape[0] != labels.shape[0]:
        raise IDXError(f"{images_path} holds {images.shape[0]} images but {labels_path} holds {labels.shape[0]} labels")
    return images, labels
