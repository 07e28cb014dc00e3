"""The repository's scripts (demos, docs/experiments) loaded as modules, so tests can call their main()."""
import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load_script(path):
    """The script at ``path`` (from the repository root, e.g. "demos/train_mnist.py"), run as a fresh module."""
    path = ROOT / path
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
