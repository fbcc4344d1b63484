"""The workflow console: a version imported from an API-format JSON file, Activate on the
version page, each error once and at its field (the form keeps what was typed, also after a
service error on save), empty JSON boxes empty (not ``null``), readable labels."""

from __future__ import annotations

import json
import re

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from integrations.models import Ability, Executor, Workflow
from integrations.services import workflow_version_create
from podi.admin_helpers import readable_label
from tests.integrations.conftest import comfy_workflow, graph, schema  # noqa: F401

pytestmark = pytest.mark.django_db


def html(response) -> str:
    assert response.status_code == 200, response.status_code
    return response.content.decode()


def field_row(page: str, name: str) -> str:
    """The HTML of the admin form row of field ``name``."""
    start = page.index(f"field-{name}")
    end = page.find('<div class="form-row', start + 1)
    return page[start : end if end != -1 else len(page)]


def workflow_form(**values) -> dict:
    return {
        "name": "invert",
        "kind": "comfyui",
        "description": "",
        "new_definition": "",
        "new_params_schema": json.dumps(schema()),
        "new_outputs": "",
        "new_changelog": "",
        "activate": "on",
        "versions-TOTAL_FORMS": "0",
        "versions-INITIAL_FORMS": "0",
        **values,
    }


def json_file(value, name="workflow_api.json") -> SimpleUploadedFile:
    body = value if isinstance(value, bytes) else json.dumps(value).encode()
    return SimpleUploadedFile(name, body, content_type="application/json")


def test_import_a_version_from_an_api_format_json_file(console):
    add = html(console.get("/admin/integrations/workflow/add/"))
    assert 'type="file" name="definition_file"' in add
    assert 'enctype="multipart/form-data"' in add
    response = console.post(
        "/admin/integrations/workflow/add/",
        workflow_form(definition_file=json_file(graph()), new_changelog="imported"),
    )
    assert response.status_code == 302, response.content.decode()[:3000]
    workflow = Workflow.objects.get(name="invert")
    assert workflow.active_version.version == 1
    assert workflow.active_version.definition == graph()
    assert workflow.active_version.changelog == "imported"

    # A second file on the change page: version 2, the file wins over the editor's JSON.
    changed = graph()
    changed["1"]["inputs"]["color"] = 7
    response = console.post(
        f"/admin/integrations/workflow/{workflow.pk}/change/",
        workflow_form(
            new_definition=json.dumps(graph()), definition_file=json_file(changed, "v2.json")
        ),
    )
    assert response.status_code == 302
    workflow.refresh_from_db()
    assert workflow.active_version.version == 2
    assert workflow.active_version.definition["1"]["inputs"]["color"] == 7


def test_a_broken_file_is_reported_once_at_its_field_and_the_input_is_kept(console):
    page = html(
        console.post(
            "/admin/integrations/workflow/add/",
            workflow_form(
                name="typed-name",
                definition_file=json_file(b'{"1": {"class_type": ', "broken.json"),
            ),
        )
    )
    message = "broken.json is not valid JSON at line 1, column 22."
    assert page.count(message) == 1
    assert message in field_row(page, "definition_file")
    assert 'value="typed-name"' in page
    assert not Workflow.objects.exists()

    # The version's own validation (an undeclared placeholder): once, at the definition box.
    undeclared = graph()
    undeclared["1"]["inputs"]["color"] = "{{colour}}"
    page = html(
        console.post(
            "/admin/integrations/workflow/add/",
            workflow_form(new_definition=json.dumps(undeclared)),
        )
    )
    row = field_row(page, "new_definition")
    assert "{{colour}}" in row.split("</ul>")[0]  # inside the field's error list
    assert page.count("errorlist nonfield") == 0
    assert not Workflow.objects.exists()


def test_executor_errors_show_once_at_their_field(console):
    page = html(
        console.post(
            "/admin/integrations/executor/add/",
            {
                "name": "gpu-typed",
                "kind": "comfyui",
                "base_url": "ftp://box",
                "max_concurrency": "2",
                "weight": "1",
                "config": "",
                "bindings-TOTAL_FORMS": "0",
                "bindings-INITIAL_FORMS": "0",
            },
        )
    )
    message = "Must be an http(s) URL with a host."
    assert page.count(message) == 1
    assert message in field_row(page, "base_url")
    assert 'value="gpu-typed"' in page
    assert not Executor.objects.exists()


def test_a_service_error_on_save_keeps_the_form_and_shows_at_the_field(console):
    """``ability_create`` refuses max_outputs 0 (the form lets it through): the form comes back
    with what was typed and the service's message at the field, nothing saved."""
    response = console.post(
        "/admin/integrations/ability/add/",
        {
            "code": "typed-code",
            "display_name": "Typed name",
            "description": "",
            "category": "",
            "provider": "",
            "points": "3",
            "defaults": "{}",
            "status": "active",
            "max_outputs": "0",
            "bindings-TOTAL_FORMS": "0",
            "bindings-INITIAL_FORMS": "0",
            "presets-TOTAL_FORMS": "0",
            "presets-INITIAL_FORMS": "0",
        },
    )
    page = html(response)
    assert page.count("An integer ≥ 1.") == 1
    assert "An integer ≥ 1." in field_row(page, "max_outputs")
    assert 'value="typed-code"' in page and 'value="Typed name"' in page
    assert not Ability.objects.exists()


def test_empty_json_boxes_are_empty_not_null(console, comfy_workflow):  # noqa: F811
    for path in (
        "/admin/integrations/workflow/add/",
        "/admin/integrations/executor/add/",
        "/admin/integrations/ability/add/",
        "/admin/integrations/preset/add/",
    ):
        page = html(console.get(path))
        assert not re.search(r"<textarea[^>]*>\s*null\s*</textarea>", page), path


def test_readable_labels(console, comfy_workflow):  # noqa: F811
    executor_page = html(console.get("/admin/integrations/executor/add/"))
    assert ">Base URL:</label>" in executor_page
    assert ">API keys:</label>" in executor_page
    assert "Base url" not in executor_page and "Api keys" not in executor_page
    assert readable_label("comfyui_version") == "ComfyUI version"
    assert readable_label("sha256") == "SHA-256"
    assert readable_label("external_id") == "External ID"


def test_activate_button_on_the_version_page(console, operator, comfy_workflow):  # noqa: F811
    v1 = comfy_workflow.active_version
    changed = graph()
    changed["1"]["inputs"]["color"] = 9
    v2 = workflow_version_create(
        workflow=comfy_workflow, definition=changed, params_schema=schema(), activate=False
    )
    activate = reverse("admin:integrations_workflowversion_activate", args=[v2.pk])
    page = html(console.get(f"/admin/integrations/workflowversion/{v2.pk}/change/"))
    assert f'action="{activate}"' in page
    assert 'id="version-activate"' not in html(
        console.get(f"/admin/integrations/workflowversion/{v1.pk}/change/")
    )  # already active

    assert console.get(activate).status_code == 405
    assert operator.post(activate).status_code == 403
    comfy_workflow.refresh_from_db()
    assert comfy_workflow.active_version_id == v1.pk

    response = console.post(activate, follow=True)
    assert "Invert: v2 is active." in html(response)  # the admin capitalises messages
    comfy_workflow.refresh_from_db()
    assert comfy_workflow.active_version_id == v2.pk
