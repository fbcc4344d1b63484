"""Register, change and delete agents."""

from __future__ import annotations

from typing import Any

from django.db import IntegrityError, transaction

from integrations.agents.models import Agent
from integrations.models import Executor, ExecutorKind
from integrations.validation import check_http_url
from podi.common import check_unique, model_delete, model_update, required_text
from podi.errors import validation_error

AGENT_FIELDS = {"name", "executor", "base_url", "enabled", "description"}


def _clean_agent_executor(executor: Executor, *, exclude_agent: int | None = None) -> Executor:
    if executor.kind != ExecutorKind.COMFYUI:
        raise validation_error(
            {
                "executor": [
                    f"Agents run next to ComfyUI executors; {executor.name!r} is {executor.kind}."
                ]
            }
        )
    other = Agent.objects.filter(executor=executor)
    if exclude_agent is not None:
        other = other.exclude(pk=exclude_agent)
    taken = other.values_list("name", flat=True).first()
    if taken is not None:
        raise validation_error({"executor": [f"Already linked to agent {taken!r}."]})
    return executor


@transaction.atomic
def agent_create(
    *,
    name: str,
    executor: Executor,
    base_url: str,
    enabled: bool = True,
    description: str = "",
) -> Agent:
    name = required_text(name, field="name", max_length=100)
    check_unique(model=Agent, field="name", value=name)
    _clean_agent_executor(executor)
    try:
        with transaction.atomic():
            return Agent.objects.create(
                name=name,
                executor=executor,
                base_url=check_http_url(base_url, "baseUrl"),
                enabled=enabled,
                description=description or "",
            )
    except IntegrityError:  # a concurrent registration took the name or the executor
        raise validation_error(
            {"name": ["Taken by a concurrent registration; try again."]}
        ) from None


@transaction.atomic
def agent_update(*, agent: Agent, **changes: Any) -> Agent:
    if "name" in changes:
        changes["name"] = required_text(changes["name"], field="name", max_length=100)
        check_unique(model=Agent, field="name", value=changes["name"], exclude_pk=agent.pk)
    if "executor" in changes:
        _clean_agent_executor(changes["executor"], exclude_agent=agent.pk)
    if "base_url" in changes:
        changes["base_url"] = check_http_url(changes["base_url"], "baseUrl")
    if "description" in changes:
        changes["description"] = changes["description"] or ""
    agent, _ = model_update(instance=agent, fields=AGENT_FIELDS, data=changes)
    return agent


def agent_delete(*, agent: Agent) -> None:
    """Delete an agent with its tasks, events and alerts (its tokens die with it)."""
    model_delete(instance=agent, what="agent")
