"""workflow_version_create: what an operator may store as a workflow version."""

from __future__ import annotations

import json

import pytest

from integrations.models import Workflow, WorkflowVersion
from integrations.services import workflow_create, workflow_version_create
from podi.errors import AppError

from .conftest import IMG2IMG_GRAPH, IMG2IMG_SCHEMA, graph, schema

pytestmark = pytest.mark.django_db

UI_EXPORT = {
    "last_node_id": 3,
    "last_link_id": 2,
    "nodes": [{"id": 1, "type": "EmptyImage", "widgets_values": [512, 512, 1, 0]}],
    "links": [[1, 1, 0, 2, 0, "IMAGE"]],
    "version": 0.4,
}


@pytest.fixture
def workflow():
    return workflow_create(name="wf", kind="comfyui")


def refused(workflow, **kwargs) -> AppError:
    kwargs.setdefault("definition", graph())
    kwargs.setdefault("params_schema", schema())
    before = WorkflowVersion.objects.filter(workflow=workflow).count()
    with pytest.raises(AppError) as info:
        workflow_version_create(workflow=workflow, **kwargs)
    assert info.value.code == "WORKFLOW_INVALID"
    assert info.value.status == 400
    assert WorkflowVersion.objects.filter(workflow=workflow).count() == before
    return info.value


def test_versions_are_numbered_and_the_new_one_is_active(workflow, staff):
    v1 = workflow_version_create(
        workflow=workflow, definition=graph(), params_schema=schema(), created_by=staff
    )
    v2 = workflow_version_create(
        workflow=workflow,
        definition=json.dumps(graph()),
        params_schema=json.dumps(schema()),
        outputs=["3"],
        changelog="declare the output",
    )
    v3 = workflow_version_create(
        workflow=workflow, definition=graph(), params_schema=schema(), activate=False
    )
    assert [v1.version, v2.version, v3.version] == [1, 2, 3]
    assert v1.created_by == staff
    assert v2.outputs == ["3"]
    assert v2.definition == graph()  # JSON text is parsed
    assert Workflow.objects.get(pk=workflow.pk).active_version == v2


def test_versions_are_immutable(workflow):
    version = workflow_version_create(workflow=workflow, definition=graph(), params_schema=schema())
    version.changelog = "rewrite history"
    with pytest.raises(Exception, match="immutable"):
        version.save()
    assert WorkflowVersion.objects.get(pk=version.pk).changelog == ""


def test_not_json(workflow):
    error = refused(workflow, definition='{"1": {"class_type": ')
    assert error.details["reason"] == "not_json"
    assert "not valid JSON" in error.message


def test_ui_export_is_refused_with_the_export_hint(workflow):
    error = refused(workflow, definition=UI_EXPORT)
    assert error.details["reason"] == "ui_format"
    assert "Dev mode" in error.message
    assert "Export (API)" in error.message


@pytest.mark.parametrize(
    "definition",
    [[], {}, {"1": {"inputs": {}}}, {"1": "EmptyImage"}, {"prompt": graph()}],
)
def test_not_api_format(workflow, definition):
    error = refused(workflow, definition=definition)
    assert error.details["reason"] == "not_api_format"


def test_link_to_a_missing_node(workflow):
    definition = graph()
    definition["2"]["inputs"]["image"] = ["9", 0]
    error = refused(workflow, definition=definition)
    assert error.details["reason"] == "bad_graph"
    assert "missing node '9'" in error.message


def test_undeclared_placeholder(workflow):
    definition = graph()
    definition["1"]["inputs"]["color"] = "{{colour}}"
    error = refused(workflow, definition=definition)
    assert error.details["reason"] == "undeclared_placeholder"
    assert error.details["undeclared"] == ["colour"]
    assert "{{colour}}" in error.message


def test_unused_param(workflow):
    params_schema = schema()
    params_schema["properties"]["steps"] = {"type": "integer"}
    error = refused(workflow, params_schema=params_schema)
    assert error.details["reason"] == "unused_param"
    assert error.details["unused"] == ["steps"]


def test_unknown_system_placeholder(workflow):
    definition = graph()
    definition["3"]["inputs"]["filename_prefix"] = "{{podi.userId}} {{label}}"
    error = refused(workflow, definition=definition)
    assert error.details["reason"] == "unknown_system_placeholder"


def test_placeholder_in_class_type_or_key(workflow):
    definition = graph()
    definition["2"]["class_type"] = "{{label}}"
    assert refused(workflow, definition=definition).details["reason"] == "not_api_format"
    definition = graph()
    definition["2"]["inputs"] = {"{{label}}": ["1", 0]}
    assert refused(workflow, definition=definition).details["reason"] == "placeholder_in_key"


@pytest.mark.parametrize(
    "params_schema",
    [
        {"type": "object", "properties": {"width": {"type": "nonsense"}}},
        {"type": "object", "properties": {"width": {"minimum": "one"}}},
        {"type": "object", "required": "width"},
        {"type": "array"},
        "[not json",
        ["a"],
    ],
)
def test_invalid_schema(workflow, params_schema):
    error = refused(workflow, params_schema=params_schema)
    assert error.details["reason"] in {"invalid_schema", "not_json"}


def test_image_params_must_be_marked(workflow):
    unmarked = {"type": "object", "properties": {"image": {"type": "string"}}}
    error = refused(workflow, definition=IMG2IMG_GRAPH, params_schema=unmarked)
    assert error.details["reason"] == "media_param_unmarked"
    assert error.details["unmarked"] == ["image"]
    assert "x-podi-media" in error.message
    version = workflow_version_create(
        workflow=workflow, definition=IMG2IMG_GRAPH, params_schema=IMG2IMG_SCHEMA
    )
    assert version.version == 1
    alias = {
        "type": "object",
        "properties": {"image": {"type": "string", "format": "media-object"}},
    }
    assert (
        workflow_version_create(
            workflow=workflow, definition=IMG2IMG_GRAPH, params_schema=alias
        ).version
        == 2
    )


def test_media_params_are_strings(workflow):
    bad = {"type": "object", "properties": {"image": {"type": "integer", "x-podi-media": True}}}
    assert refused(workflow, definition=IMG2IMG_GRAPH, params_schema=bad).details["reason"] == (
        "invalid_schema"
    )


def test_declared_outputs_must_exist(workflow):
    error = refused(workflow, outputs=["3", "99"])
    assert error.details["reason"] == "bad_outputs"


def test_coze_and_http_definitions():
    coze = workflow_create(name="coze-wf", kind="coze")
    ok = workflow_version_create(
        workflow=coze,
        definition={"workflowId": "7400000000000000001", "parameters": {"prompt": "{{prompt}}"}},
        params_schema={"type": "object", "properties": {"prompt": {"type": "string"}}},
    )
    assert ok.version == 1
    error = refused(coze, definition={"parameters": {}}, params_schema={})
    assert error.details["reason"] == "bad_definition"
    error = refused(coze, definition={"workflowId": "{{id}}"}, params_schema={})
    assert error.details["reason"] == "bad_definition"

    http = workflow_create(name="http-wf", kind="http")
    ok = workflow_version_create(
        workflow=http,
        definition={"method": "POST", "path": "/v1/generate", "body": {"prompt": "{{prompt}}"}},
        params_schema={"type": "object", "properties": {"prompt": {"type": "string"}}},
    )
    assert ok.version == 1
    assert (
        refused(http, definition={"method": "FETCH", "path": "/"}, params_schema={}).details[
            "reason"
        ]
        == "bad_definition"
    )
