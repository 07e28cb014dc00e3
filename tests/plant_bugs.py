"""Mutation testing by hand: plant realistic bugs one at a time and see whether the tests catch each.

    python tests/plant_bugs.py              # every mutant (about 5 minutes on 2 cores)
    python tests/plant_bugs.py -k adamw     # those whose name contains "adamw"

Each mutant is one small edit that a tired person could make and that still runs: a term of a
backward dropped, a constant changed, an axis swapped, a normalization skipped. The tree is copied
(the files git tracks, with your uncommitted edits) into a temporary folder; each mutant edits that
copy, runs the test modules that guard its file (stopping at the first failure) and is restored.
A mutant is *caught* when a test fails, *survives* when all pass. Every survivor is a missing
test, or a change that does not alter behaviour (then say why, beside it, and drop it).
Exit status: 0 if every mutant was caught, 1 otherwise.
"""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MATH = ["tests/test_layers.py", "tests/test_float32.py", "tests/test_reference.py", "tests/test_model.py"]
TEXTBOOK = ["tests/test_reference.py", "tests/test_docstring_math.py"] + MATH    # reference.py: its own checks first
OPTIM = ["tests/test_optim.py", "tests/test_docstring_math.py", "tests/test_reference.py"]
WEIGHTS = ["tests/test_weights.py", "tests/test_photos.py"]
DATA = ["tests/test_data.py", "tests/test_photos.py"]
MAE = ["tests/test_mae.py"]

# (name, file, the text as it is, the text with the bug, the test modules that guard the file)
MUTANTS = [
    ("layernorm: dx without the term through the variance", "numpyvit/layers/layernorm.py",
     "            d -= xp.multiply(xhat[r], mean_dxhat_xhat)\n", "", MATH),
    ("layernorm: dg summed without xhat", "numpyvit/layers/layernorm.py",
     "col_sum(multiply(dy2, xhat))", "col_sum(dy2)", MATH),
    ("attention: softmax backward without the row sum", "numpyvit/layers/attention.py",
     "            ds -= do_dot_o[b]\n", "", MATH),
    ("attention: dq without the 1/sqrt(d) scale", "numpyvit/layers/attention.py",
     "            dq[b] *= scale ", "            dq[b] *= 1 ", MATH),
    ("gelu: the density's exponent -x^2 instead of -x^2/2", "numpyvit/layers/activations.py",
     "s *= c(-0.5)", "s *= c(-1.0)", MATH),
    ("gelu float32: the slope reuses x^2/2 (float32 only)", "numpyvit/layers/activations.py",
     "s = xp.multiply(x, x) if s is None else s ", "s = xp.multiply(x, x) if s is None else s * c(0.5) ", MATH),
    ("gelu_tanh: slope's cubic term without its 3", "numpyvit/layers/activations.py",
     "c(3 * TANH_CUBIC)", "c(TANH_CUBIC)", MATH),
    ("linear: dW off by a stray factor 1.0001", "numpyvit/layers/linear.py",
     "dW = matmul(dy2.T, x2)", "dW = matmul(dy2.T, x2) * 1.0001", MATH),
    ("linear: the bias gradient forgotten", "numpyvit/layers/linear.py",
     "            self.bias.accumulate(db)\n", "            self.bias.accumulate(db * 0)\n", MATH),
    ("dropout: backward forgets the mask", "numpyvit/layers/dropout.py",
     "return dy if mask is None else dy * mask", "return dy", MATH),
    ("position embedding: the gradient of one image, not the batch's sum", "numpyvit/layers/tokens.py",
     "self.table_backward(dy.sum(axis=0, keepdims=True))", "self.table_backward(dy[:1])", MATH),
    ("class token: gradient from the last token", "numpyvit/layers/tokens.py",
     "dy[:, :1].sum(axis=0, keepdims=True)", "dy[:, -1:].sum(axis=0, keepdims=True)", MATH),
    ("reference: layernorm without the term through rstd", "numpyvit/reference.py",
     "                 - xhat * (dxhat * xhat).mean(axis=-1, keepdims=True))", "                 )", TEXTBOOK),
    ("reference: softmax backward without the row sum", "numpyvit/reference.py",
     "return p * (dp - row_sum)", "return p * dp", TEXTBOOK),
    ("reference: cross-entropy gradient not divided by B", "numpyvit/reference.py",
     "return dloss * (p - target) / p.shape[0]", "return dloss * (p - target)", TEXTBOOK),
    ("reference: dropout's backward forgets the scale", "numpyvit/reference.py",
     "    return dy * scale\n", "    return dy * (scale > 0)\n", TEXTBOOK),
    ("reference: attention's dk without the 1/sqrt(Dh)", "numpyvit/reference.py",
     "dk = ds.swapaxes(-1, -2) @ q / math.sqrt(Dh)", "dk = ds.swapaxes(-1, -2) @ q", TEXTBOOK),
    ("reference: adamw without the first moment's bias correction", "numpyvit/reference.py",
     "p -= lr / (1 - b1**t) * m", "p -= lr * m", OPTIM),
    ("adamw: without the first moment's bias correction", "numpyvit/optim.py",
     "delta *= scalar(g.lr / bias1)", "delta *= scalar(g.lr)", OPTIM),
    ("adamw: weight decay not scaled by the learning rate", "numpyvit/optim.py",
     "p *= scalar(1 - g.lr * g.weight_decay)", "p *= scalar(1 - g.weight_decay)", OPTIM),
    ("adamw: eps inside the square root", "numpyvit/optim.py",
     "denom += scalar(self.eps)", "denom += scalar(self.eps ** 0.5)", OPTIM),
    ("clipping: scales gradients up as well as down", "numpyvit/optim.py",
     "coef = xp.minimum(c(max_norm) / (norm + c(1e-6)), c(1.0))", "coef = c(max_norm) / (norm + c(1e-6))", OPTIM),
    ("schedule: warmup starts at 0 and never reaches the peak on time", "numpyvit/optim.py",
     "return base_lr * (step + 1) / warmup_steps", "return base_lr * step / warmup_steps", OPTIM),
    ("loss: smoothing spread over K - 1 classes", "numpyvit/losses.py",
     "c(eps / K) * log_p.sum()", "c(eps / (K - 1)) * log_p.sum()", MATH),
    ("resample: bicubic kernel a = -0.75 (OpenCV's), not PIL's -0.5", "numpyvit/weights/resample.py",
     "CUBIC_A = -0.5", "CUBIC_A = -0.75", WEIGHTS),
    ("resample: no antialiasing when shrinking", "numpyvit/weights/resample.py",
     "support = 2.0 * max(scale, 1.0)", "support = 2.0", WEIGHTS),
    ("safetensors: BF16 widened with the wrong shift", "numpyvit/weights/safetensors.py",
     "(array.astype(np.uint32) << 16)", "(array.astype(np.uint32) << 15)", WEIGHTS),
    ("jax npz: patch kernel rows and columns swapped", "numpyvit/weights/jax_npz.py",
     'take("embedding/kernel").transpose(3, 2, 0, 1)', 'take("embedding/kernel").transpose(3, 2, 1, 0)', WEIGHTS),
    ("pretrained: RGB kernels averaged, not summed, for one channel", "numpyvit/weights/pretrained.py",
     "kernel.sum(axis=1, keepdims=True)", "kernel.mean(axis=1, keepdims=True)", WEIGHTS),
    ("photo: normalization skipped", "numpyvit/data/images.py",
     "return normalize(channels_first(image)[None], mean, std)[0]",
     "return channels_first(image).astype(np.float32) / 255", DATA),
    ("photo: crop from the top-left corner, not the center", "numpyvit/data/images.py",
     "top, left = int(round((h - out_h) / 2.0)), int(round((w - out_w) / 2.0))", "top, left = 0, 0", DATA),
    ("normalize: multiplies by std", "numpyvit/data/loader.py",
     "/ 255.0 - mean[:, None]) / std[:, None]", "/ 255.0 - mean[:, None]) * std[:, None]", DATA),
    ("augment: mirrors up-down instead of left-right", "numpyvit/data/augment.py",
     "out[mirrored] = out[mirrored, :, :, ::-1]", "out[mirrored] = out[mirrored, :, ::-1, :]", DATA),
    ("idx: dimensions read little-endian", "numpyvit/data/idx.py",
     'int.from_bytes(dims[4 * i:4 * i + 4], "big")', 'int.from_bytes(dims[4 * i:4 * i + 4], "little")', DATA),
    ("folder: classes in the order the disk lists them", "numpyvit/data/folder.py",
     "classes = sorted(p.name for p in splits[0].iterdir()", "classes = list(p.name for p in splits[0].iterdir()",
     DATA),
    ("reference: MAE's mask token also takes the kept rows' gradient", "numpyvit/reference.py",
     "    xp.put_along_axis(dhidden, rows[:, :, None], 0.0, axis=1)\n", "", MAE),
    ("reference: masked MSE's gradient not divided by the pixels", "numpyvit/reference.py",
     "return dloss * 2 * err * hidden[:, :, None] / (err.shape[-1] * hidden.sum())",
     "return dloss * 2 * err * hidden[:, :, None] / hidden.sum()", MAE),
    ("reference: MAE targets normalized with the biased variance", "numpyvit/reference.py",
     "var = t.var(axis=-1, keepdims=True, ddof=1)", "var = t.var(axis=-1, keepdims=True)", MAE),
    ("masking: MaskFill's token takes the kept rows' gradient", "numpyvit/layers/masking.py",
     "self.mask_token.accumulate((total - dy.sum(axis=(0, 1))).reshape(1, 1, -1))",
     "self.mask_token.accumulate(total.reshape(1, 1, -1))", MAE),
    ("losses: masked MSE's backward over the visible patches too", "numpyvit/losses.py",
     "        err *= hidden[:, :, None]\n", "", MAE),
    ("engine: MAE shards not weighted by their share of the batch", "numpyvit/engine/shards.py",
     "model.backward(share)", "model.backward()", MAE),
    ("engine: a worker process's MAE shard told the whole batch's weight", "numpyvit/engine/workers.py",
     'worker.send(op="loss_step", share=share,', 'worker.send(op="loss_step", share=1.0,', MAE),
]


def copy_tree(target):
    """The files git tracks or would track (as they are on disk now) into ``target``."""
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, check=True).stdout
    for name in filter(None, files.decode().split("\0")):
        source, destination = ROOT / name, target / name
        if source.is_file():
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination)


def run_tests(tree, modules):
    """True when every test in ``modules`` passes in ``tree`` (its own numpyvit, not the installed one)."""
    env = dict(os.environ, NUMPYVIT_TUNING="off", PYTHONDONTWRITEBYTECODE="1")
    result = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *modules],
                            cwd=tree, env=env, capture_output=True, text=True)
    return result.returncode == 0


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-k", default="", help="only the mutants whose name contains this")
    args = parser.parse_args(argv)
    mutants = [m for m in MUTANTS if args.k in m[0]]
    survivors = []
    with tempfile.TemporaryDirectory(prefix="numpyvit-mutants-") as folder:
        tree = Path(folder)
        copy_tree(tree)
        check = subprocess.run([sys.executable, "-c", "import numpyvit; print(numpyvit.__file__)"], cwd=tree,
                               capture_output=True, text=True)
        if not check.stdout.startswith(folder):
            sys.exit(f"the copy's numpyvit is not the one imported ({check.stdout.strip()}{check.stderr})")
        if not run_tests(tree, ["tests/test_layers.py"]):
            sys.exit("the tests fail before any bug is planted: fix them first")
        for name, path, old, new, modules in mutants:
            original = (tree / path).read_text()
            if original.count(old) != 1:
                sys.exit(f"mutant {name!r}: {path} holds its text {original.count(old)} times, not once: update it")
            start = time.perf_counter()
            (tree / path).write_text(original.replace(old, new))
            try:
                caught = not run_tests(tree, list(dict.fromkeys(modules)))
            finally:
                (tree / path).write_text(original)
            survivors += [] if caught else [name]
            print(f"{'caught  ' if caught else 'SURVIVED'} {time.perf_counter() - start:5.1f} s  {name}", flush=True)
    print(f"{len(mutants)} mutants planted: {len(mutants) - len(survivors)} caught, {len(survivors)} survived")
    return 1 if survivors else 0


if __name__ == "__main__":
    sys.exit(main())
