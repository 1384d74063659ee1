"""MNIST / Fashion-MNIST / CIFAR-10 loaders on tiny files written here in the
standard formats; clear errors for missing or malformed data."""

import gzip
import io
import os
import pickle
import struct
import tarfile
import urllib.request

import jax
import numpy as np
import pytest

import lopt.tasks as tasks
from lopt.tasks import image_files
from lopt.tasks.image_files import DataFormatError, DataNotFoundError


def _idx_bytes(a: np.ndarray) -> bytes:
  return (bytes([0, 0, 0x08, a.ndim]) + struct.pack(f">{a.ndim}I", *a.shape)
          + a.astype(np.uint8).tobytes())


def _write_mnist(root, sub="mnist", n_train=30, n_test=10, seed=0,
                 compress=True):
  rng = np.random.default_rng(seed)
  folder = os.path.join(root, sub)
  os.makedirs(folder, exist_ok=True)
  arrays = {
      "train_images": rng.integers(0, 256, (n_train, 28, 28)),
      "train_labels": np.arange(n_train) % 10,
      "test_images": rng.integers(0, 256, (n_test, 28, 28)),
      "test_labels": np.arange(n_test) % 10,
  }
  for key, stem in image_files.IDX_FILES.items():
    data = _idx_bytes(arrays[key])
    path = os.path.join(folder, stem + (".gz" if compress else ""))
    with (gzip.open if compress else open)(path, "wb") as f:
      f.write(data)
  return {k: v.astype(np.uint8) for k, v in arrays.items()}


def _cifar_batch(rng, n, protocol=2):
  d = {b"batch_label": b"tiny", b"data": rng.integers(0, 256, (n, 3072),
                                                       dtype=np.uint8),
       b"labels": [int(v) for v in rng.integers(0, 10, n)]}
  return d, pickle.dumps(d, protocol=protocol)


def _write_cifar(root, n=4):
  rng = np.random.default_rng(1)
  folder = os.path.join(root, "cifar-10-batches-py")
  os.makedirs(folder, exist_ok=True)
  written = {}
  for i, name in enumerate(image_files.CIFAR_TRAIN_FILES
                           + (image_files.CIFAR_TEST_FILE,)):
    d, raw = _cifar_batch(rng, n, protocol=2 if i % 2 else 5)
    with open(os.path.join(folder, name), "wb") as f:
      f.write(raw)
    written[name] = d
  return written


def test_mnist_idx_roundtrip_gzip_and_plain(tmp_path):
  arrays = _write_mnist(str(tmp_path))
  _write_mnist(str(tmp_path), sub="fashion_mnist", seed=1, compress=False)
  data = image_files.load_mnist("mnist", str(tmp_path))
  np.testing.assert_array_equal(data["train"][0], arrays["train_images"])
  np.testing.assert_array_equal(data["train"][1], arrays["train_labels"])
  np.testing.assert_array_equal(data["test"][0], arrays["test_images"])
  fashion = image_files.load_mnist("fashion_mnist", str(tmp_path))
  assert fashion["train"][0].shape == (30, 28, 28)
  assert not np.array_equal(fashion["train"][0], data["train"][0])


def test_mnist_task_from_env_dir_trains(tmp_path, monkeypatch):
  arrays = _write_mnist(str(tmp_path))
  monkeypatch.setenv("LOPT_DATA_DIR", str(tmp_path))
  task = tasks.get("mnist_mlp")
  ds = image_files.dataset("mnist")
  # valid = last 10% of the train file, test = the test file; disjoint.
  assert {s: ds.size(s) for s in tasks.SPLITS} == {
      "train": 27, "valid": 3, "test": 10}
  np.testing.assert_array_equal(ds.splits["valid"]["x"],
                                arrays["train_images"][-3:].reshape(3, -1))
  batch = task.sample_batch(jax.random.PRNGKey(0), "train")
  assert batch["x"].shape == (128, 784) and batch["x"].dtype == np.float32
  assert 0.0 <= float(batch["x"].min()) and float(batch["x"].max()) <= 1.0

  @jax.jit
  def loss_and_grad(key):
    params = task.init(key)
    return jax.value_and_grad(task.loss)(params, task.sample_batch(key), key)

  loss, grads = loss_and_grad(jax.random.PRNGKey(0))
  assert np.isfinite(float(loss))
  assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))
  # Other file tasks build and type-check on the same files (no compile).
  conv = tasks.get("mnist_conv", data_dir=str(tmp_path))
  out = jax.eval_shape(
      lambda k: conv.loss(conv.init(k), conv.sample_batch(k), k),
      jax.random.PRNGKey(0))
  assert out.shape == ()


def test_cifar10_pickles_load(tmp_path):
  written = _write_cifar(str(tmp_path))
  data = image_files.load_cifar10(str(tmp_path))
  assert data["train"][0].shape == (20, 32, 32, 3)
  first = written["data_batch_1"]
  img = first[b"data"][0].reshape(3, 32, 32).transpose(1, 2, 0)
  np.testing.assert_array_equal(data["train"][0][0], img)
  np.testing.assert_array_equal(data["test"][1],
                                written["test_batch"][b"labels"])
  task = tasks.get("cifar10_mlp", data_dir=str(tmp_path))
  out = jax.eval_shape(
      lambda k: task.loss(task.init(k), task.sample_batch(k), k),
      jax.random.PRNGKey(0))
  assert out.shape == ()


def test_missing_data_says_where_files_go(tmp_path, monkeypatch):
  monkeypatch.delenv("LOPT_DATA_DIR", raising=False)
  with pytest.raises(DataNotFoundError, match="LOPT_DATA_DIR"):
    tasks.get("mnist_mlp")
  with pytest.raises(DataNotFoundError,
                     match=r"mnist.*train-images-idx3-ubyte\.gz"):
    tasks.get("mnist_mlp", data_dir=str(tmp_path))
  with pytest.raises(DataNotFoundError, match="data_batch_1"):
    image_files.load_cifar10(str(tmp_path))
  assert issubclass(DataNotFoundError, FileNotFoundError)


def test_malformed_files_raise_one_clear_error(tmp_path):
  root = str(tmp_path)
  _write_mnist(root)
  images = os.path.join(root, "mnist", "train-images-idx3-ubyte.gz")
  labels = os.path.join(root, "mnist", "train-labels-idx1-ubyte.gz")
  with gzip.open(images, "wb") as f:  # wrong magic number
    f.write(b"\x12\x34\x08\x03" + b"\x00" * 12)
  with pytest.raises(DataFormatError, match="not an IDX file"):
    image_files.load_mnist("mnist", root)
  with gzip.open(images, "wb") as f:  # header promises more data
    f.write(_idx_bytes(np.zeros((30, 28, 28)))[:-5])
  with pytest.raises(DataFormatError, match="declares shape"):
    image_files.load_mnist("mnist", root)
  with open(images, "wb") as f:  # not gzip at all
    f.write(b"plain bytes")
  with pytest.raises(DataFormatError, match="Cannot read IDX"):
    image_files.load_mnist("mnist", root)
  with gzip.open(images, "wb") as f:
    f.write(_idx_bytes(np.zeros((30, 28, 28))))
  with gzip.open(labels, "wb") as f:  # 29 labels for 30 images
    f.write(_idx_bytes(np.zeros((29,))))
  with pytest.raises(DataFormatError, match="30 images but 29 labels"):
    image_files.load_mnist("mnist", root)
  with gzip.open(labels, "wb") as f:  # images where labels belong
    f.write(_idx_bytes(np.zeros((30, 28, 28))))
  with pytest.raises(DataFormatError, match="expected images"):
    image_files.load_mnist("mnist", root)

  _write_cifar(root)
  bad = os.path.join(root, "cifar-10-batches-py", "data_batch_2")
  with open(bad, "wb") as f:
    pickle.dump({b"data": np.zeros((4, 100), np.uint8), b"labels": [0] * 4}, f)
  with pytest.raises(DataFormatError, match=r"\[N, 3072\]"):
    image_files.load_cifar10(root)

  class Evil:
    def __reduce__(self):
      return (os.system, ("echo pwned",))

  with open(bad, "wb") as f:
    pickle.dump({b"data": Evil(), b"labels": []}, f)
  with pytest.raises(DataFormatError, match="not allowed"):
    image_files.load_cifar10(root)
  with pytest.raises(ValueError, match="Unknown image dataset"):
    image_files.load("svhn", root)


def test_download_writes_the_layout_the_loaders_read(tmp_path, monkeypatch):
  """download() with urllib replaced by local bytes (tests never touch the
  network)."""
  src = tmp_path / "src"
  arrays = _write_mnist(str(src))
  served = {}
  for stem in image_files.IDX_FILES.values():
    served[image_files.URLS["mnist"] + stem + ".gz"] = (
        src / "mnist" / (stem + ".gz")).read_bytes()
  monkeypatch.setattr(urllib.request, "urlopen",
                      lambda url: io.BytesIO(served[url]))
  dest = tmp_path / "data"
  image_files.download("mnist", str(dest))
  data = image_files.load_mnist("mnist", str(dest))
  np.testing.assert_array_equal(data["test"][0], arrays["test_images"])

  cifar_src = tmp_path / "csrc"
  _write_cifar(str(cifar_src))
  archive = tmp_path / "cifar.tar.gz"
  with tarfile.open(archive, "w:gz") as tar:
    tar.add(cifar_src / "cifar-10-batches-py", arcname="cifar-10-batches-py")

  def fake_retrieve(url, filename):
    assert url == image_files.URLS["cifar10"]
    with open(filename, "wb") as f:
      f.write(archive.read_bytes())

  monkeypatch.setattr(urllib.request, "urlretrieve", fake_retrieve)
  image_files.download("cifar10", str(dest))
  assert image_files.load_cifar10(str(dest))["train"][0].shape == (
      20, 32, 32, 3)
