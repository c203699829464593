"""jobd-master's dashboard in a real browser (headless Chromium, driven by selenium)
against a real master, worker and MariaDB: every page with real rows, its buttons
acting (pause and continue a target, retry a failed job, run a manual one), the pages
refreshing themselves (htmx), the logins and roles, the CSRF token, the rate limit of
failed logins, /metrics' basic auth, and the refusal to serve the network without users.

A screenshot of each page goes to $JOBD_SCREENSHOTS, else tmp_path/screenshots; the test
prints the folder (`pytest -s` shows it)."""

from __future__ import annotations

import base64
import http.client
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
import yaml
from click.testing import CliRunner
from selenium import webdriver
from selenium.common.exceptions import (
    NoSuchElementException,
    StaleElementReferenceException,
    WebDriverException,
)
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement

from jobctl.cli import main as jobctl_main

from conftest import Daemon, free_port, jobctl, wait_for

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
#: This machine's network is closed: nothing of Chromium's own may go looking for it.
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--window-size=1280,900",
)  # fmt: skip
#: The pages poll every 5 s (the job page every 3 s): a change shows within this.
REFRESHED_WITHIN = 8.0
PASSWORDS = {"olga": "operator-secret-1", "victor": "viewer-secret-2"}


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[WebDriver]:
    """Headless Chromium; it quits at teardown.  Missing, it fails the test: the
    dashboard is untested without it (scripts/test.sh installs it)."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    if missing:
        pytest.fail(
            f"the browser tests need Chromium and its driver; missing: {', '.join(missing)}"
            " (Debian: apt-get install chromium chromium-driver; scripts/test.sh does it)",
            pytrace=False,
        )
    options = Options()
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium-profile'}")
    options.binary_location = str(CHROMIUM)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(20)
    driver.set_script_timeout(20)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def screenshots(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Callable[..., Path]:
    """shot(browser, name): a PNG of the page into the folder, which is printed."""
    folder = Path(os.environ.get("JOBD_SCREENSHOTS") or tmp_path / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    with capsys.disabled():
        print(f"\nscreenshots of the dashboard: {folder}")

    def shot(driver: WebDriver, name: str) -> Path:
        path = folder / f"{name}.png"
        assert driver.save_screenshot(str(path)), f"no screenshot {path}"
        return path

    return shot


# --- helpers ----------------------------------------------------------------------


class Dashboard:
    """The browser on one master's dashboard."""

    def __init__(self, driver: WebDriver, port: int) -> None:
        self.driver = driver
        self.base = f"http://127.0.0.1:{port}"

    def open(self, path: str) -> str:
        """Load a page; its text (the body's)."""
        self.driver.get(self.base + path)
        return self.text()

    def text(self, css: str = "body") -> str:
        return self.driver.find_element(By.CSS_SELECTOR, css).text

    def path(self) -> str:
        return self.driver.current_url.removeprefix(self.base)

    def all(self, css: str) -> list[WebElement]:
        return self.driver.find_elements(By.CSS_SELECTOR, css)

    def click(self, css: str) -> None:
        """Click a button (found afresh: the page's polling replaces its elements)."""
        for _ in range(5):
            try:
                self.driver.find_element(By.CSS_SELECTOR, css).click()
                return
            except StaleElementReferenceException:
                time.sleep(0.1)
        raise AssertionError(f"{css} kept being replaced")

    def submit(self, css: str) -> str:
        """Click a form's button and wait for the page the form leads to (a new
        document: the mark is gone); its path."""
        self.mark()
        self.click(css)

        def loaded() -> bool:
            try:
                return (
                    not self.marked()
                    and self.driver.execute_script("return document.readyState") == "complete"
                )
            except WebDriverException:  # between two documents
                return False

        wait_for(loaded, 10, f"the page after {css}")
        return self.path()

    def wait_text(self, css: str, pattern: str, timeout: float = REFRESHED_WITHIN) -> str:
        """Until the element's text matches `pattern` (without loading the page again)."""

        def matches() -> str | None:
            try:
                text = self.text(css)
            except (NoSuchElementException, StaleElementReferenceException):
                return None
            return text if re.search(pattern, text) else None

        return wait_for(matches, timeout, f"{css} of {self.path()} to show {pattern!r}")

    def at(self, pattern: str, path: str | None = None) -> re.Match[str]:
        """The browser's path (or `path`) matching `pattern`, whole."""
        path = self.path() if path is None else path
        match = re.fullmatch(pattern, path)
        assert match, f"the browser is at {path}, not {pattern}"
        return match

    def login(self, user: str, password: str) -> None:
        self.driver.find_element(By.NAME, "user").send_keys(user)
        self.driver.find_element(By.NAME, "password").send_keys(password)
        self.submit("form.login button")

    def csrf(self) -> str:
        return self.driver.find_element(By.CSS_SELECTOR, "input[name=csrf]").get_attribute("value")

    def post(self, path: str, csrf: str | None) -> tuple[int, str]:
        """A POST made by the page's own script (fetch, the session's cookie): what a
        forged form would send.  Its status and text; redirects are not followed."""
        return self.driver.execute_async_script(
            """
            const [path, csrf, done] = arguments;
            const body = new URLSearchParams(csrf === null ? {} : {csrf});
            fetch(path, {method: "POST", body, redirect: "manual"})
              .then(r => r.text().then(t => done([r.status, t])))
              .catch(e => done([-1, String(e)]));
            """,
            path,
            csrf,
        )

    def mark(self) -> None:
        """Leave a mark in the page's window: gone if the page is loaded again."""
        self.driver.execute_script("window.jobdMark = 'not reloaded'")

    def marked(self) -> bool:
        return self.driver.execute_script("return window.jobdMark") == "not reloaded"


def request(
    port: int, method: str, path: str, form: dict[str, str] | None = None, **headers: str
) -> tuple[int, dict[str, str], str]:
    """One HTTP request to the master (no redirect followed): status, headers, text."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    body = None
    if form is not None:
        body = urlencode(form)
        headers["Content-Type"] = "application/x-www-form-urlencoded"
    try:
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        return response.status, dict(response.headers), response.read().decode()
    finally:
        connection.close()


def answers(port: int, path: str = "/login") -> bool:
    try:
        return request(port, "GET", path)[0] == 200
    except OSError:  # not listening yet
        return False


def login_next(location: str) -> str | None:
    """Where the login at `location` sends back to; None if it is not the login."""
    parts = urlsplit(location)
    return parse_qs(parts.query).get("next", [""])[0] if parts.path == "/login" else None


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def paused(worker: Daemon, target: str) -> bool:
    """What the worker itself says of the target."""
    return worker.request("status")["targets"][target]["paused"]


def table_args(jobs: Any) -> list[str]:
    return ["--database", jobs.db.url_string, "--table", jobs.table]


def start_dashboard(
    jobs: Any, start_master: Callable[..., Daemon], **config: Any
) -> tuple[Daemon, int]:
    port = free_port()
    master = start_master(
        http=f"127.0.0.1:{port}", database=jobs.db.url_string, table=jobs.table, **config
    )
    wait_for(lambda: answers(port), 10, "the dashboard to answer")
    return master, port


def registered(master: Daemon, name: str) -> bool:
    return name in master.request("status")["workers"]


# --- the pages ----------------------------------------------------------------------


@pytest.mark.timeout(90)
def test_every_page_shows_real_rows_and_its_buttons_act(
    jobs, start_master, start_worker, browser, screenshots, tmp_path
):
    # Jobs whose id is listed in `failing` fail (exit 3); a retry is a new id: it succeeds.
    failing = tmp_path / "failing"
    command = (
        f"sh -c 'echo out-{{id}}; if grep -qx {{id}} {failing};"
        " then echo boom-{id} >&2; exit 3; fi'"
    )
    built = jobs.insert("build", 2, data='{"branch": "main"}')
    (broken,) = jobs.insert("build", data='{"branch": "broken"}')
    deployed = jobs.insert("deploy", 2)
    (manual,) = jobs.insert("build", status="manual", data='{"by": "hand"}')
    (waiting,) = jobs.insert("report")  # no worker serves report: it waits
    failing.write_text(f"{broken}\n{deployed[1]}\n")
    jobctl(*table_args(jobs), "schedule", "add", "nightly", "report", "--cron", "0 3 * * *")

    master, port = start_dashboard(jobs, start_master)
    worker = start_worker({"build": 2, "deploy": 1}, command=command, master=master.address)
    wait_for(lambda: registered(master, "w0"), 10, "w0 registered with the master")
    finished = jobs.wait_done([*built, broken, *deployed])
    assert [r["result"] for r in finished] == ["ok", "ok", "fail", "ok", "fail"]
    page = Dashboard(browser, port)

    # Overview: the charts of jobs finished per minute (ok and failed bars) and the
    # targets now: report has one waiting, build and deploy a failure each.
    text = page.open("/")
    assert "Overview" in text and "anonymous (operator)" in text
    assert page.all("svg.chart rect.ok") and page.all("svg.chart rect.failed")
    now = {
        row.find_element(By.CSS_SELECTOR, "td").text: [
            td.text for td in row.find_elements(By.CSS_SELECTOR, "td")
        ]
        for row in page.all("#now tbody tr")
    }
    assert now["report"][1:5] == ["1", "0", "0", "0"], now  # waiting, held, running, failed
    assert now["build"][4] == "1" and now["deploy"][4] == "1", now
    screenshots(browser, "01-overview")

    # Targets: the worker's slots, running, and the buttons.
    page.open("/targets")
    build = page.text("tr[data-target=build]")
    assert "w0: default=2" in build and "running" in build, build
    assert "w0: default=1" in page.text("tr[data-target=deploy]")
    report = page.text("tr[data-target=report]")
    assert "no live worker" in report and report.split()[1] == "1", report  # 1 waiting
    assert page.all("tr[data-target=build] button[name=pause]")
    assert not page.all("tr[data-target=report] button")  # nobody to pause it on
    screenshots(browser, "02-targets")

    # Jobs: every row, newest first, the failed ones marked.
    page.open("/jobs")
    ids = [int(a.text) for a in page.all("#jobs tbody tr td:first-child a")]
    assert ids == sorted([*built, broken, *deployed, manual, waiting], reverse=True)
    assert {int(tr.text.split()[0]) for tr in page.all("#jobs tr.fail")} == {broken, deployed[1]}
    assert "manual" in page.text(f"#jobs tr:has(a[href='/jobs/{manual}'])")
    screenshots(browser, "03-jobs")

    # A job: its fields, data and output, and the retry button of a failed one.
    text = page.open(f"/jobs/{broken}")
    assert f"Job {broken}" in text
    assert page.text("pre.data") == '{"branch": "broken"}'
    assert page.text("pre.stdout") == f"out-{broken}"
    assert page.text("pre.stderr") == f"boom-{broken}"
    fields = page.text("table.fields")
    assert "exit code 3" in fields and "worker w0" in fields and "result fail" in fields, fields
    assert page.all("button[name=retry]") and not page.all("button[name=run]")
    screenshots(browser, "04-job-failed")

    # Workers: the worker's name, address, targets and its own numbers.
    page.open("/workers")
    row = page.text("tr[data-worker=w0]")
    assert worker.address.removeprefix("tcp://") in row and "build, deploy" in row, row
    assert re.search(r"\d+(\.\d+)? s", row), row  # its uptime, from its status reply
    screenshots(browser, "05-workers")

    # Schedules: the one added, its rule and its next fire time.
    page.open("/schedules")
    row = page.text("tr[data-schedule=nightly]")
    assert "report" in row and "cron 0 3 * * *" in row and "yes" in row, row
    assert re.search(r"- \d{4}-\d\d-\d\d \d\d:\d\d:00", row), row  # last fire, next fire
    assert page.all("tr[data-schedule=nightly] button[name=disable]")
    screenshots(browser, "06-schedules")

    # Pause build from its button: the worker says it is paused; continue: it is not.
    page.open("/targets")
    assert page.submit("tr[data-target=build] button[name=pause]") == "/targets"
    wait_for(lambda: paused(worker, "build"), 10, "the worker to report build paused")
    assert not paused(worker, "deploy")
    page.wait_text("tr[data-target=build] td.state", r"paused on w0")
    screenshots(browser, "07-targets-paused")
    assert page.submit("tr[data-target=build] button[name=continue]") == "/targets"
    wait_for(lambda: not paused(worker, "build"), 10, "the worker to report build running")
    assert page.wait_text("tr[data-target=build] td.state", r"^running$")

    # Retry the failed job: the browser lands on the new job's page; it runs, and ok.
    page.open(f"/jobs/{broken}")
    retry = int(page.at(r"/jobs/(\d+)", page.submit("button[name=retry]")).group(1))
    assert retry > broken
    (row,) = jobs.wait_done([retry])
    assert (row["retry_of"], row["result"], row["stdout"]) == (broken, "ok", f"out-{retry}\n")
    assert row["data"] == '{"branch": "broken"}'
    page.wait_text("#job", r"status done result ok")  # the page caught up by itself
    assert page.text("h1") == f"Job {retry} done · ok"
    assert page.all(f"#job a[href='/jobs/{broken}']")  # "retry of", a link to the old job
    screenshots(browser, "08-job-retried")

    # Run the manual job from its page: it runs on the worker, and the page shows it.
    page.open(f"/jobs/{manual}")
    assert page.all("button[name=run]") and not page.all("button[name=retry]")
    assert page.submit("button[name=run]") == f"/jobs/{manual}"
    (row,) = jobs.wait_done([manual])
    assert (row["result"], row["stdout"], row["worker"]) == ("ok", f"out-{manual}\n", "w0")
    page.mark()
    page.wait_text("#job", r"status done result ok")
    assert page.marked(), "the job page was loaded again instead of refreshing itself"
    assert page.text("h1") == f"Job {manual} done · ok"
    assert f"out-{manual}" in page.text("pre.stdout") and not page.all("button[name=run]")
    screenshots(browser, "09-job-manual-done")

    # The jobs page refreshes itself: a job added and finished while it is open shows up.
    page.open("/jobs")
    page.mark()
    added = int(jobctl("--master", master.address, *table_args(jobs), "add", "build").stdout)
    jobs.wait_done([added])
    page.wait_text(f"#jobs tr:has(a[href='/jobs/{added}'])", r"done ok")
    assert page.marked(), "the jobs page was loaded again instead of refreshing itself"
    assert int(page.all("#jobs tbody tr td:first-child a")[0].text) == added
    screenshots(browser, "10-jobs-refreshed")


# --- logins, roles, CSRF --------------------------------------------------------------


def add_user(path: Path, name: str, role: str) -> None:
    result = CliRunner().invoke(
        jobctl_main,
        ["dashboard-user", "add", name, "--role", role, "--password-stdin", "--file", str(path)],
        input=PASSWORDS[name] + "\n",
    )
    assert result.exit_code == 0, result.output


@pytest.mark.timeout(90)
def test_logins_roles_csrf_tokens_and_the_metrics_basic_auth(
    jobs, start_master, start_worker, browser, screenshots, tmp_path
):
    users = tmp_path / "http-users"
    add_user(users, "olga", "operator")
    add_user(users, "victor", "viewer")
    assert oct(users.stat().st_mode & 0o777) == "0o600"
    lines = [line.split() for line in users.read_text().splitlines() if not line.startswith("#")]
    assert [(n, r) for n, r, _ in lines] == [("olga", "operator"), ("victor", "viewer")]
    assert all(h.startswith("$2") for _, _, h in lines)  # bcrypt hashes, no password
    assert not any(password in users.read_text() for password in PASSWORDS.values())

    (failed,) = jobs.insert("build", status="done", result="fail", return_code=1)
    jobctl(*table_args(jobs), "schedule", "add", "hourly", "build", "--every", "1h")
    master, port = start_dashboard(jobs, start_master, http_users=str(users))
    worker = start_worker({"build": 1}, master=master.address)
    wait_for(lambda: registered(master, "w0"), 10, "w0 registered with the master")

    # Without a session every page sends to the login; /metrics asks for basic auth.
    status, headers, _ = request(port, "GET", "/targets")
    assert (status, login_next(headers["Location"])) == (303, "/targets")
    status, headers, _ = request(port, "GET", "/jobs?status=done&target=build")
    assert (status, login_next(headers["Location"])) == (303, "/jobs?status=done&target=build")
    status, headers, _ = request(port, "GET", "/metrics")
    assert status == 401 and headers["WWW-Authenticate"].startswith("Basic")
    for user in ("olga", "victor"):
        status, _, text = request(
            port, "GET", "/metrics", Authorization=basic(user, PASSWORDS[user])
        )
        assert status == 200 and "jobd_master_workers 1.0" in text, text[:500]
    # A POST without a session goes nowhere either.
    assert request(port, "POST", "/targets/build/pause", {"csrf": "x"})[0] == 303
    assert not paused(worker, "build")

    # The operator logs in (back to the page first asked for, its query whole) and has
    # the buttons.
    page = Dashboard(browser, port)
    page.open("/jobs?status=done&target=build")
    assert login_next(page.path()) == "/jobs?status=done&target=build"
    page.login("olga", PASSWORDS["olga"])
    page.at(r"/jobs\?status=done&target=build")
    assert "olga (operator)" in page.text("header")
    assert [a.text for a in page.all("#jobs tbody tr td:first-child a")] == [str(failed)]
    page.open("/targets")
    assert page.all("tr[data-target=build] button[name=pause]")
    assert page.all("tr[data-target=build] button[name=continue]")
    screenshots(browser, "11-targets-operator")
    page.open(f"/jobs/{failed}")
    assert page.all("button[name=retry]")
    page.open("/schedules")
    assert page.all("tr[data-schedule=hourly] button[name=run]")
    # Even the operator's POST needs the session's CSRF token.
    assert page.post("/targets/build/pause", None)[0] == 403
    assert page.post("/targets/build/pause", "not-the-token")[0] == 403
    assert not paused(worker, "build")
    assert page.submit("header button") == "/login"  # log out
    page.open("/targets")
    assert login_next(page.path()) == "/targets"

    # The viewer sees every page, and no form that acts: the one POST is "log out".
    page.login("victor", PASSWORDS["victor"])
    page.at("/targets")
    assert "victor (viewer)" in page.text("header")
    assert "w0: default=1" in page.text("tr[data-target=build]")
    for path in ("/targets", f"/jobs/{failed}", "/schedules", "/", "/jobs", "/workers"):
        page.open(path)
        posts = [f.get_attribute("action") for f in page.all("form[method=post]")]
        assert [urlsplit(a).path for a in posts] == ["/logout"], (path, posts)
        assert "log out" in page.text("header")
    page.open("/targets")
    screenshots(browser, "12-targets-viewer")
    # A forged POST with the viewer's own session and token is refused, and changes
    # nothing: the worker says build is not paused, and a job of build runs.
    status, text = page.post("/targets/build/pause", page.csrf())
    assert (status, text) == (403, "victor is a viewer\n")
    status, text = page.post(f"/jobs/{failed}/retry", page.csrf())
    assert status == 403
    assert not paused(worker, "build")
    out = jobctl("--master", master.address, *table_args(jobs), "--json", "add", "build", "--wait")
    assert '"result": "ok"' in out.stdout
    assert jobs.count("retry_of IS NOT NULL") == 0
    # A session that ends while a page is open: its polling sends the browser to the
    # login (not the login page inside the page), to come back to this page.
    page.open("/jobs?status=done")
    browser.delete_all_cookies()
    wait_for(
        lambda: login_next(page.path()) == "/jobs?status=done", REFRESHED_WITHIN,
        "the polling to send the browser to the login",
    )  # fmt: skip
    assert not page.all("#jobs") and page.all("form.login")

    # A wrong password: the error.  Five failures in a minute (logins and the metrics'
    # basic auth count alike), and the sixth try is refused (429) whatever its password.
    page.open("/login")
    page.login("olga", "wrong")
    assert page.wait_text("p.error", "wrong user or password")
    assert page.path() == "/login"
    screenshots(browser, "13-login-failed")
    wrong = {"user": "olga", "password": "wrong", "next": "/"}
    for _ in range(3):
        status, _, text = request(port, "POST", "/login", wrong)
        assert status == 401 and "wrong user or password" in text
    status, headers, _ = request(port, "GET", "/metrics", Authorization=basic("victor", "x"))
    assert status == 401 and headers["WWW-Authenticate"].startswith("Basic")
    status, _, text = request(port, "POST", "/login", wrong)
    assert (status, text) == (429, "too many failed logins; wait a minute\n")
    right = {"user": "olga", "password": PASSWORDS["olga"]}
    assert request(port, "POST", "/login", right)[0] == 429
    metrics = request(port, "GET", "/metrics", Authorization=basic("olga", PASSWORDS["olga"]))
    assert metrics[0] == 429


# --- binding ---------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_a_network_address_needs_users_or_allow_insecure(start_master, tmp_path):
    port = free_port()
    config = {
        "listen": f"tcp://127.0.0.1:{free_port()}",
        "events": f"tcp://127.0.0.1:{free_port()}",
        "http": f"0.0.0.0:{port}",
    }
    path = tmp_path / "exposed.yaml"
    path.write_text(yaml.safe_dump(config))
    done = subprocess.run(
        [sys.executable, "-m", "jobd_master", "--config", str(path)],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    said = done.stdout + done.stderr
    assert done.returncode == 2, said
    assert "http_users" in said and "allow_insecure" in said and f"0.0.0.0:{port}" in said, said

    master = start_master(http=f"0.0.0.0:{port}", allow_insecure=True)
    wait_for(lambda: answers(port, "/"), 10, "the dashboard on 0.0.0.0")
    assert "anonymous (operator)" in request(port, "GET", "/workers")[2]
    assert master.stop() == 0
