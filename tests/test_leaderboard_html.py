"""The static HTML site of ``mrbench leaderboard build``: ``table.html`` per suite version
and ``index.html`` per leaderboards folder, checked like the other tables; then the
page in headless Chromium (marker ``browser``): rows, sorting, the plot, a screenshot."""

from __future__ import annotations

import fnmatch
import os
import shutil
import tomllib
from html.parser import HTMLParser
from pathlib import Path

import pytest

from bench import leaderboard as lb
from bench.leaderboard.plot import axis
from test_leaderboard import REPO, SUITE_DIR, _base_counts, _base_entry, _check_fails, _tied, _worse, write_entry, zoo  # noqa: F401 (zoo: autouse fixture)

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
NOISE, PGD = "gaussian-noise@3", "pgd-linf@16/255:query"
XSS = '<img src=x onerror="alert(1)">'


def _noisy(counts: list[tuple[int, int]], drop: int) -> list[tuple[int, int]]:
    return [(max(0, c - drop - e % 3), t) for e, (c, t) in enumerate(counts)]


@pytest.fixture
def site(tmp_path, monkeypatch) -> Path:
    """A leaderboards folder with two suite versions: omniglot-5w1s@v1 with four live
    entries (one transductive, one unreliable with HTML in its text, one superseded
    entry besides) and two scenarios, and a copy of the suite under another id with one
    clean-only entry."""
    root = tmp_path / "leaderboards"
    folder = root / "omniglot-5w1s" / "v1"
    folder.mkdir(parents=True)
    shutil.copy(SUITE_DIR / "suite.toml", folder / "suite.toml")
    monkeypatch.setenv("MRBENCH_SUITES", str(root))
    entries, base = folder / "entries", _base_counts()
    write_entry(entries, "protonet", base, scenarios={NOISE: _noisy(base, 2), PGD: _noisy(base[:100], 9)})
    write_entry(entries, "protonet-tied", _tied(base), scenarios={NOISE: _noisy(_tied(base), 4)})
    write_entry(entries, "protonet-old", _worse(base))
    write_entry(entries, "odd", _worse(base), lambda e: (
        e["algorithm"].update(id=f"odd{XSS}&co"),
        e.update(unreliable=True, footnote=f"Footnote with <script>alert(2)</script> & {XSS}",
                 supersedes="protonet-old.json")))
    write_entry(entries, "transductive", [(t, t) for _, t in base], lambda e: e["algorithm"].update(transductive=True))

    other = root / "omniglot-copy" / "v1"
    other.mkdir(parents=True)
    (other / "suite.toml").write_text((SUITE_DIR / "suite.toml").read_text().replace(
        'id = "omniglot-5w1s"', 'id = "omniglot-copy"', 1))
    write_entry(other / "entries", "protonet", base, lambda e: e["suite"].update(id="omniglot-copy"))
    return root


def _page(root: Path, suite: str = "omniglot-5w1s") -> Path:
    return root / suite / "v1" / "table.html"


class _Tags(HTMLParser):
    """Every start tag of a page as ``(tag, attributes)``, attribute values unescaped."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def attr(self, tag: str, name: str) -> list[str | None]:
        return [a[name] for t, a in self.tags if t == tag and name in a]


# --- generation and check ----------------------------------------------------------


def test_site_is_deterministic_and_checked(site):
    built = lb.build(site)
    pages = [_page(site), _page(site, "omniglot-copy"), site / "index.html"]
    assert set(built.indexes_written) == {site / "index.html"}
    first = {p: p.read_bytes() for p in pages}
    lb.check(site)
    for p in pages:
        p.unlink()
    lb.build(site)
    assert {p: p.read_bytes() for p in pages} == first
    text = first[_page(site)].decode()
    assert str(site) not in text and _base_entry()["created"] not in text  # no paths, no timestamps
    assert "http://" not in text.replace('xmlns="http://www.w3.org/2000/svg"', "") and "https://" not in text
    assert "<script src" not in text and "<link" not in text  # self-contained


def test_table_html_has_the_rows_of_the_table_and_a_column_per_scenario(site):
    lb.build(site)
    page = _Tags(_page(site).read_text())
    assert page.attr("tr", "data-entry") == ["protonet.json", "protonet-tied.json", "odd.json", "transductive.json"]
    assert page.attr("tr", "data-rank") == ["1=", "1=", "3", "1"]
    assert page.attr("tr", "data-section") == ["non-transductive"] * 3 + ["transductive"]
    columns = page.attr("th", "data-column")
    assert columns == ["rank", "algorithm", "version", "section", "clean", f"scenario:{NOISE}", f"scenario:{PGD}",
                       "p", "reported", "episodes", "distribution", "notes", "checkpoint", "entry"]  # scenarios sorted
    assert page.attr("th", "aria-sort") == ["ascending"]  # the ranked order is the rank column ascending

    text = _page(site).read_text()
    assert "98.59 ± 0.22" in text  # clean accuracy with its CI, as in table.md
    assert '<span class="n">(100 ep.)</span>' in text  # PGD covers a prefix of the episodes
    assert text.count('title="not evaluated">–</td>') == 5  # tied and odd lack PGD, odd and transductive both
    assert "† [1]" not in text and '† <a href="#note-1">[1]</a>' in text and 'id="note-1"' in text
    assert page.attr("g", "data-scenario") == [NOISE, NOISE, PGD]  # one marker per entry and scenario
    # Labelled with the algorithm, or with the entry where the board has the algorithm more than once.
    assert ">protonet-tied</text>" in text and ">protonet</text>" in text
    assert "No robust or shift columns yet" not in text


def test_entry_text_is_escaped(site):
    lb.build(site)
    text = _page(site).read_text()
    assert XSS not in text and "<script>alert" not in text
    assert "odd&lt;img src=x onerror=&quot;alert(1)&quot;&gt;&amp;co" in text
    assert "Footnote with &lt;script&gt;alert(2)&lt;/script&gt; &amp;" in text
    assert _Tags(text).attr("tr", "data-algorithm")[2] == f"odd{XSS}&co"  # round-trips through the attribute
    assert 'data-scenario="pgd-linf@16/255:query"' in text


def test_without_scenarios_the_plot_is_a_sentence(site):
    lb.build(site)
    text = _page(site, "omniglot-copy").read_text()
    assert "No robust or shift columns yet" in text and "<svg" not in text
    assert not [c for c in _Tags(text).attr("th", "data-column") if c.startswith("scenario:")]


def test_index_links_every_suite_version(site):
    lb.build(site)
    index = _Tags((site / "index.html").read_text())
    assert index.attr("tr", "data-suite") == ["omniglot-5w1s@v1", "omniglot-copy@v1"]
    assert index.attr("tr", "data-entries") == ["4", "1"]  # live entries; the superseded one is counted apart
    links = index.attr("a", "href")
    assert links == ["omniglot-5w1s/v1/table.html", "omniglot-copy/v1/table.html"]
    assert all((site / link).is_file() for link in links)
    assert "(1 superseded)" in (site / "index.html").read_text()
    assert "Omniglot, Vinyals et al. split" in (site / "index.html").read_text()


def test_check_reports_stale_and_missing_pages(site):
    lb.build(site)
    page = _page(site)
    page.write_text(page.read_text().replace("98.59", "98.60", 1))
    _check_fails(site, "table.html: line ", "stale: differs from the table the entries generate")
    (site / "index.html").unlink()
    _check_fails(site, "index.html: index: missing; run `mrbench leaderboard build`")
    lb.build(site)
    lb.check(site)
    (site / "index.html").write_text((site / "index.html").read_text().replace('data-entries="4"', 'data-entries="5"'))
    _check_fails(site, "index.html: line ", "stale: differs from the index the entries generate")

    empty = site.parent / "empty"
    (empty / "x").mkdir(parents=True)
    (empty / "index.html").write_text("<p>left over</p>\n")
    _check_fails(empty, "index.html: index: exists but there are no entries to generate it from")


@pytest.mark.parametrize("values, expected", [
    ([35.2, 98.6], (30.0, 100.0, 10.0)),
    ([96.21, 98.59], (96.0, 99.0, 1.0)),
    ([100.0, 100.0], (99.0, 100.0, 1.0)),
    ([0.0, 0.0], (0.0, 1.0, 1.0)),
    ([0.0, 100.0], (0.0, 100.0, 20.0)),
])
def test_plot_axis_ends_on_steps_within_0_100(values, expected):
    assert axis(values) == expected


def test_the_page_template_css_and_script_are_package_data():
    # An installed mrbench (not an editable checkout) builds the same pages only if
    # bench/leaderboard/static/ ships with it.
    patterns = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["bench"]
    assets = sorted((REPO / "bench" / "leaderboard" / "static").iterdir())
    assert {p.name for p in assets} == {"page.html", "leaderboard.css", "sort.js"}
    for path in assets:
        rel = path.relative_to(REPO / "bench").as_posix()
        assert any(fnmatch.fnmatchcase(rel, p) and rel.count("/") == p.count("/") for p in patterns), rel


# --- in a browser ------------------------------------------------------------------


def _unavailable(reason: str) -> None:
    msg = f"{reason}; install the Debian packages chromium and chromium-driver (apt-get install chromium " \
          "chromium-driver) and the test extra (pip install -e .[test], for selenium) to run the browser tests."
    if os.environ.get("CI"):
        pytest.fail(msg)
    pytest.skip(msg)


@pytest.fixture
def browser(monkeypatch):
    """Headless Chromium driven by the Debian chromedriver (no Selenium Manager download)."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.options import Options
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        _unavailable("selenium is not installed")
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    if missing:
        _unavailable(f"{' and '.join(missing)} not found")
    monkeypatch.setenv("SE_OFFLINE", "true")
    options = Options()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1400,1000"):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=str(CHROMEDRIVER)))
    try:
        yield driver
    finally:
        driver.quit()


@pytest.mark.browser
def test_table_page_in_a_browser(site, browser, tmp_path):
    from selenium.webdriver.common.by import By

    lb.build(site)
    browser.get((site / "index.html").as_uri())
    assert len(browser.find_elements(By.CSS_SELECTOR, "#index tbody tr")) == 2
    browser.find_element(By.LINK_TEXT, "omniglot-5w1s@v1").click()
    assert browser.current_url == _page(site).as_uri()
    assert browser.title == "Leaderboard: omniglot-5w1s@v1"

    shot = tmp_path / "table.png"
    assert browser.save_screenshot(str(shot))
    assert shot.stat().st_size > 0 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    def rows() -> list:
        return browser.find_elements(By.CSS_SELECTOR, "#leaderboard tbody tr")

    def column(name: str):
        return browser.find_element(By.CSS_SELECTOR, f'#leaderboard th[data-column="{name}"]')

    live = lb.find_board("omniglot-5w1s@v1", site).live
    assert len(rows()) == len(live) == 4
    shown = {r.get_attribute("data-algorithm") for r in rows()}
    assert shown == {e.entry.algorithm.id for e in live}
    visible = browser.find_element(By.ID, "leaderboard").text
    assert all(a in visible for a in ("protonet", f"odd{XSS}&co"))  # the text, not markup
    ranked = [r.get_attribute("data-entry") for r in rows()]

    def clean() -> list[float]:
        return [float(r.get_attribute("data-clean")) for r in rows()]

    column("clean").click()
    assert clean() == sorted(clean()) and clean() != sorted(clean(), reverse=True)
    assert column("clean").get_attribute("aria-sort") == "ascending"
    assert column("rank").get_attribute("aria-sort") is None
    column("clean").click()
    assert clean() == sorted(clean(), reverse=True) and clean() != sorted(clean())
    assert column("clean").get_attribute("aria-sort") == "descending"

    # A scenario column: numeric on its values, entries without the scenario last.
    column(f"scenario:{NOISE}").click()
    assert column(f"scenario:{NOISE}").get_attribute("aria-sort") == "ascending"
    assert column("clean").get_attribute("aria-sort") is None
    order = [r.get_attribute("data-entry") for r in rows()]
    # protonet-tied is lower under noise (4 fewer right per episode); odd and transductive lack it, in rank order.
    assert order == ["protonet-tied.json", "protonet.json", "odd.json", "transductive.json"]
    column(f"scenario:{NOISE}").click()
    assert [r.get_attribute("data-entry") for r in rows()] == ["protonet.json", "protonet-tied.json", "odd.json",
                                                               "transductive.json"]
    column("rank").click()
    assert [r.get_attribute("data-entry") for r in rows()] == ranked  # back to the ranking

    assert len(browser.find_elements(By.CSS_SELECTOR, "#scatter g.point")) == 3
