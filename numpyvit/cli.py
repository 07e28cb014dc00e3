"""The door every demo shares: flags parsed into checked values, and refusals as one line.

    parser = cli.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=cli.positive_int)
    parser.add_argument("--lr", type=cli.positive_float)
    parser.add_argument("--out", type=cli.folder)
    ...
    def main(argv=None):
        return cli.run(train, parser.parse_args(argv))

A flag that does not parse (a word where a number belongs, 0 epochs, a NaN learning rate, a file
where a folder belongs) ends in one line, ``error: --epochs: ...``, and exit status 2, as a Unix
tool's usage error does; nothing starts. ``run`` reads every environment variable first
(numpyvit.environment) and turns numpyvit's refusals met later (a corrupt file, a size that cannot
fit, a bad setting) into one line ``error: ...`` and status 2 too; a run that fails (a loss gone
NaN) is status 1, one stopped by Ctrl-C 130 (resumable). No traceback reaches the user for what
they typed or named.
"""
import argparse
import math
import sys
from pathlib import Path

from . import environment
from .errors import InputError
from .train import TrainingError, TrainingInterrupted

USAGE_ERROR, FAILED, INTERRUPTED = 2, 1, 130


class ArgumentParser(argparse.ArgumentParser):
    """argparse, with a bad flag reported in one line (``error: ...; see --help``) and status 2."""

    def __init__(self, **kwargs):
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(**kwargs)

    def error(self, message):
        message = message.replace("\r", "\\r").replace("\n", "\\n")        # a typed newline stays on the line
        print(f"error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(USAGE_ERROR)


def run(body, *args):
    """``body(*args)`` -> its exit status, with numpyvit's refusals as one line and status 2."""
    try:
        environment.check_all()
        return body(*args)
    except TrainingInterrupted as stop:
        print(stop, file=sys.stderr)
        return INTERRUPTED
    except (InputError, ValueError, OSError, MemoryError) as error:  # InputError: numpyvit's refusals
        print(f"error: {one_line(error)}", file=sys.stderr)
        return USAGE_ERROR
    except TrainingError as error:                                   # the run itself failed (NaN loss)
        print(f"error: {one_line(error)}", file=sys.stderr)
        return FAILED


def one_line(error):
    """An exception's message on one line (a file-system error names its file)."""
    if isinstance(error, MemoryError):
        return "out of memory: try a smaller batch, image size or model"
    text = str(error) or type(error).__name__
    return " ".join(text.split())


# ----- flag types: each returns the checked value or raises ArgumentTypeError (one line) -------------
def _number(text, kind):
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {'a whole number' if kind is int else 'a number'}") from None
    if kind is float and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def _number_in(kind, accepts, refusal, name):
    """An argparse type: ``text`` as a ``kind`` (int or finite float) that ``accepts``; else
    ArgumentTypeError with ``refusal`` (formatted with the value)."""
    def check(text):
        value = _number(text, kind)
        if not accepts(value):
            raise argparse.ArgumentTypeError(refusal.format(value))
        return value
    check.__name__ = name
    return check


positive_int = _number_in(int, lambda v: v >= 1, "{} is not a positive whole number (1 or more)", "positive_int")
nonnegative_int = _number_in(int, lambda v: v >= 0, "{} is negative", "nonnegative_int")
positive_float = _number_in(float, lambda v: v > 0, "{:g} is not above 0", "positive_float")
nonnegative_float = _number_in(float, lambda v: v >= 0, "{:g} is negative", "nonnegative_float")
fraction = _number_in(float, lambda v: 0 <= v < 1, "{:g} is not in [0, 1)", "fraction")       # a rate
probability = _number_in(float, lambda v: 0 <= v <= 1, "{:g} is not in [0, 1]", "probability")   # a share


def folder(text):
    """A folder to write into: it may not exist yet, but it may not be a file."""
    path = Path(text).expanduser()
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a file, not a folder: name a folder to write into")
    return path


def output_file(suffix, kind):
    """An argparse type: a ``kind`` file to write, named ``*suffix`` (nothing added to the name
    silently) and not a folder."""
    def check(text):
        path = Path(text).expanduser()
        if path.is_dir():
            raise argparse.ArgumentTypeError(f"{text} is a folder: name the {suffix} file to write, "
                                             f"e.g. {path / ('out' + suffix)}")
        if path.suffix.lower() != suffix:
            raise argparse.ArgumentTypeError(f"{text} does not end in {suffix}: name the {kind} file to write")
        return path
    check.__name__ = f"{suffix[1:]}_file"
    return check


png_file = output_file(".png", "PNG")
html_file = output_file(".html", "HTML")
