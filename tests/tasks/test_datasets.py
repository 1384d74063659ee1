"""Offline datasets: deterministic, disjoint splits, no network, mnist1d
generated in-process (never downloaded), stdlib text regions."""

import socket
import urllib.request

import jax
import numpy as np
import pytest

import lopt.tasks as tasks
from lopt.tasks import datasets


def _forbid_network(monkeypatch):
  def refuse(*args, **kwargs):
    raise AssertionError("dataset loading touched the network")
  monkeypatch.setattr(socket.socket, "connect", refuse)
  monkeypatch.setattr(urllib.request, "urlopen", refuse)
  monkeypatch.setattr(urllib.request, "urlretrieve", refuse)


@pytest.mark.parametrize("name", ["digits", "wine", "breast_cancer", "iris"])
def test_sklearn_splits_partition_the_data_deterministically(
    name, monkeypatch):
  _forbid_network(monkeypatch)
  ds = datasets.load(name)
  datasets.load.cache_clear()
  again = datasets.load(name)
  n = sum(ds.size(s) for s in tasks.SPLITS)
  idx = datasets.split_indices(n)
  assert sorted(np.concatenate(list(idx.values())).tolist()) == list(range(n))
  from sklearn import datasets as skd
  raw = getattr(skd, f"load_{name}")()
  for split in tasks.SPLITS:
    x, y = ds.splits[split]["x"], ds.splits[split]["y"]
    assert x.dtype == np.float32 and y.dtype == np.int32
    assert not x.flags.writeable
    np.testing.assert_array_equal(x, again.splits[split]["x"])
    np.testing.assert_array_equal(y, raw.target[idx[split]])
    if name == "digits":
      np.testing.assert_allclose(x * 16, raw.data[idx[split]], atol=1e-5)
  # Features standardised with train statistics (digits: pixels / 16).
  xt = ds.splits["train"]["x"]
  if name == "digits":
    assert xt.min() >= 0 and xt.max() <= 1
  else:
    np.testing.assert_allclose(xt.mean(0), 0, atol=1e-4)
    np.testing.assert_allclose(xt.std(0), 1, atol=1e-3)


def test_mnist1d_is_generated_offline_deterministically(monkeypatch):
  import mnist1d.data

  _forbid_network(monkeypatch)
  monkeypatch.setattr(mnist1d.data, "get_dataset", lambda *a, **k: (
      _ for _ in ()).throw(AssertionError("get_dataset downloads")))
  first = datasets.load("mnist1d")
  datasets.load.cache_clear()
  state = np.random.get_state()
  ds = datasets.load("mnist1d")
  after = np.random.get_state()
  assert state[0] == after[0] and (state[1] == after[1]).all()  # no side effect
  assert ds.input_shape == (40,) and ds.num_classes == 10
  assert {s: ds.size(s) for s in tasks.SPLITS} == {
      "train": 3500, "valid": 500, "test": 1000}
  for s in tasks.SPLITS:
    np.testing.assert_array_equal(ds.splits[s]["x"], first.splits[s]["x"])
  # Splits hold different examples.
  rows = {s: {r.tobytes() for r in ds.splits[s]["x"]} for s in tasks.SPLITS}
  assert not rows["train"] & rows["valid"] and not rows["train"] & rows["test"]


def test_stdlib_text_regions_are_contiguous_and_disjoint():
  text = datasets.stdlib_text()
  assert [len(text[s]) > 1000 for s in tasks.SPLITS] == [True] * 3
  full = np.concatenate([text[s] for s in tasks.SPLITS])
  assert full.max() < datasets.TEXT_VOCAB_SIZE
  assert b"def " in full.tobytes()
  lm = tasks.get("char_lm")
  valid = text["valid"].tobytes()
  batch = lm.sample_batch(jax.random.PRNGKey(0), "valid")
  assert batch["tokens"].shape == (lm.batch_size, lm.seq_len + 1)
  for row in np.asarray(batch["tokens"]).astype(np.uint8):
    assert row.tobytes() in valid


def test_synthetic_text_is_deterministic_text_like_and_split():
  text = datasets.synthetic_text()
  again = datasets.synthetic_text.__wrapped__()       # regenerated, no memo
  for s in tasks.SPLITS:
    np.testing.assert_array_equal(text[s], again[s])
    assert len(text[s]) > 10_000
  full = np.concatenate([text[s] for s in tasks.SPLITS]).tobytes()
  assert max(full) < datasets.TEXT_VOCAB_SIZE
  words = full.replace(b"\n", b" ").split()
  # Sentences: capitalised starts, punctuation ends; a small Zipf lexicon.
  assert sum(w[-1:] in (b".", b"?", b"!") for w in words) > len(words) / 20
  assert all(w.strip(b".?!").isalpha() for w in words)
  counts = sorted(np.unique([w.strip(b".?!").lower() for w in words],
                            return_counts=True)[1])[::-1]
  assert len(counts) <= 400 and counts[0] > 10 * counts[len(counts) // 2]
  # Different from the held-out stdlib corpus, and the LM reads it.
  assert b"def " not in full
  lm = tasks.get("synth_lm")
  assert lm.dataset == "synthetic_text"
  batch = lm.sample_batch(jax.random.PRNGKey(0), "valid")
  for row in np.asarray(batch["tokens"]).astype(np.uint8):
    assert row.tobytes() in text["valid"].tobytes()


def test_unknown_text_corpus():
  with pytest.raises(ValueError, match="Unknown text corpus 'poems'"):
    datasets.text("poems")
  from lopt.tasks.lm import CharTransformerLM
  with pytest.raises(ValueError, match="known: \\('stdlib', 'synthetic'\\)"):
    CharTransformerLM(text="poems")


def test_batches_come_from_their_split():
  task = tasks.get("wine_mlp")
  ds = datasets.load("wine")
  for split in tasks.SPLITS:
    rows = {r.tobytes() for r in ds.splits[split]["x"]}
    batch = task.sample_batch(jax.random.PRNGKey(5), split)
    assert all(r.tobytes() in rows for r in np.asarray(batch["x"]))
  b1 = task.sample_batch(jax.random.PRNGKey(5), "train")
  b2 = task.sample_batch(jax.random.PRNGKey(5), "train")
  np.testing.assert_array_equal(b1["x"], b2["x"])


def test_bad_dataset_arguments():
  with pytest.raises(ValueError, match="Unknown dataset 'mnist'.*image_files"):
    datasets.load("mnist")
  with pytest.raises(TypeError, match="dataset must be"):
    datasets.resolve(3)
  with pytest.raises(ValueError, match="splits"):
    datasets.from_arrays("x", {"train": (np.zeros((2, 3)), np.zeros(2))}, 2)
  with pytest.raises(ValueError, match="matching first dimensions"):
    datasets.from_arrays("x", {s: (np.zeros((2, 3)), np.zeros(3))
                               for s in tasks.SPLITS}, 2)


def test_fingerprints_follow_the_data_not_the_name():
  rng = np.random.default_rng(0)
  parts = {s: (rng.normal(size=(4, 3)), np.arange(4) % 2) for s in tasks.SPLITS}
  a = datasets.from_arrays("toy", parts, 2)
  assert datasets.from_arrays("toy", parts, 2).fingerprint == a.fingerprint
  x = parts["valid"][0].copy()
  x[1, 2] += 1e-3                                       # one element changed
  b = datasets.from_arrays("toy", {**parts, "valid": (x, parts["valid"][1])}, 2)
  assert b.fingerprint != a.fingerprint
  assert datasets.from_arrays("toy", parts, 2, x_scale=0.5).fingerprint != (
      a.fingerprint)
  # Tasks report the content hash of what they read; generated tasks none.
  assert tasks.get("digits_mlp_wide").data_fingerprint() == (
      datasets.load("digits").fingerprint)
  assert tasks.get("wine_mlp").data_fingerprint() != (
      tasks.get("digits_mlp_wide").data_fingerprint())
  assert tasks.get("char_lm").data_fingerprint() == (
      datasets.text_fingerprint("stdlib"))
  assert tasks.get("synth_lm").data_fingerprint() == (
      datasets.text_fingerprint("synthetic"))
  assert datasets.text_fingerprint("stdlib") != (
      datasets.text_fingerprint("synthetic"))


def test_stdlib_text_fingerprint_changes_with_the_python_sources(
    monkeypatch, tmp_path):
  # Another Python version ships other stdlib sources (3.11.7 and 3.12.1
  # differ): the same corpus name must then give another fingerprint.
  def fingerprint_of(root):
    monkeypatch.setattr(datasets, "stdlib_dir", lambda: str(root))
    datasets.stdlib_text.cache_clear()
    datasets.text_fingerprint.cache_clear()
    return datasets.text_fingerprint("stdlib")

  try:
    for name in datasets.STDLIB_TEXT_FILES:
      (tmp_path / name).write_text(f"def {name[:-3]}():\n  return 1\n" * 50)
    first = fingerprint_of(tmp_path)
    assert fingerprint_of(tmp_path) == first
    (tmp_path / "heapq.py").write_text("def heapq():\n  return 2\n" * 50)
    assert fingerprint_of(tmp_path) != first
  finally:
    monkeypatch.undo()
    datasets.stdlib_text.cache_clear()
    datasets.text_fingerprint.cache_clear()
