"""The static results page: self-contained (no network), sortable tables with direction arrows, mean ± CI
and n, claims with verdicts, figures, provenance on hover; checked in a real headless browser where one is
installed (Debian's chromium through Playwright)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from _results import grid, row, write_run
from click.testing import CliRunner

from sgq_bench.cli import main

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    rows = grid(seeds=(0, 1))
    rows += [row(m, s, "roar", 0.5 + s / 10, explainer=ex, family="roar", curve={"x": [0.1, 0.5], "y": [0.8, 0.4]},
                 eval_size=40) for m in ("baseline", "sgt") for s in (0, 1) for ex in ("gradient", "random")]
    out = write_run(tmp_path_factory.mktemp("site") / "run", rows)
    res = CliRunner().invoke(main, ["report", str(out), "--html", "--claims", "paper"])
    assert res.exit_code == 0, res.output
    return out


def test_the_run_page_is_one_file_with_tables_figures_and_provenance(run_dir):
    html = (run_dir / "index.html").read_text()
    assert "http://" not in html and "https://" not in html and "<script src" not in html  # nothing to fetch
    assert "accuracy ↑" in html and "deletion_auc ↓" in html and "(n=2)" in html and " ± " in html
    assert 'title="suite t v1, seeds 0;1' in html  # where each number came from, on hover
    assert html.count("data:image/svg+xml;base64,") >= 2  # figures embedded, as vector
    assert 'id="claims"' in html and "verdict" in html


def test_the_leaderboard_site_reads_every_board(run_dir, tmp_path):
    boards = tmp_path / "boards"
    assert CliRunner().invoke(main, ["leaderboard", "publish", str(run_dir), "--to", str(boards)]).exit_code == 0
    res = CliRunner().invoke(main, ["leaderboard", "site", str(tmp_path / "page"), "--from", str(boards)])
    assert res.exit_code == 0, res.output
    html = (tmp_path / "page" / "index.html").read_text()
    assert "synthetic · suite t · the models" in html and "commit " in html
    res = CliRunner().invoke(main, ["leaderboard", "site", str(tmp_path / "p2"), "--from", str(tmp_path / "none")])
    assert res.exit_code == 2 and "no leaderboard CSV here" in res.output


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium installed (apt-get install chromium); .ci/run installs it")
def test_the_page_loads_without_errors_and_sorts_on_a_click_in_a_real_browser(run_dir, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is in the test extra")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        errors: list[str] = []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto((run_dir / "index.html").as_uri())
        table = page.locator("table.sortable").first
        header = table.locator("th").nth(3)  # the first metric column

        def first_value() -> float:
            return float(table.locator("tbody tr").first.locator("td").nth(3).get_attribute("data-sort"))

        header.click()
        ascending = first_value()
        header.click()
        descending = first_value()
        page.screenshot(path=str(tmp_path / "page.png"))
        browser.close()
    assert errors == []
    assert ascending < descending and header is not None
    assert (tmp_path / "page.png").stat().st_size > 10_000


def test_empty_leaderboards_are_one_line(tmp_path):
    boards = tmp_path / "boards"
    boards.mkdir()
    (boards / "mnist.csv").write_text("")
    for args in (["leaderboard", "show", "mnist", "--leaderboards", str(boards)],
                 ["leaderboard", "site", str(tmp_path / "page"), "--from", str(boards)]):
        res = CliRunner().invoke(main, args)
        assert res.exit_code == 2 and len(res.output.strip().splitlines()) == 1, (args, res.output)
        assert "empty leaderboard" in res.output or "hold no rows" in res.output
