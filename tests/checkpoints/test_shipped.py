"""Every learned optimizer shipped in checkpoints/ loads and trains."""

import importlib.resources
import pathlib
import re

import jax
import jax.numpy as jnp
import optax
import pytest

import lopt
import lopt.tasks
from lopt.meta_train.config import MetaTrainConfig, load_config

SHIPPED = sorted(
    pathlib.Path(str(p)) for p in
    importlib.resources.files("lopt.checkpoints").iterdir()
    if p.name.endswith(".lopt"))

_REPO = pathlib.Path(__file__).resolve().parents[2]


def test_something_is_shipped():
  assert SHIPPED, "checkpoints/ holds no learned-optimizer file"
  assert set(lopt.shipped_names()) == {p.stem for p in SHIPPED}


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_header_and_model_card(path):
  loaded = lopt.read(path)
  h = loaded.header
  assert h["format_version"] == lopt.io.FORMAT_VERSION
  assert h["rule"] in lopt.rules.names()
  prov = h["provenance"]
  assert prov["config"]["rule"] == h["rule"]
  assert prov["outer_steps"] > 0
  # Meta-trained on the meta-training split only: no held-out task leaks in.
  families = MetaTrainConfig.from_dict(prov["config"]).family_names
  assert set(families) <= set(lopt.tasks.META_TRAIN_FAMILIES), families
  assert not set(families) & set(lopt.tasks.HELDOUT_TASKS)
  card = path.with_suffix(".md")
  assert card.is_file(), f"missing model card {card.name}"
  text = card.read_text()
  assert "lopt meta-train" in text and h["rule"] in text
  for name in families:
    assert f"`{name}`" in text, f"{card.name} does not name {name}"


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_trains_a_heldout_task(path):
  loaded = lopt.read(path)
  mup = loaded.rule.name.startswith("mu_")
  task = lopt.tasks.get("mup_mlp_w256" if mup else "wine_mlp")
  assert task.name in lopt.tasks.HELDOUT_TASKS
  opt = lopt.load(path.stem, num_steps=50,
                  param_meta=task.param_meta if mup else None)
  params = task.init(jax.random.PRNGKey(0))
  batch = task.sample_batch(jax.random.PRNGKey(1), "train")

  def step(carry, key):
    p, s = carry
    loss, g = jax.value_and_grad(task.loss)(p, batch, key)
    u, s = opt.update(g, s, p, value=loss)
    return (optax.apply_updates(p, u), s), loss

  _, losses = jax.jit(lambda p: jax.lax.scan(
      step, (p, opt.init(p)), jax.random.split(jax.random.PRNGKey(2), 50))
  )(params)
  assert bool(jnp.all(jnp.isfinite(losses)))
  assert float(losses[-5:].mean()) < 0.7 * float(losses[0])


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_model_card_command_reproduces_the_file(path):
  """The config the model card's command runs is the one the file records
  (its provenance), and builds the file's rule: same name and full rule
  config, defaults included. Only ``workers`` may differ, since the card
  passes ``--workers`` on the command line."""
  loaded = lopt.read(path)
  text = path.with_suffix(".md").read_text()
  found = re.findall(r"lopt meta-train --config (\S+)", text)
  assert found, f"{path.stem}.md has no 'lopt meta-train --config' command"
  config_path = _REPO / found[0]
  assert config_path.is_file(), f"{path.stem}.md runs missing {found[0]}"
  card_cfg = load_config(str(config_path)).validate()
  recorded = MetaTrainConfig.from_dict(loaded.header["provenance"]["config"])
  a, b = card_cfg.to_dict(), recorded.to_dict()
  for d in (a, b):
    d.pop("workers")
    d.pop("rule_config")
  assert a == b, {k: (a[k], b.get(k)) for k in a if a[k] != b.get(k)}
  rule = lopt.rules.get(card_cfg.rule, **card_cfg.rule_config)
  assert (rule.name, rule.config()) == (loaded.rule.name,
                                        loaded.rule.config())
