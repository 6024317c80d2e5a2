r"""3D face reconstruction of images with a trained workdir of any method (logic: jface/inference/cli.py).

  python predict.py IMAGE_OR_FOLDER --checkpoint WORKDIR --out OUTDIR [--landmarks FILE] [--flm ...]

Same command as ``python -m jface.predict``.
"""
import sys

from jface import runtime

runtime.setup()  # BLAS threads and XLA CPU flags, before numpy / jax load

from jface.inference.cli import main  # noqa: E402

if __name__ == "__main__":
  sys.exit(main())
