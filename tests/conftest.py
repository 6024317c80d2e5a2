"""Shared fixtures. Tests that need ../shared/data use the fixtures below and skip with a reason when it is absent."""
import os
import pathlib

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # as train.py: BLAS threads only contend with data threads

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = pathlib.Path(os.environ.get("JFACE_SHARED_DATA", ROOT.parent / "shared" / "data"))


def _need(sub: str) -> pathlib.Path:
  path = SHARED_DATA / sub
  if not path.exists():
    pytest.skip(f"needs {path} (the licensed ../shared/data folder; set JFACE_SHARED_DATA to point elsewhere)")
  return path


@pytest.fixture(scope="session")
def shared_data() -> pathlib.Path:
  return _need("")


@pytest.fixture(scope="session")
def bfm_dir() -> pathlib.Path:
  return _need("3dmm")


@pytest.fixture(scope="session")
def dev_dir() -> pathlib.Path:
  return _need("aflw2000_3d_dev")


@pytest.fixture(scope="session")
def train_dir() -> pathlib.Path:
  return _need("aflw2000_3d_train")


@pytest.fixture(scope="session")
def wild_dir() -> pathlib.Path:
  return _need("aflw_wild")


@pytest.fixture(scope="session")
def bfm(bfm_dir):
  from jface.core import bfm as bfm_lib
  return bfm_lib.load_3ddfa(str(bfm_dir))


def _find_photo_models():
  """The folder of a developer's optional photo models (jface.inference.tflite's search order), or None."""
  from jface.inference import tflite
  for d in tflite.search_dirs():
    if all(os.path.isfile(os.path.join(d, n)) for n in tflite.MODELS):
      return d
  return None


PHOTO_MODELS = None


@pytest.fixture(scope="session")
def photo_models() -> str:
  """The optional MediaPipe models' folder (with LiteRT installed), else skip with the install commands."""
  from jface.inference import tflite
  if PHOTO_MODELS is None or not tflite.litert_available():
    pytest.skip("needs the optional photo models: pip install -e '.[photos]' && python -m jface.inference.tflite "
                "fetch")
  return PHOTO_MODELS


def pytest_configure(config):
  """Identical computations (e.g. the same train step in the resume test's three runs) compile once.
  Hermetic model cache: the tests never pick up a developer's optional photo models by default (``auto``
  detector / landmark source); tests that want them take the ``photo_models`` fixture (the folder found here)."""
  global PHOTO_MODELS
  import tempfile
  PHOTO_MODELS = _find_photo_models()
  os.environ.pop("JFACE_MODELS", None)
  os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="jface-test-cache-")
  import jax
  jax.config.update("jax_compilation_cache_dir", os.environ.get("JFACE_JAX_CACHE", "/tmp/jface-jax-test-cache"))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.3)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
