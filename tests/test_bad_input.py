"""Bad input through the real entry point: clear messages, nothing lost."""

import glob
import os
import subprocess
import sys

from dataloaders.datasets import digits

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_corrupted_record_is_named(tmp_path):
  data = digits.ensure_digits_records(str(tmp_path / "digits"))
  shard = sorted(glob.glob(data["train_pattern"]))[1]
  raw = bytearray(open(shard, "rb").read())
  middle = len(raw) // 2
  raw[middle:middle + 64] = bytes(64)  # Zero a stretch inside some record.
  with open(shard, "wb") as f:
    f.write(raw)

  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
  result = subprocess.run(
      [sys.executable, "-m", "official.train",
       "--gin_file=configs/smoke/classification.gin",
       f"--gin_param=digits_records.data_dir = '{tmp_path / 'digits'}'",
       "--gin_param=Trainer.max_train_steps = 400",
       "--gin_param=Trainer.train_epochs = 2",
       "--gin_param=Trainer.steps_per_loop = 400",
       f"--model_dir={tmp_path / 'run'}", "--mode=train"],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert result.returncode != 0
  assert "CorruptRecordError" in result.stderr
  assert f"Corrupted TFRecord in the training data: {shard}, record " in (
      result.stderr)
