"""The app in a real browser: headless Chromium (Debian's chromium + chromium-driver, installed by `make install`)
driven by selenium against the Gradio app served on 127.0.0.1. A support image is uploaded, a mask painted with the
brush, queries uploaded, and the page's result compared with the Python API on the same inputs; screenshots are kept
under the test's tmp folder. If the browser cannot start, the test fails with the reason (no silent skip)."""
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import gradio  # noqa: F401,E402  (relzoo[app], in the dev extra: a missing Gradio fails here, it is not skipped)
import numpy as np
import pytest
import torch
from PIL import Image

from relzoo import (  # noqa: E402
    CrossTransformerConfig,
    CrossTransformerForFewShotClassification,
    HSNetConfig,
    HSNetForFewShotSegmentation,
)
from relzoo.app import classify, load_fewshot_model, segment  # noqa: E402
from relzoo.models.crosstransformer_hub import save_fewshot_folder  # noqa: E402
from relzoo.models.hsnet_hub import write_hsnet_files  # noqa: E402

SIZE = 64
WAIT = 90   # seconds for the page or a result (a cold CPU forward takes a few seconds)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    torch.manual_seed(0)
    seg = tmp_path_factory.mktemp("hsnet")
    hsnet = HSNetForFewShotSegmentation(HSNetConfig(backbone="resnet18", image_size=SIZE)).eval()
    with torch.no_grad():   # random weights, shifted so that about half of a query is foreground: the masks the
        x = torch.randn(1, 3, SIZE, SIZE)   # page and the API give are then not trivially empty
        d = hsnet(x, x[:, None], torch.ones(1, 1, SIZE, SIZE)).logits.diff(dim=1)
        hsnet.learner.decoder2[-1].bias[1] -= d.median()
    write_hsnet_files(seg, hsnet, SIZE, [0.5, 0.5, 0.5], [0.25, 0.25, 0.25])
    ctx = CrossTransformerForFewShotClassification(CrossTransformerConfig(
        key_dim=16, value_dim=8, backbone="test_resnet", backbone_kwargs={"output_stride": 8})).eval()
    cls = save_fewshot_folder(ctx, tmp_path_factory.mktemp("ctx") / "model", image_size=SIZE)
    return seg, cls


@pytest.fixture(scope="module")
def models(folders):
    return tuple(load_fewshot_model(f) for f in folders)


@pytest.fixture(scope="module")
def app_url(folders, tmp_path_factory):
    """The app as a user starts it: the `relzoo app` command in its own process, on a free port of 127.0.0.1."""
    port = _free_port()
    log = tmp_path_factory.mktemp("app") / "relzoo-app.log"
    cmd = [sys.executable, "-m", "relzoo.cli", "app", "--segmentation-model", str(folders[0]),
           "--classification-model", str(folders[1]), "--port", str(port)]
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    url, deadline = f"http://127.0.0.1:{port}/", time.monotonic() + WAIT
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"`relzoo app` exited with {proc.returncode} before serving {url}:\n{log.read_text()}")
            try:
                urllib.request.urlopen(url, timeout=5).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"`relzoo app` did not serve {url} within {WAIT} s:\n{log.read_text()}")
                time.sleep(0.5)
        assert f"relzoo app: {url}" in log.read_text()   # the command prints the address it serves
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver

    binary, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    if not binary or not driver_path:
        pytest.fail(f"headless Chromium is needed: chromium={binary}, chromedriver={driver_path} "
                    "(apt-get install -y chromium chromium-driver; `make install` does it)")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1400,2400",
                "--force-device-scale-factor=1"):
        options.add_argument(arg)
    try:
        driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=driver_path))
    except Exception as err:  # the reason goes into the failure
        pytest.fail(f"headless Chromium did not start: {type(err).__name__}: {err}")
    driver.set_page_load_timeout(WAIT)
    yield driver
    driver.quit()


def _wait(driver, css: str, text: str | None = None, timeout: float = WAIT):
    from selenium.webdriver.common.by import By

    deadline = time.time() + timeout
    while time.time() < deadline:
        found = driver.find_elements(By.CSS_SELECTOR, css)
        if found and (text is None or any(text in e.text for e in found)):
            return found[0]
        time.sleep(0.25)
    seen = [e.text for e in driver.find_elements(By.CSS_SELECTOR, css)]
    raise AssertionError(f"{css!r} with {text!r} did not appear within {timeout} s (found {seen})")


def _upload(driver, elem_id: str, paths):
    from selenium.webdriver.common.by import By

    field = driver.find_element(By.CSS_SELECTOR, f"#{elem_id} input[type='file']")
    field.send_keys("\n".join(str(p) for p in paths))


def _links(driver, elem_id: str) -> list[str]:
    """The download links a gr.File output shows (served by the app on 127.0.0.1)."""
    from selenium.webdriver.common.by import By

    hrefs = [a.get_attribute("href") for a in driver.find_elements(By.CSS_SELECTOR, f"#{elem_id} a[href]")]
    return list(dict.fromkeys(h for h in hrefs if h and h.startswith("http://127.0.0.1")))


def _download_mask(url: str) -> np.ndarray:
    with urllib.request.urlopen(url, timeout=30) as response:
        from io import BytesIO

        return np.asarray(Image.open(BytesIO(response.read())).convert("L")) > 127


def _picture(seed: int, size=(160, 120), bright_object: bool = True) -> Image.Image:
    rng = np.random.default_rng(seed)
    image = rng.integers(40, 90, (size[1], size[0], 3), dtype=np.uint8)
    if bright_object:
        image[30:90, 50:110] = rng.integers(180, 250, (60, 60, 3), dtype=np.uint8)
    return Image.fromarray(image)


def _paint(driver, elem_id: str):
    """One brush stroke across the middle of the editor's canvas."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    canvas = _wait(driver, f"#{elem_id} canvas")
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", canvas)
    time.sleep(0.5)
    canvas = driver.find_elements(By.CSS_SELECTOR, f"#{elem_id} canvas")[-1]
    w = canvas.size["width"]
    chain = ActionChains(driver).move_to_element_with_offset(canvas, -w // 10, 0).click_and_hold()
    for step in range(1, 9):
        chain = chain.move_by_offset(w // 40, (-1) ** step * 2)
    chain.release().perform()


def test_segmentation_tab_paint_a_mask_and_segment(browser, app_url, models, tmp_path):
    support, queries = tmp_path / "support.png", [tmp_path / "query_a.png", tmp_path / "query_b.png"]
    _picture(1).save(support)
    _picture(2).save(queries[0])
    _picture(3, (200, 100)).save(queries[1])
    browser.get(app_url)
    _wait(browser, "#support-0")
    browser.find_element("css selector", "#seg-run").click()           # nothing uploaded: a message, no traceback
    _wait(browser, "#seg-status", "upload at least one support image")
    _upload(browser, "support-0", [support])
    _wait(browser, "#support-0 canvas")
    time.sleep(1.0)
    _upload(browser, "seg-queries", queries)
    _wait(browser, "#seg-queries", "query_b")
    browser.find_element("css selector", "#seg-run").click()           # uploaded but not painted
    _wait(browser, "#seg-status", "the mask is empty (no brush stroke)")
    _paint(browser, "support-0")
    time.sleep(1.0)
    browser.find_element("css selector", "#seg-run").click()
    status = _wait(browser, "#seg-status", "Segmented 2 queries").text
    assert "1 support shot" in status and " s (" in status
    browser.save_screenshot(str(tmp_path / "segmentation.png"))
    (painted_url,) = _links(browser, "seg-support-masks")
    painted = _download_mask(painted_url)
    assert painted.shape == (120, 160) and 0 < painted.mean() < 0.5        # a stroke, not the whole image
    predicted = [_download_mask(u) for u in _links(browser, "seg-masks")]
    assert [m.shape for m in predicted] == [(120, 160), (100, 200)]       # each query's own size
    expected = segment(models[0], [(support, painted)], queries)
    for got, want in zip(predicted, expected):
        assert np.array_equal(got, want.mask)
    assert any(0.01 < m.mean() < 0.99 for m in predicted)                 # not a trivially empty or full mask
    assert (tmp_path / "segmentation.png").stat().st_size > 10_000


def test_classification_tab_probabilities_match_the_api(browser, app_url, models, tmp_path):
    from selenium.webdriver.common.by import By

    files = {}
    for name, seeds in (("bright", (1, 2)), ("dark", (5,))):
        files[name] = []
        for s in seeds:
            files[name].append(tmp_path / f"{name}_{s}.png")
            _picture(s, bright_object=name == "bright").save(files[name][-1])
    queries = [tmp_path / "query_bright.png", tmp_path / "query_dark.png"]
    _picture(9).save(queries[0])
    _picture(8, bright_object=False).save(queries[1])
    browser.get(app_url)
    _wait(browser, "#support-0")                                       # the page has rendered
    tab = "//button[@role='tab' and contains(., 'Few-shot classification')]"
    deadline = time.time() + WAIT
    while not browser.find_elements(By.XPATH, tab) and time.time() < deadline:
        time.sleep(0.25)
    browser.find_element(By.XPATH, tab).click()
    _wait(browser, "#class-name-0")
    for c, name in enumerate(files):
        browser.find_element(By.CSS_SELECTOR, f"#class-name-{c} textarea, #class-name-{c} input").send_keys(name)
    _upload(browser, "cls-queries", queries)
    _upload(browser, "class-files-0", files["bright"])
    _wait(browser, "#class-files-0", "bright_2")
    browser.find_element(By.CSS_SELECTOR, "#cls-run").click()          # class 2 named but without images
    _wait(browser, "#cls-status", "class 'dark': no support image")
    _upload(browser, "class-files-1", files["dark"])
    _wait(browser, "#class-files-1", "dark_5")
    browser.find_element(By.CSS_SELECTOR, "#cls-run").click()
    _wait(browser, "#cls-status", "Classified 2 queries against 2 classes")
    _wait(browser, "#cls-result td")
    rows = [r.text for r in browser.find_elements(By.CSS_SELECTOR, "#cls-result tbody tr")]
    expected = classify(models[1], files, queries)
    assert [e.predicted for e in expected] == ["bright", "dark"]     # each query is nearer its own kind
    assert len(rows) == 2
    for row, query, want in zip(rows, queries, expected):
        assert row.split()[:2] == [query.name, want.predicted], row
        assert [f"{100 * want.probabilities[n]:.1f}" for n in files] == row.replace("%", "").split()[2:], row
    _wait(browser, "#cls-correspondence img")
    browser.save_screenshot(str(tmp_path / "classification.png"))
    assert (tmp_path / "classification.png").stat().st_size > 10_000


def test_space_folder_runs_the_same_app(tmp_path, monkeypatch, capsys):
    """push_to_hub.py --space --dry-run writes the model folder and, beside it, the Space (app.py,
    requirements.txt, card); its app.py builds the app (here on the written folder, RELZOO_MODEL)."""
    import runpy
    from pathlib import Path

    main = runpy.run_path(str(Path(__file__).resolve().parents[1] / "scripts" / "push_to_hub.py"),
                          run_name="not_main")["main"]
    assert main(["--variant", "hsnet_vgg16.pascal5i", "--space", "--dry-run", str(tmp_path / "hs")]) == 0
    space = tmp_path / "hs-space"
    assert sorted(p.name for p in space.iterdir()) == ["README.md", "app.py", "requirements.txt"]
    card = (space / "README.md").read_text()
    assert "sdk: gradio" in card and "- relzoo/hsnet_vgg16.pascal5i" in card
    assert (space / "requirements.txt").read_text().startswith("relzoo[app]")
    assert "relzoo/hsnet_vgg16.pascal5i-app" in capsys.readouterr().out
    monkeypatch.setenv("RELZOO_MODEL", str(tmp_path / "hs"))
    demo = runpy.run_path(str(space / "app.py"), run_name="space")["demo"]
    assert isinstance(demo, gradio.Blocks)
    with pytest.raises(SystemExit):
        main(["--variant", "san10_patch.in1k", "--space", "--dry-run", str(tmp_path / "san")])
    assert "--space: the app serves few-shot models, san10_patch.in1k is image-classification" in \
        capsys.readouterr().err
