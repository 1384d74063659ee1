"""Loaders for MNIST, Fashion-MNIST and CIFAR-10 in their standard file
formats, read from a local data directory (nothing is downloaded unless you
call :func:`download` yourself).

Directory layout under the data directory (``data_dir`` argument, else the
``LOPT_DATA_DIR`` environment variable)::

    <data_dir>/mnist/train-images-idx3-ubyte.gz        (IDX, gzip or plain)
    <data_dir>/mnist/train-labels-idx1-ubyte.gz
    <data_dir>/mnist/t10k-images-idx3-ubyte.gz
    <data_dir>/mnist/t10k-labels-idx1-ubyte.gz
    <data_dir>/fashion_mnist/<the same four names>
    <data_dir>/cifar-10-batches-py/data_batch_1 ... data_batch_5, test_batch

IDX files may also be stored uncompressed (same names without ``.gz``).
CIFAR-10 batches are the official Python pickles (a dict with ``b"data"``:
uint8 ``[N, 3072]`` in channel-major order and ``b"labels"``); they are read
with a restricted unpickler that only reconstructs NumPy arrays and plain
containers. Missing files raise :class:`DataNotFoundError` naming the
expected paths; malformed files raise :class:`DataFormatError`.
"""

from __future__ import annotations

import gzip
import io
import os
import pickle
import shutil
import tarfile
import tempfile
import urllib.request
from typing import Mapping, Optional, Tuple

import numpy as np

from lopt.tasks import datasets

ENV_VAR = "LOPT_DATA_DIR"
IMAGE_DATASETS: tuple[str, ...] = ("mnist", "fashion_mnist", "cifar10")

IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
SUBDIRS = {"mnist": "mnist", "fashion_mnist": "fashion_mnist",
           "cifar10": "cifar-10-batches-py"}
CIFAR_TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR_TEST_FILE = "test_batch"

URLS = {
    "mnist": "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "fashion_mnist":
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    "cifar10": "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
}

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"),
               0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"),
               0x0E: np.dtype(">f8")}

Arrays = Tuple[np.ndarray, np.ndarray]


class DataNotFoundError(FileNotFoundError):
  """The data directory or one of the expected files is missing."""


class DataFormatError(ValueError):
  """A data file exists but is not in the expected format."""


def resolve_data_dir(path: Optional[str] = None) -> str:
  """Resolves the data directory: ``path`` if given, else ``$LOPT_DATA_DIR``."""
  path = path or os.environ.get(ENV_VAR)
  if not path:
    raise DataNotFoundError(
        f"No data directory: pass data_dir=... or set the {ENV_VAR} "
        f"environment variable to a folder holding mnist/, fashion_mnist/ or "
        f"cifar-10-batches-py/ (see lopt.tasks.image_files for the layout; "
        f"lopt.tasks.image_files.download(name, data_dir) fetches them on a "
        f"machine with a network).")
  return os.path.abspath(os.path.expanduser(path))


def _missing(name: str, root: str, paths) -> DataNotFoundError:
  listing = "\n  ".join(paths)
  return DataNotFoundError(
      f"{name} files not found under {root!r}. Expected:\n  {listing}\n"
      f"Put the standard files there (data_dir argument or ${ENV_VAR}), or "
      f"call lopt.tasks.image_files.download({name!r}, data_dir) on a machine "
      f"with a network.")


def read_idx(path: str) -> np.ndarray:
  """Reads one IDX file (gzip-compressed if it ends in ``.gz``).

  Format: two zero bytes, a dtype code (0x08 = uint8, ...), the number of
  dimensions ``n``, ``n`` big-endian uint32 sizes, then the data.
  """
  try:
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
      raw = f.read()
  except (OSError, EOFError) as e:  # gzip.BadGzipFile is an OSError
    raise DataFormatError(f"Cannot read IDX file {path!r}: {e}") from e
  if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
    raise DataFormatError(
        f"{path!r} is not an IDX file (bad magic number {raw[:4].hex()}; "
        f"expected 0000 followed by a dtype code such as 08 and the number "
        f"of dimensions).")
  ndim = raw[3]
  header = 4 + 4 * ndim
  if len(raw) < header:
    raise DataFormatError(f"IDX file {path!r} is truncated in its header.")
  shape = tuple(int(d) for d in np.frombuffer(raw[4:header], ">u4"))
  dtype = np.dtype(_IDX_DTYPES[raw[2]])
  expected = int(np.prod(shape)) * dtype.itemsize
  if len(raw) - header != expected:
    raise DataFormatError(
        f"IDX file {path!r} declares shape {shape} ({expected} bytes of "
        f"data) but holds {len(raw) - header} bytes.")
  return np.frombuffer(raw, dtype, offset=header).reshape(shape).copy()


def _find_idx(root: str, stem: str) -> Optional[str]:
  for name in (stem + ".gz", stem):
    p = os.path.join(root, name)
    if os.path.isfile(p):
      return p
  return None


def load_mnist(name: str = "mnist", data_dir: Optional[str] = None
               ) -> Mapping[str, Arrays]:
  """Loads MNIST or Fashion-MNIST: ``{"train": (images uint8 [N, 28, 28],
  labels uint8 [N]), "test": (...)}``."""
  if name not in ("mnist", "fashion_mnist"):
    raise ValueError(f"load_mnist reads 'mnist' or 'fashion_mnist', got "
                     f"{name!r}.")
  root = os.path.join(resolve_data_dir(data_dir),
                      SUBDIRS[name])
  paths = {k: _find_idx(root, stem) for k, stem in IDX_FILES.items()}
  if any(p is None for p in paths.values()):
    raise _missing(name, root, [os.path.join(root, s + ".gz")
                                for s in IDX_FILES.values()])
  out = {}
  for split in ("train", "test"):
    images = read_idx(paths[f"{split}_images"])
    labels = read_idx(paths[f"{split}_labels"])
    if images.ndim != 3 or labels.ndim != 1:
      raise DataFormatError(
          f"{name} {split}: expected images [N, rows, cols] and labels [N], "
          f"got shapes {images.shape} and {labels.shape} (files swapped?).")
    if images.shape[0] != labels.shape[0]:
      raise DataFormatError(
          f"{name} {split}: {images.shape[0]} images but {labels.shape[0]} "
          f"labels.")
    if labels.size and int(labels.max()) > 9:
      raise DataFormatError(f"{name} {split}: labels must be in 0..9, found "
                            f"{int(labels.max())}.")
    out[split] = (images.astype(np.uint8), labels.astype(np.uint8))
  return out


class _SafeUnpickler(pickle.Unpickler):
  """Unpickles only NumPy arrays and builtin containers (CIFAR batches)."""

  _ALLOWED = {
      ("numpy.core.multiarray", "_reconstruct"),
      ("numpy._core.multiarray", "_reconstruct"),
      ("numpy.core.multiarray", "scalar"),
      ("numpy._core.multiarray", "scalar"),
      ("numpy.core.numeric", "_frombuffer"),
      ("numpy._core.numeric", "_frombuffer"),
      ("numpy", "ndarray"), ("numpy", "dtype"),
      ("_codecs", "encode"),  # bytes in protocol-2 pickles written by Py3
  }

  def find_class(self, module, name):
    if (module, name) in self._ALLOWED:
      return super().find_class(module, name)
    raise pickle.UnpicklingError(f"global {module}.{name} is not allowed")


def _read_cifar_batch(path: str) -> Arrays:
  try:
    with open(path, "rb") as f:
      d = _SafeUnpickler(io.BytesIO(f.read()), encoding="bytes").load()
  except (pickle.UnpicklingError, EOFError, ValueError, TypeError,
          AttributeError, IndexError) as e:
    raise DataFormatError(f"{path!r} is not a CIFAR-10 python pickle: {e}"
                          ) from e
  if not isinstance(d, dict):
    raise DataFormatError(f"{path!r}: expected a pickled dict, got "
                          f"{type(d).__name__}.")
  d = {k.decode() if isinstance(k, bytes) else k: v for k, v in d.items()}
  if "data" not in d or "labels" not in d:
    raise DataFormatError(f"{path!r}: expected keys b'data' and b'labels', "
                          f"got {sorted(d)}.")
  data = np.asarray(d["data"])
  labels = np.asarray(d["labels"])
  if data.ndim != 2 or data.shape[1] != 3072:
    raise DataFormatError(f"{path!r}: data must have shape [N, 3072] "
                          f"(32x32x3, channel-major), got {data.shape}.")
  if labels.shape != (data.shape[0],):
    raise DataFormatError(f"{path!r}: {data.shape[0]} images but labels of "
                          f"shape {labels.shape}.")
  if labels.size and (labels.min() < 0 or labels.max() > 9):
    raise DataFormatError(f"{path!r}: labels must be in 0..9.")
  images = data.astype(np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
  return images, labels.astype(np.uint8)


def load_cifar10(data_dir: Optional[str] = None) -> Mapping[str, Arrays]:
  """Loads CIFAR-10: ``{"train": (images uint8 [N, 32, 32, 3], labels uint8
  [N]), "test": (...)}`` from ``cifar-10-batches-py/``."""
  root = os.path.join(resolve_data_dir(data_dir),
                      SUBDIRS["cifar10"])
  names = CIFAR_TRAIN_FILES + (CIFAR_TEST_FILE,)
  if not all(os.path.isfile(os.path.join(root, n)) for n in names):
    raise _missing("cifar10", root, [os.path.join(root, n) for n in names])
  train = [_read_cifar_batch(os.path.join(root, n)) for n in CIFAR_TRAIN_FILES]
  return {"train": (np.concatenate([t[0] for t in train]),
                    np.concatenate([t[1] for t in train])),
          "test": _read_cifar_batch(os.path.join(root, CIFAR_TEST_FILE))}


def load(name: str, data_dir: Optional[str] = None) -> Mapping[str, Arrays]:
  """Loads one of :data:`IMAGE_DATASETS` from the data directory."""
  if name == "cifar10":
    return load_cifar10(data_dir=data_dir)
  if name in ("mnist", "fashion_mnist"):
    return load_mnist(name, data_dir=data_dir)
  raise ValueError(f"Unknown image dataset {name!r}; expected one of "
                   f"{IMAGE_DATASETS}.")


_CACHE: dict = {}


def _signature(name: str, root: str) -> tuple:
  sub = os.path.join(root, SUBDIRS[name])
  try:
    entries = sorted(os.scandir(sub), key=lambda e: e.name)
  except OSError:
    return (name, root)
  return (name, root) + tuple((e.name, e.stat().st_mtime_ns, e.stat().st_size)
                              for e in entries if e.is_file())


def dataset(name: str, data_dir: Optional[str] = None,
            valid_fraction: float = 0.1) -> datasets.Dataset:
  """The image dataset as a :class:`lopt.tasks.datasets.Dataset` for the
  tasks: images flattened to uint8 ``[N, H*W*C]`` (the tasks scale them by
  1/255 when sampling a batch), the *last* ``valid_fraction`` of the train
  files held out as the valid split, the official test files as test.
  Memoised in-process by directory and file modification times."""
  root = resolve_data_dir(data_dir)
  key = _signature(name, root) + (float(valid_fraction),)
  if key not in _CACHE:
    raw = load(name, root)
    x, y = raw["train"]
    n_valid = max(1, int(round(valid_fraction * len(y))))
    if len(y) <= n_valid:
      raise DataFormatError(f"{name}: {len(y)} training images are too few "
                            f"to hold out a valid split.")
    flat = lambda a: a.reshape(a.shape[0], -1)  # noqa: E731
    parts = {"train": (flat(x[:-n_valid]), y[:-n_valid]),
             "valid": (flat(x[-n_valid:]), y[-n_valid:]),
             "test": (flat(raw["test"][0]), raw["test"][1])}
    _CACHE[key] = datasets.from_arrays(name, parts, num_classes=10,
                                       x_scale=1.0 / 255.0)
  return _CACHE[key]


def download(name: str, data_dir: Optional[str] = None) -> str:
  """Downloads one of :data:`IMAGE_DATASETS` into the data directory in the
  layout above and returns the folder. Needs a network; never called by the
  library itself or by the tests."""
  root = resolve_data_dir(data_dir)
  if name not in IMAGE_DATASETS:
    raise ValueError(f"Unknown image dataset {name!r}; expected one of "
                     f"{IMAGE_DATASETS}.")
  target = os.path.join(root, SUBDIRS[name])
  os.makedirs(root, exist_ok=True)
  if name == "cifar10":
    with tempfile.TemporaryDirectory() as tmp:
      archive = os.path.join(tmp, "cifar-10-python.tar.gz")
      urllib.request.urlretrieve(URLS[name], archive)
      with tarfile.open(archive, "r:gz") as tar:
        tar.extractall(root, filter="data")
    return target
  os.makedirs(target, exist_ok=True)
  for stem in IDX_FILES.values():
    dest = os.path.join(target, stem + ".gz")
    if os.path.isfile(dest):
      continue
    with tempfile.NamedTemporaryFile(dir=target, delete=False) as tmp:
      with urllib.request.urlopen(URLS[name] + stem + ".gz") as r:
        shutil.copyfileobj(r, tmp)
    os.replace(tmp.name, dest)
  return target
