"""The live progress line, and one summary line per epoch.

On a terminal the line is rewritten in place (``\\r``) every ``log_every`` steps:

    epoch 3/10  step 120/468  loss 0.4123  acc 91.2%  1830 img/s  lr 9.5e-04  ETA 4m05s

Elsewhere (CI logs, files) only the per-epoch lines are written, one per line.
"""
import math

CLEAR_LINE = "\033[K"  # erase to the end of the line, so a shorter line leaves no tail


def format_duration(seconds):
    """'42s', '4m05s', '2h03m'."""
    if not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def with_tta(record):
    """' (92.33% with test-time augmentation, 10 views)' for a record that has it (the last epoch of
    a run with TrainConfig.tta), else ''."""
    if record.get("test_acc_tta") is None:
        return ""
    return f" ({100 * record['test_acc_tta']:.2f}% with test-time augmentation, {record['tta_views']} views)"


class Progress:
    """Writes to ``stream`` (None: silent); live updates only when it is a terminal."""

    def __init__(self, stream, epochs):
        self.stream, self.epochs = stream, epochs
        isatty = getattr(stream, "isatty", None)
        self.live = bool(isatty and isatty())
        self.line_open = False

    def step(self, epoch, step, steps, loss, acc, images_per_sec, lr, eta):
        if not self.live:
            return
        self._write(f"\r{CLEAR_LINE}epoch {epoch}/{self.epochs}  step {step}/{steps}  loss {loss:.4f}  "
                    f"acc {100 * acc:.1f}%  {images_per_sec:.0f} img/s  lr {lr:.1e}  "
                    f"ETA {format_duration(eta)}")
        self.line_open = True

    def epoch(self, record, eta):
        r = record
        self.note(f"epoch {r['epoch']}/{self.epochs}  train loss {r['train_loss']:.4f} "
                  f"acc {100 * r['train_acc']:.2f}%  test loss {r['test_loss']:.4f} "
                  f"acc {100 * r['test_acc']:.2f}%{with_tta(r)}  "
                  f"{r['images_per_sec']:.0f} img/s  lr {r['lr']:.1e}  {format_duration(r['time'])} elapsed"
                  + (f"  ETA {format_duration(eta)}" if r["epoch"] < self.epochs else ""))

    def note(self, text):
        """A whole line (ending a live line first)."""
        if self.stream is None:
            return
        self._write((f"\r{CLEAR_LINE}" if self.line_open else "") + text + "\n")
        self.line_open = False

    def _write(self, text):
        if self.stream is not None:
            self.stream.write(text)
            self.stream.flush()
