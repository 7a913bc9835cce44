"""Flower in a real browser (headless Chromium through Selenium), as a user monitors pulls.

A simulated cluster (API double, a containerd per node, the product's watcher and workers) and
``celery -A tasks flower`` with basic auth and the chart's task columns, started before any
workload exists, as after an install. Three Deployments then make three kinds of pull: one
that succeeds, one whose tag the registry does not have (a permanent failure) and one from a
registry that is down (a transient failure, retried). The test clicks Flower's state filters and
reads the task list as a person would; screenshots of each view are in the test's tmp_path.
"""

from __future__ import annotations

import base64
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests
from kubernetes import client
from selenium import webdriver
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement

from localcluster import Registry, free_port, product, push_image
from localcluster.harness import unavailable
from localcluster.manifests import deployment
from localcluster.services import NatsServer, RedisServer

from .conftest import SimCluster, run_cluster, wait_for

pytestmark = pytest.mark.e2e

AUTH = ("operator", "flower-e2e")
SHOWN_TIMEOUT = 90.0  # workload created -> its pull task's state in Flower's list
DRAW_TIMEOUT = 3.0  # a click on a state filter -> the list redrawn


@pytest.fixture(scope="module")
def cluster(workdir: Path, redis_server: RedisServer, registry: Registry) -> Iterator[SimCluster]:
    """A cluster with a NATS of its own, so its catalog holds only this module's images."""
    with (
        NatsServer(workdir / f"nats-{uuid.uuid4().hex[:6]}") as nats,
        run_cluster(workdir, registry, f"{redis_server.url}/3", nats.url) as running,
    ):
        yield running


@pytest.fixture(scope="module")
def flower(cluster: SimCluster) -> str:
    """Flower with basic auth and the chart's task columns, before any workload exists."""
    port = free_port()
    env = {**cluster.env, "FLOWER_BASIC_AUTH": ":".join(AUTH)}
    cluster.start(product.flower(port, env, cluster.logdir))
    url = f"http://127.0.0.1:{port}"
    wait_for(lambda: product.answers(f"{url}/healthcheck"), 30, "Flower", cluster)
    return url


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not chromium or not driver:
        unavailable("chromium and chromium-driver are not installed (scripts/bootstrap)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage"):
        options.add_argument(flag)
    options.add_argument("--window-size=1600,1000")
    session = webdriver.Chrome(options=options, service=Service(executable_path=driver))
    yield session
    session.quit()


@pytest.fixture(scope="module")
def down_registry(cluster: SimCluster, workdir: Path) -> Iterator[Registry]:
    """A registry every node may pull from, which is down once an image is pushed to it."""
    with Registry(workdir / f"down-{uuid.uuid4().hex[:6]}") as down:
        for node in cluster.nodes.values():
            node.add_insecure_registry(down.host)
        yield down


@pytest.fixture(scope="module")
def pulls(
    cluster: SimCluster, flower: str, registry: Registry, down_registry: Registry
) -> dict[str, str]:
    """Deployments whose images pull fine, are missing, and sit on a registry that is down."""
    run = uuid.uuid4().hex[:6]
    images = {
        "good": push_image(registry.host, f"browser/good-{run}", "v1", size_mib=1).ref,
        "missing": f"{registry.host}/browser/missing-{run}:v1",  # never pushed
        "flaky": push_image(down_registry.host, f"browser/flaky-{run}", "v1", size_mib=1).ref,
    }
    down_registry.pause()
    apps = client.AppsV1Api(cluster.api)
    for kind, image in images.items():
        apps.create_namespaced_deployment("default", deployment(f"{kind}-{run}", image))
    return images


def test_flower_refuses_the_task_list_without_credentials(flower: str) -> None:
    assert requests.get(f"{flower}/tasks", timeout=10).status_code == 401


def test_a_permanent_failure_is_listed_under_failed_with_its_reason_image_and_node(
    browser: WebDriver, cluster: SimCluster, flower: str, pulls: dict[str, str], tmp_path: Path
) -> None:
    open_tasks(browser, flower)

    rows = rows_under(browser, "Failed", pulls["missing"], cluster)
    browser.save_screenshot(str(tmp_path / "flower-failed.png"))

    assert {row["Worker"] for row in rows} == {f"warm@{node}" for node in cluster.nodes}
    for row in rows:
        assert row["State"] == "FAILURE"
        assert row["Name"] == "warm.pull_image"
        node = row["Worker"].removeprefix("warm@")
        assert f"'node': '{node}'" in row["kwargs"]  # the node, beside the image
        assert row["Exception"].startswith("PullFailedError(")
        assert "not found" in row["Exception"]  # containerd's own words
    assert not any(pulls["good"] in row["kwargs"] for row in table_rows(browser))


def test_a_transient_failure_is_listed_under_retried_with_its_reason(
    browser: WebDriver, cluster: SimCluster, flower: str, pulls: dict[str, str], tmp_path: Path
) -> None:
    open_tasks(browser, flower)

    rows = rows_under(browser, "Retried", pulls["flaky"], cluster)
    browser.save_screenshot(str(tmp_path / "flower-retried.png"))

    for row in rows:  # an attempt per row: each retry is a task of its own
        assert row["State"] == "RETRY"
        assert "TransientPullError(" in row["Exception"]
        assert "connection refused" in row["Exception"]


def test_a_good_pull_succeeds_and_every_column_of_the_chart_is_shown(
    browser: WebDriver, cluster: SimCluster, flower: str, pulls: dict[str, str], tmp_path: Path
) -> None:
    open_tasks(browser, flower)

    rows = rows_under(browser, "Succeeded", pulls["good"], cluster)
    browser.save_screenshot(str(tmp_path / "flower-succeeded.png"))

    assert column_headers(browser) == [
        "Name", "UUID", "State", "kwargs", "Exception", "Result", "Received", "Runtime", "Worker"
    ]  # fmt: skip
    assert {row["Result"] for row in rows} == {"'pulled'"}
    assert len(rows) == len(cluster.nodes)


# --- the browser side ------------------------------------------------------------------------


def open_tasks(browser: WebDriver, flower: str) -> None:
    """Flower's task list, authenticated as the chart's basic auth expects."""
    token = base64.b64encode(":".join(AUTH).encode()).decode()
    browser.execute_cdp_cmd("Network.enable", {})
    browser.execute_cdp_cmd(
        "Network.setExtraHTTPHeaders", {"headers": {"Authorization": f"Basic {token}"}}
    )
    browser.get(f"{flower}/tasks")


def rows_under(
    browser: WebDriver, state_filter: str, image: str, cluster: SimCluster
) -> list[dict[str, str]]:
    """Click a state filter ("Failed", ...) until rows for ``image`` show from every node."""
    workers = {f"warm@{node}" for node in cluster.nodes}

    def shown() -> bool:
        browser.refresh()  # the list is loaded once per page view
        browser.find_element(By.XPATH, f"//button[text()='{state_filter}']").click()
        drawn = time.monotonic() + DRAW_TIMEOUT  # the filtered list loads after the click
        while time.monotonic() < drawn:
            if {row["Worker"] for row in for_image(table_rows(browser), image)} == workers:
                return True
            time.sleep(0.2)
        return False

    wait_for(_tolerant(shown), SHOWN_TIMEOUT, f"{image} under {state_filter!r}", cluster)
    return for_image(table_rows(browser), image)


def table_rows(browser: WebDriver) -> list[dict[str, str]]:
    """The task list as a person reads it: each row's cells by their column header."""
    headers = column_headers(browser)
    rows = browser.find_elements(By.CSS_SELECTOR, "#tasks-table tbody tr")
    cells = [[text_of(cell) for cell in row.find_elements(By.TAG_NAME, "td")] for row in rows]
    return [dict(zip(headers, row, strict=True)) for row in cells if len(row) == len(headers)]


def column_headers(browser: WebDriver) -> list[str]:
    return [text_of(cell) for cell in browser.find_elements(By.CSS_SELECTOR, "#tasks-table th")]


def text_of(element: WebElement) -> str:
    """The text in the page, not as styled (the theme upper-cases headers, cells clip)."""
    return " ".join(str(element.get_attribute("textContent") or "").split())


def for_image(rows: list[dict[str, str]], image: str) -> list[dict[str, str]]:
    return [row for row in rows if f"'image': '{image}'" in row["kwargs"]]


def _tolerant(check: Callable[[], bool]) -> Callable[[], bool]:
    """A check that a page still loading (stale or missing elements) answers False."""

    def tolerant() -> bool:
        try:
            return check()
        except WebDriverException:
            return False

    return tolerant
