r"""Evaluates predictions or a checkpoint on AFLW2000-3D / AFLW / synthetic faces (logic: jface/evaluation.py).

  python evaluate.py --dataset aflw2000_3d --data_dir ../shared/data/aflw2000_3d_dev \
      (--predictions FILE | --checkpoint WORKDIR) --out OUTDIR
"""
import os
import sys

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # see train.py; must precede numpy's import

from jface.evaluation import main  # noqa: E402

if __name__ == "__main__":
  sys.exit(main())
