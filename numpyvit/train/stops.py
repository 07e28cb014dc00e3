"""How a run stops early, and what it leaves behind.

Ctrl-C: the first one lets the current step finish; then a checkpoint of that exact point
(mid-epoch, with the epoch's sample order) is written and TrainingInterrupted raised, and a
resume continues as if nothing had happened. A second Ctrl-C interrupts at once (a step may
be half done, so nothing is saved) and the last checkpoint on disk stays the one to resume
from; so does any Ctrl-C while ``fit`` runs outside the main thread, where Python allows no
signal handler.

A non-finite loss raises NonFiniteLossError before anything is saved, so the last
checkpoint is the last good one. A checkpoint that cannot be written raises TrainingError;
the atomic write leaves the previous one intact.
"""
import signal

from ..errors import InputError


class TrainingError(RuntimeError):
    """Training cannot go on (a non-finite loss, an unwritable checkpoint, a clash with an old run)."""


class RunExistsError(TrainingError, InputError):
    """The output folder already holds another run's checkpoint: a new run would overwrite it."""


class NonFiniteLossError(TrainingError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C: ``checkpoint`` is the file to resume from (None if there is none yet)."""

    def __init__(self, message, checkpoint):
        super().__init__(message)
        self.checkpoint = checkpoint


class CtrlC:
    """While active, the first SIGINT only sets ``requested``; the next raises KeyboardInterrupt."""

    requested = False

    def __enter__(self):
        try:
            self.previous = signal.signal(signal.SIGINT, self._handle)
            self.installed = True
        except ValueError:                               # not the main thread: no handler possible
            self.installed = False
        return self

    def _handle(self, signum, frame):
        self.requested = True
        signal.signal(signal.SIGINT, signal.default_int_handler)

    def __exit__(self, *exc):
        if self.installed:                               # None: a handler set outside Python
            signal.signal(signal.SIGINT, signal.default_int_handler if self.previous is None else self.previous)


def resume_hint(path, state):
    """What a Ctrl-C left behind, and how to go on."""
    how = "; resume with --resume (fit(..., resume=True))"
    if state is not None:
        where = (f"epoch {state.epoch + 1}, step {state.epoch_step}" if state.epoch_step
                 else f"the end of epoch {state.epoch}")
        return f"interrupted: saved {path} at {where}{how}"
    if path.exists():
        return f"interrupted mid-step: the last checkpoint is {path}{how}"
    return "interrupted before the first checkpoint was written; nothing to resume"
