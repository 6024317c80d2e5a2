r"""Trains a method (``config.method``) and evaluates it: ``python train.py --config configs/2dasl.py:smoke --workdir DIR``.

Re-running the same command resumes from the last checkpoint in ``--workdir`` with the same data order.
"""
import sys

from jface import runtime  # noqa: E402  (imports neither numpy nor jax)

runtime.setup()  # BLAS threads and XLA CPU flags, before numpy / jax load

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Output folder: checkpoints, metrics.jsonl, TensorBoard, results.json.")
config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/2dasl.py:smoke.", lock_config=True)
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
  from jface import training
  from jface.core.face_model import MissingAssetError
  from jface.train.checkpoint import CheckpointError
  try:
    training.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  except (MissingAssetError, CheckpointError, ValueError, training.NonFiniteLoss) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  app.run(main)
