r"""Evaluates predictions or a checkpoint on AFLW2000-3D / AFLW / synthetic faces (logic: jface/evaluation.py).

  python evaluate.py --dataset aflw2000_3d --data_dir ../shared/data/aflw2000_3d_dev \
      (--predictions FILE | --checkpoint WORKDIR) --out OUTDIR
"""
import sys

from jface.evaluation import main

if __name__ == "__main__":
  sys.exit(main())
