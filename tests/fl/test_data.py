from pathlib import Path

import numpy as np
import pytest
from support import mnist_dir

from gfl.fl.data import DataError, load_dataset, load_partition, partition, split_holdout

MNIST = mnist_dir()


def labels(n=1000, classes=10, seed=0):
    return np.random.default_rng(seed).integers(0, classes, n)


@pytest.mark.parametrize("scheme", ["iid", "dirichlet:0.5", "dirichlet:100", "shards:2"])
def test_partition_covers_every_index_once_and_is_deterministic(scheme):
    y = labels()
    parts = partition(y, scheme, 10, seed=7)
    assert len(parts) == 10 and all(p.size > 0 for p in parts)
    allidx = np.concatenate(parts)
    assert np.array_equal(np.sort(allidx), np.arange(y.size))
    again = partition(y, scheme, 10, seed=7)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))
    other = partition(y, scheme, 10, seed=8)
    assert any(not np.array_equal(a, b) for a, b in zip(parts, other, strict=True))


def test_iid_sizes_balanced_and_shards_are_label_skewed():
    y = np.repeat(np.arange(10), 100)
    iid = partition(y, "iid", 7, 0)
    assert max(p.size for p in iid) - min(p.size for p in iid) <= 1
    shards = partition(y, "shards:2", 10, 0)
    assert all(p.size == 100 for p in shards)
    assert all(np.unique(y[p]).size <= 2 for p in shards)  # shards of 50 never straddle 2 labels


def test_dirichlet_small_alpha_is_more_skewed_than_large():
    y = labels(5000)

    def skew(alpha):
        parts = partition(y, f"dirichlet:{alpha}", 10, 1)
        return np.mean([np.bincount(y[p], minlength=10).max() / p.size for p in parts])

    assert skew(0.1) > skew(100) + 0.3


def test_bad_schemes():
    for bad in ("random", "dirichlet:0", "shards:0", "shards:x"):
        with pytest.raises(DataError):
            partition(labels(), bad, 3, 0)
    with pytest.raises(DataError, match="shards"):
        partition(labels(10), "shards:2", 10, 0)


def test_digits_split_and_partition():
    tr, te = load_dataset("digits"), load_dataset("digits", train=False)
    assert tr.x.shape[1:] == (1, 8, 8) and tr.x.dtype == np.float32 and tr.y.dtype == np.int64
    assert len(tr) + len(te) == 1797 and len(te) == 360
    p = load_partition("digits", 2, 5, "iid", seed=0)
    assert len(p) in (287, 288)
    a, b = split_holdout(p, 0.2, 0)
    assert len(a) + len(b) == len(p) and len(b) == round(len(p) * 0.2)
    with pytest.raises(DataError):
        load_partition("digits", 5, 5)


@pytest.mark.skipif(
    not MNIST.is_dir(), reason=f"no offline MNIST copy at {MNIST} (set GFL_MNIST_DIR)"
)
def test_mnist_offline_from_gzipped_idx():
    te = load_dataset("mnist", root=MNIST, train=False)
    assert te.x.shape == (10000, 1, 28, 28) and np.bincount(te.y).size == 10
    assert abs(float(te.x.mean())) < 0.1  # normalized


def _mnist_idx(root: Path, n: int = 50) -> np.ndarray:
    """A tiny MNIST training split as IDX files; returns its images."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    header = b"\0\0\x08\x03" + n.to_bytes(4, "big") + (28).to_bytes(4, "big") * 2
    (root / "train-images-idx3-ubyte").write_bytes(header + images.tobytes())
    labels = rng.integers(0, 10, n, dtype=np.uint8)
    (root / "train-labels-idx1-ubyte").write_bytes(
        b"\0\0\x08\x01" + n.to_bytes(4, "big") + labels.tobytes()
    )
    return images


def test_byte_images_are_normalized_exactly_as_the_float_formula(tmp_path):
    """The lookup-table normalization gives the very floats of the four-pass formula (the
    models nodes train must not depend on how the data was converted)."""
    images = _mnist_idx(tmp_path)
    x = load_dataset("mnist", root=tmp_path).x
    assert np.array_equal(x[:, 0], (images.astype(np.float32) / 255.0 - 0.1307) / 0.3081)

    first = _cifar_bin(tmp_path)
    planes = first[:, 1:].reshape(-1, 3, 32, 32)
    mean = np.array([0.4914, 0.4822, 0.4465], np.float32)[None, :, None, None]
    std = np.array([0.2470, 0.2435, 0.2616], np.float32)[None, :, None, None]
    want = (planes.astype(np.float32) / 255.0 - mean) / std
    assert np.array_equal(load_dataset("cifar10", root=tmp_path).x[:8], want)


def test_limits_take_the_first_examples_of_the_split_or_partition(tmp_path):
    _mnist_idx(tmp_path, 60)
    whole = load_partition("mnist", 1, 3, "iid", 0, root=tmp_path)
    first = load_partition("mnist", 1, 3, "iid", 0, root=tmp_path, limit=5)
    assert np.array_equal(first.x, whole.x[:5]) and np.array_equal(first.y, whole.y[:5])
    split = load_dataset("mnist", root=tmp_path)
    assert np.array_equal(load_dataset("mnist", root=tmp_path, limit=7).x, split.x[:7])
    assert len(load_dataset("mnist", root=tmp_path, limit=0)) == 60  # 0: no limit
    with pytest.raises(DataError, match="limit"):
        load_dataset("digits", limit=-1)


def test_missing_dataset_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_dataset("mnist", root=tmp_path)
    with pytest.raises(DataError, match="unknown"):
        load_dataset("imagenet")
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(b"\0\0\x08\x03" + b"\0\0\0\x05" * 3)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(b"\0\0\x08\x01\0\0\0\x05" + b"\0" * 5)
    with pytest.raises(DataError, match="truncated"):
        load_dataset("mnist", root=tmp_path, train=False)


def _cifar_bin(root: Path, per_file: int = 8) -> np.ndarray:
    """A tiny CIFAR-10 binary distribution: 5 train batches and a test batch."""
    d = root / "cifar-10-batches-bin"
    d.mkdir(parents=True)
    rng = np.random.default_rng(0)
    names = [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]
    first = None
    for name in names:
        rec = rng.integers(0, 256, (per_file, 3073), dtype=np.uint8)
        rec[:, 0] = np.arange(per_file) % 10
        rec.tofile(d / name)
        first = rec if first is None else first
    return first


def test_cifar10_binary_batches_train_a_resnet_offline(tmp_path):
    import torch

    from gfl.fl.spec import JobSpec
    from gfl.fl.trainer import initial_params, train_local

    first = _cifar_bin(tmp_path)
    tr = load_dataset("cifar10", root=tmp_path, train=True)
    te = load_dataset("cifar10", root=tmp_path, train=False)
    assert tr.x.shape == (40, 3, 32, 32) and te.x.shape == (8, 3, 32, 32)
    assert tr.x.dtype == np.float32 and tr.y.dtype == np.int64
    assert list(tr.y[:8]) == list(range(8))
    # channel planes in record order: red plane first, de-normalized back to the bytes
    red = tr.x[0, 0] * 0.2470 + 0.4914
    assert np.allclose(red * 255, first[0, 1:1025].reshape(32, 32), atol=1e-3)
    spec = JobSpec(name="cifar", model="resnet", dataset="cifar10", rounds=1, batch_size=8, lr=0.01)
    torch.manual_seed(0)
    res = train_local(spec, initial_params(spec), tr)
    assert res.num_samples == 40 and np.isfinite(res.metrics["train_loss"])
    assert any(np.abs(v).max() > 0 for v in res.update.values())


def test_cifar10_truncated_binary_batch_is_a_clear_error(tmp_path):
    _cifar_bin(tmp_path)
    path = tmp_path / "cifar-10-batches-bin" / "test_batch.bin"
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(DataError, match="not a whole number of 3073-byte records"):
        load_dataset("cifar10", root=tmp_path, train=False)
