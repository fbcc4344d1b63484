"""manage.py import_workflow."""

from __future__ import annotations

import json
from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from integrations.models import Ability, Workflow, WorkflowBinding

from .conftest import IMG2IMG_GRAPH, graph, schema

pytestmark = pytest.mark.django_db


def run(*args) -> str:
    out = StringIO()
    call_command("import_workflow", *args, stdout=out)
    return out.getvalue()


def write(tmp_path, name, data) -> str:
    path = tmp_path / name
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return str(path)


def test_import_with_a_schema_then_a_second_version(tmp_path):
    definition = write(tmp_path, "wf.json", graph())
    params = write(tmp_path, "schema.json", schema())
    out = run(definition, "--name", "invert", "--schema", params, "--changelog", "first")
    assert "Created workflow 'invert'." in out
    assert "Imported invert v1 (active)." in out
    out = run(definition, "--name", "invert", "--schema", params, "--no-activate")
    assert "Imported invert v2 (not active)." in out
    workflow = Workflow.objects.get(name="invert")
    assert workflow.active_version.version == 1
    assert workflow.active_version.params_schema == schema()
    assert workflow.active_version.changelog == "first"


def test_import_infers_a_string_schema_and_says_so(tmp_path):
    out = run(write(tmp_path, "img.json", IMG2IMG_GRAPH), "--name", "img")
    assert "inferred one from 1 placeholder(s), all typed as strings (image)" in out
    version = Workflow.objects.get(name="img").active_version
    assert version.params_schema == {
        "type": "object",
        "properties": {"image": {"type": "string", "title": "image", "x-podi-media": True}},
        "required": ["image"],
    }


def test_import_binds_an_ability(tmp_path, comfy_executor):
    params = write(tmp_path, "schema.json", schema())
    out = run(
        write(tmp_path, "wf.json", graph()),
        "--name",
        "invert",
        "--schema",
        params,
        "--ability",
        "invert",
    )
    assert "Created ability 'invert' (inactive" in out
    assert "Bound: invert → invert @ gpu-1." in out
    assert Ability.objects.get(code="invert").status == "inactive"
    assert WorkflowBinding.objects.count() == 1


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "is not valid JSON"),
        ({"nodes": [], "links": []}, "WORKFLOW_INVALID: This is ComfyUI's UI (workflow) export"),
    ],
)
def test_import_errors(tmp_path, content, message):
    with pytest.raises(CommandError, match=message.replace("(", r"\(").replace(")", r"\)")):
        run(write(tmp_path, "bad.json", content), "--name", "bad")
    with pytest.raises(CommandError, match="not found"):
        run(str(tmp_path / "missing.json"), "--name", "bad")
    assert (
        not Workflow.objects.filter(name="bad").exists()
        or not Workflow.objects.get(name="bad").versions.exists()
    )
