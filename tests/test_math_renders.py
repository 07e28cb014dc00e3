"""docs/math.md renders: every formula goes through KaTeX (a real TeX-math engine, the one browsers
run; vendored in numpyvit/viz/vendor/katex, MIT, for the explorer page) with errors as failures, and only the syntax GitHub keeps
intact is used: ```math blocks and $`...`$ inline. GitHub's Markdown pass runs before its math and
eats backslash escapes in plain $...$ (github/markup issues 1547 and 1746: \\, and \\; vanish,
\\{ becomes {), so a bare $...$ or $$...$$ is refused here too.

Needs Node.js (`node`); skipped without it, except in CI (CI=true), where it must run.
"""
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
KATEX = ROOT / "numpyvit" / "viz" / "vendor" / "katex" / "katex.min.js"
BLOCK = re.compile(r"^[ \t]*```math\n(.*?)^[ \t]*```", re.S | re.M)
INLINE = re.compile(r"\$`(.+?)`\$")
RENDER = """
const katex = require(process.argv[1]);
const formulas = JSON.parse(require("fs").readFileSync(0, "utf8"));
const errors = [];
for (const [tex, display] of formulas) {
  try { katex.renderToString(tex, {displayMode: display, throwOnError: true, strict: "error"}); }
  catch (e) { errors.push([tex, String(e.message)]); }
}
console.log(JSON.stringify(errors));
"""


def formulas(text):
    """[(tex, display)] of every ```math block and $`...`$ inline formula."""
    blocks = [(m.group(1).strip(), True) for m in BLOCK.finditer(text)]
    inline = [(m.group(1), False) for m in INLINE.finditer(BLOCK.sub("", text))]
    return blocks + inline


def render(found):
    """[(tex, error)] of the formulas KaTeX refuses."""
    node = shutil.which("node")
    if node is None:
        if os.environ.get("CI"):
            pytest.fail("Node.js is needed to render docs/math.md's formulas in CI (install nodejs)")
        pytest.skip("Node.js (node) is not installed")
    done = subprocess.run([node, "-e", RENDER, str(KATEX)], input=json.dumps(found), capture_output=True,
                          text=True, timeout=120, check=True)
    return json.loads(done.stdout)


def test_every_formula_of_math_md_renders_in_katex(capsys):
    found = formulas((DOCS / "math.md").read_text())
    errors = render(found)
    with capsys.disabled():
        print(f"\ndocs/math.md: {len(found)} formulas ({sum(d for _, d in found)} blocks) rendered by KaTeX, "
              f"{len(errors)} errors")
    assert len(found) > 200
    assert not errors, "\n".join(f"{tex!r}: {error}" for tex, error in errors)


def test_math_md_uses_only_the_math_syntax_github_keeps_intact():
    text = BLOCK.sub("", (DOCS / "math.md").read_text())
    text = re.sub(r"`[^`\n]*`", "", INLINE.sub("", text))             # code spans hold no math
    assert "$$" not in text, "display math must be a ```math block"
    bare = re.findall(r"\$[^$\n]+\$", text)
    assert not bare, f"inline math must be $`...`$, found {bare[:3]}"


def test_the_checker_finds_a_broken_formula():
    found = [(r"\frac{1}{2", True), (r"\mathrm{d}x", False), (r"\notacommand x", False)]
    assert [tex for tex, _ in render(found)] == [r"\frac{1}{2", r"\notacommand x"]
