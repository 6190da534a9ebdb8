"""editguard.model: the network, its config, the taxonomy, preprocessing and the model-dir format.

Importing this package is light (numpy, Pillow): the torch parts load on
first use, so the Triton preprocess step can use the same preprocessing.
"""

from .config import ModelConfig, PreprocessConfig, list_presets, preset_config
from .preprocess import PreprocessError, Preprocessor
from .taxonomy import Taxonomy, default_taxonomy, load_taxonomy

__all__ = [
    "ModelConfig",
    "PreprocessConfig",
    "PreprocessError",
    "Preprocessor",
    "Taxonomy",
    "create_model",
    "default_taxonomy",
    "list_presets",
    "load_model_dir",
    "load_taxonomy",
    "preset_config",
    "save_model_dir",
]


def __getattr__(name: str):
    if name in ("create_model", "load_model_dir", "save_model_dir"):
        from . import model_dir

        return getattr(model_dir, name)
    raise AttributeError(name)
