"""``python -m numpyvit.engine --show``: what numpyvit measured on this machine (numpyvit.engine.tuning)
and where it keeps it; ``--forget``: remove it, so that the next run measures again."""
import argparse
import sys

from . import cache, tuning


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m numpyvit.engine", description=__doc__.splitlines()[0])
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--show", action="store_true", help="print the measured sizes and strategies")
    action.add_argument("--forget", action="store_true", help="remove the tuning cache (measured again next run)")
    args = parser.parse_args(argv)
    if args.show:
        print("\n".join(tuning.summary()))
        return 0
    try:
        removed = cache.forget()
    except (ValueError, OSError) as error:
        print(f"numpyvit: {error}", file=sys.stderr)
        return 2
    print(f"removed {removed}" if removed else f"no tuning cache at {cache.cache_path()}: nothing to forget")
    return 0


if __name__ == "__main__":
    sys.exit(main())
