r"""Evaluates predictions or a checkpoint on AFLW2000-3D / AFLW / synthetic faces (logic: jface/eval/cli.py).

  python evaluate.py --dataset aflw2000_3d --data_dir ../shared/data/aflw2000_3d_dev \
      (--predictions FILE | --checkpoint WORKDIR) --out OUTDIR
  python evaluate.py photos --data_dir ../shared/data/aflw2000_3d_dev --checkpoint WORKDIR --out OUTDIR
      (the whole predict pipeline on the original photos: jface/eval/photos.py)
"""
import sys

from jface import runtime

runtime.setup()  # BLAS threads and XLA CPU flags, before numpy / jax load

if __name__ == "__main__":
  if sys.argv[1:2] == ["photos"]:
    from jface.eval.photos import main
    sys.exit(main(sys.argv[2:]))
  from jface.eval.cli import main
  sys.exit(main())
