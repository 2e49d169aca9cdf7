"""The playground at GET /, used the way a person uses it: a real headless Chromium (Debian's
`chromium` and `chromium-driver`, installed by .ci/run) driven by Selenium against a real
uvicorn serving the tiny models, with API keys on. Translations stream into the page as they
decode (Server-Sent Events read with fetch()); beam search comes back whole.

The screenshot lands in runs/test-artifacts/playground.png (the path is printed).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

from tests.conftest import PROJECT_ROOT, ServerProcess

pytestmark = pytest.mark.timeout(180)

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
API_KEY = "playground-test-key"
MAX_TEXT_CHARS = 200
ARTIFACTS = PROJECT_ROOT / "runs" / "test-artifacts"
WAIT_S = 30  # generous: the machine is shared; the page shows the real latency


@pytest.fixture(scope="module")
def server(launch_server: Any, model_repository: Path) -> ServerProcess:
    server: ServerProcess = launch_server(
        model_repository, api_keys=API_KEY, max_text_chars=MAX_TEXT_CHARS
    )
    return server


@pytest.fixture(scope="module")
def browser() -> Iterator[webdriver.Chrome]:
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if shutil.which(p) is None]
    assert not missing, f"{missing} missing: apt-get install chromium chromium-driver (.ci/run)"
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless=new",
        "--no-sandbox",  # CI runs as root in a container
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1280,860",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()


# The sentiment row's request count in the live panel (null before the row exists).
LIVE_SENTIMENT_COUNT = """
const cell = document.querySelector('#live tr[data-model="sentiment"] td:nth-child(2)');
return cell ? parseFloat(cell.textContent) : null;
"""

# The translator's row of the live panel once it shows a batch size (null until then).
LIVE_TRANSLATOR = """
const row = document.querySelector('#live tr[data-model="translator"]');
if (!row || row.children[5].textContent === "–") return null;
return {
  scheduling: row.dataset.scheduling,
  batch: row.children[5].textContent,
  padding: row.children[6].textContent,
  padding_title: row.children[6].title,
};
"""


def console_errors(driver: webdriver.Chrome) -> list[str]:
    """Console messages at error level since the last call."""
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def by_id(driver: webdriver.Chrome, element_id: str) -> Any:
    return driver.find_element(By.ID, element_id)


def run_model(driver: webdriver.Chrome, model: str, *, expect_error: bool = False) -> list[Any]:
    """Pick `model`, press Run, wait for the answer; the result blocks shown."""
    Select(by_id(driver, "model")).select_by_value(model)
    driver.execute_script("document.body.dataset.state = ''")
    by_id(driver, "run").click()
    WebDriverWait(driver, WAIT_S).until(
        lambda d: d.execute_script("return document.body.dataset.state") == "done"
    )
    error = by_id(driver, "error")
    assert error.is_displayed() == expect_error, error.text
    print(f"{model}: latency {by_id(driver, 'latency').text}")
    return list(driver.find_elements(By.CSS_SELECTOR, "#results .result"))


def open_with_key(driver: webdriver.Chrome, server: ServerProcess) -> None:
    """Load the page, type the API key, wait until the three models are listed."""
    driver.get(server.url + "/")
    by_id(driver, "api-key").send_keys(API_KEY)
    by_id(driver, "model").click()  # leaving the key field fires its change event
    WebDriverWait(driver, WAIT_S).until(
        lambda d: len(d.find_elements(By.CSS_SELECTOR, "#model option:not([disabled])")) == 3
    )
    console_errors(driver)  # the first /v1/models call, made without the key: a 401


def set_field(driver: webdriver.Chrome, element_id: str, text: str) -> None:
    field = by_id(driver, element_id)
    field.clear()
    field.send_keys(text)


def test_playground_round_trips_in_a_real_browser(
    server: ServerProcess, browser: webdriver.Chrome
) -> None:
    driver = browser
    driver.get(server.url + "/")
    # Without a key the page says why it has no models, in the API's words.
    error = WebDriverWait(driver, WAIT_S).until(lambda d: d.find_element(By.ID, "error"))
    WebDriverWait(driver, WAIT_S).until(lambda d: "401" in error.text)
    assert "API key" in error.text
    errors = console_errors(driver)
    assert len(errors) == 1 and "/v1/models" in errors[0] and "401" in errors[0], errors

    by_id(driver, "api-key").send_keys(API_KEY)
    by_id(driver, "model").click()  # leaving the key field fires its change event
    WebDriverWait(driver, WAIT_S).until(
        lambda d: len(d.find_elements(By.CSS_SELECTOR, "#model option:not([disabled])")) == 3
    )
    assert not by_id(driver, "error").is_displayed()

    results = run_model(driver, "sentiment")
    assert len(results) == 2  # the two example texts
    for result in results:
        label = result.find_element(By.CLASS_NAME, "label").text
        assert label in ("negative", "positive")
        assert len(result.find_elements(By.CLASS_NAME, "bar")) == 2
    assert by_id(driver, "latency").text.endswith(" ms")
    assert by_id(driver, "batch-size").text.isdigit()
    assert not by_id(driver, "translate-options").is_displayed()

    results = run_model(driver, "nli")
    assert by_id(driver, "pair-input").is_displayed()
    assert len(results) == 2
    for result in results:
        label = result.find_element(By.CLASS_NAME, "label").text
        assert label in ("entailment", "neutral", "contradiction")
        assert len(result.find_elements(By.CLASS_NAME, "bar")) == 3

    results = run_model(driver, "translator")  # streamed: test_translation_streams_...
    assert by_id(driver, "translate-options").is_displayed()
    assert len(results) == 2
    assert all(r.find_elements(By.CLASS_NAME, "translation") for r in results)

    # The live panel counts the requests it just saw. Read in one script: the panel's rows are
    # replaced every second, and an element found by one call can be gone by the next (a
    # StaleElementReferenceException in CI, stop 28).
    WebDriverWait(driver, WAIT_S).until(lambda d: (d.execute_script(LIVE_SENTIMENT_COUNT) or 0) > 0)
    # The translator is decoded step by step: its batch is rows per step, its padding "–" with
    # a tooltip saying why. Read in one script: the panel's rows are replaced every second.
    translator = WebDriverWait(driver, WAIT_S).until(lambda d: d.execute_script(LIVE_TRANSLATOR))
    assert translator["scheduling"] == "step"
    assert float(translator["batch"]) >= 1
    assert translator["padding"] == "–"
    assert "not applicable" in translator["padding_title"]
    assert console_errors(driver) == []
    overflow = "return document.documentElement.scrollWidth - window.innerWidth"
    assert driver.execute_script(overflow) <= 0  # nothing wider than the window

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    screenshot = ARTIFACTS / "playground.png"
    Select(by_id(driver, "model")).select_by_value("sentiment")
    run_model(driver, "sentiment")
    driver.save_screenshot(str(screenshot))
    print(f"screenshot: {screenshot}")

    # Over the limit: the API's 413 message, shown as it is.
    area = by_id(driver, "texts")
    area.clear()
    area.send_keys("x" * (MAX_TEXT_CHARS + 1))
    by_id(driver, "run").click()
    WebDriverWait(driver, WAIT_S).until(lambda d: by_id(d, "error").is_displayed())
    assert by_id(driver, "error").text == (
        f"413: texts[0] has {MAX_TEXT_CHARS + 1} characters; max_text_chars is {MAX_TEXT_CHARS}"
    )
    errors = console_errors(driver)
    assert len(errors) == 1 and "/v1/classify" in errors[0] and "413" in errors[0], errors


# Two events split across chunks (one mid-line, one with CRLF line ends), then an error event:
# what the page must make of a stream the server ends with `event: error`.
FAKE_STREAM_CHUNKS = [
    'event: piece\ndata: {"text": "Ein "}\n',
    '\nevent: piece\r\ndata: {"text"',
    ': "Hund "}\r\n\r\n: a comment\n\nevent: error\n',
    'data: {"error": "the request timed out", "type": "timeout"}\n\n',
]
FAKE_TRANSLATE = """
const chunks = arguments[0];
const original = window.fetch;
window.fetch = (url, init) => {
  if (url !== "/v1/translate") return original(url, init);
  const encoder = new TextEncoder();
  const body = new ReadableStream({
    pull(controller) {
      if (chunks.length) controller.enqueue(encoder.encode(chunks.shift()));
      else controller.close();
    },
  });
  return Promise.resolve(
    new Response(body, { headers: { "content-type": "text/event-stream" } }));
};
"""


def test_translation_streams_piece_by_piece(
    server: ServerProcess, browser: webdriver.Chrome
) -> None:
    """Each text streams as its own request: the page receives several pieces per translation
    and ends with the same text as the non-streamed greedy answer; beam search comes back whole
    (one request); a stream ending in an `error` event shows the API's message."""
    driver = browser
    open_with_key(driver, server)
    Select(by_id(driver, "model")).select_by_value("translator")
    assert by_id(driver, "stream").is_selected()  # streaming is the default
    # The tiny random translator answers these greedily with 16 tokens of a repeated word ("The
    # The The ..."): several whole-word pieces. (Its answer to the page's example is one 16-token
    # word, which arrives as one piece: the server never splits a word.)
    texts = ["A man is riding a bike.", "The boy jumps into the water."]
    set_field(driver, "texts", "\n".join(texts))
    auth = {"authorization": f"Bearer {API_KEY}"}

    def whole(beam_size: int) -> list[str]:
        body = {"model": "translator", "texts": texts, "beam_size": beam_size}
        reply = httpx.post(server.url + "/v1/translate", json=body, headers=auth, timeout=30)
        assert reply.status_code == 200, reply.text
        translations: list[str] = reply.json()["translations"]
        return translations

    results = run_model(driver, "translator")
    assert len(results) == 2
    for result in results:
        assert result.get_attribute("data-streamed") == "yes"
        pieces = int(result.get_attribute("data-pieces"))
        print(f"pieces: {pieces}")
        assert pieces > 1  # 16 tokens of several words: more than one piece arrived
    shown = [r.find_element(By.CLASS_NAME, "translation").text for r in results]
    assert shown == whole(beam_size=1)
    assert by_id(driver, "first-piece").text.endswith(" ms")

    # Beam search cannot stream: the page asks for the whole answer instead.
    set_field(driver, "beam-size", "2")
    results = run_model(driver, "translator")
    assert [r.get_attribute("data-streamed") for r in results] == ["no", "no"]
    assert [r.find_element(By.CLASS_NAME, "translation").text for r in results] == whole(2)
    assert not by_id(driver, "first-piece-info").is_displayed()
    assert console_errors(driver) == []

    # A stream the server ends with an error event: the pieces so far, and the API's message.
    by_id(driver, "beam-size").clear()
    set_field(driver, "texts", texts[0])
    driver.execute_script(FAKE_TRANSLATE, FAKE_STREAM_CHUNKS)
    (result,) = run_model(driver, "translator", expect_error=True)
    assert by_id(driver, "error").text == "the request timed out"
    assert result.get_attribute("data-pieces") == "2"
    assert result.find_element(By.CLASS_NAME, "translation").text == "Ein Hund"
    assert result.find_element(By.CLASS_NAME, "item-error").text == "the request timed out"
    assert console_errors(driver) == []
