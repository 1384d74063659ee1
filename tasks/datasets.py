"""Offline datasets, split into disjoint train / valid / test parts.

Every dataset here is available on any machine without a network:

* scikit-learn's bundled ``digits`` (8x8 handwritten digits, pixels / 16 in
  [0, 1]), ``wine``, ``breast_cancer`` and ``iris`` (features standardised with
  the *train* split's mean and standard deviation);
* ``mnist1d`` generated in-process with ``mnist1d.data.make_dataset`` and its
  default arguments (seed 42; never the downloading ``get_dataset``);
* ``stdlib_text``: bytes of a fixed, sorted list of the running Python's own
  standard-library ``.py`` files, for a character-level language model;
* ``synthetic_text``: English-like text generated in-process from a fixed
  seed (made-up words with Zipf frequencies, a sparse word-level Markov
  chain, punctuation), a second text corpus for the LMs that meta-training
  sees, disjoint from the held-out ``stdlib_text``.

Splits are disjoint by construction: the sklearn sets are permuted once with
a fixed seed and cut 70 / 15 / 15; mnist1d keeps its own test set and uses the
last 500 of its 4000 training rows as the valid split; text is cut into
contiguous 80 / 10 / 10 regions. Loads are memoised in-process (nothing is
cached on disk) and the results are read-only NumPy arrays; :func:`device`
returns (memoised) device-resident ``jnp`` copies for the tasks.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
import random
import sysconfig
from typing import Mapping, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np

from lopt.tasks.base import SPLITS

#: Names accepted by :func:`load`.
DATASETS: tuple[str, ...] = ("digits", "wine", "breast_cancer", "iris",
                             "mnist1d")

#: Standard-library files (sorted) whose text feeds the character-level LM.
#: They exist in every CPython 3.11+ install that ships its ``.py`` sources.
STDLIB_TEXT_FILES: tuple[str, ...] = (
    "abc.py", "bisect.py", "colorsys.py", "heapq.py", "keyword.py",
    "string.py", "textwrap.py")

#: Vocabulary of the text dataset: byte values 0..127 (ASCII); any other byte
#: is mapped to ``ord("?")``.
TEXT_VOCAB_SIZE = 128

_SPLIT_SEED = 0
_FRACTIONS = (0.70, 0.15)  # train, valid; the rest is test


@dataclasses.dataclass(frozen=True)
class Dataset:
  """A supervised dataset with disjoint splits.

  Attributes:
    name: dataset name.
    splits: ``{split: {"x": float32 [n, ...], "y": int32 [n]}}`` (NumPy,
      read-only).
    num_classes: number of label classes.
    x_scale: factor applied to ``x`` when a batch is sampled (image files
      keep uint8 pixels on device and use 1/255).
  """

  name: str
  splits: Mapping[str, Mapping[str, np.ndarray]]
  num_classes: int
  x_scale: float = 1.0

  @property
  def input_shape(self) -> tuple[int, ...]:
    return tuple(self.splits["train"]["x"].shape[1:])

  def size(self, split: str) -> int:
    return int(self.splits[split]["y"].shape[0])

  @functools.cached_property
  def fingerprint(self) -> str:
    """SHA-256 (hex) of the dataset's contents: every split's ``x`` and
    ``y`` bytes, shapes and dtypes, and ``x_scale`` (computed once)."""
    parts = [(s, k, self.splits[s][k]) for s in SPLITS for k in ("x", "y")]
    return content_hash(parts, extra=f"x_scale={self.x_scale!r}")


def content_hash(parts: Sequence[tuple], extra: str = "") -> str:
  """SHA-256 (hex) of named arrays ``[(name, ..., array), ...]``: their
  names, dtypes, shapes and bytes, in order, then ``extra``."""
  h = hashlib.sha256()
  for *names, a in parts:
    a = np.ascontiguousarray(a)
    h.update(repr((tuple(names), a.dtype.str, a.shape)).encode())
    h.update(a.tobytes())
  h.update(extra.encode())
  return h.hexdigest()


def _readonly(a: np.ndarray) -> np.ndarray:
  a = np.ascontiguousarray(a)
  a.setflags(write=False)
  return a


def from_arrays(name: str,
                parts: Mapping[str, tuple[np.ndarray, np.ndarray]],
                num_classes: int, x_scale: float = 1.0) -> Dataset:
  """Builds a :class:`Dataset` from ``{split: (x, y)}`` for all of
  :data:`SPLITS`. ``x`` stays uint8 if it is uint8 (scaled by ``x_scale``
  when sampled), otherwise becomes float32; labels become int32."""
  if set(parts) != set(SPLITS):
    raise ValueError(f"Dataset {name!r} needs splits {SPLITS}, got "
                     f"{sorted(parts)}.")
  splits = {}
  for s, (x, y) in parts.items():
    x, y = np.asarray(x), np.asarray(y)
    if x.shape[0] != y.shape[0] or y.ndim != 1 or x.shape[0] == 0:
      raise ValueError(f"Dataset {name!r} split {s!r}: x of shape {x.shape} "
                       f"and y of shape {y.shape} must be non-empty and "
                       f"have matching first dimensions.")
    x = x if x.dtype == np.uint8 else x.astype(np.float32)
    splits[s] = {"x": _readonly(x), "y": _readonly(y.astype(np.int32))}
  return Dataset(name, splits, int(num_classes), float(x_scale))


_make = from_arrays


def split_indices(n: int, seed: int = _SPLIT_SEED) -> dict[str, np.ndarray]:
  """Disjoint index sets ``{split: indices}`` covering ``range(n)``: a fixed
  permutation cut 70 / 15 / 15 (used for the sklearn datasets)."""
  perm = np.random.default_rng(seed).permutation(n)
  n_train = int(round(_FRACTIONS[0] * n))
  n_valid = int(round(_FRACTIONS[1] * n))
  return {"train": perm[:n_train], "valid": perm[n_train:n_train + n_valid],
          "test": perm[n_train + n_valid:]}


def _sklearn(name: str) -> Dataset:
  from sklearn import datasets as skd  # local import: optional dependency

  loader = {"digits": skd.load_digits, "wine": skd.load_wine,
            "breast_cancer": skd.load_breast_cancer,
            "iris": skd.load_iris}[name]
  bunch = loader()
  x = np.asarray(bunch.data, np.float64)
  y = np.asarray(bunch.target, np.int64)
  cuts = split_indices(len(y))
  if name == "digits":
    x = x / 16.0  # pixel intensities 0..16 -> [0, 1]
  else:
    mean = x[cuts["train"]].mean(0)
    std = x[cuts["train"]].std(0) + 1e-8
    x = (x - mean) / std
  parts = {s: (x[c], y[c]) for s, c in cuts.items()}
  return _make(name, parts, int(y.max()) + 1)


def _mnist1d() -> Dataset:
  from mnist1d.data import get_dataset_args, make_dataset

  args = get_dataset_args()  # defaults: 5000 samples, seed 42, length 40
  # make_dataset reseeds the global NumPy / `random` generators; restore them
  # so that loading data has no side effects on the caller's randomness.
  np_state, py_state = np.random.get_state(), random.getstate()
  try:
    data = make_dataset(args)
  finally:
    np.random.set_state(np_state)
    random.setstate(py_state)
  x, y = np.asarray(data["x"]), np.asarray(data["y"])
  n_valid = 500
  parts = {"train": (x[:-n_valid], y[:-n_valid]),
           "valid": (x[-n_valid:], y[-n_valid:]),
           "test": (np.asarray(data["x_test"]), np.asarray(data["y_test"]))}
  return _make("mnist1d", parts, 10)


@functools.lru_cache(maxsize=None)
def load(name: str) -> Dataset:
  """Loads (memoised in-process) one of :data:`DATASETS`."""
  if name not in DATASETS:
    raise ValueError(f"Unknown dataset {name!r}; expected one of {DATASETS}. "
                     "MNIST / Fashion-MNIST / CIFAR-10 files are read by "
                     "lopt.tasks.image_files.")
  if name == "mnist1d":
    return _mnist1d()
  return _sklearn(name)


def stdlib_dir() -> str:
  """Directory of the running interpreter's standard-library sources."""
  return sysconfig.get_paths()["stdlib"]


@functools.lru_cache(maxsize=None)
def stdlib_text(files: Sequence[str] = STDLIB_TEXT_FILES
                ) -> Mapping[str, np.ndarray]:
  """Character codes (uint8, < :data:`TEXT_VOCAB_SIZE`) of the concatenated
  standard-library ``files`` (in sorted order), cut into contiguous
  80 / 10 / 10 train / valid / test regions (memoised)."""
  root = stdlib_dir()
  found = [f for f in sorted(files) if os.path.isfile(os.path.join(root, f))]
  if not found:
    raise FileNotFoundError(
        f"None of the standard-library sources {tuple(files)} exist under "
        f"{root!r}; the character-level LM tasks need the Python stdlib .py "
        "files (install the full Python, not a .pyc-only build).")
  chunks = []
  for f in found:
    with open(os.path.join(root, f), "rb") as fh:
      chunks.append(fh.read())
  raw = b"".join(chunks)
  codes = np.frombuffer(raw, np.uint8).copy()
  codes[codes >= TEXT_VOCAB_SIZE] = ord("?")
  n = len(codes)
  a, b = int(0.8 * n), int(0.9 * n)
  return {"train": _readonly(codes[:a]), "valid": _readonly(codes[a:b]),
          "test": _readonly(codes[b:])}


def _to_device(a: np.ndarray, dtype=None) -> jax.Array:
  """A concrete device array even when first requested while tracing (a
  task built inside ``jit`` / ``eval_shape``): arrays created under a trace
  would otherwise be tied to it (jax then hoists them as extra arguments of
  later compiled programs)."""
  with jax.ensure_compile_time_eval():
    return jnp.asarray(a, dtype)


@functools.lru_cache(maxsize=None)
def _device(name: str) -> Mapping[str, Mapping[str, jnp.ndarray]]:
  ds = load(name)
  return {s: {k: _to_device(v) for k, v in ds.splits[s].items()}
          for s in SPLITS}


_DEVICE_BY_ID: dict = {}


def device(dataset: Union[str, Dataset]
           ) -> Mapping[str, Mapping[str, jnp.ndarray]]:
  """Device-resident ``jnp`` arrays ``{split: {"x", "y"}}`` of a dataset
  name or :class:`Dataset` (memoised)."""
  if isinstance(dataset, str):
    return _device(dataset)
  entry = _DEVICE_BY_ID.get(id(dataset))
  if entry is None or entry[0] is not dataset:
    arrays = {s: {k: _to_device(v) for k, v in dataset.splits[s].items()}
              for s in SPLITS}
    entry = _DEVICE_BY_ID[id(dataset)] = (dataset, arrays)
  return entry[1]


def resolve(dataset: Union[str, Dataset]) -> Dataset:
  """A :class:`Dataset` from a name in :data:`DATASETS` or a Dataset."""
  if isinstance(dataset, Dataset):
    return dataset
  if isinstance(dataset, str):
    return load(dataset)
  raise TypeError(f"dataset must be a name in {DATASETS} or a "
                  f"lopt.tasks.datasets.Dataset, got {type(dataset).__name__}.")


def sample(key: jnp.ndarray, dataset: Dataset,
           arrays: Mapping[str, jnp.ndarray], batch_size: int) -> dict:
  """``batch_size`` rows drawn uniformly with replacement
  (``jax.random.randint`` over indices); ``x`` is returned as float32
  times ``dataset.x_scale``."""
  n = arrays["y"].shape[0]
  idx = jax.random.randint(key, (batch_size,), 0, n)
  x = jnp.take(arrays["x"], idx, axis=0).astype(jnp.float32)
  if dataset.x_scale != 1.0:
    x = x * jnp.float32(dataset.x_scale)
  return {"x": x, "y": jnp.take(arrays["y"], idx, axis=0)}


#: Names of the text corpora (:func:`text`).
TEXTS: tuple[str, ...] = ("stdlib", "synthetic")


@functools.lru_cache(maxsize=None)
def synthetic_text(num_words: int = 60_000, vocab: int = 400,
                   successors: int = 8, seed: int = 0
                   ) -> Mapping[str, np.ndarray]:
  """English-like character codes generated from ``seed`` (memoised).

  A lexicon of ``vocab`` made-up lower-case words (2 to 9 letters, drawn from
  letters weighted by their rank in English letter frequency) with Zipf(1)
  frequencies; each word may be followed by one of ``successors`` words drawn
  from those frequencies (a sparse first-order Markov chain over words), and
  sentences of 4 to 15 words start with a capital letter and end with ``.``,
  ``?`` or ``!`` (sometimes a newline). So a character model has spelling,
  word frequencies and word order to learn, as on natural text, but nothing
  here comes from a file or the network. Cut into contiguous 80 / 10 / 10 train /
  valid / test regions like :func:`stdlib_text`.
  """
  rng = np.random.default_rng(seed)
  letters = np.frombuffer(b"etaoinshrdlcumwfgypbvkjxqz", np.uint8)
  lp = 1.0 / np.arange(1, len(letters) + 1) ** 0.9
  lp /= lp.sum()
  lengths = rng.integers(2, 10, vocab)
  words = [bytes(rng.choice(letters, n, p=lp)) for n in lengths]
  freq = 1.0 / np.arange(1, vocab + 1)
  freq /= freq.sum()
  nxt = rng.choice(vocab, (vocab, successors), p=freq)
  choice = rng.integers(0, successors, num_words)
  sentence_len = rng.integers(4, 16, num_words)
  ends = rng.choice(np.frombuffer(b"..........??!", np.uint8), num_words)
  newline = rng.random(num_words) < 0.15
  out, w, left = [], int(rng.choice(vocab, p=freq)), 0
  for i in range(num_words):
    if left == 0:                         # new sentence, new start word
      left = int(sentence_len[i])
      w = int(rng.choice(vocab, p=freq)) if i else w
      word = words[w]
      out.append(word[:1].upper() + word[1:])
    else:
      w = int(nxt[w, choice[i]])
      out.append(words[w])
    left -= 1
    if left == 0:
      out.append(bytes([ends[i]]) + (b"\n" if newline[i] else b" "))
    else:
      out.append(b" ")
  codes = np.frombuffer(b"".join(out), np.uint8).copy()
  n = len(codes)
  a, b = int(0.8 * n), int(0.9 * n)
  return {"train": _readonly(codes[:a]), "valid": _readonly(codes[a:b]),
          "test": _readonly(codes[b:])}


def text(name: str = "stdlib") -> Mapping[str, np.ndarray]:
  """The text corpus ``name`` (:data:`TEXTS`): ``{split: uint8 codes}``."""
  if name == "stdlib":
    return stdlib_text()
  if name == "synthetic":
    return synthetic_text()
  raise ValueError(f"Unknown text corpus {name!r}; known: {TEXTS}.")


@functools.lru_cache(maxsize=None)
def text_fingerprint(name: str = "stdlib") -> str:
  """SHA-256 (hex) of the text corpus ``name`` (:func:`content_hash` of its
  splits). The ``stdlib`` corpus is read from the running Python's sources,
  so it differs between Python versions (3.11.7 and 3.12.1 differ); caches
  of results on it must key on this, not on the corpus' name."""
  t = text(name)
  return content_hash([(s, t[s]) for s in SPLITS])


@functools.lru_cache(maxsize=None)
def device_text(name: str = "stdlib") -> Mapping[str, jnp.ndarray]:
  """Device-resident int32 character codes ``{split: [n]}`` of the text
  corpus ``name`` (memoised)."""
  return {s: _to_device(v, jnp.int32) for s, v in text(name).items()}
