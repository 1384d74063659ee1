"""Tasks and task families (``import lopt.tasks``).

Quick use::

    import lopt.tasks as tasks
    task = tasks.get("digits_mlp")                 # a Task
    family = tasks.get_family("digits_mlp")        # a TaskFamily
    config = family.sample(key)                    # pytree of scalars
    task = family.task(config)                     # vmappable over configs

See :mod:`lopt.tasks.registry` for the named families / tasks and the
meta-training vs held-out split, and :mod:`lopt.tasks.image_files` for
MNIST / Fashion-MNIST / CIFAR-10 files read from ``$LOPT_DATA_DIR``.
"""

from lopt.tasks.base import SPLITS, Task, TaskFamily, check_split
from lopt.tasks.common import ACTIVATIONS
from lopt.tasks.conv import ConvClassifier, ConvClassifierFamily
from lopt.tasks.datasets import DATASETS, Dataset
from lopt.tasks.image_files import (DataFormatError, DataNotFoundError,
                                    IMAGE_DATASETS)
from lopt.tasks.lm import CharLMFamily, CharTransformerLM
from lopt.tasks.mlp import (AutoencoderFamily, MLPAutoencoder, MLPClassifier,
                            MLPClassifierFamily)
from lopt.tasks.mup import mup_mlp_family, mup_transformer_family
from lopt.tasks.quadratic import QuadraticFamily, QuadraticTask
from lopt.tasks.regression import (LinearRegression, LogisticRegression,
                                   RegressionFamily)
from lopt.tasks.registry import (DEFAULT_META_TRAIN_FAMILY, FILE_TASKS,
                                 HELDOUT_FAMILIES, HELDOUT_TASKS,
                                 META_TRAIN_FAMILIES, UnknownNameError, get,
                                 get_family, list_families, list_tasks,
                                 register_family, register_task,
                                 WIDTH_TRANSFER_TASKS)
