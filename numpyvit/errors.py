"""The error numpyvit raises for input it refuses: a file, an image, a setting or an argument.

Every check on what a user hands numpyvit (weight files and their metadata, JAX .npz files,
checkpoints and their training state, photos, image folders, model settings) ends in an
``InputError`` subclass whose message names the file (and the tensor, key or image) and says what
was expected. It is a ValueError, so ``except ValueError`` keeps working. The demos print its
message as one line, without a traceback.
"""


class InputError(ValueError):
    """numpyvit refuses an input; the message says which one, what was wrong and what would do."""


class ConfigError(InputError):
    """A model setting is unknown or out of range (``VisionTransformer``, ``create_model``, a file's config)."""


class MissingInputError(FileNotFoundError, InputError):
    """An input file or folder that does not exist (a FileNotFoundError too)."""
