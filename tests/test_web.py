"""``fleet web``: the operators' page in a real browser against a real worker, its safety
(read-only without a token, no forged or cross-origin actions, no secret shown, Redis text
shown as text), and the Grafana dashboard's queries against the metrics fleet exports."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from fleet import health
from fleet.client import FleetClient
from fleet.deadletters import DeadLetter, DeadLetters
from fleet.errors import JobFailedError
from fleet.keys import bulk_done_key, bulk_run_key
from fleet.processes import worker_process
from fleet.registry import Queue
from fleet.services import free_port
from fleet.settings import Settings
from fleet.web import create_app
from tests import images
from tests.conftest import unavailable

ROOT = Path(__file__).parent.parent
TOKEN = "t0ken-for-the-test"
HOSTILE = '<script>window.pwned = 1</script><b id="bold">not bold</b>'


def letter(job_id: str, message: str = "original missing", queue: str = "img") -> DeadLetter:
    payload = {"image_id": 7, "filename": "<img src=x onerror=window.pwned=2>", "ext": "jpg"}
    return DeadLetter(
        job_id, queue, "render_upload", [payload], "MissingOriginalError", message, 1, time.time()
    )


async def add(client: FleetClient, *letters: DeadLetter) -> DeadLetters:
    found = DeadLetters(client.redis, client.settings.namespace, client.settings.dead_letter_ttl_s)
    for one in letters:
        await found.add(one)
    return found


@contextlib.asynccontextmanager
async def page(settings: Settings, host: str = "127.0.0.1:8400") -> AsyncIterator[httpx.AsyncClient]:
    """The app in this event loop, with its lifespan (its Redis client), reached over ASGI."""
    app = create_app(settings)
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url=f"http://{host}") as http,
    ):
        yield http


# --- safety ---------------------------------------------------------------------------------------


async def test_without_a_token_the_page_is_read_only(settings: Settings, client: FleetClient) -> None:
    letters = await add(client, letter("a1"))
    async with page(settings) as http:
        state = (await http.get("/api/state")).json()
        assert state["actions"] is False
        assert [x["job_id"] for x in state["dead"]["img"]["letters"]] == ["a1"]
        for action in ("retry", "purge"):
            for query in ("?job_id=a1", "?queue=img", ""):
                refused = await http.post(f"/api/dead/{action}{query}", headers={"Authorization": "Bearer x"})
                assert refused.status_code == 403 and "read-only" in refused.json()["error"]
    assert [x.job_id for x in await letters.list()] == ["a1"]  # nothing happened


async def test_actions_need_the_token_in_a_header_from_this_origin(
    settings: Settings, client: FleetClient
) -> None:
    settings = settings.replace(web_token=TOKEN)
    letters = await add(client, letter("b1"), letter("b2"), letter("d1", queue="db"))
    forged = [
        {},  # a cross-site form: no header at all
        {"Authorization": "Bearer wrong"},
        {"Authorization": TOKEN},
        {"Authorization": f"Bearer {TOKEN}", "Origin": "http://evil.example"},
        {"Authorization": f"Bearer {TOKEN}", "Sec-Fetch-Site": "cross-site"},
    ]
    async with page(settings) as http:
        assert (await http.get("/api/state")).json()["actions"] is True
        for headers in forged:
            answer = await http.post("/api/dead/purge?job_id=b1", headers=headers)
            assert answer.status_code == 403, headers
        assert len(await letters.list()) == 3
        mine = {"Authorization": f"Bearer {TOKEN}", "Origin": "http://127.0.0.1:8400"}
        purged = await http.post("/api/dead/purge?job_id=b1", headers=mine)
        assert purged.status_code == 200 and purged.json() == {"purged": 1}
        assert (await http.post("/api/dead/purge?job_id=b1", headers=mine)).status_code == 404
        assert (await http.post("/api/dead/purge?queue=nope", headers=mine)).status_code == 400
        assert (await http.post("/api/dead/purge?queue=img", headers=mine)).json() == {"purged": 1}
        assert [x.job_id for x in await letters.list()] == ["d1"]  # the db queue's is untouched


async def test_a_letter_that_never_was_a_job_is_refused_on_retry_and_kept(
    settings: Settings, client: FleetClient
) -> None:
    settings = settings.replace(web_token=TOKEN)
    bad = DeadLetter("q1", "img", "no_such_job", ["x"], "InvalidPayloadError", "planted", 1, time.time())
    letters = await add(client, bad)
    async with page(settings) as http:
        answer = await http.post("/api/dead/retry?queue=img", headers={"Authorization": f"Bearer {TOKEN}"})
    assert answer.status_code == 200
    assert (
        answer.json()["queued"] == {} and "not a job fleet can queue again" in answer.json()["refused"]["q1"]
    )
    assert [x.job_id for x in await letters.list()] == ["q1"]


async def test_a_rebound_host_name_is_refused_on_loopback(settings: Settings) -> None:
    async with page(settings, host="evil.example:8400") as http:
        assert (await http.get("/api/state")).status_code == 403
        assert (await http.get("/")).status_code == 403
    async with page(settings.replace(web_host="0.0.0.0"), host="fleet.internal:8400") as http:
        assert (await http.get("/api/state")).status_code == 200  # published on purpose: any name


async def test_no_secret_is_ever_in_a_page_or_an_answer(settings: Settings, client: FleetClient) -> None:
    database = "postgresql+asyncpg://board:db-s3cret@db:5432/board"
    shown = settings.replace(web_token=TOKEN, database_url=database)
    await add(client, letter("s1"))
    async with page(shown) as http:
        bodies = [(await http.get(path)).text for path in ("/", "/page.js", "/page.css", "/api/state")]
    down = shown.replace(redis_url=f"redis://:redis-s3cret@127.0.0.1:{free_port()}/0")
    async with page(down) as http:
        answer = await http.get("/api/state")
    assert answer.status_code == 503 and "cannot reach Redis" in answer.json()["error"]
    bodies.append(answer.text)
    for body in bodies:
        for secret in (TOKEN, "db-s3cret", "redis-s3cret"):
            assert secret not in body


async def test_page_headers_forbid_inline_script_and_framing(settings: Settings) -> None:
    async with page(settings) as http:
        answer = await http.get("/")
    policy = answer.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "unsafe-inline" not in policy
    assert "frame-ancestors 'none'" in policy and answer.headers["x-content-type-options"] == "nosniff"
    assert "<script>" not in answer.text  # the page's only script is page.js


# --- what it shows --------------------------------------------------------------------------------


async def test_state_shows_replicas_and_bulk_runs_with_progress_and_eta(
    settings: Settings, client: FleetClient
) -> None:
    beat = health.Heartbeat(settings, Queue.IMG, health.ReplicaStats(succeeded=5, pool_size=3))
    beat.replica = "host-a:1"
    await beat.beat(client.redis)
    run = bulk_run_key(settings.namespace, "0a1b2c")
    started = time.time() - 100
    await client.redis.hset(  # type: ignore[misc]
        run, mapping={"total": 1000, "fed": 500, "rendered": 180, "skipped": 20, "failed": 0,
                      "cursor": 500, "started_at": started, "finished": 0},
    )  # fmt: skip
    await client.redis.setbit(bulk_done_key(run, 0), 3, 1)  # the run's bitmap is not a run
    async with page(settings) as http:
        state = (await http.get("/api/state")).json()
    (replica,) = state["replicas"]
    assert replica["replica"] == "host-a:1" and replica["live"] and replica["succeeded"] == 5
    assert 0 <= replica["beat_age_s"] < settings.health_interval_s
    assert replica["pool_size"] == 3 and replica["rss_bytes"] > 10_000_000  # this test process
    (shown,) = state["runs"]
    assert shown["run_id"] == "0a1b2c" and shown["done"] == 200 and not shown["finished"]
    assert 1.9 < shown["images_per_s"] <= 2.0  # 200 in a bit over 100 s
    assert 400 <= shown["eta_s"] <= 401  # 800 left at that rate
    assert next(q for q in state["queues"] if q["queue"] == "img")["live_replicas"] == 1


# --- in a real browser ----------------------------------------------------------------------------


def browser() -> Any:
    """Headless Debian chromium through chromedriver (no download: both paths are given)."""
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver):
        unavailable(
            "chromium and chromium-driver are not installed (apt-get install chromium chromium-driver)"
        )
    from selenium import webdriver

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1500,1250"):
        options.add_argument(arg)
    return webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=driver))


@contextlib.contextmanager
def web_process(settings: Settings) -> Iterator[str]:
    """``python -m fleet web`` in its own process; yields its URL once it answers."""
    env = {**os.environ, **settings.as_env()}
    proc = subprocess.Popen([sys.executable, "-m", "fleet", "web"], env=env)
    url = f"http://127.0.0.1:{settings.web_port}/"
    try:
        until(lambda: _answers(url + "api/state"), "fleet web to answer")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def until(done: Callable[[], Any], what: str, timeout_s: float = 60) -> Any:
    deadline = time.monotonic() + timeout_s
    while not (result := done()):
        assert time.monotonic() < deadline, f"no {what} within {timeout_s} s"
        time.sleep(0.1)
    return result


async def _dead_letter_of_a_missing_original(settings: Settings) -> str:
    async with await FleetClient.connect(settings) as client:
        job = await client.render_upload(1, "late-upload", "jpg")
        with pytest.raises(JobFailedError, match="does not exist"):
            await job.result(timeout=60, poll_delay=0.05)
        await add(client, letter("hostile", message=HOSTILE))
        return job.job_id


def test_a_dead_letter_is_retried_from_the_page_and_the_job_finishes(settings: Settings) -> None:
    from selenium.webdriver.common.by import By

    settings = settings.replace(web_token=TOKEN, web_port=free_port(), health_interval_s=1.0)
    driver = browser()
    with worker_process(["img"], settings), web_process(settings) as url:
        job_id = asyncio.run(_dead_letter_of_a_missing_original(settings))
        try:
            driver.get(url)
            row = f'tr[data-job-id="{job_id}"]'
            until(lambda: driver.find_elements(By.CSS_SELECTOR, row), "dead letter on the page")
            assert driver.find_elements(By.CSS_SELECTOR, "button.retry") == []  # no token given yet
            assert "MissingOriginalError" in driver.find_element(By.CSS_SELECTOR, f"{row} td.reason").text

            # Redis text is shown as text: the script never ran, no element was made of it.
            reason = driver.find_element(By.CSS_SELECTOR, 'tr[data-job-id="hostile"] td.reason').text
            assert reason == f"MissingOriginalError: {HOSTILE}"
            payload = driver.find_element(By.CSS_SELECTOR, 'tr[data-job-id="hostile"] td.payload').text
            assert "<img src=x onerror=window.pwned=2>" in payload
            assert driver.execute_script("return window.pwned") is None
            assert (
                driver.find_elements(By.ID, "bold") == []
                and driver.find_elements(By.CSS_SELECTOR, "td img") == []
            )

            driver.find_element(By.ID, "token").send_keys(TOKEN)
            driver.find_element(By.ID, "token-use").click()
            button = until(
                lambda: driver.find_elements(By.CSS_SELECTOR, f"{row} button.retry"), "retry button"
            )
            images.jpeg(settings.storage_path, "late-upload.jpg", 640, 480)  # the cause is fixed
            button[0].click()

            until(lambda: not driver.find_elements(By.CSS_SELECTOR, row), "letter gone from the page")
            assert "queued again: 1" in driver.find_element(By.ID, "said").text
            thumbs = settings.storage_path / "thumbs"
            until(lambda: list(thumbs.glob("late-upload.*")), "thumbnail of the retried job")
            until(lambda: "img: 1 dead letter(s)" in driver.find_element(By.ID, "dead").text, "count updated")
            live = "#replicas tr:not(.stale) td"
            until(
                lambda: any(c.text == "live" for c in driver.find_elements(By.CSS_SELECTOR, live)), "replica"
            )
            shot = screenshot_path()
            assert driver.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
        finally:
            driver.quit()


def screenshot_path() -> Path:
    """docs/web.png for the README only when asked (FLEET_WRITE_SCREENSHOT=1): CI keeps the tree clean."""
    if os.environ.get("FLEET_WRITE_SCREENSHOT") == "1":
        return ROOT / "docs" / "web.png"
    return Path(os.environ.get("TMPDIR", "/tmp")) / f"fleet-web-{os.getpid()}.png"


# --- the Grafana dashboard ------------------------------------------------------------------------

GRAFANA = ROOT / "compose" / "grafana"
PROMQL_WORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless",
    "offset", "le", "inf", "nan",
}  # fmt: skip


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads: identifiers that are not functions,
    keywords, label names (in braces or grouping lists), durations or variables."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings (label values)
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    text = re.sub(r"\[[^\]]*\]", "", text)  # ranges
    text = re.sub(r"\$\w+", "", text)  # dashboard variables
    names = set(re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*(?![A-Za-z0-9_:]*\s*\()", text))
    return {n for n in names if n.lower() not in PROMQL_WORDS and not re.fullmatch(r"\d+\w*", n)}


def exported_names() -> set[str]:
    """Every series name fleet's registry can export, with Prometheus' suffixes."""
    import prometheus_client

    import fleet.metrics  # noqa: F401  (registers fleet's metrics)

    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"], "gauge": [""]}
    names = set()
    for family in prometheus_client.REGISTRY.collect():
        names |= {family.name + s for s in suffixes.get(family.type, [""])}
        names |= {sample.name for sample in family.samples}
    return names


def dashboard_exprs() -> list[str]:
    dashboard = json.loads((GRAFANA / "dashboards" / "fleet.json").read_text())
    return [t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", [])]


def test_the_metric_name_check_catches_a_wrong_name() -> None:
    expr = 'histogram_quantile(0.95, sum by (le, queue) (rate(fleet_job_duration_bucket{queue=~"$q"}[5m])))'
    assert metric_names(expr) == {"fleet_job_duration_bucket"}
    assert metric_names(expr) - exported_names() == {"fleet_job_duration_bucket"}  # _seconds is missing
    assert metric_names("sum(rate(fleet_jobs_succeeded_total[1m])) / max(fleet_queue_ready)") == {
        "fleet_jobs_succeeded_total", "fleet_queue_ready",
    }  # fmt: skip


def test_every_dashboard_query_reads_a_metric_fleet_exports() -> None:
    exprs = dashboard_exprs()
    assert len(exprs) >= 10
    read = set().union(*(metric_names(e) for e in exprs))
    assert read - exported_names() == set()
    fleet_own = {n for n in read if n.startswith("fleet_")}
    assert {"fleet_queue_ready", "fleet_jobs_succeeded_total", "fleet_job_duration_seconds_bucket",
            "fleet_job_queue_wait_seconds_bucket", "fleet_jobs_dead_lettered_total",
            "fleet_render_pool_size"} <= fleet_own  # fmt: skip
    assert "process_resident_memory_bytes" in read


def test_grafana_is_provisioned_in_standalone_compose() -> None:
    standalone = yaml.safe_load(
        (ROOT / "compose" / "standalone.yml").read_text().replace("!override", "").replace("!reset", "")
    )
    grafana = standalone["services"]["grafana"]
    image, tag = grafana["image"].split(":")
    assert image == "grafana/grafana" and re.fullmatch(r"\d+\.\d+\.\d+", tag)
    binds = {m.split(":")[1]: m.split(":")[0] for m in grafana["volumes"] if m.startswith("./")}
    assert set(binds) == {"/etc/grafana/provisioning", "/var/lib/grafana/dashboards"}
    assert all((ROOT / "compose" / source).is_dir() for source in binds.values())
    sources = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())
    (datasource,) = sources["datasources"]
    assert datasource["url"] == "http://prometheus:9090"
    dashboard = json.loads((GRAFANA / "dashboards" / "fleet.json").read_text())
    used = {t["datasource"]["uid"] for p in dashboard["panels"] for t in p.get("targets", [])}
    assert used == {datasource["uid"]}


def test_compose_runs_the_page_beside_the_workers_on_loopback_only() -> None:
    from fleet.cli import build_parser

    base = yaml.safe_load((ROOT / "compose" / "docker-compose.yml").read_text())
    web = base["services"]["web"]
    assert build_parser().parse_args(web["command"][1:]).command == "web"
    assert web["environment"]["WEB_HOST"] == "0.0.0.0"  # inside the container; published below
    assert all(str(p).startswith("127.0.0.1:") for p in web["ports"])
    Settings.from_env({k: str(v) for k, v in web["environment"].items()})
