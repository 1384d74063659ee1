"""lopt.meta_train.logging: every JSON row is on disk as soon as it is
logged (a killed run keeps it), non-finite values survive as strings."""

import json

from lopt.meta_train.logging import MetricsLogger, read_scalars


def test_rows_are_on_disk_before_close(tmp_path):
  log = MetricsLogger(tmp_path)
  log.log(1, {"meta/loss": 0.5, "meta/grad_norm": float("nan")})
  log.log(2, {"meta/loss": 0.25, "meta/grad_norm": 1.0})
  rows = [json.loads(l) for l in
          (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert rows == [{"step": 1, "meta/loss": 0.5, "meta/grad_norm": "nan"},
                  {"step": 2, "meta/loss": 0.25, "meta/grad_norm": 1.0}]
  log.close()
  assert read_scalars(tmp_path)["meta/loss"] == [(1, 0.5), (2, 0.25)]


def test_disabled_writes_nothing(tmp_path):
  log = MetricsLogger(tmp_path / "off", enabled=False)
  log.log(1, {"meta/loss": 0.5})
  log.close()
  assert not (tmp_path / "off").exists()
