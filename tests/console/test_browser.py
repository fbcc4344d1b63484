"""The console in a real browser: Debian's Chromium driven by Playwright against a live server,
a real worker and the ComfyUI test server. An operator logs in, reads the dashboard, registers an
executor, imports a workflow, binds it to an ability, test-runs it, grants a user points and sees
that user's task. A failing step leaves a screenshot in var/test-screenshots/<test name>.png.

Set PODI_DOCS_SCREENSHOTS=1 to also refresh docs/console-dashboard.png from this run.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import sync_playwright

from tests.conftest import PASSWORD, access_token
from tests.tasks.conftest import INVERT_GRAPH, INVERT_SCHEMA

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = ROOT / "var" / "test-screenshots"
CHROMIUM = os.environ.get("PODI_CHROMIUM", "/usr/bin/chromium")

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail(
            f"{CHROMIUM} is missing: run `apt-get install -y chromium` (or `make test` as root), "
            "or point PODI_CHROMIUM at a Chromium binary"
        )

    # Playwright's sync API parks an event loop in this thread; the ORM calls the test makes
    # between browser steps are plain synchronous calls, so allow them.
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-dev-shm-usage"]
        )
        yield launched
        launched.close()
    os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)


@pytest.fixture
def page(browser, request, live_server, settings):
    settings.PUBLIC_BASE_URL = live_server.url
    context = browser.new_context(viewport={"width": 1280, "height": 900}, base_url=live_server.url)
    context.set_default_timeout(15_000)
    opened = context.new_page()
    yield opened
    failed = getattr(request.node, "rep_call", None)
    if failed is not None and failed.failed:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        opened.screenshot(path=str(SCREENSHOTS / f"{request.node.name}.png"), full_page=True)
    context.close()


def pick(page, field: str, text: str) -> None:
    """Choose ``text`` in an admin autocomplete (select2) field."""
    page.locator(f"#id_{field} + .select2 .select2-selection").click()
    page.locator(".select2-container--open .select2-search__field").fill(text)
    page.locator(".select2-results__option", has_text=text).first.click()


def tile(page, name: str) -> str:
    return page.locator(f"#ops-{name} b").inner_text().strip()


def test_operator_sets_up_an_ability_and_sees_a_users_task(
    page, live_server, worker, comfy, staff, owner
):
    # Log in; the dashboard shows numbers.
    page.goto("/admin/")
    page.fill("#id_username", staff.username)
    page.fill("#id_password", PASSWORD)
    page.click("input[type=submit]")
    page.wait_for_selector("#podi-ops")
    assert tile(page, "queued") == "0"
    assert tile(page, "running") == "0"
    assert tile(page, "charged") == "0"
    assert page.locator("#ops-executors").inner_text().count("No executor yet") == 1

    # Register the ComfyUI test server and check it.
    page.goto("/admin/integrations/executor/add/")
    page.fill("#id_name", "gpu-1")
    page.select_option("#id_kind", "comfyui")
    page.fill("#id_base_url", comfy.url)
    page.fill("#id_max_concurrency", "2")
    page.click("input[name=_continue]")
    page.wait_for_selector("text=Check now")
    page.click("text=Check now")
    page.wait_for_selector(".messagelist")
    assert "healthy" in page.locator(".messagelist").inner_text().lower()

    # Import a workflow version.
    page.goto("/admin/integrations/workflow/add/")
    page.fill("#id_name", "invert")
    page.select_option("#id_kind", "comfyui")
    page.fill("#id_new_definition", json.dumps(INVERT_GRAPH))
    page.fill("#id_new_params_schema", json.dumps(INVERT_SCHEMA))
    page.click("input[name=_save]")
    page.wait_for_selector(".messagelist")
    assert "Created version 1." in page.locator(".messagelist").inner_text()

    # An ability and its binding.
    page.goto("/admin/integrations/ability/add/")
    page.fill("#id_code", "invert-image")
    page.fill("#id_display_name", "Invert an image")
    page.fill("#id_points", "10")
    page.click("input[name=_save]")
    page.wait_for_selector(".messagelist")
    page.goto("/admin/integrations/workflowbinding/add/")
    pick(page, "ability", "invert-image")
    pick(page, "workflow", "invert")
    pick(page, "executor", "gpu-1")
    page.click("input[name=_continue]")
    page.wait_for_selector("text=✓ all installed")
    binding_url = page.url

    # Test run: a free task pinned to the binding, followed to success.
    page.goto(binding_url.replace("/change/", "/test-run/"))
    page.fill("#id_params", json.dumps({"width": 8, "height": 8}))
    page.click("input[name=_submit]")
    page.wait_for_selector(".messagelist")
    assert "Submitted test task" in page.locator(".messagelist").inner_text()
    for _ in range(60):
        if "succeeded" in page.locator("#content").inner_text():
            break
        page.wait_for_timeout(250)
        page.reload()
    assert "succeeded" in page.locator("#content").inner_text()

    # Grant the user points (their account exists once they used the wallet).
    user = httpx.Client(
        base_url=live_server.url, headers={"Authorization": f"Bearer {access_token(owner)}"}
    )
    assert user.get("/api/wallet/v1/balance").status_code == 200
    page.goto("/admin/wallet/account/")
    page.locator("tr", has_text=owner.username).locator("input.action-select").check()
    page.select_option("select[name=action]", "grant_points")
    page.click("button[name=index]")
    page.fill("#id_points", "100")
    page.fill("#id_reason", "welcome")
    page.get_by_role("button", name="Grant points").click()
    page.wait_for_selector(".messagelist")
    assert "Granted +100 points on 1 account(s)." in page.locator(".messagelist").inner_text()

    # The user's task shows up in the console.
    submitted = user.post("/api/tasks/v1/submit", json={"action": "invert-image", "params": {}})
    assert submitted.status_code == 202, submitted.text
    task_id = submitted.json()["taskId"]
    page.goto(f"/admin/tasks/task/?q={task_id}")
    row = page.locator("#result_list tbody tr", has_text=task_id)
    for _ in range(60):
        if "succeeded" in row.inner_text():
            break
        page.wait_for_timeout(250)
        page.reload()
    assert "succeeded" in row.inner_text()
    assert owner.username in row.inner_text()

    # The dashboard moved; it is what docs/console-dashboard.png shows.
    page.goto("/admin/")
    assert tile(page, "charged") == "10"
    assert re.fullmatch(r"\d+(\.\d+)?", tile(page, "succeeded"))
    assert "gpu-1" in page.locator("#ops-executors").inner_text()
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "console-dashboard.png"), full_page=False)
    if os.environ.get("PODI_DOCS_SCREENSHOTS"):
        page.screenshot(path=str(ROOT / "docs" / "console-dashboard.png"), full_page=False)
