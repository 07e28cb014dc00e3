"""The error every weights-file problem raises (an InputError), with the file and tensor named."""
from ..errors import InputError


class WeightsError(InputError):
    """A weights file is unreadable, malformed, or does not fit the requested model."""
