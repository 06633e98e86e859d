"""GET /learn in a real browser (Debian's chromium driven by Playwright) against a live server, with every request
that is not to that server intercepted, recorded and refused: each shipped example loads with no console error
and no outside request; an edited weight recomputes dW through the API; hovering an entry shows its formula with
its numbers; a pasted submission with a planted 1/m mistake is diagnosed; a shared URL restores the same state;
screenshots at desktop and phone widths go to $GRADIENT_ARTIFACTS (not committed; .ci/run sets and prints it).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
from pathlib import Path

import numpy as np
import pytest
from werkzeug.serving import make_server

from service import create_app

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium; "
                                                          ".ci/run installs it)")

EXAMPLES = sorted((Path(__file__).parent.parent / "service" / "examples").glob("*.json"))
# Without the background-networking flags Chromium itself calls home; it is never allowed to download a build.
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}


def artifacts_dir() -> Path:
    path = Path(os.environ.get("GRADIENT_ARTIFACTS") or Path(tempfile.gettempdir()) / "gradient-service-artifacts")
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="module")
def served():
    server = make_server("127.0.0.1", 0, create_app(), threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture(scope="module")
def reference():
    """POST a body to the service in process: what the page must show."""
    client = create_app().test_client()

    def _post(body, path="/v1/gradients"):
        r = client.post(path, json=body)
        assert r.status_code == 200, r.get_json()
        return r.get_json()

    return _post


class Tab:
    """One browser page with its outside requests and console errors recorded."""

    def __init__(self, browser, base, viewport=DESKTOP):
        self.base = base
        self.context = browser.new_context(viewport=viewport)
        self.outside: list[str] = []
        self.inside: list[str] = []
        self.errors: list[str] = []
        self.context.route("**/*", self._route)
        self.page = self.context.new_page()
        self.page.on("console", lambda m: m.type == "error" and self.errors.append(m.text))
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))

    def _route(self, route):
        url = route.request.url
        if url.startswith(self.base + "/"):
            self.inside.append(url)
            route.continue_()
        else:
            self.outside.append(url)
            route.abort()

    def open(self, fragment="", generation=1):
        self.page.goto(f"{self.base}/learn{fragment}")
        self.wait(generation)
        return self.page

    def wait(self, generation):
        self.page.wait_for_selector(f'html[data-state="ready"][data-generation="{generation}"]', state="attached",
                                    timeout=20_000)

    def cell(self, section, name, idx):
        return self.page.locator(f'{section} figure[data-array="{name}"] td[data-idx="{idx}"]').first

    def assert_clean(self):
        assert self.outside == [], f"requests left the page's origin: {self.outside}"
        assert self.errors == [], f"console errors: {self.errors}"
        assert self.inside, "the page made no request at all"

    def close(self):
        self.context.close()


@pytest.fixture
def tab(browser, served):
    t = Tab(browser, served)
    yield t
    t.close()


def example(name):
    return json.loads((Path(__file__).parent.parent / "service" / "examples" / f"{name}.json").read_text())


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_each_example_loads_offline_without_console_errors(tab, reference, path):
    body = json.loads(path.read_text())
    page = tab.open(f"#example={path.stem}")
    server = reference({**body, "include_caches": True})
    # Every gradient key of the response is drawn in the backward pass (d<param><l>, not only dW/db), with the
    # server's values.
    for key, value in server["gradients"].items():
        figure = page.locator(f'#backward figure[data-array="{key}"]')
        assert figure.count() == 1, key
        first = np.asarray(value, dtype=float).ravel()[0]
        assert float(figure.locator("td.cell").first.get_attribute("data-value")) == first, key
    for key in server["caches"]:
        assert page.locator(f'#forward figure[data-array="{key}"]').count() == 1, key
    # The network is drawn, layer by layer, and the explain route's story is there with its formulas as MathML.
    assert page.locator(".net li").count() == len(body["layers"]) + 2
    assert page.locator("#why-last .step").count() >= 4 and page.locator("#why-hidden .step").count() >= 1
    assert page.locator("#why .math math").count() >= 5
    assert page.locator("#why-answer").inner_text().startswith("At the last layer the cost is a formula of")
    assert page.locator("#example").input_value() == path.stem
    tab.assert_clean()


def test_edit_a_weight_recomputes_dW_through_the_api(tab, reference):
    page = tab.open()
    weight = page.locator('#fwd-1 figure[data-array="W1"] input[data-idx="0,0"]')
    weight.fill("0.5")
    weight.press("Enter")
    tab.wait(2)
    body = example("two_layer_sigmoid_bce")
    body["layers"][0]["W"][0][0] = 0.5
    expected = reference(body)["gradients"]
    dW1 = np.asarray(expected["dW1"])
    assert not np.allclose(dW1, reference(example("two_layer_sigmoid_bce"))["gradients"]["dW1"])
    for (i, j), v in np.ndenumerate(dW1):
        cell = tab.cell("#bwd-1", "dW1", f"{i},{j}")
        assert float(cell.get_attribute("data-value")) == v
        assert float(cell.inner_text()) == pytest.approx(v, rel=1e-3)  # shown with 4 significant digits
        assert "changed" in cell.get_attribute("class")
    page.locator("#digits").select_option("17")
    for (i, j), v in np.ndenumerate(dW1):
        assert float(tab.cell("#bwd-1", "dW1", f"{i},{j}").inner_text()) == v  # every digit the server sent
    assert "edited" in page.locator('#fwd-1 figure[data-array="W1"] td[data-idx="0,0"]').get_attribute("class")
    assert page.locator("#status").inner_text().startswith("Recomputed by the service after W1[0,0] changed")
    assert page.locator("#example").input_value() == ""  # no longer the unchanged example
    tab.assert_clean()


def test_hover_shows_the_formula_with_its_numbers(tab, reference):
    page = tab.open()
    tab.cell("#bwd-2", "dZ2", "0,2").hover()
    text = "dZ2[0,2] = A2[0,2] - Y[0,2] = 0.6408 - 1 = -0.3592"
    assert page.locator("#insp-text").inner_text() == text
    assert page.locator("#tip").inner_text() == text and page.locator("#tip").is_visible()
    assert "canonical pair" in page.locator("#insp-note").inner_text()
    # A hidden layer's dA is W^T dZ, written as the sum with the server's numbers; dW has its 1/m.
    tab.cell("#bwd-1", "dA1", "1,2").hover()
    assert page.locator("#insp-text").inner_text() == "dA1[1,2] = W2[0,1]·dZ2[0,2] = (-0.8)·(-0.3592) = 0.2874"
    tab.cell("#bwd-1", "dW1", "0,1").hover()
    assert page.locator("#insp-text").inner_text() == (
        "dW1[0,1] = (1/m)·(dZ1[0,0]·X[1,0] + dZ1[0,1]·X[1,1] + dZ1[0,2]·X[1,2] + dZ1[0,3]·X[1,3]) = "
        "(1/4)·((-0.07396)·0.5 + 0.09037·(-1.5) + (-0.05924)·2 + 0.1042·1) = -0.0467")
    # The side-by-side story: the chain rule's product next to A - Y, entry by entry.
    page.locator('#step-dZL_fused td[data-name="dZ2_chain_rule"][data-idx="0,2"]').hover()
    assert page.locator("#insp-text").inner_text() == "dZ2_chain_rule[0,2] = dA2[0,2]·g'(Z2[0,2]) = (-1.561)·0.2302 = -0.3592"
    # By keyboard: focus an entry, move with the arrow keys; the inspector (a live region) follows. (The mouse is
    # moved off the arrays first: scrolling to the focused entry would otherwise slide another one under it.)
    page.mouse.move(0, 0)
    tab.cell("#bwd-2", "dZ2", "0,0").focus()
    page.keyboard.press("ArrowRight")
    assert page.locator("#insp-text").inner_text() == "dZ2[0,1] = A2[0,1] - Y[0,1] = 0.5507 - 0 = 0.5507"
    assert page.locator("#insp-text").get_attribute("aria-live") == "polite"
    # In-page links (the diagram's, the skip link) move the focus and leave the state in the fragment alone.
    url = page.url
    page.locator('.net a[href="#fwd-1"]').click()
    assert page.url == url and page.evaluate("document.activeElement.id") == "fwd-1"
    assert page.locator("html").get_attribute("data-generation") == "1"
    tab.assert_clean()


def test_weights_held_in_out_read_in_the_layout_sent(tab):
    """weight_layout in_out with examples_first (cs231n's x, w, b): the same network as the example, so the same
    numbers, each read from the arrays as sent (W2 is (3, 1), dZ2 (4, 1))."""
    body = example("two_layer_sigmoid_bce")
    body = {**body, "layout": "examples_first", "weight_layout": "in_out", "X": np.asarray(body["X"]).T.tolist(),
            "Y": np.asarray(body["Y"]).T.tolist(),
            "layers": [{**layer, "W": np.asarray(layer["W"]).T.tolist()} for layer in body["layers"]]}
    page = tab.open()
    page.locator("#paste summary").click()
    page.locator("#body-text").fill(json.dumps(body))
    page.locator("#load-body").click()
    tab.wait(2)
    tab.cell("#bwd-1", "dA1", "2,1").hover()
    assert page.locator("#insp-text").inner_text() == "dA1[2,1] = W2[1,0]·dZ2[2,0] = (-0.8)·(-0.3592) = 0.2874"
    assert "row 1 of W2" in page.locator("#insp-note").inner_text()
    tab.cell("#bwd-1", "dW1", "1,0").hover()
    assert page.locator("#insp-text").inner_text() == (
        "dW1[1,0] = (1/m)·(dZ1[0,0]·X[0,1] + dZ1[1,0]·X[1,1] + dZ1[2,0]·X[2,1] + dZ1[3,0]·X[3,1]) = "
        "(1/4)·((-0.07396)·0.5 + 0.09037·(-1.5) + (-0.05924)·2 + 0.1042·1) = -0.0467")
    assert "(inputs × units)" in page.locator('#bwd-1 figure[data-array="dW1"]').inner_text()
    assert "dA1 (4 × 3) = dZ2 (4 × 1) @ W2^T (1 × 3)" in page.locator("#why-hidden").inner_text()
    tab.assert_clean()


def test_a_hinge_network_is_told_its_own_simplification(tab):
    """multiclass_hinge's canonical pair is the linear output: dZ_L = dA_L, not A_L - Y (examples/kinds)."""
    body = json.loads((Path(__file__).parent.parent / "service" / "examples" / "kinds" /
                       "cs231n_batchnorm_hinge.json").read_text())
    page = tab.open()
    page.locator("#paste summary").click()
    page.locator("#body-text").fill(json.dumps(body))
    page.locator("#load-body").click()
    tab.wait(2)
    assert "dZ3 = dA3 · g'(Z3) = dA3." in page.locator("#why-answer").inner_text()
    table = page.locator("#step-dZL_fused table.collapse")
    assert "the chain rule's product equals dA3" in table.locator("caption").inner_text()
    assert "dA3 = dZ3" in table.locator("thead").inner_text() and "A - Y" not in table.inner_text()
    assert "sigmoid" not in page.locator("#step-stability").inner_text()
    tab.assert_clean()


def test_an_image_network_is_drawn_with_its_image_shapes(tab, reference):
    """An NHWC conv network (examples/images): the input as m images, every 4-D array as numpy prints it (one row
    per leading index, the last axis across), each entry the service's number at its full index."""
    body = json.loads((Path(__file__).parent.parent / "service" / "examples" / "images" /
                       "conv_pool_nhwc.json").read_text())
    page = tab.open()
    page.locator("#paste summary").click()
    page.locator("#body-text").fill(json.dumps(body))
    page.locator("#load-body").click()
    tab.wait(2)
    assert "2 images, 4 × 4 × 1 (NHWC)" in page.locator("#diagram").inner_text()
    assert "image_layout: NHWC" in page.locator("#diagram .options").inner_text()
    grads = reference(body)["gradients"]
    dA2 = np.asarray(grads["dA2"])
    assert dA2.shape == (2, 2, 2, 2)
    figure = page.locator('#bwd-2 figure[data-array="dA2"]')
    assert "2 × 2 × 2 × 2 (m × H × W × C)" in figure.locator("figcaption").inner_text()
    for idx, v in np.ndenumerate(dA2):
        assert float(tab.cell("#bwd-2", "dA2", ",".join(map(str, idx))).get_attribute("data-value")) == v
    assert figure.locator("tbody tr").count() == 8 and figure.locator("tbody th").first.inner_text() == "0,0,0"
    assert "(kh × kw × C × F)" in page.locator('#fwd-1 figure[data-array="W1"] figcaption').inner_text()
    assert "(m × " not in page.locator('#fwd-1 figure[data-array="b1"] figcaption').inner_text()
    # An entry of the image batch is edited at its full index and the service recomputes.
    pixel = page.locator('#fwd-0 figure[data-array="X"] input[data-idx="0,1,2,0"]')
    pixel.fill("5")
    pixel.press("Enter")
    tab.wait(3)
    body["X"][0][1][2][0] = 5.0
    assert page.locator("#status").inner_text().startswith("Recomputed by the service after X[0,1,2,0] changed")
    assert float(tab.cell("#bwd-2", "dA2", "0,0,0,0").get_attribute("data-value")) == \
        np.asarray(reference(body)["gradients"]["dA2"])[0, 0, 0, 0]
    tab.assert_clean()


def test_check_my_numbers_diagnoses_a_planted_1_over_m(tab, reference):
    page = tab.open()
    body = example("two_layer_sigmoid_bce")
    grads = reference(body)["gradients"]
    m = 4
    wrong = np.asarray(grads["dW1"]) * m  # the classic mistake: the 1/m of dW forgotten
    rows = "\n ".join("[" + " ".join(f"{v: .10f}" for v in row) + "]" for row in wrong)
    page.locator("#submission").fill(f"dW1 = [{rows}]\ndb1 = {json.dumps(grads['db1'])}")
    page.locator("#grade").click()
    page.wait_for_selector("table.grades")
    row = page.locator('table.grades tr[data-key="dW1"]')
    assert row.locator(".badge").inner_text() == "incorrect"
    assert row.locator(".diagnosis code").inner_text() == "missing_1_over_m"
    assert "1/m factor is missing" in row.locator(".diagnosis").inner_text()
    assert page.locator('table.grades tr[data-key="db1"] .badge').inner_text() == "correct"
    assert "/v1/grade" in " ".join(tab.inside)
    tab.assert_clean()


def test_a_shared_url_restores_the_same_state(browser, served):
    first = Tab(browser, served)
    page = first.open()
    weight = page.locator('#fwd-2 figure[data-array="W2"] input[data-idx="0,1"]')
    weight.fill("0.25")
    weight.press("Enter")
    first.wait(2)
    first.cell("#bwd-1", "dZ1", "1,2").click()
    # The fragment is written after the state is compressed (CompressionStream is asynchronous): wait for it.
    page.wait_for_function("location.hash.includes('sel=dZ1')", timeout=10_000)
    url = page.url
    assert "#net=" in url and "sel=dZ1" in url
    shown = {k: first.cell("#bwd-1", k, "1,2").get_attribute("data-value") for k in ("dZ1", "dA1")}
    formula = page.locator("#insp-text").inner_text()
    first.assert_clean()
    first.close()

    second = Tab(browser, served)
    page = second.open(url[url.index("#"):])
    assert page.locator('#fwd-2 figure[data-array="W2"] input[data-idx="0,1"]').input_value() == "0.25"
    assert {k: second.cell("#bwd-1", k, "1,2").get_attribute("data-value") for k in shown} == shown
    assert page.locator("#insp-text").inner_text() == formula and "dZ1[1,2]" in formula
    assert "selected" in second.cell("#bwd-1", "dZ1", "1,2").get_attribute("class")
    assert page.locator("#example").input_value() == ""
    second.assert_clean()
    second.close()


def test_a_pasted_body_with_larger_arrays_is_drawn_as_heatmaps(tab, reference):
    rng = np.random.default_rng(3)
    body = {"layers": [{"W": rng.normal(size=(12, 20)).round(3).tolist(), "b": [[0.0]] * 12, "activation": "tanh"},
                       {"W": rng.normal(size=(1, 12)).round(3).tolist(), "b": [[0.1]], "activation": "sigmoid"}],
            "X": rng.normal(size=(20, 30)).round(3).tolist(), "Y": [[int(v) for v in rng.integers(0, 2, 30)]],
            "cost": "binary_cross_entropy"}
    page = tab.open()
    page.locator("#paste summary").click()
    page.locator("#body-text").fill(json.dumps(body))
    page.locator("#load-body").click()
    tab.wait(2)
    heat = page.locator('#forward figure[data-array="Z1"] canvas.heatmap')
    assert heat.count() == 1  # 12 x 30 entries: a heatmap, not a table
    heat.focus()
    page.keyboard.press("ArrowRight")
    z = reference({**body, "include_caches": True})["caches"]["Z1"][0][1]
    text = page.locator("#insp-text").inner_text()
    assert text.startswith("Z1[0,1] = W1[0,0]·X[0,1] + ") and "more terms" in text
    assert float(text.rsplit(" = ", 1)[1]) == pytest.approx(z, rel=1e-3)
    assert page.locator("#example").input_value() == ""
    # A large input is edited from the inspector: X[0,1] here, and the service recomputes.
    x = page.locator('#forward figure[data-array="X"] canvas.heatmap')
    x.focus()
    page.keyboard.press("ArrowRight")
    page.keyboard.press("Enter")
    page.locator("#insp-edit-input").fill("2.5")
    page.locator('#insp-edit button[type="submit"]').click()
    tab.wait(3)
    body["X"][0][1] = 2.5
    z, before = reference({**body, "include_caches": True})["caches"]["Z1"][0][1], z
    assert z != pytest.approx(before, rel=1e-3)
    heat.focus()
    page.keyboard.press("ArrowRight")
    assert float(page.locator("#insp-text").inner_text().rsplit(" = ", 1)[1]) == pytest.approx(z, rel=1e-3)
    tab.assert_clean()


def test_docs_link_to_the_page(tab):
    page = tab.page
    page.goto(f"{tab.base}/docs/")
    link = page.locator('.info a[href="/learn"]')
    link.wait_for(timeout=20_000)
    with tab.context.expect_page() as opened:  # Swagger UI opens description links in a new tab
        link.click()
    learner = opened.value
    learner.on("console", lambda m: m.type == "error" and tab.errors.append(m.text))
    learner.wait_for_selector('html[data-state="ready"][data-generation="1"]', state="attached", timeout=20_000)
    assert learner.url.startswith(f"{tab.base}/learn#example=two_layer_sigmoid_bce")
    tab.assert_clean()


def test_an_edit_the_service_refuses_is_explained_and_changes_nothing(tab):
    page = tab.open()
    before = tab.cell("#bwd-1", "dW1", "0,0").get_attribute("data-value")
    label = page.locator('#fwd-cost figure[data-array="Y"] input[data-idx="0,0"]')
    label.fill("2")  # binary cross-entropy needs labels in [0, 1]
    label.press("Enter")
    page.wait_for_selector('html[data-state="error"]', state="attached")
    assert "binary_cross_entropy needs labels in [0, 1]" in page.locator("#problems").inner_text()
    assert label.get_attribute("aria-invalid") == "true"
    assert tab.cell("#bwd-1", "dW1", "0,0").get_attribute("data-value") == before
    assert page.locator("#status").inner_text().startswith("Not recomputed: the service refused Y[0,0]")
    # The browser reports the refused request itself (a 422) on its console; nothing else may be there.
    assert all("status of 422" in e for e in tab.errors), tab.errors
    tab.errors.clear()
    label.fill("not a number")
    label.press("Enter")
    assert "is not a number; nothing was sent" in page.locator("#status").inner_text()
    tab.assert_clean()


def test_with_api_keys_the_page_asks_for_one_and_keeps_it_out_of_the_link(browser):
    key = "learner-key-0123456789abcdef"
    server = make_server("127.0.0.1", 0, create_app({"api_keys": [key]}), threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        t = Tab(browser, f"http://127.0.0.1:{server.server_port}")
        page = t.page
        page.goto(f"{t.base}/learn")
        page.wait_for_selector('html[data-state="needs-key"]', state="attached")
        assert page.locator("#apikey").is_visible()
        page.locator("#apikey-input").fill(key)
        page.locator('#apikey button[type="submit"]').click()
        t.wait(1)
        assert page.locator('#backward figure[data-array="dW1"]').count() == 1
        assert key not in page.url
        t.assert_clean()
        t.close()
    finally:
        server.shutdown()
        thread.join(timeout=10)


@pytest.mark.parametrize("name", ["two_layer_sigmoid_bce", "softmax_three_classes"])
def test_screenshots_at_desktop_and_phone_widths(browser, served, name):
    out = artifacts_dir()
    for label, viewport in (("desktop", DESKTOP), ("phone", PHONE)):
        t = Tab(browser, served, viewport)
        page = t.open(f"#example={name}")
        t.cell("#bwd-2", "dZ2", "0,2").click()  # the inspector and its tooltip in the picture
        # Readable at a phone's width: nothing wider than the screen but the arrays' own scroll boxes.
        assert page.evaluate("document.documentElement.scrollWidth") <= viewport["width"]
        path = out / f"learn-{name}-{label}.png"
        page.screenshot(path=str(path), full_page=True)
        assert path.stat().st_size > 20_000
        t.assert_clean()
        t.close()
