"""Every environment variable numpyvit reads, read here and checked where it enters.

    NUMPYVIT_BACKEND         numpy | cupy                    the array backend (numpyvit.backend)
    NUMPYVIT_THREADS         1 .. 4 x the usable cores        threads numpyvit uses (numpyvit.parallel)
    NUMPYVIT_PARALLEL        processes|threads|split|blas     always this strategy (numpyvit.engine.tuning)
    NUMPYVIT_TUNING          on | off (1 | 0)                 measure the machine or not
    NUMPYVIT_TUNING_QUIET    1 | 0 (true | false)             no line on stderr when it measures
    NUMPYVIT_MALLOC_TUNING   1 | 0                            tune glibc's allocator (numpyvit.backend)
    NUMPYVIT_CACHE_DIR       a folder                         where tuning.json lives
    NUMPYVIT_DATA            a folder                         where the MNIST files are looked for
    XDG_CACHE_HOME           a folder                         the cache's parent, as the XDG spec says
    OPENBLAS_CORETYPE        (OpenBLAS's)                     recorded in the tuning cache's fingerprint

A value outside what is listed raises EnvironmentVariableError, an InputError naming the variable,
the value and what it accepts, so a typo never ends in a traceback from int() or a thread pool.
Unset or empty means the default.
"""
import os
from pathlib import Path

from .errors import InputError

STRATEGIES = ("processes", "threads", "split", "blas")
BACKENDS = ("numpy", "cupy")
# the CPUs this process may run on (a container or `taskset` may allow fewer than the machine has)
CPUS = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
MAX_THREADS = 4 * CPUS                 # oversubscribing a little is allowed (tests do); thousands are a typo
_SWITCHES = {"on": True, "1": True, "true": True, "off": False, "0": False, "false": False}


class EnvironmentVariableError(InputError):
    """An environment variable holds a value numpyvit does not accept."""


def _raw(name):
    value = os.environ.get(name, "").strip()
    return value or None


def _refuse(name, value, accepted):
    raise EnvironmentVariableError(f"environment variable {name}={value!r} is not accepted: it must be {accepted} "
                                   f"(or unset for the default)")


def choice(name, choices, default=None):
    """The variable's value, one of ``choices`` (case-insensitive), or ``default`` when unset."""
    value = _raw(name)
    if value is None:
        return default
    if value.lower() not in choices:
        _refuse(name, value, "one of " + ", ".join(choices))
    return value.lower()


def switch(name, default):
    """True / False from on|off|1|0|true|false, or ``default`` when unset."""
    value = choice(name, tuple(_SWITCHES), None)
    return default if value is None else _SWITCHES[value]


def threads():
    """NUMPYVIT_THREADS as an int in [1, MAX_THREADS], or CPUS when unset."""
    value = _raw("NUMPYVIT_THREADS")
    if value is None:
        return CPUS
    if not value.isdigit() or not 1 <= int(value) <= MAX_THREADS:
        _refuse("NUMPYVIT_THREADS", value, f"a whole number from 1 to {MAX_THREADS} (this process may use {CPUS} "
                "cores; more threads than cores only slow numpyvit down)")
    return int(value)


def folder(name):
    """The variable as a Path (``~`` expanded), None when unset; refused if it names an existing file."""
    value = _raw(name)
    if value is None:
        return None
    path = Path(value).expanduser()
    if path.exists() and not path.is_dir():
        _refuse(name, value, "a folder (it names a file)")
    return path


def backend():
    return choice("NUMPYVIT_BACKEND", BACKENDS, None)


def forced_strategy():
    return choice("NUMPYVIT_PARALLEL", STRATEGIES, None)


def tuning_enabled():
    return switch("NUMPYVIT_TUNING", True)


def tuning_quiet():
    return switch("NUMPYVIT_TUNING_QUIET", False)


def malloc_tuning():
    return switch("NUMPYVIT_MALLOC_TUNING", True)


def cache_dir():
    """The per-user cache folder: $XDG_CACHE_HOME/numpyvit, else ~/.cache/numpyvit."""
    return (folder("XDG_CACHE_HOME") or Path.home() / ".cache") / "numpyvit"


def tuning_cache_dir():
    """Where tuning.json lives: $NUMPYVIT_CACHE_DIR, else the cache folder."""
    return folder("NUMPYVIT_CACHE_DIR") or cache_dir()


def data_dir():
    return folder("NUMPYVIT_DATA")


def openblas_coretype():
    """OPENBLAS_CORETYPE as set (OpenBLAS's own variable: numpyvit only records it, in the tuning
    cache's fingerprint, and never changes it)."""
    return os.environ.get("OPENBLAS_CORETYPE")


def check_all():
    """Read every variable once (the demos call this first), so a bad one is reported before any
    work starts; raises EnvironmentVariableError for the first bad one."""
    for read in (backend, threads, forced_strategy, tuning_enabled, tuning_quiet, malloc_tuning, cache_dir,
                 tuning_cache_dir, data_dir):
        read()
