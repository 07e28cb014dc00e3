"""Training speed of numpyvit against PyTorch at its best on this machine, and peak memory.

    python demos/benchmark.py                      # configs a-d, NumPy backend
    python demos/benchmark.py --configs a,b --repeats 12
    python demos/benchmark.py --no-compile         # skip the torch.compile column
    python demos/benchmark.py --backend cupy       # on a GPU, against PyTorch on CUDA

The yardstick is the fastest way PyTorch's eager mode runs the same model: its attention is
timed in both forms, ``F.scaled_dot_product_attention`` ("sdpa") and written out as
softmax(q k^T / sqrt(d)) v ("math"), and the faster one is the ratio's denominator (printed per
config). ``torch.compile`` of that form is one more column, for information (not in the ratio;
where it fails on the machine the column says so).

Fairness: every framework runs in its own fresh process, one at a time (demos/benchmark_turn.py),
so while one is timed nothing of the other is alive: no numpyvit worker processes or threads, no
PyTorch threads spinning. The contestants take turns, ``--block`` timed steps each per round
after ``--warmup`` untimed ones, for ``--repeats`` timed steps in all; the medians compare. Both
get identical weights (checked: their logits agree) and the same batch. numpyvit uses the cores
the way numpyvit.engine.tuning measured to be fastest on this machine (printed per config); PyTorch
uses ``--threads`` threads (default: all cores). Peak memory is each process's peak resident
set during the timed steps above its size after the imports (one-off work before them, such as
numpyvit measuring the machine or torch.compile, is left out), plus numpyvit's worker processes
less the shared memory they map (counted once, in the main process); on a GPU, the memory pool's
peak.
"""
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchmark_setup import CONFIGS, add_config_arguments, build, matmul_flops, synchronizer  # noqa: E402
import numpyvit  # noqa: E402
from numpyvit import cli  # noqa: E402
from numpyvit import parallel  # noqa: E402
from numpyvit.engine import tuning  # noqa: E402
from numpyvit.backend import get_xp  # noqa: E402

TURN = Path(__file__).resolve().parent / "benchmark_turn.py"
EAGER = ("torch-sdpa", "torch-math")


def take_turn(contestant, key, args, weights=None, steps=None, logits=False, **extra):
    """Run one turn in a fresh process and return its JSON report."""
    cmd = [sys.executable, str(TURN), contestant, "--config", key, "--backend", args.backend,
           "--threads", str(args.threads), "--warmup", str(args.warmup), "--steps", str(steps or args.block)]
    cmd += ["--batch", str(args.batch)] if args.batch else []
    cmd += ["--weights", weights] if weights else []
    cmd += ["--logits"] if logits else []
    for name, value in extra.items():
        cmd += [f"--{name}", str(value)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{contestant} on config {key} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def torch_available():
    """PyTorch's version and threads, asked in a subprocess (no PyTorch threads here); None if absent."""
    done = subprocess.run([sys.executable, "-c", "import torch; print(torch.__version__)"],
                          capture_output=True, text=True)
    return done.stdout.strip() if done.returncode == 0 else None


def run_config(key, args, ceiling, have_torch, workdir):
    """Time every contestant on one config, in turns; one row of the table."""
    description, _, default_batch, training = CONFIGS[key]
    batch = args.batch or default_batch
    model = build(key, args.backend, batch)[0]
    flops = matmul_flops(model.config, batch, training)
    weights = None
    contestants = ["numpyvit"]
    if have_torch:
        weights = str(Path(workdir) / f"{key}.npz")
        np.savez(weights, **{name: np.asarray(numpyvit.to_numpy(a)) for name, a in model.state_dict().items()})
        contestants += list(EAGER)
    del model
    times = {name: [] for name in contestants}
    first, last = {}, {}                     # logits from the first turn; memory from the last (by then
    for turn in range(max(1, -(-args.repeats // args.block))):   # nothing is measured or compiled first)
        for name in contestants:
            time.sleep(args.settle)
            report = take_turn(name, key, args, weights, logits=turn == 0)
            times[name] += report["times"]
            first.setdefault(name, report)
            last[name] = report
    seconds = {name: float(np.median(t)) for name, t in times.items()}
    row = dict(config=key, description=description, batch=batch, training=training, way=first["numpyvit"]["way"],
               numpyvit_img_s=batch / seconds["numpyvit"], gflops=flops / seconds["numpyvit"] / 1e9,
               numpyvit_mb=last["numpyvit"]["peak_mb"])
    row["ceiling_fraction"] = row["gflops"] / ceiling
    if have_torch:
        best = min(EAGER, key=seconds.get)
        ours = np.array(first["numpyvit"]["logits"])
        row.update({f"{name}_img_s": batch / seconds[name] for name in EAGER})
        row.update(torch_img_s=batch / seconds[best], attention=best.split("-")[1], torch_mb=last[best]["peak_mb"],
                   max_logit_diff=max(float(np.abs(ours - np.array(first[name]["logits"])).max()) for name in EAGER))
        row["ratio"] = row["numpyvit_img_s"] / row["torch_img_s"]
        if args.compile:
            row.update(compiled(key, args, weights, row["attention"], batch))
    return row


def compiled(key, args, weights, attention, batch):
    """torch.compile of the faster eager form: one turn, alone; {} columns or the reason it failed."""
    time.sleep(args.settle)
    try:
        report = take_turn("torch-compile", key, args, weights, steps=args.repeats, attention=attention)
    except RuntimeError as error:
        last = str(error).strip().splitlines()[-1]
        print(f"  torch.compile failed on config {key}: {last}", file=sys.stderr)
        return dict(compile_error=last)
    return dict(compile_img_s=batch / float(np.median(report["times"])), compile_s=report["warmup_s"])


def environment(backend, torch_version, threads):
    libs = parallel.blas_libraries()
    blas = ", ".join(f"{lib.internal_api} {lib.version}" for lib in libs) or "unknown BLAS"
    lines = [
        f"python {platform.python_version()}, numpy {np.__version__}, BLAS {blas}, numpyvit {numpyvit.__version__}, "
        f"backend {backend}",
        f"cpu: {tuning.cpu_model()}, {os.cpu_count()} cores; numpyvit threads: {parallel.num_threads()}; "
        f"BLAS kernel: {', '.join(str(getattr(lib, 'architecture', '?')) for lib in libs) or '?'}; "
        f"OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', '(unset)')}",
        f"torch {torch_version}, {threads} threads" if torch_version else "torch not installed: numpyvit only",
    ]
    if backend == "cupy":
        import cupy
        props = cupy.cuda.runtime.getDeviceProperties(0)
        lines.append(f"GPU: {props['name'].decode()}, CuPy {cupy.__version__}")
    return "\n".join(lines)


def matmul_ceiling(backend, size=2048, repeats=5):
    """Measured float32 GEMM rate (GFLOP/s): the most a step's matrix multiplies can reach."""
    xp = get_xp(backend)
    a = xp.asarray(np.random.default_rng(0).standard_normal((size, size), dtype=np.float32))
    sync = synchronizer(backend)
    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        a @ a
        sync()
        times.append(time.perf_counter() - start)
    return 2 * size**3 / float(np.median(times[1:])) / 1e9


def print_table(rows):
    nan = float("nan")
    print(f"{'cfg':<4}{'what':<36}{'batch':>6}{'way':>10}{'numpyvit img/s':>16}{'torch img/s':>13}{'attn':>6}"
          f"{'ratio':>7}{'sdpa img/s':>12}{'math img/s':>12}{'compiled':>10}{'GFLOP/s':>9}{'of ceiling':>11}"
          f"{'nvit MB':>9}{'torch MB':>9}{'|dlogit|':>10}")
    for r in rows:
        print(f"{r['config']:<4}{r['description']:<36}{r['batch']:>6}{r['way']:>10}{r['numpyvit_img_s']:>16.1f}"
              f"{r.get('torch_img_s', nan):>13.1f}{r.get('attention', '-'):>6}{r.get('ratio', nan):>7.2f}"
              f"{r.get('torch-sdpa_img_s', nan):>12.1f}{r.get('torch-math_img_s', nan):>12.1f}"
              f"{r.get('compile_img_s', nan):>10.1f}{r['gflops']:>9.0f}{r['ceiling_fraction']:>10.0%} "
              f"{r['numpyvit_mb']:>8.0f}{r.get('torch_mb', nan):>9.0f}{r.get('max_logit_diff', nan):>10.1e}")
    print("torch img/s: PyTorch eager with the faster attention form (attn); ratio = numpyvit / that; "
          "compiled: torch.compile of that form (information, not in the ratio)")


def main(argv=None):
    parser = cli.ArgumentParser(description=__doc__)
    add_config_arguments(parser)
    parser.add_argument("--batch", type=cli.positive_int, help="override every config's batch size")
    parser.add_argument("--repeats", type=cli.positive_int, default=9, help="timed steps per contestant, in all")
    parser.add_argument("--block", type=cli.positive_int, default=3, help="timed steps per turn")
    parser.add_argument("--warmup", type=cli.nonnegative_int, default=2, help="untimed steps at the start of each turn")
    parser.add_argument("--settle", type=cli.nonnegative_float, default=0.3, help="idle seconds before each turn")
    parser.add_argument("--threads", type=cli.positive_int, default=os.cpu_count(), help="PyTorch's threads")
    parser.add_argument("--no-torch", action="store_true", help="time numpyvit alone")
    parser.add_argument("--no-compile", dest="compile", action="store_false",
                        help="skip the torch.compile column (compiling takes a minute or more per config)")
    parser.add_argument("--json", help="also write the results to this file")
    return cli.run(benchmark, parser.parse_args(argv))


def benchmark(args):
    torch_version = None if args.no_torch else torch_available()
    print(environment(args.backend, torch_version, args.threads))
    ceiling = matmul_ceiling(args.backend)
    print(f"float32 matmul ceiling (2048^3 GEMM): {ceiling:.0f} GFLOP/s\n")
    rows = []
    with tempfile.TemporaryDirectory(prefix="numpyvit-benchmark-") as workdir:
        for key in args.configs:
            rows.append(run_config(key, args, ceiling, torch_version is not None, workdir))
            print(f"  measured config {key} ({rows[-1]['numpyvit_img_s']:.1f} img/s)", file=sys.stderr, flush=True)
    print_table(rows)
    if args.backend == "numpy":
        tuning.apply_settings()                                      # (measured in the turns; read here)
        print("\nnumpyvit.engine.tuning on this machine (ms per eval forward of each way, the fastest is used):")
        print("\n".join("  " + line for line in tuning.summary()))
    if args.json:
        Path(args.json).write_text(json.dumps(dict(ceiling_gflops=ceiling, rows=rows), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
