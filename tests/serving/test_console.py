"""The web console in a real headless browser (Debian's chromium + chromium-driver, Selenium from
PyPI) against a real server process with the tiny digits, catdog and sentiment models: upload a
photo and read the predicted class, draw a digit, type a sentence and read the label. A screenshot
is saved to reports/console/ (git-ignored) as the run's artifact."""

from __future__ import annotations

import base64
import json
import shutil
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from tests.clients.tiny_models import write_tiny_catdog, write_tiny_sentiment
from tests.serving.fixtures import REPO_ROOT, ServerProcess, start_server, write_config, write_tiny_version

pytestmark = pytest.mark.slow
CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
ARTIFACTS = REPO_ROOT / "reports" / "console"


def _post(server: ServerProcess, path: str, body: Any) -> Any:
    request = urllib.request.Request(
        server.rest_url + path, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as answer:
        return json.loads(answer.read())


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("console")
    write_tiny_version(root / "models" / "digits", 1)
    write_tiny_catdog(root / "models" / "catdog")
    write_tiny_sentiment(root / "models" / "sentiment")
    config = write_config(root / "models.config", {n: root / "models" / n for n in ("digits", "catdog", "sentiment")})
    process = start_server(["--model_config_file", str(config)], root / "server.log")
    yield process
    process.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if CHROMIUM is None or DRIVER is None:
        pytest.skip("no chromium / chromedriver here (apt-get install chromium chromium-driver; .ci/run does)")
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1400,1000"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    yield driver
    driver.quit()


def _wait(browser: Any, condition: Any, seconds: float = 30) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(browser, seconds).until(condition)


def _card(browser: Any, model: str) -> Any:
    from selenium.webdriver.common.by import By

    return browser.find_element(By.CSS_SELECTOR, f'[data-model="{model}"]')


def _answered(card: Any, count: int) -> Any:
    return lambda _: card.get_attribute("data-answered") == str(count)


def test_a_person_tries_each_model_in_the_console(server: ServerProcess, browser: Any, tmp_path: Path) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    browser.get(server.rest_url + "/")
    _wait(browser, lambda b: b.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "true")
    assert browser.find_element(By.ID, "status").text == "3 model(s) served"
    catdog = _card(browser, "catdog")
    assert "AVAILABLE" in catdog.find_element(By.CSS_SELECTOR, ".versions").text

    # A photo, uploaded: the page shows the class the server's own Classify gives for those bytes.
    rng = np.random.default_rng(7)
    photo = np.zeros((40, 30, 3), np.uint8)  # [h, w, 3]
    photo[..., 0] = 200 + rng.integers(0, 40, size=(40, 30))
    path = tmp_path / "red.jpg"
    Image.fromarray(photo).save(path, quality=95)
    feature = {"image_bytes": {"b64": base64.b64encode(path.read_bytes()).decode()}}
    expected = _post(server, "/v1/models/catdog:classify", {"signature_name": "predict_image_bytes", "examples": [feature]})
    label, score = max(expected["results"][0], key=lambda pair: pair[1])
    catdog.find_element(By.CSS_SELECTOR, "input.file").send_keys(str(path))
    _wait(browser, _answered(catdog, 1))
    prediction = catdog.find_element(By.CSS_SELECTOR, ".prediction")
    assert prediction.get_attribute("data-label") == label
    assert prediction.text == f"{label} ({100 * score:.1f}%)"
    assert len(catdog.find_elements(By.CSS_SELECTOR, ".bar")) == 2
    overlay = catdog.find_element(By.CSS_SELECTOR, "canvas.overlay")  # the explain heatmap over the photo
    assert overlay.size["width"] == 224

    # A digit drawn on the pad with the mouse.
    digits = _card(browser, "digits")
    pad = digits.find_element(By.CSS_SELECTOR, "canvas.draw")
    strokes = ActionChains(browser).move_to_element_with_offset(pad, -40, -60).click_and_hold()
    for dx, dy in ((80, 0), (-50, 120)):
        strokes = strokes.move_by_offset(dx, dy)
    strokes.release().perform()
    _wait(browser, _answered(digits, 1))
    assert digits.find_element(By.CSS_SELECTOR, ".prediction").get_attribute("data-label") in [str(i) for i in range(10)]
    assert len(digits.find_elements(By.CSS_SELECTOR, ".bar")) == 10

    # A sentence typed in.
    sentiment = _card(browser, "sentiment")
    text = "a wonderful, gripping film"
    sentiment.find_element(By.CSS_SELECTOR, "textarea").send_keys(text)
    sentiment.find_element(By.CSS_SELECTOR, "button.classify").click()
    _wait(browser, _answered(sentiment, 1))
    expected = _post(server, "/v1/models/sentiment:classify", {"examples": [{"text": text}]})
    label, _ = max(expected["results"][0], key=lambda pair: pair[1])
    assert sentiment.find_element(By.CSS_SELECTOR, ".prediction").get_attribute("data-label") == label
    assert browser.find_element(By.ID, "error").get_attribute("hidden") == "true"

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    assert browser.save_screenshot(str(ARTIFACTS / "console.png"))


def test_the_console_can_be_turned_off(tmp_path: Path) -> None:
    write_tiny_version(tmp_path / "digits", 1)
    process = start_server(
        ["--model_name", "digits", "--model_base_path", str(tmp_path / "digits"), "--rest_console=false"],
        tmp_path / "server.log",
    )
    try:
        for path in ("/", "/console/console.js", "/console/api/models"):
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(process.rest_url + path, timeout=10)
            assert refused.value.code == 404
    finally:
        process.stop()
