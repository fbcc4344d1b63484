"""A missing ComfyUI node class disables only the bindings whose workflow needs it: real test
server, real health check, real dispatch through a real worker."""

from __future__ import annotations

import copy

import pytest

from integrations.models import Ability, Executor, Workflow, WorkflowBinding
from integrations.services import (
    binding_create,
    executor_health_check,
    workflow_version_create,
)
from tasks.models import Task
from tests.tasks.conftest import (
    INVERT_GRAPH,
    INVERT_SCHEMA,
    make_ability,
    make_executor,
    wait_status,
)
from wallet.selectors import account_for_user

pytestmark = pytest.mark.django_db(transaction=True)

TYPO_GRAPH = copy.deepcopy(INVERT_GRAPH)
TYPO_GRAPH["2"]["class_type"] = "ImageInvertt"


def run(client, action: str) -> dict:
    submitted = client.post("/api/tasks/v1/submit", json={"action": action, "params": {}})
    assert submitted.status_code == 202, submitted.text
    return wait_status(client, submitted.json()["taskId"], {"succeeded", "failed"})


def test_a_typo_in_one_workflow_leaves_every_other_binding_running(worker, comfy, funded, api):
    gpu = make_executor("gpu-1", comfy.url)
    make_ability("invert", [gpu])
    make_ability("sketch", [gpu])
    typo = make_ability("typo", [gpu], graph=TYPO_GRAPH, points=7)
    # "mixed": its preferred binding (priority 10) has the typo, a plain one (priority 0) not.
    mixed = make_ability("mixed", [gpu], graph=TYPO_GRAPH, priorities=[10])
    good_workflow = Workflow.objects.get(name="wf-invert")
    fallback = binding_create(ability=mixed, workflow=good_workflow, executor=gpu, priority=0)

    checked = executor_health_check(executor=Executor.objects.get(pk=gpu.pk))
    assert checked.health_status == "healthy"
    assert checked.health_error == ""
    assert checked.is_dispatchable
    missing = sorted(
        WorkflowBinding.objects.values_list("ability__code", "priority", "missing_node_classes")
    )
    assert missing == [
        ("invert", 0, []),
        ("mixed", 0, []),
        ("mixed", 10, ["ImageInvertt"]),
        ("sketch", 0, []),
        ("typo", 0, ["ImageInvertt"]),
    ]

    client = api(funded)
    for action in ("invert", "sketch", "invert"):
        done = run(client, action)
        assert done["status"] == "succeeded", done
        assert done["executor"] == "gpu-1"

    # The ability whose only binding lacks a node is refused at once: no task, nothing frozen.
    before = Task.objects.count()
    refused = client.post("/api/tasks/v1/submit", json={"action": "typo", "params": {}})
    assert refused.status_code == 503
    assert refused.json()["code"] == "NO_EXECUTOR"
    assert Task.objects.count() == before
    account = account_for_user(funded)
    account.refresh_from_db()
    assert (account.balance, account.frozen) == (1000 - 3 * 10, 0)

    # "mixed" runs through its fallback, skipping the higher-priority binding that cannot run.
    done = run(client, "mixed")
    assert done["status"] == "succeeded", done
    assert Task.objects.get(public_id=done["taskId"]).binding_id == fallback.pk
    assert all(
        "ImageInvertt" not in sent["prompt"]["2"]["class_type"] for sent in comfy.prompts.values()
    )

    # Fixing the typo (a new active version) re-checks the binding at once, no health check.
    workflow_version_create(
        workflow=Workflow.objects.get(name="wf-typo"),
        definition=INVERT_GRAPH,
        params_schema=INVERT_SCHEMA,
        activate=True,
    )
    assert WorkflowBinding.objects.get(ability=typo).missing_node_classes == []
    done = run(client, "typo")
    assert done["status"] == "succeeded", done
    assert Ability.objects.get(code="typo").tasks.get().points == 7


def test_saving_a_version_or_binding_warns(comfy, staff_client):
    gpu = make_executor("gpu-1", comfy.url)
    make_ability("invert", [gpu])
    executor_health_check(executor=gpu)

    workflow = staff_client.post(
        "/api/admin/workflows", {"name": "sketchy", "kind": "comfyui"}
    ).json()
    created = staff_client.post(
        f"/api/admin/workflows/{workflow['id']}/versions",
        {"definition": TYPO_GRAPH, "paramsSchema": INVERT_SCHEMA},
    )
    assert created.status_code == 201, created.content
    assert created.json()["warnings"] == []  # not bound anywhere yet
    ability = staff_client.post(
        "/api/admin/abilities", {"code": "sketchy", "displayName": "Sketchy"}
    ).json()
    bound = staff_client.post(
        "/api/admin/workflow-bindings",
        {"ability": ability["id"], "workflow": workflow["id"], "executor": gpu.pk},
    )
    assert bound.status_code == 201, bound.content
    body = bound.json()
    assert body["missingNodeClasses"] == ["ImageInvertt"]
    assert body["nodesCheckedAt"] is not None
    assert body["warnings"] == [
        "sketchy → sketchy @ gpu-1: node class(es) ImageInvertt are not installed on gpu-1; "
        "this binding will not run until they are (the executor's other bindings keep running)."
    ]
    # A further version with the same typo warns about the binding it now runs on.
    again = staff_client.post(
        f"/api/admin/workflows/{workflow['id']}/versions",
        {"definition": TYPO_GRAPH, "paramsSchema": INVERT_SCHEMA},
    )
    assert len(again.json()["warnings"]) == 1
    fixed = staff_client.post(
        f"/api/admin/workflows/{workflow['id']}/versions",
        {"definition": INVERT_GRAPH, "paramsSchema": INVERT_SCHEMA},
    )
    assert fixed.json()["warnings"] == []
    listed = staff_client.get(f"/api/admin/workflow-bindings/{body['id']}").json()
    assert listed["missingNodeClasses"] == []
    # The healthy executor's other binding was never touched.
    assert WorkflowBinding.objects.get(ability__code="invert").missing_node_classes == []
