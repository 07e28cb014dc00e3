"""The tuning cache, ``<cache>/tuning.json``: disposable, so it can never crash or hang a run.

It is read only when it is a regular file of at most MAX_BYTES holding JSON of this shape:

    {fingerprint: {"machine": {...},                               # what the fingerprint describes
                   "settings": null | {"chunk_bytes": int > 0, "min_split_work": int >= 0,
                                       "min_split_elements": int >= 0},
                   "workloads": {key: {"strategy": one of STRATEGIES,
                                       "ms": {strategy: milliseconds > 0}, "images": int > 0,
                                       "seconds": >= 0, "measured": "YYYY-MM-DD HH:MM"}}}}

Anything else (a FIFO, a folder, a huge file, bad JSON, a string where a number belongs) is
ignored with one warning on stderr: the machine is measured again and the file rewritten
atomically. (cache: $NUMPYVIT_CACHE_DIR, else $XDG_CACHE_HOME/numpyvit, else ~/.cache/numpyvit.)
"""
import json
import math
import os
import sys

from .. import environment
from ..errors import InputError
from ..files import atomic_file, read_regular_file

CACHE_NAME = "tuning.json"
MAX_BYTES = 4 * 2**20                  # thousands of workloads; a larger file is not ours
STRATEGIES = environment.STRATEGIES
_warned = set()


def cache_path():
    return environment.tuning_cache_dir() / CACHE_NAME


def load_cache():
    """The cache as a dict, or {} (with one warning) when it is missing, unreadable or malformed."""
    path = cache_path()
    if not os.path.lexists(path):
        return {}
    try:
        cache = json.loads(read_regular_file(path, MAX_BYTES, "the tuning cache"))
        check_schema(cache)
        return cache
    except (InputError, ValueError, UnicodeDecodeError, RecursionError) as error:
        why = str(error) if isinstance(error, InputError) else f"the tuning cache {path} is malformed: {error}"
        if why not in _warned:
            _warned.add(why)
            print(f"numpyvit: ignoring {why}; measuring again and rewriting it", file=sys.stderr, flush=True)
        return {}


def write_cache(cache):
    """Write the whole cache atomically; a read-only home (or a folder in the file's place) is
    not an error: the next run measures again."""
    try:
        with atomic_file(cache_path()) as f:
            f.write(json.dumps(cache, indent=1).encode())
    except (OSError, InputError):                                    # InputError: a folder in its place
        pass


def forget():
    """Remove the cache file; returns the path if there was one."""
    path = cache_path()
    if not os.path.lexists(path):
        return None
    if os.path.isdir(path) and not os.path.islink(path):
        raise InputError(f"{path} is a folder, not numpyvit's tuning cache: remove it yourself")
    os.unlink(path)
    return path


def check_schema(cache):
    """ValueError naming the first entry that does not match the shape above."""
    _expect(isinstance(cache, dict), "the top level is not an object")
    for fingerprint, entry in cache.items():
        _expect(isinstance(entry, dict), f"machine entry {fingerprint[:40]!r}... is not an object")
        _expect(isinstance(entry.get("machine", {}), dict), "a machine description is not an object")
        settings = entry.get("settings")
        if settings is not None:
            _expect(isinstance(settings, dict) and _count(settings.get("chunk_bytes"), 1)
                    and _count(settings.get("min_split_work"), 0) and _count(settings.get("min_split_elements"), 0),
                    f"settings {settings!r} are not three whole numbers")
        workloads = entry.get("workloads", {})
        _expect(isinstance(workloads, dict), "workloads is not an object")
        for key, choice in workloads.items():
            _expect(isinstance(choice, dict) and choice.get("strategy") in STRATEGIES,
                    f"workload {key} has no strategy among {', '.join(STRATEGIES)}")
            ms = choice.get("ms", {})
            _expect(isinstance(ms, dict) and all(s in STRATEGIES and _time(t) for s, t in ms.items()),
                    f"workload {key}: ms {ms!r} are not positive times of known strategies")
            _expect(_count(choice.get("images", 1), 1), f"workload {key}: images {choice.get('images')!r}")
            _expect(_time(choice.get("seconds", 1), 0.0), f"workload {key}: seconds {choice.get('seconds')!r}")


def _expect(condition, problem):
    if not condition:
        raise ValueError(problem)


def _count(value, least):
    return isinstance(value, int) and not isinstance(value, bool) and value >= least


def _time(value, least=None):
    """A finite number of seconds above 0 (or at least ``least``)."""
    return (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            and (value > 0 if least is None else value >= least))
