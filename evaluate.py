r"""Evaluates predictions or a checkpoint on AFLW2000-3D / AFLW / synthetic faces (logic: jface/eval/cli.py).

  python evaluate.py --dataset aflw2000_3d --data_dir ../shared/data/aflw2000_3d_dev \
      (--predictions FILE | --checkpoint WORKDIR) --out OUTDIR
"""
import sys

from jface import runtime

runtime.setup()  # BLAS threads and XLA CPU flags, before numpy / jax load

from jface.eval.cli import main  # noqa: E402

if __name__ == "__main__":
  sys.exit(main())
