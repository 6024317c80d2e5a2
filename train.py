r"""Trains 2DASL (or an ablation) and evaluates it: ``python train.py --config configs/2dasl.py:smoke --workdir DIR``.

Re-running the same command resumes from the last checkpoint in ``--workdir`` with the same data order.
"""
import os
import sys

# Data workers call numpy's BLAS on small matrices from several threads: OpenBLAS's own thread pool then only
# adds contention (measured: 8 ms -> 1.2 ms per synthetic face's vertices). Must be set before numpy loads.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
# XLA CPU: route convolutions to XLA's own emitter instead of YNNPACK's per-convolution path (1.3-1.5x faster
# train steps on the 2-core machine; docs/BENCHMARKS.md). Must be set before jax loads; an explicit user setting
# of the same flag wins.
if "ynn_fusion_type" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                             " --xla_cpu_experimental_ynn_fusion_type=-individual_convolution").strip()

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
  from jface import train_lib
  from jface.bfm import MissingAssetError
  try:
    train_lib.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  except (MissingAssetError, ValueError, train_lib.NonFiniteLoss) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  app.run(main)
