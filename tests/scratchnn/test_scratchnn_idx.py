import gzip
from pathlib import Path

import numpy as np
import pytest

from scratchnn.idx import IDXError, read_idx, read_mnist_split


def test_mnist_splits_have_the_published_shapes_and_label_counts(mnist_dir: Path) -> None:
    train_x, train_y = read_mnist_split(mnist_dir, "train")
    test_x, test_y = read_mnist_split(mnist_dir, "test")
    assert train_x.shape == (60_000, 28, 28) and train_x.dtype == np.uint8
    assert test_x.shape == (10_000, 28, 28) and test_x.dtype == np.uint8
    assert train_y.shape == (60_000,) and test_y.shape == (10_000,)
    assert list(np.bincount(train_y)) == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert list(np.bincount(test_y)) == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert train_x.max() == 255 and train_x.min() == 0


def _idx_bytes(array: np.ndarray, type_code: int = 0x08) -> bytes:
    header = bytes([0, 0, type_code, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    return header + array.tobytes()


def test_plain_and_gzipped_read_the_same(tmp_path: Path) -> None:
    array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    (tmp_path / "plain").write_bytes(_idx_bytes(array))
    (tmp_path / "zipped").write_bytes(gzip.compress(_idx_bytes(array)))
    np.testing.assert_array_equal(read_idx(tmp_path / "plain"), array)
    np.testing.assert_array_equal(read_idx(tmp_path / "zipped"), array)
    big_endian = np.array([1.5, -2.0], dtype=">f4")
    (tmp_path / "floats").write_bytes(_idx_bytes(big_endian, type_code=0x0D))
    np.testing.assert_array_equal(read_idx(tmp_path / "floats"), [1.5, -2.0])


def test_wrong_magic_number_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "train-images-idx3-ubyte"
    bad.write_bytes(b"\x89PNG" + bytes(100))
    with pytest.raises(IDXError, match=r"train-images-idx3-ubyte has magic number 0x89504e47"):
        read_idx(bad)


def test_truncated_and_swapped_files(tmp_path: Path) -> None:
    array = np.zeros((2, 3, 4), dtype=np.uint8)
    (tmp_path / "short").write_bytes(_idx_bytes(array)[:-5])
    with pytest.raises(IDXError, match=r"short declares shape \(2, 3, 4\).*24 bytes.*19 bytes"):
        read_idx(tmp_path / "short")
    (tmp_path / "labels").write_bytes(_idx_bytes(np.zeros(5, dtype=np.uint8)))
    with pytest.raises(IDXError, match=r"labels .*1 dimensions.*3 were expected"):
        read_idx(tmp_path / "labels", expected_ndim=3)


def test_missing_files_name_what_is_needed(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_mnist_split(tmp_path / "nowhere", "train")
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(FileNotFoundError, match=r"no train-images-idx3-ubyte .*Found: notes.txt"):
        read_mnist_split(tmp_path, "train")
    with pytest.raises(ValueError, match="'test', 'train'"):
        read_mnist_split(tmp_path, "validation")
