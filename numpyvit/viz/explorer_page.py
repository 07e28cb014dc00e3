"""The explorer page: one recorded training step (step_recording.py) as one offline HTML file.

    html, report = explorer_html(step, class_names)      # report: size, what was left out
    Path("explore.html").write_text(html, encoding="utf-8")

Everything the page needs is inside it: the numbers (JSON, every tensor as little-endian float32
in base64), the formulas (TeX, the same text as docs/math.md: tests/test_explorer.py checks each
is there), the reference functions' source, the page's script and style (explorer_assets/) and
KaTeX with its fonts (vendor/katex, MIT). No server, no network.

What each op shows: its forward and backward formulas, the shapes, its output and the gradient
arriving at that output as heatmaps, their norms, each parameter's gradient and AdamW update, and
the op's own gradient check (step_recording.directional_check). A big model would make a big
page: when the whole step would exceed BUDGET_BYTES, the page details the first and the last
block and the first DEFAULT_HEADS heads, and crops each heatmap to CROPPED_ELEMENTS values (the
leading rows and columns); the overview still has every block's norms, and the page and the
report say what was left out.
"""
import base64
import inspect
import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import layers, losses, reference

ASSETS = Path(__file__).parent / "explorer_assets"
KATEX = Path(__file__).parent / "vendor" / "katex"
MATH_MD = Path(reference.__file__).parent.parent / "docs" / "math.md"   # in a source checkout
BUDGET_BYTES = 5_000_000
DEFAULT_HEADS = 3
CROPPED_ELEMENTS = 8_192


@dataclass(frozen=True)
class Kind:
    """What the page says about one kind of op."""
    title: str
    section: int                 # docs/math.md's section
    forward: tuple               # TeX, each as docs/math.md writes it
    backward: tuple
    code: tuple                  # reference.py functions
    fast: object                 # the fast layer (a class)
    layout: str                  # image | tokens | patches | heads | attention | vector | scalar
    args: tuple                  # the forward's array arguments, for the gradient check's rows
    about: str


LINEAR_FORWARD = (r"Y = X W^\top + \mathbf{1} b^\top",)
LINEAR_BACKWARD = (r"\mathrm{d}X = \mathrm{d}Y \, W", r"\mathrm{d}W = \mathrm{d}Y^\top X",
                   r"\mathrm{d}b = \mathrm{d}Y^\top \mathbf{1}")
LINEAR_CODE = ("linear_forward", "linear_backward")
LAYERNORM = dict(
    fast=layers.LayerNorm, layout="tokens", args=("input", "gamma", "beta"),
    forward=(r"\hat{x} = (x - \bar{x}) \, \rho", r"\rho = (\sigma^2 + \epsilon)^{-1/2}",
             r"\tilde{x} = \hat{x} \odot \gamma + \beta"),
    backward=(r"\mathrm{d}\hat{x} = \mathrm{d}\tilde{x} \odot \gamma",
              r"\mathrm{d}x = \rho \Big( \mathrm{d}\hat{x} \;-\; \underbrace{\tfrac{1}{D} \textstyle\sum_j "
              r"\mathrm{d}\hat{x}_j}_{\text{through } \bar{x}} \;-\; \hat{x} \, \underbrace{\tfrac{1}{D} "
              r"\textstyle\sum_j \mathrm{d}\hat{x}_j \hat{x}_j}_{\text{through } \rho} \Big)",
              r"\mathrm{d}\gamma = \sum_\text{rows} \mathrm{d}\tilde{x} \odot \hat{x}",
              r"\mathrm{d}\beta = \sum_\text{rows} \mathrm{d}\tilde{x}"),
    code=("layernorm_forward", "layernorm_backward"))
ATTENTION_CODE = ("attention_forward", "attention_backward")
ACTIVATION = dict(section=7, backward=(r"\mathrm{d}x = \mathrm{d}x_\text{out} \odot f'(x)",),
                  code=("activation_forward", "activation_backward"), layout="tokens", args=("input",))
RESIDUAL = dict(section=8, code=("block_forward", "block_backward"), fast=layers.Block, layout="tokens",
                args=("x", "branch"))

KINDS = {
    "image": Kind("the image", 2, (), (r"\mathrm{d}x = \mathrm{unpatchify}(\mathrm{d}\,\text{patches})",),
                  (), layers.PatchEmbed, "image", (),
                  "The input, normalized as in training. Its gradient shows how each pixel would "
                  "change the loss: a saliency map, computed by the same backward pass."),
    "patches": Kind("patches", 2, (r"\text{patches} = \mathrm{patchify}(x)",),
                    (r"\mathrm{d}x = \mathrm{unpatchify}(\mathrm{d}\,\text{patches})",),
                    ("patchify", "unpatchify"), layers.PatchEmbed, "patches", ("image",),
                    "The image cut into non-overlapping patches, one row each. Only numbers move, so the "
                    "backward moves the gradient back, with no sums."),
    "patch_embed": Kind("patch embedding", 2, (r"z = \text{patches} \; W_E^\top + \mathbf{1} b_E^\top",),
                        LINEAR_BACKWARD, ("patch_embed_forward", "patch_embed_backward") + LINEAR_CODE,
                        layers.PatchEmbed, "patches", ("patches", "W_E", "b_E"),
                        "One Linear maps every patch to a D-wide token (a convolution whose stride is its "
                        "kernel)."),
    "tokens": Kind("[CLS] and position embedding", 3, (r"z_0 = [\, x_\text{class} ;\ z \,] + E_\text{pos}",),
                   (r"\mathrm{d}x_\text{class} = \sum_b \mathrm{d}z_0[b, 0]",
                    r"\mathrm{d}E_\text{pos} = \sum_b \mathrm{d}z_0[b]", r"\mathrm{d}z = \mathrm{d}z_0[:, 1{:}]"),
                   ("tokens_forward", "tokens_backward", "position_table_backward"), layers.ClassToken,
                   "tokens", ("patch tokens", "x_class", "E_pos"),
                   "The learned [CLS] token goes first, and every token gets its position's embedding "
                   "added. Row 0 of every heatmap below is [CLS]."),
    "layernorm": Kind("LayerNorm", 4, about="Each token (row) normalized to mean 0 and variance 1 over its D "
                      "channels, then scaled by gamma and shifted by beta.", **LAYERNORM),
    "qkv": Kind("queries, keys, values", 6, (r"X W_\text{qkv}^\top + \mathbf{1} b_\text{qkv}^\top",),
                LINEAR_BACKWARD, LINEAR_CODE + ATTENTION_CODE, layers.Attention, "tokens",
                ("input", "W_qkv", "b_qkv"),
                "One Linear makes each token's query, key and value for every head: columns "
                "[q | k | v], D each, head by head inside each."),
    "scores": Kind("scores", 6, (r"S = \frac{q k^\top}{\sqrt{D_h}}",),
                   (r"\mathrm{d}q = \mathrm{d}S \, k / \sqrt{D_h}", r"\mathrm{d}k = \mathrm{d}S^\top q / \sqrt{D_h}"),
                   ("scores_forward", "scores_backward", "split_heads"), layers.Attention, "attention",
                   ("q", "k"), "How well each query (row) matches each key (column), per head."),
    "softmax": Kind("softmax", 5, (r"P = \mathrm{softmax}_\text{rows}(S)",),
                    (r"\mathrm{d}S_{ij} = P_{ij} \big( \mathrm{d}P_{ij} - R_i \big)",
                     r"R_i = \sum_k \mathrm{d}P_{ik} P_{ik}"),
                    ("softmax_forward", "softmax_backward"), layers.Attention, "attention", ("S",),
                    "Each row of scores becomes a distribution over the tokens: where this token looks. "
                    "Hover a row to see it on the patch grid."),
    "weighted_values": Kind("weighted values P v", 6, (r"O = P v",),
                            (r"\mathrm{d}P = \mathrm{d}O \, v^\top", r"\mathrm{d}v = P^\top \mathrm{d}O"),
                            ("weighted_values_forward", "weighted_values_backward"), layers.Attention,
                            "heads", ("P", "v"),
                            "Each token's output in a head is the average of the values, weighted by its "
                            "row of P."),
    "proj": Kind("output projection", 6,
                 (r"Y = [\, O^{(1)} \mid \dots \mid O^{(h)} \,] \, W_\text{proj}^\top + \mathbf{1} b_\text{proj}^\top",),
                 (r"\mathrm{d}[\,O^{(1)} \mid \dots \,] = \mathrm{d}Y \, W_\text{proj}",) + LINEAR_BACKWARD[1:],
                 ("merge_heads",) + LINEAR_CODE, layers.Attention, "tokens", ("heads", "W_proj", "b_proj"),
                 "The heads' outputs side by side, mixed by one Linear."),
    "residual1": Kind("residual: x + attention", forward=(r"x_1 = x + \mathrm{Attn}(\mathrm{LN}_1(x))",),
                      backward=(r"\mathrm{d}x = \mathrm{d}x_1 + \text{(attention branch backward of } \mathrm{d}x_1)",),
                      about="The attention branch is added to the stream. Its gradient goes both ways "
                      "unchanged: into the branch and straight to x, where the two add.", **RESIDUAL),
    "fc1": Kind("MLP: fc1", 8, LINEAR_FORWARD, LINEAR_BACKWARD, LINEAR_CODE + ("mlp_forward", "mlp_backward"),
                layers.Mlp, "tokens", ("input", "W_1", "b_1"), "The MLP's first Linear, D to F channels."),
    "gelu": Kind("GELU", forward=(r"f(x) = x \, \Phi(x)", r"f'(x) = \Phi(x) + x \, \varphi(x)"),
                 fast=layers.GELU, about="Elementwise: each value times the normal CDF at it.", **ACTIVATION),
    "gelu_tanh": Kind("GELU (tanh form)", forward=(r"w = \sqrt{2/\pi} \, (x + 0.044715 \, x^3)",
                      r"f'(x) = \frac{1 + \psi}{2} + \frac{x}{2} (1 - \psi^2) \sqrt{2/\pi} \, (1 + 3 \cdot 0.044715 \, x^2)"),
                      fast=layers.GELUTanh, about="Elementwise, GELU's tanh approximation.", **ACTIVATION),
    "relu": Kind("ReLU", forward=(r"f(x) = \max(x, 0)",), fast=layers.ReLU,
                 about="Elementwise: negative values become 0, and pass no gradient.", **ACTIVATION),
    "fc2": Kind("MLP: fc2", 8, LINEAR_FORWARD, LINEAR_BACKWARD, LINEAR_CODE + ("mlp_forward", "mlp_backward"),
                layers.Mlp, "tokens", ("input", "W_2", "b_2"), "The MLP's second Linear, F back to D channels."),
    "residual2": Kind("residual: x1 + MLP", forward=(r"x_2 = x_1 + \mathrm{MLP}(\mathrm{LN}_2(x_1))",),
                      backward=(r"\mathrm{d}x_1 = \mathrm{d}x_2 + \text{(MLP branch backward of } \mathrm{d}x_2)",),
                      about="The MLP branch is added to the stream: the block's output.", **RESIDUAL),
    "final_norm": Kind("final LayerNorm", 9, about="The last LayerNorm, every token on its own (the paper's "
                       "eq. 4); only the pooled row will get a gradient.", **LAYERNORM),
    "pool_token": Kind("pool: the [CLS] row", 9, (r"c = \mathrm{LN}(z_L)[:, 0] = \mathrm{LN}(z_L[:, 0])",),
                       (r"\mathrm{d}z_L[:, 1{:}] = 0",), ("pool_forward", "pool_backward"), layers.GlobalPool,
                       "vector", ("z",), "The image's feature is its [CLS] token; the other tokens get no "
                       "gradient from here."),
    "pool_avg": Kind("pool: the mean of the patches", 9,
                     (r"c = \mathrm{LN}_\text{fc}\big( \tfrac{1}{N} \sum_{i \ge 1} z_L[:, i] \big)",), (),
                     ("pool_forward", "pool_backward"), layers.GlobalPool, "vector", ("z",),
                     "The image's feature is the mean of its patch tokens; each gets 1/N of its gradient."),
    "head": Kind("head", 9, (r"a = c \, W_\text{head}^\top + \mathbf{1} b_\text{head}^\top",), LINEAR_BACKWARD,
                 LINEAR_CODE, layers.Linear, "vector", ("c", "W_head", "b_head"), "One Linear: the logits."),
    "loss": Kind("cross-entropy loss", 10, (r"\mathcal{L} = -\frac{1}{B} \sum_b \sum_k \tau_{bk} \log p_{bk}",),
                 (r"\mathrm{d}a = \frac{p - \tau}{B}",), ("cross_entropy_forward", "cross_entropy_backward"),
                 losses.CrossEntropyLoss, "scalar", ("logits",),
                 "Where backpropagation starts: dL = 1, and the logits' gradient is p minus the target."),
}

ADAMW = (r"\theta \leftarrow \theta \, (1 - \eta \lambda)",
         r"m \leftarrow \beta_1 m + (1 - \beta_1) \, \mathrm{d}\theta",
         r"u \leftarrow \beta_2 u + (1 - \beta_2) \, \mathrm{d}\theta^2",
         r"\theta \leftarrow \theta - \eta \, \frac{m / (1 - \beta_1^t)}{\sqrt{u / (1 - \beta_2^t)} + \epsilon_A}")


def all_formulas():
    """Every TeX string the page shows (tests/test_explorer.py finds each in docs/math.md)."""
    return [tex for kind in KINDS.values() for tex in kind.forward + kind.backward] + list(ADAMW)


# ----- numbers -> JSON ---------------------------------------------------------------------------
def norm(a):
    return float(np.sqrt(np.sum(np.square(a, dtype=np.float64))))


def cropped(a, cap, whole_rows=False):
    """``a`` (..., rows, columns) cut to about ``cap`` values: its leading rows and columns; all
    rows when there are few (tokens), a square corner otherwise (a weight matrix). With
    ``whole_rows`` (attention: a row is one token's whole distribution) only rows are dropped."""
    if cap is None or a.ndim < 2 or a.size <= cap:
        return a
    lead = a.size // (a.shape[-2] * a.shape[-1])                     # heads, for instance
    if whole_rows:
        return a[..., :max(1, cap // (lead * a.shape[-1])), :]
    rows = a.shape[-2] if lead * a.shape[-2] * 8 <= cap else max(1, int((cap / lead) ** 0.5))
    return a[..., :rows, :max(1, cap // (lead * rows))]


def tensor(a, cap=None, whole_rows=False):
    """{shape, data (float32 base64), norm, full_shape} of ``a``, cropped to ``cap`` values."""
    a = np.asarray(a, dtype=np.float64)
    entry = {"norm": norm(a), "full_shape": list(a.shape)}
    a = cropped(a, cap, whole_rows)
    data = np.ascontiguousarray(a, dtype="<f4")
    entry.update(shape=list(a.shape), data=base64.b64encode(data.tobytes()).decode("ascii"))
    return entry


def source_of(name):
    """A reference function's source and where it is."""
    function = getattr(reference, name)
    lines, first = inspect.getsourcelines(function)
    return {"code": "".join(lines), "where": f"numpyvit/reference.py, line {first}",
            "url": Path(inspect.getsourcefile(function)).resolve().as_uri()}


def fast_layer(cls):
    first = inspect.getsourcelines(cls)[1]
    path = Path(inspect.getsourcefile(cls)).resolve()
    return {"name": cls.__name__, "where": f"numpyvit/{path.relative_to(Path(layers.__file__).parent.parent).as_posix()}, "
            f"line {first}", "url": path.as_uri()}


def detail_plan(step, blocks=None, heads=None):
    """(blocks detailed, heads detailed, crop) for the step: everything when the page fits in
    BUDGET_BYTES, else the first and last block, DEFAULT_HEADS heads and cropped heatmaps; given
    ``blocks`` or ``heads`` (lists of indices) are kept as asked."""
    depth, num_heads = step.config["depth"], step.config["num_heads"]
    values = sum(op.out.size * 2 + sum(p.size for p, _ in op.parameters().values()) for op in step.ops)
    fits = values * 4 * 4 / 3 < BUDGET_BYTES * 0.8                  # float32 in base64, room for the rest
    if blocks is None:
        blocks = list(range(depth)) if fits else sorted({0, depth - 1})
    if heads is None:
        heads = list(range(num_heads)) if fits else list(range(min(DEFAULT_HEADS, num_heads)))
    for what, chosen, count in (("block", blocks, depth), ("head", heads, num_heads)):
        wrong = [i for i in chosen if not 0 <= i < count]
        if wrong:
            raise ValueError(f"the model has {count} {what}s (0 to {count - 1}); there is no {what} {wrong[0]}")
    return sorted(set(blocks)), sorted(set(heads)), None if fits else CROPPED_ELEMENTS


def op_entry(op, step, heads, crop):
    """The JSON of one op: its tensors (heads selected, cropped), its check, its parameters."""
    kind = KINDS[op.kind]
    per_head = kind.layout in ("attention", "heads")                 # (h, T, ...): the heads chosen
    layout_cap = None if kind.layout == "image" or crop is None else crop * (4 if kind.layout == "attention" else 1)

    def shown(a):
        """a's heads chosen, cropped; with the norm and shape of all of it."""
        entry = tensor(a[heads] if per_head else a, layout_cap, whole_rows=kind.layout == "attention")
        return dict(entry, norm=norm(a), full_shape=list(a.shape))
    params = [{"name": name, "value": {"norm": norm(value)},
               "grad": tensor(grad[0] if grad.ndim == 3 else grad, crop),             # (1, T, D) -> (T, D)
               "step": norm(step.updates[name])}
              for name, (value, grad) in op.parameters().items()]
    arg_names = [op.param_names[i] if i < len(op.param_names) and op.param_names[i] else kind.args[i]
                 for i in range(len(kind.args))]
    return {"key": op.key, "kind": op.kind, "group": op.group,
            "out": shown(op.out), "dout": shown(op.dout),
            "check": [{"tensor": arg_names[i], "error": error} for i, error in sorted(op.gradient_check().items())],
            "params": params}


def page_data(step, class_names, blocks, heads, crop, title):
    """Everything the page shows, as one JSON-ready dict."""
    config = step.config
    detailed = {f"block {i}" for i in blocks}
    ops = [op_entry(op, step, heads, crop) if op.group in detailed or not op.group.startswith("block")
           else {"key": op.key, "kind": op.kind, "group": op.group, "summary": True,
                 "out": {"norm": norm(op.out), "full_shape": list(op.out.shape)},
                 "dout": {"norm": norm(op.dout), "full_shape": list(op.dout.shape)}}
           for op in step.ops]
    kinds = {name: {"title": k.title, "section": k.section, "forward": k.forward, "backward": k.backward,
                    "code": k.code, "fast": fast_layer(k.fast), "layout": k.layout, "about": k.about}
             for name, k in KINDS.items() if any(op.kind == name for op in step.ops)}
    code = {name: source_of(name) for k in kinds.values() for name in k["code"]}
    left_out = []
    if len(blocks) < config["depth"]:
        left_out.append(f"blocks other than {', '.join(map(str, blocks))} (their norms are in the overview)")
    if len(heads) < config["num_heads"]:
        left_out.append(f"the attention of heads other than {', '.join(map(str, heads))}")
    if crop:
        left_out.append(f"values beyond the first {crop:,} of each heatmap (the leading rows and columns; "
                        "norms are of the whole tensors)")
    return {
        "title": title, "config": {k: v for k, v in config.items() if isinstance(v, (int, float, str))},
        "grid": list(reference.patch_grid(config)[1]), "heads": heads, "blocks": blocks, "left_out": left_out,
        "label": step.label, "loss": step.loss, "probs": [float(p) for p in step.probs],
        "classes": list(class_names), "settings": step.settings,
        "parameters": [{"name": name, "norm": norm(value), "grad": norm(step.grads[name]),
                        "step": norm(step.updates[name])}
                       for name, value in step.params.items()],
        "ops": ops, "kinds": kinds, "code": code, "adamw": ADAMW,
        "math_md": MATH_MD.resolve().as_uri() if MATH_MD.is_file() else None,
    }


# ----- the page ----------------------------------------------------------------------------------
def katex_css():
    """KaTeX's stylesheet with its fonts inlined as data: URLs (woff2 only; the others dropped)."""
    css = (KATEX / "katex.min.css").read_text(encoding="utf-8")
    for font in sorted((KATEX / "fonts").glob("*.woff2")):
        encoded = base64.b64encode(font.read_bytes()).decode("ascii")
        css = css.replace(f"url(fonts/{font.name})", f"url(data:font/woff2;base64,{encoded})")
    # each @font-face lists woff2, woff and ttf: keep the inlined woff2 only
    return re.sub(r',url\(fonts/[^)]*\) format\("(woff|truetype)"\)', "", css)


def explorer_html(step, class_names, blocks=None, heads=None, title="numpyvit explorer"):
    """(the page as one string, a report dict: bytes, blocks, heads, left_out)."""
    blocks, heads, crop = detail_plan(step, blocks, heads)
    data = page_data(step, class_names, blocks, heads, crop, title)
    payload = json.dumps(data, separators=(",", ":")).replace("</", "<\\/")   # safe inside <script>
    template = (ASSETS / "page.html").read_text(encoding="utf-8")
    parts = {"TITLE": title, "KATEX_CSS": katex_css(), "STYLE": (ASSETS / "explorer.css").read_text(encoding="utf-8"),
             "KATEX_JS": (KATEX / "katex.min.js").read_text(encoding="utf-8").replace("</script", "<\\/script"),
             "SCRIPT": (ASSETS / "explorer.js").read_text(encoding="utf-8"), "DATA": payload}
    html = template
    for name, text in parts.items():
        html = html.replace("{{" + name + "}}", text)
    checked = [c["error"] for op in data["ops"] for c in op.get("check", [])]
    return html, {"bytes": len(html.encode("utf-8")), "blocks": blocks, "heads": heads,
                  "left_out": data["left_out"], "worst_check": max(checked, default=0.0)}
