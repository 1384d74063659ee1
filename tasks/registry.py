"""Named task families and tasks, and the meta-training / held-out split.

Every registered family ``f`` also names a task: ``get(f)`` is
``get_family(f).task(get_family(f).default_config())``. Families and tasks
are built lazily on first use and memoised.

Split (see :data:`META_TRAIN_FAMILIES` and :data:`HELDOUT_TASKS`):

* meta-training: quadratics (noiseless and noisy), linear and logistic
  regression, MLPs on digits and iris with one or two hidden layers of at most
  32 units (batch 16 to 128, optional label noise), muP MLPs on digits of
  width 32 and 64, and a one-block width-32 character transformer on
  generated text (``synth_lm``);
* held-out: datasets never seen in meta-training (wine, breast_cancer,
  mnist1d, stdlib text), larger / deeper digits MLPs (2 x 128, 4 x 64), other
  architectures (conv net, autoencoder), larger transformer LMs on the stdlib
  text (two blocks; width 64, and muP widths 32 and 128) and wider muP MLPs
  (256, 1024) for width transfer.

Tasks on MNIST / Fashion-MNIST / CIFAR-10 files (:data:`FILE_TASKS`) need the
files in a data directory (``data_dir=`` or ``$LOPT_DATA_DIR``); they are not
part of :func:`list_tasks` unless asked for.
"""

from __future__ import annotations

from typing import Callable, Dict, Optional

import jax

from lopt.tasks import image_files, mup
from lopt.tasks.base import Task, TaskFamily
from lopt.tasks.conv import ConvClassifier, ConvClassifierFamily
from lopt.tasks.lm import CharLMFamily
from lopt.tasks.mlp import (AutoencoderFamily, MLPClassifier,
                            MLPClassifierFamily)
from lopt.tasks.quadratic import QuadraticFamily
from lopt.tasks.regression import RegressionFamily


class UnknownNameError(KeyError):
  """An unknown task or family name (a ``KeyError`` with a readable
  message listing the valid names)."""

  def __str__(self) -> str:
    return str(self.args[0]) if self.args else "unknown name"


_FAMILIES: Dict[str, Callable[[], TaskFamily]] = {}
_TASKS: Dict[str, Callable[[], Task]] = {}
_FILE_TASKS: Dict[str, Callable[[Optional[str]], Task]] = {}
_FAMILY_CACHE: Dict[str, TaskFamily] = {}
_TASK_CACHE: Dict[str, Task] = {}


def register_family(name: str, factory: Callable[[], TaskFamily],
                    with_task: bool = True) -> None:
  """Registers ``factory() -> TaskFamily`` under ``name``; with
  ``with_task`` the family's default-config task is registered under the
  same name."""
  if name in _FAMILIES:
    raise ValueError(f"Family {name!r} is already registered.")
  _FAMILIES[name] = factory
  if with_task:
    register_task(name, lambda: get_family(name).task(
        get_family(name).default_config()))


def register_task(name: str, factory: Callable[[], Task]) -> None:
  """Registers ``factory() -> Task`` under ``name``."""
  if name in _TASKS or name in _FILE_TASKS:
    raise ValueError(f"Task {name!r} is already registered.")
  _TASKS[name] = factory


def _unknown(kind: str, name: str, valid) -> UnknownNameError:
  return UnknownNameError(
      f"Unknown {kind} {name!r}. Valid {kind} names: {', '.join(valid)}.")


def get_family(name: str) -> TaskFamily:
  """The registered :class:`TaskFamily` called ``name``."""
  if name not in _FAMILIES:
    raise _unknown("family", name, list_families())
  if name not in _FAMILY_CACHE:
    with jax.ensure_compile_time_eval():  # concrete even if called in a trace
      _FAMILY_CACHE[name] = _FAMILIES[name]()
  return _FAMILY_CACHE[name]


def get(name: str, data_dir: Optional[str] = None) -> Task:
  """The registered :class:`Task` called ``name``. ``data_dir`` is used by
  the file-backed tasks (:data:`FILE_TASKS`; default ``$LOPT_DATA_DIR``)."""
  if name in _FILE_TASKS:
    return _FILE_TASKS[name](data_dir)
  if name not in _TASKS:
    raise _unknown("task", name, list_tasks(include_file_tasks=True))
  if name not in _TASK_CACHE:
    # Memoised tasks must hold concrete arrays even when first requested
    # inside jit / vmap / eval_shape.
    with jax.ensure_compile_time_eval():
      _TASK_CACHE[name] = _TASKS[name]()
  return _TASK_CACHE[name]


def list_families() -> tuple[str, ...]:
  """Names of all registered families (sorted)."""
  return tuple(sorted(_FAMILIES))


def list_tasks(include_file_tasks: bool = False) -> tuple[str, ...]:
  """Names of all registered offline tasks (sorted); with
  ``include_file_tasks`` also the tasks that read MNIST / Fashion-MNIST /
  CIFAR-10 files."""
  names = set(_TASKS) | (set(_FILE_TASKS) if include_file_tasks else set())
  return tuple(sorted(names))


# --- the built-in registry -------------------------------------------------

_BUILTIN_FAMILIES: Dict[str, Callable[[], TaskFamily]] = {
    # meta-training
    "quadratic": lambda: QuadraticFamily(10, name="quadratic"),
    "quadratic_noisy": lambda: QuadraticFamily(
        10, noise_range=(0.1, 1.0), name="quadratic_noisy"),
    "linear_regression": lambda: RegressionFamily(
        "linear", 16, 32, noise_range=(0.0, 0.5), name="linear_regression"),
    "logistic_regression": lambda: RegressionFamily(
        "logistic", 16, 32, noise_range=(0.0, 0.2),
        name="logistic_regression"),
    "digits_mlp": lambda: MLPClassifierFamily(
        "digits", (32,), 32, name="digits_mlp"),
    "digits_mlp_b128": lambda: MLPClassifierFamily(
        "digits", (32,), 128, name="digits_mlp_b128"),
    "digits_mlp_2layer": lambda: MLPClassifierFamily(
        "digits", (32, 32), 32, name="digits_mlp_2layer"),
    "digits_mlp_noisy": lambda: MLPClassifierFamily(
        "digits", (32,), 32, label_noise_max=0.2, name="digits_mlp_noisy"),
    "digits_mlp_w64": lambda: MLPClassifierFamily(
        "digits", (64, 64), 32, name="digits_mlp_w64"),
    "digits_mlp_3layer": lambda: MLPClassifierFamily(
        "digits", (32, 32, 32), 32, name="digits_mlp_3layer"),
    "iris_mlp": lambda: MLPClassifierFamily(
        "iris", (16,), 16, name="iris_mlp"),
    "mup_mlp_w32": lambda: mup.mup_mlp_family(32),
    "mup_mlp_w64": lambda: mup.mup_mlp_family(64),
    # A one-block character transformer on generated text (the held-out LMs
    # are larger and read the stdlib sources).
    "synth_lm": lambda: CharLMFamily(
        d_model=32, num_heads=2, num_layers=1, seq_len=16, batch_size=8,
        text="synthetic", name="synth_lm"),
    # held-out
    "wine_mlp": lambda: MLPClassifierFamily(
        "wine", (32,), 16, name="wine_mlp"),
    "breast_cancer_mlp": lambda: MLPClassifierFamily(
        "breast_cancer", (32,), 32, name="breast_cancer_mlp"),
    "mnist1d_mlp": lambda: MLPClassifierFamily(
        "mnist1d", (128, 128), 64, name="mnist1d_mlp"),
    "digits_mlp_wide": lambda: MLPClassifierFamily(
        "digits", (128, 128), 32, name="digits_mlp_wide"),
    "digits_mlp_deep": lambda: MLPClassifierFamily(
        "digits", (64, 64, 64, 64), 32, name="digits_mlp_deep"),
    "digits_conv": lambda: ConvClassifierFamily(
        "digits", (16, 32), 32, name="digits_conv"),
    "digits_autoencoder": lambda: AutoencoderFamily(
        "digits", (32, 16, 32), 32, name="digits_autoencoder"),
    "char_lm": lambda: CharLMFamily(
        d_model=64, num_heads=4, num_layers=2, seq_len=32, batch_size=16,
        name="char_lm"),
    "mup_mlp_w256": lambda: mup.mup_mlp_family(256),
    "mup_mlp_w1024": lambda: mup.mup_mlp_family(1024),
    "mup_transformer_w32": lambda: mup.mup_transformer_family(32),
    "mup_transformer_w128": lambda: mup.mup_transformer_family(128),
    # Width-transfer study (4x and 16x the width-32 meta-training models),
    # in muP and in standard parametrisation; not part of either split.
    "mup_mlp_w128": lambda: mup.mup_mlp_family(128),
    "mup_mlp_w512": lambda: mup.mup_mlp_family(512),
    "digits_mlp_2layer_w128": lambda: MLPClassifierFamily(
        "digits", (128, 128), 32, name="digits_mlp_2layer_w128"),
    "digits_mlp_2layer_w512": lambda: MLPClassifierFamily(
        "digits", (512, 512), 32, name="digits_mlp_2layer_w512"),
}

#: Tasks of the width-transfer study: width 32 (as in meta-training), 128
#: and 512, standard and muP parametrisation.
WIDTH_TRANSFER_TASKS: tuple[str, ...] = (
    "digits_mlp_2layer", "digits_mlp_2layer_w128", "digits_mlp_2layer_w512",
    "mup_mlp_w32", "mup_mlp_w128", "mup_mlp_w512")

for _name, _factory in _BUILTIN_FAMILIES.items():
  register_family(_name, _factory)

#: The family the main meta-training job uses: 64-32-10 MLPs on digits at
#: batch 32 (its default config: ReLU, init scale 1, no label noise).
DEFAULT_META_TRAIN_FAMILY = "digits_mlp"

#: Families sampled during meta-training.
META_TRAIN_FAMILIES: tuple[str, ...] = (
    "quadratic", "quadratic_noisy", "linear_regression",
    "logistic_regression", "digits_mlp", "digits_mlp_b128",
    "digits_mlp_2layer", "digits_mlp_noisy", "digits_mlp_w64",
    "digits_mlp_3layer", "iris_mlp", "mup_mlp_w32", "mup_mlp_w64",
    "synth_lm")

#: Held-out tasks for evaluation: new datasets, larger widths / depths, new
#: architectures. None of them is produced by a meta-training family.
HELDOUT_TASKS: tuple[str, ...] = (
    "wine_mlp", "breast_cancer_mlp", "mnist1d_mlp", "digits_mlp_wide",
    "digits_mlp_deep", "digits_conv", "digits_autoencoder", "char_lm",
    "mup_mlp_w256", "mup_mlp_w1024", "mup_transformer_w32",
    "mup_transformer_w128")

#: Families whose samples are held-out tasks (same names as HELDOUT_TASKS).
HELDOUT_FAMILIES: tuple[str, ...] = HELDOUT_TASKS


def _image_mlp(dataset: str, hidden, batch_size: int, name: str):
  def make(data_dir: Optional[str]) -> Task:
    ds = image_files.dataset(dataset, data_dir)
    return MLPClassifier(ds, hidden, batch_size, name=name)
  return make


def _image_conv(dataset: str, name: str):
  def make(data_dir: Optional[str]) -> Task:
    ds = image_files.dataset(dataset, data_dir)
    return ConvClassifier(ds, (16, 32), 64, name=name)
  return make


#: Tasks that read MNIST / Fashion-MNIST / CIFAR-10 files from the data
#: directory (``get(name, data_dir=...)`` or ``$LOPT_DATA_DIR``).
FILE_TASKS: tuple[str, ...] = ("mnist_mlp", "fashion_mnist_mlp",
                               "cifar10_mlp", "mnist_conv",
                               "fashion_mnist_conv")
_FILE_TASKS.update({
    "mnist_mlp": _image_mlp("mnist", (128,), 128, "mnist_mlp"),
    "fashion_mnist_mlp": _image_mlp("fashion_mnist", (128,), 128,
                                    "fashion_mnist_mlp"),
    "cifar10_mlp": _image_mlp("cifar10", (256,), 128, "cifar10_mlp"),
    "mnist_conv": _image_conv("mnist", "mnist_conv"),
    "fashion_mnist_conv": _image_conv("fashion_mnist", "fashion_mnist_conv"),
})
