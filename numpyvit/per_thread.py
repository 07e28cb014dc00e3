"""A setting that holds one value per thread, changed for the length of a ``with`` block.

numpyvit's switches are of this kind: the grad mode (``numpyvit.no_grad``), building layers without
random initialization (``layers.base.initialization``) and the strategy for using the cores that
``numpyvit.engine.tuning`` forces while it measures. Per thread, because numpyvit's worker threads run
other work at the same time under the setting of the thread that started them.
"""
import contextlib
import threading


class PerThread:
    """``setting.get()`` is this thread's value (``default`` until set); ``with setting.set(value):``
    changes it inside the block and puts the previous value back after."""

    def __init__(self, default):
        self._local, self.default = threading.local(), default

    def get(self):
        return getattr(self._local, "value", self.default)

    @contextlib.contextmanager
    def set(self, value):
        saved = self.get()
        self._local.value = value
        try:
            yield
        finally:
            self._local.value = saved
