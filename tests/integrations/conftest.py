"""Shared rows for the integrations tests: a model-free ComfyUI graph and its catalog entries."""

from __future__ import annotations

import copy

import pytest

from integrations.services import (
    ability_create,
    api_key_create,
    binding_create,
    executor_create,
    workflow_create,
    workflow_version_create,
)

# EmptyImage → ImageInvert → SaveImage: runs on the ComfyUI test server (and a real one on CPU).
COMFY_GRAPH = {
    "1": {
        "class_type": "EmptyImage",
        "inputs": {"width": "{{width}}", "height": "{{height}}", "batch_size": 1, "color": 0},
    },
    "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
    "3": {
        "class_type": "SaveImage",
        "inputs": {"images": ["2", 0], "filename_prefix": "podi/{{podi.taskId}}_{{label}}"},
    },
}
COMFY_SCHEMA = {
    "type": "object",
    "properties": {
        "width": {"type": "integer", "minimum": 1, "maximum": 4096, "default": 64},
        "height": {"type": "integer", "minimum": 1, "maximum": 4096, "default": 64},
        "label": {"type": "string", "maxLength": 40},
    },
    "required": ["width", "height", "label"],
}

IMG2IMG_GRAPH = {
    "1": {"class_type": "LoadImage", "inputs": {"image": "{{image}}"}},
    "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
    "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "podi"}},
}
IMG2IMG_SCHEMA = {
    "type": "object",
    "properties": {"image": {"type": "string", "x-podi-media": True}},
    "required": ["image"],
}


def graph() -> dict:
    return copy.deepcopy(COMFY_GRAPH)


def schema() -> dict:
    return copy.deepcopy(COMFY_SCHEMA)


@pytest.fixture
def comfy_executor(db):
    return executor_create(
        name="gpu-1", kind="comfyui", base_url="http://127.0.0.1:1", max_concurrency=2
    )


@pytest.fixture
def comfy_workflow(db):
    workflow = workflow_create(name="invert", kind="comfyui", description="test graph")
    workflow_version_create(workflow=workflow, definition=graph(), params_schema=schema())
    workflow.refresh_from_db()
    return workflow


@pytest.fixture
def ability(db):
    return ability_create(code="invert", display_name="Invert", points=5, category="image")


@pytest.fixture
def binding(ability, comfy_workflow, comfy_executor):
    return binding_create(ability=ability, workflow=comfy_workflow, executor=comfy_executor)


@pytest.fixture
def coze_key(db):
    return api_key_create(provider="coze", name="main", secret="pat_secretvalue_a1b2")
