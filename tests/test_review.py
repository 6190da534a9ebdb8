"""The review page, opened in a real headless Chromium (Debian's chromium + chromedriver, which
`make test` installs), and its decisions read back as labels."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest

from editguard.clients.review import ReviewConfig, build_review
from editguard.manifest import ManifestError, read_manifest, read_overlay

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
needs_browser = pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER), reason="no chromium/chromedriver: `make test` "
                                   "installs Debian's chromium and chromium-driver")


@pytest.fixture(scope="module")
def scored(triton, synth_sets, tmp_path_factory, read_jsonl) -> dict:
    """60 ood triples scored through the server, one prompt replaced by markup, as a manifest and results."""
    from editguard.clients.score import ScoreConfig, score

    tmp = tmp_path_factory.mktemp("review")
    src = Path(synth_sets["ood"])
    rows = read_jsonl(src)[:60]
    for r in rows:
        for k in ("input_image", "output_image", "mask"):
            r[k] = str(src.parent / r[k])
    rows[3]["prompt"] = '<script>window.pwned = 1</script><img src=x onerror="window.pwned = 2">'
    rows[5]["id"] = '"><b id="injected">x</b>'
    manifest = tmp / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    results = tmp / "results.jsonl"
    score(ScoreConfig(manifest=str(manifest), out=str(results), server=triton.grpc_url, progress=False,
                      allow_outside_root=True))
    return {"manifest": manifest, "results": results, "tmp": tmp, "rows": rows}


@pytest.fixture(scope="module")
def page(scored) -> Path:
    return build_review(ReviewConfig(results=str(scored["results"]), manifest=str(scored["manifest"]),
                                     out=str(scored["tmp"] / "site"), slice_by=["style"], progress=False,
                                     allow_outside_root=True, workers=2))


def _chromium(downloads: Path | None = None):
    """Headless Debian chromium through chromedriver; downloads go to ``downloads``."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1400,1000"):
        opts.add_argument(arg)
    if downloads:
        opts.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                               "download.prompt_for_download": False})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    if downloads:
        driver.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
    driver.downloads = downloads
    return driver


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("no chromium/chromedriver: `make test` installs Debian's chromium and chromium-driver")
    driver = _chromium(tmp_path_factory.mktemp("downloads"))
    yield driver
    driver.quit()


def _cards(driver) -> int:
    return len(driver.find_elements("css selector", "#grid .card"))


def _select(driver, element_id: str, value: str) -> None:
    from selenium.webdriver.support.ui import Select

    Select(driver.find_element("id", element_id)).select_by_value(value)


@needs_browser
def test_the_page_renders_filters_and_keeps_markup_inert(browser, page, scored, tmp_path, read_jsonl):
    browser.get(page.as_uri())
    assert _cards(browser) == 48  # the first page of 60; the rest come as it scrolls
    browser.execute_script("window.scrollTo(0, document.body.scrollHeight)")
    deadline = time.time() + 10
    while _cards(browser) < 60 and time.time() < deadline:
        time.sleep(0.1)
    assert _cards(browser) == 60
    assert "showing 60 of 60" in browser.find_element("id", "count").text
    # images load from the thumbnails folder
    loaded = browser.execute_script("return [...document.images].filter(i => i.complete && i.naturalWidth > 0).length")
    assert loaded > 0
    # the markup prompt and id are text, not elements or scripts
    assert browser.execute_script("return window.pwned === undefined")
    assert browser.find_elements("id", "injected") == []
    texts = [e.text for e in browser.find_elements("css selector", ".card .prompt")]
    assert scored["rows"][3]["prompt"] in texts
    # a filter: flagged in one category
    rows = read_jsonl(scored["results"])
    cats = [k[6:] for k in rows[0] if k.startswith("score_")]
    j = max(range(len(cats)), key=lambda k: sum(r[f"score_{cats[k]}"] >= 0.5 for r in rows))
    expected = sum(r[f"score_{cats[j]}"] >= 0.5 for r in rows)
    _select(browser, "f-cat", str(j))
    _select(browser, "f-verdict", "flagged")
    assert 0 < expected < 60
    assert _cards(browser) == min(expected, 48)
    assert f"of {expected} " in browser.find_element("id", "count").text
    # the near-threshold queue sorts by closeness to the threshold
    browser.find_element("id", "near-queue").click()
    scores = [float(e.text) for e in browser.find_elements("css selector", ".card .bars span:nth-child(3n)")][
        j::len(cats)]
    gaps = [abs(s - 0.5) for s in scores]
    assert all(a <= b + 1e-3 for a, b in zip(gaps, gaps[1:])), gaps  # (shown to 3 decimals)
    browser.save_screenshot(str(tmp_path / "review.png"))
    assert (tmp_path / "review.png").stat().st_size > 10_000


@needs_browser
def test_decisions_download_and_come_back_as_labels(browser, page, scored, tmp_path):
    browser.get(page.as_uri())
    browser.execute_script("localStorage.clear()")
    browser.refresh()
    cards = browser.find_elements("css selector", "#grid .card")
    cards[0].find_element("css selector", ".mark-correct").click()
    cards[1].find_element("css selector", ".mark-wrong").click()
    boxes = cards[1].find_elements("css selector", ".cats input[type=checkbox]")
    for b in boxes:  # the reviewer says: exactly the first category
        if b.is_selected():
            b.click()
    boxes[0].click()
    assert "(2)" in browser.find_element("id", "export").text
    browser.find_element("id", "export").click()
    path = browser.downloads / "decisions.jsonl"
    deadline = time.time() + 10
    while not path.exists() and time.time() < deadline:
        time.sleep(0.1)
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    ids = [c.get_attribute("data-index") for c in cards[:2]]
    items = browser.execute_script("return JSON.parse(document.getElementById('data').textContent).items")
    first, second = (items[int(i)] for i in ids)
    by_id = {d["id"]: d for d in lines}
    cats = browser.execute_script("return JSON.parse(document.getElementById('data').textContent).categories")
    assert (by_id[second["id"]]["decision"], by_id[second["id"]]["labels"]) == ("wrong", [cats[0]])
    assert by_id[first["id"]]["decision"] == "correct"
    assert by_id[first["id"]]["labels"] == by_id[first["id"]]["flagged"]
    # decisions survive a reload (kept in the browser's storage)
    browser.refresh()
    assert "(2)" in browser.find_element("id", "export").text
    # read back as a manifest overlay
    records = {r.id: r for r in read_manifest(scored["manifest"], overlays=[path], allow_outside_root=True)}
    assert records[second["id"]].labels == [cats[0]] and records[second["id"]].meta["reviewed"] == "wrong"
    assert records[first["id"]].labels == sorted(by_id[first["id"]]["flagged"])


def test_a_large_page_renders_lazily(scored, tmp_path, read_jsonl):
    """10,000 triples: thumbnails once per distinct image, and the page holds one page of cards at first."""
    rows = read_jsonl(scored["manifest"])
    results = read_jsonl(scored["results"])
    big_m, big_r = tmp_path / "big.jsonl", tmp_path / "big-results.jsonl"
    with open(big_m, "w") as fm, open(big_r, "w") as fr:
        for k in range(10_000):
            r, s = dict(rows[k % 60]), dict(results[k % 60])
            r["id"] = s["id"] = f"item-{k}"
            fm.write(json.dumps(r) + "\n")
            fr.write(json.dumps(s) + "\n")
    t0 = time.perf_counter()
    index = build_review(ReviewConfig(results=str(big_r), manifest=str(big_m), out=str(tmp_path / "site"),
                                      progress=False, allow_outside_root=True, workers=1))
    built = time.perf_counter() - t0
    assert len(list((tmp_path / "site" / "thumbs").iterdir())) <= 4 * 60
    assert index.stat().st_size < 12_000_000
    print(f"10,000-triple review page built in {built:.1f} s, {index.stat().st_size / 1e6:.1f} MB")
    if CHROMIUM and CHROMEDRIVER:
        driver = _chromium()
        try:
            driver.get(index.as_uri())
            assert _cards(driver) == 48 and "of 10000" in driver.find_element("id", "count").text
            _select(driver, "f-sort", "near")
            assert _cards(driver) == 48
        finally:
            driver.quit()


def test_overlay_errors_name_the_line(tmp_path):
    bad = tmp_path / "d.jsonl"
    bad.write_text('{"id": "a", "labels": ["sexual"]}\n{"labels": []}\n{"id": "b", "labels": ["nope"]}\n')
    with pytest.raises(ManifestError) as e:
        read_overlay(bad, ["sexual", "minors"])
    assert [(ln, field) for ln, field, _ in e.value.problems] == [(2, "id"), (3, "labels")]
    assert "nope" in str(e.value)


@needs_browser
def test_a_flagged_session_shows_as_its_strip_of_turns(browser, repository, tmp_path, read_jsonl):
    from editguard.clients.score import ScoreConfig, score
    from editguard.training.synth.sessions import generate_sessions

    manifest = generate_sessions(tmp_path / "s", 12, 4, "iid", image_size=96, workers=1, progress=False, clean=True)
    results = tmp_path / "results.jsonl"
    score(ScoreConfig(manifest=str(manifest), out=str(results), repository=str(repository), progress=False))
    rows = read_jsonl(results)
    site = build_review(ReviewConfig(results=str(results), manifest=str(manifest), out=str(tmp_path / "site"),
                                     progress=False, workers=1))
    browser.get(site.as_uri())
    strips = browser.find_elements("css selector", "#grid .card .strip")
    assert len(strips) == min(len(rows), 48)  # every turn of a session carries its strip
    turn = next(r for r in rows if r["turn"] >= 3)
    n_turns = sum(1 for r in rows if r["session"] == turn["session"])
    text = browser.execute_script(
        "return [...document.querySelectorAll('#grid .card')].map(c => c.innerText)"
        ".find(t => t.includes(arguments[0]))", f"session {turn['session']}, turn {turn['turn']} of {n_turns}")
    assert text and "upload" in text  # the strip starts from the upload ...
    find = ("const s = [...document.querySelectorAll('#grid .card .strip')].find(x => x.innerText.includes("
            "arguments[0])); s.scrollIntoView();")
    key = f"session {turn['session']}, turn {turn['turn']} of"
    figures = browser.execute_script(find + "return [s.querySelectorAll('figure').length, "
                                     "s.querySelectorAll('figure.current').length]", key)
    assert figures == [n_turns + 1, 1]  # ... then every turn, this one outlined
    deadline = time.time() + 10  # the thumbnails load lazily, once in view
    while time.time() < deadline and browser.execute_script(
            find + "return [...s.querySelectorAll('img')].filter(i => i.complete && i.naturalWidth > 0).length",
            key) < n_turns + 1:
        time.sleep(0.2)
    assert browser.execute_script(find + "return [...s.querySelectorAll('img')].filter(i => i.naturalWidth > 0)"
                                  ".length", key) == n_turns + 1
    # a turn flagged only by its cumulative triple is marked unsafe, and says why
    th = 0.5
    cum_only = [r for r in rows if not any(r[k] >= th for k in r if k.startswith("score_"))
                and any(r[k] >= th for k in r if k.startswith("cumulative_score_"))]
    unsafe_cards = browser.execute_script("return document.querySelectorAll('#grid .card.unsafe').length")
    expected = sum(any(r[k] >= th for k in r if k.startswith(("score_", "cumulative_score_"))) for r in rows[:48])
    assert unsafe_cards == expected
    if cum_only:
        assert "flagged: the edit since the upload" in " ".join(
            e.text for e in browser.find_elements("css selector", "#grid .card .strip .why"))
    browser.save_screenshot(str(tmp_path / "sessions.png"))


@needs_browser
def test_explanations_show_as_a_heatmap_toggle_and_share_bars(browser, scored, tiny_model_dir, tmp_path):
    """`review --explanations`: each explained category of an edit has a toggle that puts its heatmap and box
    over the output thumbnail (and takes it off again), and bars of the output, change and prompt shares."""
    from editguard.model.explain import explain_manifest

    rows = scored["rows"][:12]
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    explained = explain_manifest(manifest, tiny_model_dir, tmp_path / "explain", categories=["sexual", "minors"],
                                 allow_outside_root=True, progress=False)
    assert explained.explanations == 2 * len(rows)
    results = tmp_path / "results.jsonl"  # these edits' results only: every card on the first page
    ids = {r["id"] for r in rows}
    results.write_text("".join(line for line in scored["results"].read_text().splitlines(True)
                               if json.loads(line)["id"] in ids))
    site = build_review(ReviewConfig(results=str(results), manifest=str(scored["manifest"]),
                                     out=str(tmp_path / "site"), progress=False, allow_outside_root=True, workers=1,
                                     explanations=str(tmp_path / "explain")))
    browser.get(site.as_uri())
    assert len(browser.find_elements("css selector", "#grid .card .why-it")) == len(rows)
    card = browser.find_elements("css selector", "#grid .card")[0]
    toggles = card.find_elements("css selector", ".heat-toggle")
    assert [t.text for t in toggles] == ["heatmap: sexual", "heatmap: minors"]
    output = card.find_elements("css selector", ".thumbs figure")[1].find_element("css selector", "img")
    plain = output.get_attribute("src")
    browser.execute_script("arguments[0].scrollIntoView()", card)
    toggles[0].click()
    shown = output.get_attribute("src")
    assert shown != plain and "-w-" in shown and "on" in toggles[0].get_attribute("class")
    deadline = time.time() + 10
    while time.time() < deadline and not browser.execute_script("return arguments[0].naturalWidth", output):
        time.sleep(0.1)
    assert browser.execute_script("return arguments[0].naturalWidth", output) > 0  # the overlay loads
    toggles[0].click()
    assert output.get_attribute("src") == plain
    widths = browser.execute_script(
        "return [...arguments[0].querySelectorAll('.why-row')[0].querySelectorAll('.shares .fill')]"
        ".map(f => parseFloat(f.style.width))", card)
    assert len(widths) == 3 and (abs(sum(widths) - 100) < 0.5 or sum(widths) == 0)
    browser.save_screenshot(str(tmp_path / "why.png"))
