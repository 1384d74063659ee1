"""Pinning a process to one core (lopt.meta_train.cpu)."""

import os
import subprocess
import sys

import pytest

from lopt.meta_train import cpu

pytestmark = pytest.mark.skipif(not hasattr(os, "sched_setaffinity"),
                                reason="CPU affinity is Linux-only")

_CHILD = r"""
import os, threading, json
from lopt.meta_train import cpu
import jax, jax.numpy as jnp
jnp.ones(3).block_until_ready()          # XLA's threads exist before pinning
before = cpu.available_cpus()
core = cpu.pin_to_cpu(int(os.environ["PIN_INDEX"]))
later = []
t = threading.Thread(target=lambda: later.append(sorted(os.sched_getaffinity(0))))
t.start(); t.join()
masks = {tid: sorted(os.sched_getaffinity(int(tid)))
         for tid in os.listdir("/proc/self/task")}
restored = cpu.set_affinity(before)
print(json.dumps({"before": before, "core": core, "masks": masks,
                  "later": later[0], "restored": restored,
                  "after": sorted(os.sched_getaffinity(0))}))
"""


@pytest.mark.parametrize("index", [0, 3])
def test_pin_to_cpu_pins_every_thread_and_can_be_undone(index):
  import json
  env = dict(os.environ, PIN_INDEX=str(index))
  out = subprocess.run([sys.executable, "-c", _CHILD], env=env, check=True,
                       capture_output=True, text=True, timeout=120).stdout
  r = json.loads(out.strip().splitlines()[-1])
  want = r["before"][index % len(r["before"])]
  assert r["core"] == want
  assert len(r["masks"]) > 1                      # JAX started threads
  assert all(m == [want] for m in r["masks"].values())
  assert r["later"] == [want]                     # new threads inherit it
  assert r["restored"] and r["after"] == r["before"]


def test_available_cpus_is_the_affinity_mask():
  assert cpu.available_cpus() == sorted(os.sched_getaffinity(0))
