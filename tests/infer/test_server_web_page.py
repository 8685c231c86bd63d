"""The chat page at / driven end to end in headless Chromium (Debian's chromium + chromedriver)."""

import shutil
import tempfile
import time

import pytest

from mpt.infer.chat import Message, render

pytest.importorskip("fastapi", reason="needs the serve extra: pip install -e '.[serve]'")

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage"]


@pytest.fixture(scope="module")
def browser():
    webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium (the test extra)")
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.chrome.service import Service

    chromium, driver = shutil.which("chromium") or shutil.which("chromium-browser"), shutil.which("chromedriver")
    if not chromium or not driver:
        pytest.skip("Chromium not installed (Debian: apt-get install chromium chromium-driver)")
    profile = tempfile.mkdtemp(prefix="mpt-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in [*FLAGS, f"--user-data-dir={profile}"]:
        options.add_argument(flag)
    try:
        d = webdriver.Chrome(service=Service(driver), options=options)
    except WebDriverException as err:
        pytest.skip(f"Chromium cannot start here: {err.msg}")
    d.set_page_load_timeout(30)
    yield d
    d.quit()
    shutil.rmtree(profile, ignore_errors=True)


def wait(predicate, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    raise AssertionError("timed out waiting for the page")


def fill(browser, element_id, value):
    browser.execute_script("const e = document.getElementById(arguments[0]); e.value = arguments[1]; "
                           "e.dispatchEvent(new Event('change'));", element_id, value)


def status(browser):
    return browser.execute_script("return document.getElementById('status').textContent")


def assistant_texts(browser):
    return browser.execute_script("return [...document.querySelectorAll('.msg.assistant')].map(e => e.textContent)")


def test_chat_page_streams_the_greedy_reply_with_system_prompt_and_history(browser, server, llm):
    browser.get(server.url + "/")
    fill(browser, "apikey", "test-key")
    fill(browser, "system", "You are terse.")
    fill(browser, "temperature", "0")
    fill(browser, "max-tokens", "12")
    turns = ["Hello there", "And the fox?"]
    for i, text in enumerate(turns):
        fill(browser, "input", text)
        browser.find_element("id", "send").click()
        wait(lambda i=i: len(assistant_texts(browser)) == i + 1 and status(browser).startswith("done"))
    replies = assistant_texts(browser)
    history = [Message("system", "You are terse."), Message("user", turns[0]), Message("assistant", replies[0]),
               Message("user", turns[1])]
    for n, reply in ((2, replies[0]), (4, replies[1])):
        expected = llm.generate(render(history[:n], llm.tokenizer), max_new_tokens=12, stop=["<|im_end|>"])
        assert reply == expected.text
    assert browser.execute_script("return document.getElementById('model').textContent") == "tiny"


def test_stop_button_aborts_and_frees_the_row(browser, server):
    browser.get(server.url + "/")
    fill(browser, "apikey", "test-key")
    fill(browser, "temperature", "0")
    fill(browser, "max-tokens", "2000")
    fill(browser, "input", "Tell me a long story")
    browser.find_element("id", "send").click()
    wait(lambda: server.state.scheduler.running == 1 and len(assistant_texts(browser)[-1]) > 0)
    browser.find_element("id", "stop").click()
    wait(lambda: status(browser) == "stopped", timeout=10)
    assert server.wait_idle(timeout=10), server.state.health()


def test_wrong_key_shows_the_error(browser, server):
    browser.get(server.url + "/")
    fill(browser, "apikey", "wrong")
    fill(browser, "input", "Hi")
    browser.find_element("id", "send").click()
    wait(lambda: status(browser) == "error", timeout=20)
    error = browser.execute_script("return document.querySelector('.msg.error').textContent")
    assert "Incorrect API key" in error
