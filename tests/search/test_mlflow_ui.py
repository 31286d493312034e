"""The user's last step, in a real browser: the MLflow UI over a search's store finds the Pareto students.

`mlflow server` serves the SQLite store of a real search on 127.0.0.1; headless Chromium (Debian's
package, driven by Playwright; no browser download) opens the experiment with the README's filter
`tags.rkd.pareto = 'true'`, expands the search's parent row (MLflow folds child runs under it) and
must list exactly the trials tagged on the front.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from .helpers import SHARED, free_port, mlflow_runs

pytestmark = pytest.mark.xdist_group(SHARED)

CHROMIUM = os.environ.get("RKD_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--no-first-run", "--disable-sync"]


@pytest.fixture()
def mlflow_server(digits_search):
    root, out = digits_search.root, digits_search.out
    port = free_port()
    log = open(root / "mlflow-server.log", "w")
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{out}/mlflow.db",
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        cwd=root, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as response:
                if response.status == 200:
                    break
        except OSError:
            pass
        if server.poll() is not None or time.monotonic() > deadline:
            server.kill()
            pytest.fail(f"mlflow server did not come up: {(root / 'mlflow-server.log').read_text()[-2000:]}")
        time.sleep(0.5)
    yield url, out
    os.killpg(server.pid, 15)
    server.wait(timeout=30)
    log.close()


@pytest.mark.slow
def test_mlflow_ui_lists_exactly_the_pareto_students(mlflow_server):
    from playwright.sync_api import sync_playwright

    url, out = mlflow_server
    if not Path(CHROMIUM).exists():
        pytest.fail(f"Chromium not found at {CHROMIUM}: apt-get install chromium (or set RKD_CHROMIUM)")
    _, parents, _, children = mlflow_runs(out)
    front = {c.info.run_name for c in children if c.data.tags["rkd.pareto"] == "true"}
    others = {c.info.run_name for c in children} - front
    assert front
    query = urllib.parse.urlencode({"experiment_name": "rkd-search"})
    with urllib.request.urlopen(f"{url}/api/2.0/mlflow/experiments/get-by-name?{query}") as response:
        experiment_id = json.load(response)["experiment"]["experiment_id"]
    search_filter = urllib.parse.quote("tags.`rkd.pareto` = 'true'")
    parent_name = parents[0].info.run_name

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 900})
            page.goto(f"{url}/#/experiments/{experiment_id}/runs?searchFilter={search_filter}")
            parent_row = page.locator("[role=row]", has_text=parent_name).first
            parent_row.wait_for(timeout=60_000)
            parent_row.locator("[col-id*='Run Name'] button").first.click()  # expand the folded child runs
            page.get_by_text(sorted(front)[0]).first.wait_for(timeout=30_000)
            shown = set(page.locator("[col-id*='Run Name'] a").all_inner_texts())
            page.screenshot(path=str(out.parent / "mlflow-ui-pareto.png"))
        finally:
            browser.close()
    assert shown == front | {parent_name}
    assert not shown & others
