"""The console in a real browser: Debian's Chromium driven by Playwright against a live server,
a real worker and the ComfyUI test server. An operator logs in, reads the dashboard, registers an
executor, imports a workflow version from an API-format JSON file and activates it, binds it to an
ability, test-runs it (the task page refreshes itself and shows the output thumbnail, loaded),
grants a user points from their page and follows that user's task to its hold and ledger entries.
A failing step leaves a screenshot in var/test-screenshots/<test name>.png.

Set PODI_DOCS_SCREENSHOTS=1 to also refresh docs/console-dashboard.png and docs/console-task.png
from this run.
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


def thumbnail_loaded(page, width: int) -> None:
    """The task page's output thumbnail really loaded in the browser (not just an <img>)."""
    page.wait_for_function(
        "() => { const img = document.querySelector('img.podi-thumb');"
        " return img && img.complete && img.naturalWidth > 0; }"
    )
    assert page.evaluate("document.querySelector('img.podi-thumb').naturalWidth") == width


def tile(page, name: str) -> str:
    return page.locator(f"#ops-{name} b").inner_text().strip()


def test_operator_sets_up_an_ability_and_sees_a_users_task(
    page, live_server, worker, comfy, staff, owner, tmp_path
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

    # Import a workflow from an API-format JSON file (its first version is active), then a
    # second version, not activated on save, activated with the button on its page.
    exported = tmp_path / "invert_api.json"
    exported.write_text(json.dumps(INVERT_GRAPH))
    page.goto("/admin/integrations/workflow/add/")
    page.fill("#id_name", "invert")
    page.select_option("#id_kind", "comfyui")
    page.set_input_files("#id_definition_file", str(exported))
    page.fill("#id_new_params_schema", json.dumps(INVERT_SCHEMA))
    page.click("input[name=_continue]")
    page.wait_for_selector(".messagelist")
    assert "Created version 1." in page.locator(".messagelist").inner_text()
    second = json.loads(json.dumps(INVERT_GRAPH))
    second["3"]["inputs"]["filename_prefix"] = "inverted"
    exported.write_text(json.dumps(second))
    page.set_input_files("#id_definition_file", str(exported))
    page.fill("#id_new_changelog", "output prefix")
    page.uncheck("#id_activate")
    page.click("input[name=_continue]")
    page.wait_for_selector(".messagelist")
    assert "Created version 2." in page.locator(".messagelist").inner_text()
    page.locator("#versions-group tr", has_text="output prefix").locator(
        "a.inlinechangelink"
    ).click()
    page.wait_for_selector("#version-activate")
    page.click("#version-activate")
    page.wait_for_selector(".messagelist")
    assert "v2 is active." in page.locator(".messagelist").inner_text()
    assert page.locator("#version-activate").count() == 0

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

    # Test run: a free task pinned to the binding. Its page refreshes itself until the task
    # succeeds, then shows the output image (served through its signed URL).
    page.locator(".object-tools a", has_text="Test run").click()
    page.fill("#id_params", json.dumps({"width": 8, "height": 8}))
    page.click("input[name=_submit]")
    page.wait_for_selector(".messagelist")
    assert "Submitted test task" in page.locator(".messagelist").inner_text()
    page.wait_for_selector(".podi-status:has-text('succeeded')", timeout=30_000)
    thumbnail_loaded(page, 8)
    assert page.locator("input[name=_save]").count() == 0  # read-only: no Save

    # Grant the user points from their page (the grant opens their account).
    page.goto("/admin/auth/user/")
    page.locator("#result_list a", has_text=owner.username).first.click()
    page.click("#grant-points")
    page.fill("#id_points", "100")
    page.fill("#id_reason", "welcome")
    page.get_by_role("button", name="Grant points").click()
    page.wait_for_selector(".messagelist")
    assert "Granted +100 points to owner; balance 100." in page.locator(".messagelist").inner_text()

    # The user's task: from the user page to their tasks, to the task, its hold and ledger.
    user = httpx.Client(
        base_url=live_server.url, headers={"Authorization": f"Bearer {access_token(owner)}"}
    )
    submitted = user.post("/api/tasks/v1/submit", json={"action": "invert-image", "params": {}})
    assert submitted.status_code == 202, submitted.text
    task_id = submitted.json()["taskId"]
    page.locator(".field-activity a", has_text="tasks").click()
    page.locator("#result_list a", has_text=task_id).click()
    page.wait_for_selector(".podi-status:has-text('succeeded')", timeout=30_000)
    thumbnail_loaded(page, 64)  # the schema's default width
    assert owner.username in page.locator(".field-user_link").inner_text()
    ledger = page.locator(".field-ledger")
    assert ledger.locator("a").count() == 2  # the freeze and the confirm
    assert "confirm" in ledger.inner_text()
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "console-task.png"), full_page=True)
    if os.environ.get("PODI_DOCS_SCREENSHOTS"):
        page.screenshot(path=str(ROOT / "docs" / "console-task.png"), full_page=True)
    page.locator(".field-hold a").click()
    page.wait_for_selector(".field-entries_view")
    assert page.locator(".field-entries_view a").count() == 2
    assert task_id in page.locator(".field-task").inner_text()
    assert "confirmed" in page.locator(".field-status").inner_text()
    page.locator(".field-entries_view a").first.click()
    assert task_id in page.locator(".field-task").inner_text()
    assert owner.username in page.locator(".field-user").inner_text()

    # The dashboard moved; it is what docs/console-dashboard.png shows.
    page.goto("/admin/")
    assert tile(page, "charged") == "10"
    assert re.fullmatch(r"\d+(\.\d+)?", tile(page, "succeeded"))
    assert "gpu-1" in page.locator("#ops-executors").inner_text()
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "console-dashboard.png"), full_page=False)
    if os.environ.get("PODI_DOCS_SCREENSHOTS"):
        page.screenshot(path=str(ROOT / "docs" / "console-dashboard.png"), full_page=False)
