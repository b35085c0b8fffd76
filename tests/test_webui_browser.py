"""The WebUI in a real browser: headless Debian chromium (driven by Playwright) against a real
`connector serve` process on the tiny model, with an embedded Qdrant store synced beforehand.

Needs `chromium` and `curl` on PATH (scripts/install-system-deps installs them). Every value the
page shows is compared with the same request sent to the API directly.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from serve_process import CONNECTOR, Server, call, start_server, stop_server

pytestmark = pytest.mark.slow

ARTIFACTS = Path(__file__).parent / "artifacts"
KEY_ENV = "CONNECTOR_WEBUI_TEST_KEY"
API_KEY = "webui-test-key-5f2c"

TEXT_A = "How do I reset my password?\nThe invoice is sent every month.\nThe device does not connect over USB."
TEXT_B = "Open the sign-in page and choose Forgot password to reset your password."
DOCS = {
    "reset.md": "# Reset\n\nOpen the sign-in page and choose Forgot password. The link expires after thirty minutes.\n",
    "billing.md": "# Billing\n\nInvoices are issued monthly and sent to the account owner by email.\n",
    "usb.txt": "If the device does not connect over USB, replace the cable and restart the device.\n",
}


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_model_dir):
    """A `connector serve -c CONFIG` process whose Qdrant (local mode) collection holds DOCS."""
    root = tmp_path_factory.mktemp("webui")
    (root / "docs").mkdir()
    for name, text in DOCS.items():
        (root / "docs" / name).write_text(text, encoding="utf-8")
    config = {
        "source": {"type": "files", "path": "./docs"},
        "chunking": {"max_tokens": 64, "overlap_tokens": 8},
        "encoder": {"model": str(tiny_model_dir), "max_length": 512, "batch_size": 4},
        "sink": {"type": "qdrant", "path": "./store/qdrant", "collection": "kb"},
        "state_dir": "./state",
    }
    config_path = root / "config.yaml"
    config_path.write_text(yaml.safe_dump(config), encoding="utf-8")
    synced = subprocess.run([CONNECTOR, "sync", "-c", str(config_path)], capture_output=True, text=True, timeout=300)
    assert synced.returncode == 0, synced.stdout + synced.stderr
    server = start_server(["-c", str(config_path)], root / "serve.log", dict(os.environ))
    yield server
    stop_server(server)


@pytest.fixture(scope="module")
def keyed(tmp_path_factory, tiny_model_dir):
    """An embedding-only server (`--model`, no store) that wants `Authorization: Bearer API_KEY`."""
    root = tmp_path_factory.mktemp("webui-keyed")
    env = dict(os.environ, **{KEY_ENV: API_KEY})
    server = start_server(["--model", str(tiny_model_dir), "--api-key-env", KEY_ENV], root / "serve.log", env)
    yield server
    stop_server(server)


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium")
    assert chromium, "Debian's chromium is missing: run scripts/install-system-deps"
    with sync_playwright() as playwright:
        # Debian's browser, never `playwright install` (its download servers are out of reach)
        browser = playwright.chromium.launch(executable_path=chromium)
        yield browser
        browser.close()


@pytest.fixture
def page(browser):
    """A fresh tab (own sessionStorage) that may download files and use the clipboard."""
    context = browser.new_context(accept_downloads=True, permissions=["clipboard-read", "clipboard-write"],
                                  viewport={"width": 1280, "height": 900})
    tab = context.new_page()
    tab.set_default_timeout(60_000)
    yield tab
    context.close()


def analyze(page, server: Server, a: str = TEXT_A, b: str = TEXT_B, mode: str = "hybrid") -> None:
    page.goto(server.url + "/")
    page.fill("#text-a", a)
    page.fill("#text-b", b)
    page.select_option("#mode", mode)
    page.click("#analyze")


def number(page, selector: str) -> float:
    return float(page.text_content(selector))


def run_copied_curl(page, key: str | None = None) -> dict:
    """Clicks "Copy as curl" and runs the copied command in bash; returns its JSON output."""
    page.click("#panel-compare .copy-curl:visible, #panel-search .copy-curl:visible")
    page.wait_for_selector("#curl-copied:text('copied')")
    command = page.evaluate("navigator.clipboard.readText()")
    assert command == page.text_content("#curl")
    env = dict(os.environ, CONNECTOR_API_KEY=key or "")
    done = subprocess.run(["bash", "-c", command], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_analyze_shows_the_api_scores_details_heatmap_and_curl(page, served):
    analyze(page, served)
    page.wait_for_selector("#result:not([hidden])")
    status, expected = call(served.url, "/v1/similarity", {"a": TEXT_A, "b": TEXT_B, "mode": "hybrid"})
    assert status == 200
    assert page.text_content("#score-mode") == "hybrid"
    assert number(page, "#score") == pytest.approx(expected["score"], abs=5e-5)
    for name in ("dense", "lexical", "colbert", "hybrid", "weighted"):
        assert expected["scores"][name] is not None  # the tiny model has all three heads
        assert number(page, f"#score-{name}") == pytest.approx(expected["scores"][name], abs=5e-5), name

    page.click("#details summary")
    sides = page.locator("#sides tbody tr")
    for row, side in enumerate(("a", "b")):
        cells = sides.nth(row).locator("td").all_text_contents()
        assert int(cells[0]) == expected[side]["tokens"]
        assert float(cells[1]) == pytest.approx(expected[side]["dense_norm"], abs=5e-5)
        assert float(cells[2]) == pytest.approx(expected[side]["sparse_norm"], abs=5e-5)
        assert cells[4] == expected[side]["text"]
    shared = page.locator("#shared tbody tr")
    assert shared.count() == len(expected["shared_tokens"])
    for row, token in enumerate(expected["shared_tokens"][:5]):
        assert shared.nth(row).locator("th").text_content() == token["token"]
        assert float(shared.nth(row).locator("td").last.text_content()) == pytest.approx(token["product"], abs=5e-5)

    # three non-empty lines in A: the heatmap of /v1/similarity/matrix
    page.wait_for_selector("#heatmap:not([hidden])")
    lines = TEXT_A.splitlines()
    status, matrix = call(served.url, "/v1/similarity/matrix", {"texts": lines, "mode": "hybrid"})
    assert status == 200
    cells = [float(x) for x in page.locator("#heatmap-table td.heat").all_text_contents()]
    assert cells == pytest.approx([x for row in matrix["matrix"] for x in row], abs=0.005 + 1e-9)

    reproduced = run_copied_curl(page)
    assert reproduced["score"] == pytest.approx(expected["score"], abs=1e-6)
    assert reproduced["scores"] == pytest.approx(expected["scores"], abs=1e-6)

    # the screenshot of the README (docs/webui.png is a copy of a good one)
    page.check("#debug")
    page.wait_for_selector("#tokens:not([hidden]) [data-testid=token]")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "webui.png"), full_page=True)


def test_download_vectors_saves_the_embed_json(page, served):
    page.goto(served.url + "/")
    page.fill("#text-a", TEXT_A)
    page.fill("#text-b", TEXT_B)
    with page.expect_download() as download:
        page.click("#download")
    saved = json.loads(Path(download.value.path()).read_text(encoding="utf-8"))
    status, health = call(served.url, "/health")
    assert status == 200
    assert saved["dimension"] == health["dimension"]
    assert [e["text"] for e in saved["embeddings"]] == [TEXT_A, TEXT_B]
    status, expected = call(served.url, "/v1/embed", {"texts": [TEXT_A, TEXT_B]})
    for got, want in zip(saved["embeddings"], expected["embeddings"]):
        assert len(got["dense"]) == health["dimension"]
        assert got["dense"] == pytest.approx(want["dense"], abs=1e-6)
        assert got["sparse"]["indices"] == want["sparse"]["indices"]
        assert len(got["sparse"]["values"]) == len(got["sparse"]["indices"])


def test_debug_switch_shows_each_token_with_its_sparse_weight(page, served):
    page.goto(served.url + "/")
    page.fill("#text-a", "How do I reset my password?")
    page.fill("#text-b", TEXT_B)
    page.check("#debug")
    page.wait_for_selector("#tokens:not([hidden]) #tokens-b [data-testid=token]")
    for side, text in (("a", "How do I reset my password?"), ("b", TEXT_B)):
        status, expected = call(served.url, "/v1/tokenize", {"text": text})
        assert status == 200
        chips = page.locator(f"#tokens-{side} [data-testid=token]")
        assert chips.count() == expected["count"] == len(expected["tokens"])
        for i, token in enumerate(expected["tokens"]):
            piece, weight = chips.nth(i).locator("span, small").all_text_contents()
            assert piece == token["token"]
            assert float(weight) == pytest.approx(token["weight"], abs=5e-4)
    assert any(t["weight"] > 0 for t in expected["tokens"])
    page.uncheck("#debug")
    assert page.locator("#tokens").is_hidden()


def test_search_tab_shows_the_hits(page, served):
    page.goto(served.url + "/")
    page.click("#tab-search")
    page.fill("#query", "reset my password")
    page.click("#search-run")
    page.wait_for_selector("[data-testid=hit]")
    status, expected = call(served.url, "/v1/search", {"query": "reset my password", "mode": "hybrid", "limit": 10})
    assert status == 200 and expected["hits"]
    hits = page.locator("[data-testid=hit]")
    assert hits.count() == len(expected["hits"])
    for i, hit in enumerate(expected["hits"]):
        assert hits.nth(i).locator("code").text_content() == f"{hit['doc_id']}#{hit['chunk_index']}"
        assert float(hits.nth(i).locator("strong").text_content()) == pytest.approx(hit["score"], abs=5e-5)
        assert hits.nth(i).locator("p").text_content() == hit["text"]
    assert {h["doc_id"] for h in expected["hits"]} <= set(DOCS)
    reproduced = run_copied_curl(page)
    assert [h["id"] for h in reproduced["hits"]] == [h["id"] for h in expected["hits"]]


def test_api_errors_appear_in_the_page(page, served):
    too_long = "password " * 6000  # 54 000 characters: over the service's limit per text
    status, answer = call(served.url, "/v1/similarity", {"a": TEXT_A, "b": too_long, "mode": "hybrid"})
    assert status == 413 and answer["kind"] == "too_large"
    analyze(page, served, b=too_long)
    page.wait_for_selector("#error:not([hidden])")
    shown = page.text_content("#error-message")
    assert answer["error"] in shown and "413 too_large" in shown
    assert page.locator("#result").is_hidden()

    page.fill("#text-b", TEXT_B)  # the next success clears the box
    page.click("#analyze")
    page.wait_for_selector("#result:not([hidden])")
    assert page.locator("#error").is_hidden()


def test_pasted_html_becomes_text_and_a_dropped_txt_file_fills_the_box(page, served):
    page.goto(served.url + "/")
    page.evaluate("""() => {
        const data = new DataTransfer();
        data.setData("text/html", "<h1>Reset</h1><p>Choose <b>Forgot password</b>.</p><script>alert(1)</script><ul><li>one</li><li>two</li></ul>");
        data.setData("text/plain", "ignored");
        document.getElementById("text-a").dispatchEvent(
            new ClipboardEvent("paste", {clipboardData: data, bubbles: true, cancelable: true}));
    }""")
    assert page.input_value("#text-a") == "Reset\nChoose Forgot password.\none\ntwo"

    drop = """([name, type, text]) => {
        const data = new DataTransfer();
        data.items.add(new File([text], name, {type}));
        document.getElementById("text-b").dispatchEvent(
            new DragEvent("drop", {dataTransfer: data, bubbles: true, cancelable: true}));
    }"""
    page.evaluate(drop, ["note.txt", "text/plain", "A dropped file\nwith two lines"])
    page.wait_for_function("document.getElementById('text-b').value.startsWith('A dropped file')")
    assert page.input_value("#text-b") == "A dropped file\nwith two lines"
    page.evaluate(drop, ["photo.png", "image/png", "\x89PNG"])
    page.wait_for_selector("#error:not([hidden])")
    assert "photo.png is not a text file" in page.text_content("#error-message")
    assert page.input_value("#text-b") == "A dropped file\nwith two lines"


def test_the_page_asks_for_the_key_when_the_api_answers_401(page, keyed):
    status, refused = call(keyed.url, "/v1/similarity", {"a": "x", "b": "y"})
    assert status == 401 and refused["kind"] == "unauthorized"
    analyze(page, keyed, a="How do I reset my password?")
    page.wait_for_selector("#key-dialog[open]")
    assert refused["error"] in page.text_content("#key-message")

    page.fill("#api-key", "not-the-key")
    page.click("#key-save")
    page.wait_for_selector("#key-dialog[open]")  # refused again: asked again
    page.fill("#api-key", API_KEY)
    page.click("#key-save")
    page.wait_for_selector("#result:not([hidden])")
    status, expected = call(keyed.url, "/v1/similarity", {"a": "How do I reset my password?", "b": TEXT_B,
                                                          "mode": "hybrid"}, key=API_KEY)
    assert status == 200
    assert number(page, "#score") == pytest.approx(expected["score"], abs=5e-5)
    assert page.evaluate("sessionStorage.getItem('connector-api-key')") == API_KEY
    assert API_KEY not in page.url

    reproduced = run_copied_curl(page, key=API_KEY)
    command = page.text_content("#curl")
    assert '-H "Authorization: Bearer $CONNECTOR_API_KEY"' in command and API_KEY not in command
    assert reproduced["score"] == pytest.approx(expected["score"], abs=1e-6)

    # with the key, a server without a store: the search tab shows the API's no_store error
    page.click("#tab-search")
    page.fill("#query", "password")
    page.click("#search-run")
    page.wait_for_selector("#error:not([hidden])")
    status, no_store = call(keyed.url, "/v1/search", {"query": "password", "mode": "hybrid", "limit": 10}, key=API_KEY)
    assert status == 400 and no_store["kind"] == "no_store"
    assert no_store["error"] in page.text_content("#error-message")


def test_cancelling_the_key_prompt_shows_the_401_in_the_page(page, keyed):
    analyze(page, keyed)
    page.wait_for_selector("#key-dialog[open]")
    page.click("#key-cancel")
    page.wait_for_selector("#error:not([hidden])")
    assert "401 unauthorized" in page.text_content("#error-message")
    assert page.evaluate("sessionStorage.getItem('connector-api-key')") is None
