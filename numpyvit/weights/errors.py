"""The error every weights-file problem raises (a ValueError), with the file and tensor named."""


class WeightsError(ValueError):
    """A weights file is unreadable, malformed, or does not fit the requested model."""
