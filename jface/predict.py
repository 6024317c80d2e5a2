"""``python -m jface.predict IMAGE_OR_FOLDER --checkpoint WORKDIR --out OUT``: the predict command
(``jface.inference.cli``; the API is ``jface.inference.predictor.Predictor``)."""
import sys

from jface import runtime

runtime.setup()  # before numpy / jax load (when run as python -m jface.predict)

from jface.inference.cli import main  # noqa: E402

if __name__ == "__main__":
  sys.exit(main())
