"""Tasks and task families (``import lopt.tasks``)."""

from lopt.tasks.base import SPLITS, Task, TaskFamily
