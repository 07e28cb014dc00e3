"""The explorer page in a real browser: headless Chromium opens the file (file://, offline), the
keyboard visits every op of every block, and the test fails on any console error, any blank or
uniform canvas, any formula KaTeX cannot render, or a hover that shows nothing; it saves a
screenshot of the overview and of an attention op.

Needs Playwright's Python package and a Chromium (the Debian package: `apt-get install chromium`;
Playwright's own browser download is not used). Skipped where either is missing, except with
NUMPYVIT_BROWSER=1, where it must run (.ci/run sets it after installing both).
"""
import os
import shutil
import time

import numpy as np
import pytest

import numpyvit
from numpyvit.viz.explorer_page import explorer_html
from numpyvit.viz.step_recording import record_step

REQUIRED = os.environ.get("NUMPYVIT_BROWSER") == "1"
BROWSERS = ("chromium", "chromium-browser", "google-chrome")
# every canvas of the view has at least two colours (a blank or flat canvas is a drawing bug)
CANVASES_DRAWN = """() => Array.from(document.querySelectorAll('#view canvas')).map((c) => {
  if (!c.width || !c.height) return false;
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  for (let i = 4; i < d.length; i += 4)
    if (d[i] !== d[0] || d[i + 1] !== d[1] || d[i + 2] !== d[2] || d[i + 3] !== d[3]) return true;
  return false;
})"""


def chromium():
    path = os.environ.get("NUMPYVIT_CHROMIUM") or next(filter(None, map(shutil.which, BROWSERS)), None)
    if path is None:
        if REQUIRED:
            pytest.fail("NUMPYVIT_BROWSER=1 but no Chromium found (apt-get install chromium, or set NUMPYVIT_CHROMIUM)")
        pytest.skip("no Chromium (apt-get install chromium)")
    return path


@pytest.fixture(scope="module")
def page_file(tmp_path_factory):
    model = numpyvit.create_model("mnist_tiny", depth=2, dtype="float64")
    image = np.random.default_rng(0).standard_normal((1, 28, 28))
    step = record_step(model.state_dict(), model.config, image, 7, label_smoothing=0.1, clip_norm=1.0)
    html, _ = explorer_html(step, [str(k) for k in range(10)])
    path = tmp_path_factory.mktemp("explorer") / "explore.html"
    path.write_text(html, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def browser():
    if REQUIRED:
        import playwright.sync_api as sync_api
    else:
        sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    executable = chromium()
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        yield browser
        browser.close()


def open_page(browser, path):
    """(page, console errors so far): the file opened and drawn, its load time printed."""
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(5_000)                                   # the page is local: no waiting
    errors = []
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("request", lambda request: None if request.url.startswith(("file:", "data:"))
            else errors.append(f"a network request: {request.url}"))
    start = time.perf_counter()
    page.goto(path.as_uri())
    page.wait_for_function("document.documentElement.dataset.ready === '1'", timeout=20_000)
    print(f"the page was drawn {page.evaluate('window.explorerReadyMs'):.0f} ms after navigation "
          f"({time.perf_counter() - start:.2f} s including the browser's start)")
    return page, errors


def check_view(page, errors, where):
    """No console error, every canvas drawn (and some, where the op's layout draws heatmaps),
    every formula rendered."""
    assert not errors, f"{where}: {errors}"
    drawn = page.evaluate(CANVASES_DRAWN)
    layout = page.evaluate(f"(DATA.kinds[(DATA.ops.find((op) => op.key === '{where}') || {{}}).kind] || {{}}).layout")
    assert all(drawn) and (drawn or layout in (None, "vector", "scalar")), f"{where}: canvases drawn {drawn}"
    assert page.locator("#view .katex").count() > 0, where
    assert page.locator("#view .katex-error").count() == 0, where


def test_every_op_of_every_block_by_keyboard(browser, page_file, tmp_path):
    page, errors = open_page(browser, page_file)
    check_view(page, errors, "overview")
    page.screenshot(path=str(tmp_path / "overview.png"))
    visited = set()
    for block in range(2):
        page.keyboard.press("o")
        while True:
            key = page.locator("#view section").get_attribute("data-op")
            check_view(page, errors, key)
            visited.add(key)
            page.keyboard.press("j")
            assert not errors, f"after {key}: {errors}"
            if page.locator("#view section").get_attribute("data-op") == key:   # the last op
                break
        page.keyboard.press("b")                                      # the next block
    ops = page.evaluate("DATA.ops.map((op) => op.key)")
    assert visited == {"overview", *ops}
    page.keyboard.press("c")                                          # log colours: still drawn
    check_view(page, errors, page.locator("#view section").get_attribute("data-op"))


def test_attention_rows_show_on_the_grid(browser, page_file, tmp_path):
    page, errors = open_page(browser, page_file)
    page.evaluate("select(DATA.ops.findIndex((op) => op.key === 'blocks.1.attn.softmax'))")
    page.keyboard.press("h")                                          # head 1
    assert page.locator("#view figcaption").first.inner_text().startswith("output, head 1")
    attention = page.locator("#view canvas").first
    box = attention.bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] * 0.75)
    tooltip = page.locator("#tooltip")
    assert tooltip.is_visible() and "query patch" in tooltip.inner_text()
    assert "over the image" in page.locator("#view figcaption").nth(1).inner_text()
    assert "[CLS]" not in page.locator("#view figcaption").nth(1).inner_text()   # the hovered row's token
    check_view(page, errors, "blocks.1.attn.softmax")
    page.screenshot(path=str(tmp_path / "attention.png"), full_page=True)
    assert (tmp_path / "attention.png").stat().st_size > 10_000
