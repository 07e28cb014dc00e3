"""Training speed of numpyvit, against PyTorch eager when torch is installed, in one run.

    python demos/benchmark.py                      # configs a-d, NumPy backend, 2 threads
    python demos/benchmark.py --configs a,b --repeats 20
    python demos/benchmark.py --backend cupy       # on a GPU, against PyTorch on CUDA
    python demos/benchmark.py --scaling            # also: how step time grows with the work
    python demos/benchmark.py --profile --configs b,c   # also: where one core's step time goes

A training step is forward + cross-entropy + backward + AdamW. Both frameworks get the same
architecture and identical weights (checked: their logits agree), and are timed alternately
(warm-up, then the median of the repeats) so machine noise hits both alike. numpyvit uses the
cores the way numpyvit.tuning measured to be fastest on this machine (printed with the CPU; set
NUMPYVIT_PARALLEL to force one). Peak memory is measured in a fresh subprocess per framework and
config: the peak resident set size during model construction and steps, minus the size after
imports, plus the peak of every numpyvit worker process (interpreter included) less the shared
memory it maps (weights, its shard's inputs and gradients), which this process holds too.
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import numpyvit  # noqa: E402
from numpyvit import parallel, tuning  # noqa: E402
from numpyvit.backend import get_xp, to_numpy  # noqa: E402

CONFIGS = {  # name: (description, preset or overrides, batch, training?)
    "a": ("MNIST-tiny  p7 D64 L6 H4 MLP128", dict(preset="mnist_tiny"), 128, True),
    "b": ("MNIST-small p4 D128 L6 H4 MLP256", dict(preset="mnist_small"), 128, True),
    "c": ("MNIST-large p4 D420 L9 H28 MLP615", dict(preset="mnist_large"), 32, True),
    "d": ("ViT-B/16 224x224 inference", dict(preset="vit_base_patch16_224"), 8, False),
    "e": ("ViT-B/16 224x224 training", dict(preset="vit_base_patch16_224"), 64, True),
}


def build(config_key, backend, batch=None, **overrides):
    _, spec, default_batch, training = CONFIGS[config_key]
    model = numpyvit.create_model(spec["preset"], backend=backend, **overrides)
    batch = batch or default_batch
    C, (H, W) = model.patch_embed.in_chans, model.patch_embed.img_size
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, C, H, W)).astype(np.float32)
    y = rng.integers(0, model.num_classes, batch)
    return model, x, y, training


def matmul_flops(model, batch, training):
    """FLOPs of the matrix multiplies of one step (forward x 3 when training: the backward
    computes two products per forward product), counted for the full model as PyTorch runs it;
    numpyvit's [CLS]-only last block skips some, so its GFLOP/s is an effective rate."""
    c = model.config
    D, L, N = c["embed_dim"], c["depth"], model.patch_embed.num_patches
    T, hidden = N + 1, int(round(D * c["mlp_ratio"]))
    patch = c["in_chans"] * int(np.prod(model.patch_embed.patch_size))
    per_image = 2 * (N * patch * D + L * (T * D * 3 * D + 2 * T * T * D + T * D * D + 2 * T * D * hidden)
                     + D * c["num_classes"])
    return per_image * batch * (3 if training else 1)


# ----- one step in each framework ------------------------------------------------------------------
def numpyvit_step(model, x, y, training):
    xp = model.xp
    x, y = xp.asarray(x), xp.asarray(y)
    if not training:
        model.eval()

        def infer():
            with numpyvit.no_grad():                                 # as torch.inference_mode: nothing cached
                return model(x)
        return infer
    opt = numpyvit.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05)
    loss = numpyvit.CrossEntropyLoss()

    def step():
        opt.zero_grad()
        loss(model(x), y)
        model.backward(loss.backward())
        opt.step()
    return step


def torch_step(model, x, y, training, device):
    import torch
    from torch_reference import from_numpyvit

    reference = from_numpyvit(model, device)
    tx, ty = torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)
    return torch_reference_step(reference, tx, ty, training), reference


def torch_reference_step(reference, x, y, training):
    """One inference or training step (cross-entropy + AdamW) of a PyTorch model on x, y."""
    import torch

    if not training:
        reference.eval()

        def infer():
            with torch.inference_mode():
                return reference(x)
        return infer
    opt = torch.optim.AdamW(reference.parameters(), lr=1e-4, weight_decay=0.05)

    def step():
        opt.zero_grad()
        torch.nn.functional.cross_entropy(reference(x), y).backward()
        opt.step()
    return step


def synchronizer(backend):
    if backend != "cupy":
        return lambda: None
    import cupy
    import torch

    def sync():
        cupy.cuda.Device().synchronize()
        torch.cuda.synchronize()
    return sync


def time_alternately(steps, warmup, repeats, sync, block=3, settle=0.3):
    """{name: median seconds per step}. The frameworks take turns, ``block`` timed steps each
    per round (after one untimed step), so machine noise hits all alike; before each turn the
    machine idles ``settle`` seconds, because BLAS and OpenMP worker threads keep spinning for
    a while after a call and would otherwise slow whoever runs next."""
    for step in steps.values():
        for _ in range(warmup):
            step()
        sync()
    times = {name: [] for name in steps}
    for _ in range(max(1, repeats // block)):
        for name, step in steps.items():
            time.sleep(settle)
            step()
            sync()
            for _ in range(block):
                start = time.perf_counter()
                step()
                sync()
                times[name].append(time.perf_counter() - start)
    return {name: float(np.median(t)) for name, t in times.items()}


# ----- memory, in a subprocess ----------------------------------------------------------------------
def memory_mb(field, pid="self"):
    """VmRSS (now) or VmHWM (peak) of a process (this one by default) in MB. (Not getrusage's
    ru_maxrss, which a child inherits from the parent it was forked from.)"""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def peak_memory(framework, config_key, backend, batch):
    """Peak MB above the post-import baseline for a few steps, in a fresh process."""
    cmd = [sys.executable, __file__, "--_memory", framework, config_key, backend, str(batch)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    try:
        return json.loads(out.stdout.strip().splitlines()[-1])["peak_mb"]
    except (IndexError, ValueError, KeyError):
        return float("nan")


def _memory_child(framework, config_key, backend, batch):
    if framework == "torch":
        import torch  # noqa: F401  (imported before the baseline)
    baseline = memory_mb("VmRSS")
    _, spec, _, training = CONFIGS[config_key]
    model = None
    if framework == "numpyvit":
        model, x, y, training = build(config_key, backend, batch)
        step = numpyvit_step(model, x, y, training)
    else:                                                            # no numpyvit weights in this process
        step = torch_only_step(spec["preset"], batch, training, "cuda" if backend == "cupy" else "cpu")
    for _ in range(3):
        step()
    if backend == "cupy":
        import cupy
        import torch
        gpu = (cupy.get_default_memory_pool().total_bytes() if framework == "numpyvit"
               else torch.cuda.max_memory_allocated())
        print(json.dumps({"peak_mb": gpu / 2**20}))
    else:
        workers = [worker.process.pid for shards in (getattr(model, "_shard_sets", None) or {}).values()
                   for worker in getattr(shards, "workers", [])] if framework == "numpyvit" else []
        # a worker's shared memory (weights, its shard's inputs and gradients) is counted in this process
        print(json.dumps({"peak_mb": memory_mb("VmHWM") - baseline
                                     + sum(memory_mb("VmHWM", pid) - memory_mb("RssShmem", pid) for pid in workers)}))


def torch_only_step(preset, batch, training, device):
    """The PyTorch reference of a preset, randomly initialized, with its own step."""
    import torch
    from torch_reference import TorchViT

    config = numpyvit.presets.preset_config(preset)
    reference = TorchViT(config).to(device)
    C, size = config["in_chans"], config["img_size"]
    x = torch.randn(batch, C, size, size, device=device)
    y = torch.randint(0, config["num_classes"], (batch,), device=device)
    return torch_reference_step(reference, x, y, training)


# ----- reporting -------------------------------------------------------------------------------------
def environment(backend, threads):
    blas = ", ".join(f"{lib.internal_api} {lib.version}" for lib in parallel.blas_libraries()) or "unknown BLAS"
    lines = [
        f"python {platform.python_version()}, numpy {np.__version__}, BLAS {blas}, numpyvit {numpyvit.__version__}, "
        f"backend {backend}",
        f"cpu: {tuning.cpu_model()}, {os.cpu_count()} cores; numpyvit threads: {parallel.num_threads()}, "
        f"torch threads: {threads}; BLAS kernel: "
        f"{', '.join(str(getattr(lib, 'architecture', '?')) for lib in parallel.blas_libraries()) or '?'}; "
        f"OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', '(unset)')}, "
        f"OPENBLAS_THREAD_TIMEOUT={os.environ.get('OPENBLAS_THREAD_TIMEOUT', '(unset)')}",
    ]
    try:
        import torch
        lines.append(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    except ImportError:
        lines.append("torch not installed: numpyvit only")
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


def check_same_function(model, reference, x, device):
    """Max |logit difference| between numpyvit and the PyTorch reference on the same input."""
    import torch

    reference.eval()
    with torch.inference_mode():
        theirs = reference(torch.from_numpy(x[:4]).to(device)).cpu().numpy()
    with model.inference():
        return float(np.abs(to_numpy(model(x[:4])) - theirs).max())


def run_config(key, args, ceiling, have_torch):
    description, _, default_batch, _ = CONFIGS[key]
    batch = args.batch or default_batch
    model, x, y, training = build(key, args.backend, batch)
    flops = matmul_flops(model, batch, training)
    steps = {"numpyvit": numpyvit_step(model, x, y, training)}
    diff = None
    if have_torch:
        device = "cuda" if args.backend == "cupy" else "cpu"
        steps["torch"], reference = torch_step(model, x, y, training, device)
        diff = check_same_function(model, reference, x, device)
    times = time_alternately(steps, args.warmup, args.repeats, synchronizer(args.backend))
    row = dict(config=key, description=description, batch=batch, training=training,
               numpyvit_img_s=batch / times["numpyvit"], gflops=flops / times["numpyvit"] / 1e9,
               way=model._strategy(batch) if model.xp is np else "cupy")
    row["ceiling_fraction"] = row["gflops"] / ceiling
    if have_torch:
        row.update(torch_img_s=batch / times["torch"], max_logit_diff=diff)
        row["ratio"] = row["numpyvit_img_s"] / row["torch_img_s"]
    if args.memory:
        row["numpyvit_mb"] = peak_memory("numpyvit", key, args.backend, batch)
        if have_torch:
            row["torch_mb"] = peak_memory("torch", key, args.backend, batch)
    return row


def print_table(rows):
    header = (f"{'cfg':<4}{'what':<36}{'batch':>6}{'way':>10}{'numpyvit img/s':>16}{'torch img/s':>13}{'ratio':>7}"
              f"{'GFLOP/s':>9}{'of ceiling':>11}{'nvit MB':>9}{'torch MB':>9}{'|dlogit|':>10}")
    print(header)
    for r in rows:
        print(f"{r['config']:<4}{r['description']:<36}{r['batch']:>6}{r['way']:>10}{r['numpyvit_img_s']:>16.1f}"
              f"{r.get('torch_img_s', float('nan')):>13.1f}{r.get('ratio', float('nan')):>7.2f}"
              f"{r['gflops']:>9.0f}{r['ceiling_fraction']:>10.0%} {r.get('numpyvit_mb', float('nan')):>8.0f}"
              f"{r.get('torch_mb', float('nan')):>9.0f}{r.get('max_logit_diff') or float('nan'):>10.1e}")


def scaling_table(args):
    """Step time of MNIST-shaped models as tokens, width and depth grow."""
    base = dict(img_size=28, in_chans=1, num_classes=10, patch_size=7, embed_dim=64, depth=6,
                num_heads=4, mlp_ratio=2.0)
    variations = [("patch", p) for p in (14, 7, 4, 2)] + [("embed_dim", d) for d in (32, 64, 128, 256)] \
        + [("depth", L) for L in (3, 6, 12)]
    print("\nscaling (numpyvit, batch 128, training step):")
    print(f"{'change':<16}{'tokens':>7}{'width':>6}{'depth':>6}{'ms/step':>9}{'MFLOP/img':>11}{'GFLOP/s':>9}")
    for what, value in variations:
        overrides = dict(base, **({"patch_size": value} if what == "patch" else {what: value}))
        model = numpyvit.VisionTransformer(backend=args.backend, **overrides)
        rng = np.random.default_rng(0)
        x = rng.standard_normal((128, 1, 28, 28)).astype(np.float32)
        y = rng.integers(0, 10, 128)
        seconds = time_alternately({"s": numpyvit_step(model, x, y, True)}, 2, max(3, args.repeats // 2),
                                   synchronizer(args.backend), settle=0)["s"]
        flops = matmul_flops(model, 128, True)
        print(f"{what + '=' + str(value):<16}{model.patch_embed.num_patches + 1:>7}{model.embed_dim:>6}"
              f"{len(model.blocks):>6}{seconds * 1e3:>9.1f}{flops / 128 / 3 / 1e6:>11.1f}"
              f"{flops / seconds / 1e9:>9.0f}")


def profile_table(key, args, steps=5):
    """Share of one core's step time per layer type (each layer's own time: a Block's excludes its
    LayerNorms, attention and MLP). On the CPU this is one shard's work, batch / threads images on
    one thread with single-threaded BLAS: what each core does when the batch is sharded."""
    threads = parallel.num_threads() if args.backend == "numpy" else 1
    batch = max(1, (args.batch or CONFIGS[key][2]) // threads)
    model, x, y, training = build(key, args.backend, batch)
    sync = synchronizer(args.backend)
    with tuning.forced("blas"):
        inner = numpyvit_step(model, x, y, training)

    def step():
        with tuning.forced("blas"), parallel.single_threaded_blas():
            parallel.run_on_threads([inner])                         # as a worker: nothing split further
    own = {}                                                         # layer type -> seconds
    open_calls = []                                                  # time spent in children

    def timed(fn, kind):
        def call(*a, **kw):
            sync()
            start = time.perf_counter()
            open_calls.append(0.0)
            try:
                return fn(*a, **kw)
            finally:
                sync()
                elapsed = time.perf_counter() - start
                own[kind] = own.get(kind, 0.0) + elapsed - open_calls.pop()
                if open_calls:
                    open_calls[-1] += elapsed
        return call

    for module in model.modules():
        kind = type(module).__name__
        if kind != "VisionTransformer":
            module.forward, module.backward = timed(module.forward, kind), timed(module.backward, kind)
        if hasattr(module, "normalize"):                             # a LayerNorm whose affine map is folded
            module.normalize = timed(module.normalize, kind)
    step()                                                           # warm-up
    own.clear()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    total = time.perf_counter() - start
    own["rest (loss, AdamW, wiring)"] = total - sum(own.values())
    print(f"\nwhere one core's time goes, config {key} ({CONFIGS[key][0]}), a shard of {batch} images on one "
          f"thread, {total / steps * 1e3:.0f} ms/step:")
    for kind, seconds in sorted(own.items(), key=lambda item: -item[1]):
        print(f"  {kind:<28}{seconds / steps * 1e3:>8.1f} ms {seconds / total:>6.0%}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", default="a,b,c,d", help="comma-separated keys of " + ", ".join(
        f"{k} ({v[0]})" for k, v in CONFIGS.items()))
    parser.add_argument("--backend", default="numpy", choices=["numpy", "cupy"])
    parser.add_argument("--batch", type=int, help="override every config's batch size")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (BLAS threads: set before start)")
    parser.add_argument("--no-torch", action="store_true", help="time numpyvit alone")
    parser.add_argument("--no-memory", dest="memory", action="store_false", help="skip the memory subprocesses")
    parser.add_argument("--scaling", action="store_true", help="also print the scaling table")
    parser.add_argument("--profile", action="store_true", help="also print where each config's step time goes")
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--_memory", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args._memory:
        framework, key, backend, batch = args._memory
        return _memory_child(framework, key, backend, int(batch))
    have_torch = False
    if not args.no_torch:
        try:
            import torch
            torch.set_num_threads(args.threads)
            have_torch = True
        except ImportError:
            pass
    print(environment(args.backend, args.threads))
    ceiling = matmul_ceiling(args.backend)
    print(f"float32 matmul ceiling (2048^3 GEMM): {ceiling:.0f} GFLOP/s\n")
    rows = []
    for key in args.configs.split(","):
        rows.append(run_config(key.strip(), args, ceiling, have_torch))
        print(f"  measured config {key} ({rows[-1]['numpyvit_img_s']:.1f} img/s)", file=sys.stderr, flush=True)
    print_table(rows)
    if args.backend == "numpy":
        print("\nnumpyvit.tuning on this machine (ms per eval forward of each way, the fastest is used):")
        print("\n".join("  " + line for line in tuning.summary()))
    if args.scaling:
        scaling_table(args)
    if args.profile:
        for key in args.configs.split(","):
            profile_table(key.strip(), args)
    if args.json:
        Path(args.json).write_text(json.dumps(dict(ceiling_gflops=ceiling, rows=rows), indent=1))


if __name__ == "__main__":
    main()
