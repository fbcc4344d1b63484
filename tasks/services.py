"""Writes of the tasks app: submit, dispatch (claim an executor), finish, cancel, retry, events.

Money and state move together: a task's hold is frozen in the submit transaction and confirmed or
released in the finish transaction, so a task is charged iff it succeeded (invariant 3).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import copy
import functools
import io
import json
import logging
import threading
from datetime import UTC, timedelta
from typing import TYPE_CHECKING, Any, NamedTuple

from django.conf import settings
from django.core import signing
from django.db import DatabaseError, DataError, connection, transaction
from django.db.models import Count, Exists, F, OuterRef, Q, QuerySet
from django.utils import timezone

from integrations.models import Executor, HealthStatus, WorkflowBinding
from integrations.selectors import (
    ability_get_active,
    ability_media_params,
    ability_validate_params,
    bindings_for_ability,
    bindings_for_ability_id,
)
from media_app.paths import output_object_key
from media_app.selectors import media_get_uploaded_for_user
from media_app.services import (
    media_discard_staged,
    media_publish,
    media_publish_in_statement,
    media_stage,
    media_store_output,
    signed_download_url,
)
from podi.common import (
    RowReader,
    model_delete,
    model_update,
    required_text,
    update_run,
    update_statement,
)
from podi.errors import AppError, validation_error
from podi.events import actor_named, enqueue_on_commit, ring_on_commit
from podi.ids import new_id
from podi.metrics import TASK_DISPATCH_SECONDS, TASK_RUN_SECONDS, observe_on_commit
from podi.models import Lease
from podi.realtime.events import Webhook, emit, emit_several_in_statement, events_batched
from podi.runtime import worker_lease_name
from podi.urlguard import validate_callback_url
from tasks import error_codes as codes
from tasks.models import (
    DEFAULT_CALLBACK_EVENTS,
    Task,
    TaskAsset,
    TaskBatch,
    TaskStatus,
    TaskTemplate,
)
from wallet.selectors import account_require_balance
from wallet.services import (
    hold_confirm_by_id,
    hold_confirm_in_statement,
    hold_freeze,
    hold_outlive,
    hold_outlive_in_statement,
    hold_release_by_id,
    new_hold_id,
)

if TYPE_CHECKING:
    from media_app.models import MediaObject

logger = logging.getLogger("podi.tasks")

CALLBACK_EVENT_TYPES = {
    "task.queued",
    "task.running",
    "task.progress",
    "task.succeeded",
    "task.failed",
    "task.canceled",
}
TOKEN_SALT = "podi.tasks.callback-token"  # noqa: S105 - a signing salt, not a secret
MAX_INPUTS = 16
MAX_BASE64_BYTES = 20 * 1024 * 1024
OUTPUT_URL_TTL = 3600  # seconds a callback's output URLs stay valid

# The actors of this app (declared in tasks/actors.py, which calls into this module): services and
# the reconciler ring them by name, through podi.events.actor_named.
DISPATCH_ACTOR = "dispatch_pending"
RUN_ACTOR = "run_task"
INTERRUPT_ACTOR = "interrupt_on_executor"


# --- Events and callbacks ---------------------------------------------------------------------


def task_status_payload(task: Task, *, outputs: list[dict] | None = None) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "taskId": task.public_id,
        "status": task.status,
        "progress": task.progress,
    }
    if outputs is not None:
        payload["outputs"] = outputs
    if task.error_code:
        payload["error"] = {"code": task.error_code, "message": task.error_message}
    return payload


def _emit_status(task: Task, *, outputs: list[dict] | None = None) -> None:
    emit(
        user_id=task.user_id,
        type="task.status",
        payload=task_status_payload(task, outputs=outputs),
        task_id=task.public_id,
        webhook=_callback(task, f"task.{task.status}"),
    )


def _callback(task: Task, event_name: str) -> Webhook | None:
    """The task's callback for ``event_name``, if it asked for one (sent by ``podi.realtime``)."""
    if not task.callback_url:
        return None
    if event_name not in (task.callback_events or DEFAULT_CALLBACK_EVENTS):
        return None
    return Webhook(
        url=task.callback_url,
        event_type=event_name,
        body=callback_body(task=task, event_name=event_name),
        service_key_id=task.service_key_id,
    )


def callback_body(*, task: Task, event_name: str) -> dict[str, Any]:
    """The callback body (README "Webhooks"). Output URLs are signed at send time (they expire):
    :func:`callback_body_for_sending`."""
    outputs = []
    for asset in task.assets.filter(kind=TaskAsset.Kind.OUTPUT).order_by("pk"):
        item: dict[str, Any] = {
            "objectKey": asset.object_key,
            "mimeType": asset.mime_type,
            "size": asset.size,
        }
        if asset.width:
            item["width"] = asset.width
            item["height"] = asset.height
        outputs.append(item)
    error = None
    if task.error_code:
        error = {"code": task.error_code, "message": task.error_message}
    return {
        "type": event_name,
        "taskId": task.public_id,
        "status": task.status,
        "progress": task.progress,
        "outputs": outputs,
        "result": task.result,
        "error": error,
        "timestamp": timezone.now().astimezone(UTC).isoformat().replace("+00:00", "Z"),
    }


def stream_payload_for_sending(event_type: str, payload: dict[str, Any]) -> dict[str, Any]:
    """The stream payload hook tasks registers with ``podi.realtime``: a ``task.status`` event's
    outputs get signed URLs when the stream sends it, so a client downloads without asking for
    the task first."""
    if event_type != "task.status":
        return payload
    return callback_body_for_sending(payload)


def callback_body_for_sending(body: dict[str, Any]) -> dict[str, Any]:
    """The webhook body hook tasks registers with ``podi.realtime``: sign output URLs now."""
    outputs = body.get("outputs") or []
    if not outputs:
        return body
    signed = []
    for item in outputs:
        item = dict(item)
        if item.get("objectKey"):
            item["url"], _ = signed_download_url(object_key=item["objectKey"], ttl=OUTPUT_URL_TTL)
        signed.append(item)
    return {**body, "outputs": signed}


# --- Tokens ----------------------------------------------------------------------------------


def task_token(task: Task) -> str:
    """The task's own short-lived token for ``POST /tasks/{id}/complete`` (signed, not stored)."""
    return signing.dumps({"t": task.public_id, "a": task.attempts}, salt=TOKEN_SALT, compress=True)


def task_token_max_age(task: Task) -> int:
    return (
        task.queue_timeout
        + task.run_timeout * max(task.max_attempts, 1)
        + settings.TASK_HOLD_MARGIN
    )


def task_from_token(raw: str) -> tuple[Task, int]:
    """The task and the attempt a task token was issued for (401 ``TASK_TOKEN_INVALID``)."""
    try:
        unsigned = signing.loads(raw, salt=TOKEN_SALT, max_age=None)
    except signing.BadSignature:
        raise AppError(codes.TASK_TOKEN_INVALID) from None
    task = Task.objects.filter(public_id=unsigned.get("t")).first()
    if task is None:
        raise AppError(codes.TASK_TOKEN_INVALID)
    try:
        signing.loads(raw, salt=TOKEN_SALT, max_age=task_token_max_age(task))
    except signing.SignatureExpired:
        raise AppError(codes.TASK_TOKEN_INVALID, "The task token has expired.") from None
    attempt = unsigned.get("a")
    if isinstance(attempt, bool) or not isinstance(attempt, int):
        raise AppError(codes.TASK_TOKEN_INVALID)
    return task, attempt


def task_callback_url(task: Task) -> str:
    return f"{settings.PUBLIC_BASE_URL}/api/tasks/v1/{task.public_id}/complete"


# --- Submit ----------------------------------------------------------------------------------


class _Base64Input:
    """A decoded base64 input, written (staged) only once the submit is sure to be paid for."""

    def __init__(self, *, item: dict[str, Any], file_name: str, data: bytes):
        self.item, self.file_name, self.data = item, file_name, data


def _normalise_inputs(
    *, user, inputs: list[Any], task_id: str
) -> tuple[list[dict[str, Any]], list[_Base64Input]]:
    """Check the inputs; base64 ones are decoded but not written (``_stage_base64_inputs``)."""
    if not isinstance(inputs, list):
        raise validation_error({"inputs": ["Must be a list."]})
    if len(inputs) > MAX_INPUTS:
        raise validation_error({"inputs": [f"At most {MAX_INPUTS} inputs."]})
    normalised: list[dict[str, Any]] = []
    decoded: list[_Base64Input] = []
    for index, item in enumerate(inputs):
        field = f"inputs[{index}]"
        if not isinstance(item, dict):
            raise validation_error({field: ["Must be an object."]})
        if item.get("objectKey"):
            key = str(item["objectKey"])
            try:
                media = media_get_uploaded_for_user(user=user, object_key=key)
            except AppError:
                raise validation_error(
                    {f"{field}.objectKey": ["No uploaded object of yours has this key."]}
                ) from None
            normalised.append(
                {"objectKey": media.object_key, "mimeType": media.mime_type, "size": media.size}
            )
        elif item.get("url"):
            url = str(item["url"])
            validate_callback_url(url, field=f"{field}.url")
            normalised.append({"url": url})
        elif item.get("base64"):
            pending = _decode_base64_input(user=user, item=item, field=field, task_id=task_id)
            normalised.append(pending.item)
            decoded.append(pending)
        else:
            raise validation_error({field: ["Give objectKey, url, or base64 with fileName."]})
    return normalised, decoded


def _decode_base64_input(*, user, item: dict, field: str, task_id: str) -> _Base64Input:
    file_name = str(item.get("fileName") or "")
    if not file_name:
        raise validation_error({f"{field}.fileName": ["Required with base64."]})
    raw = str(item["base64"])
    if len(raw) > MAX_BASE64_BYTES * 4 // 3 + 4:
        raise validation_error({f"{field}.base64": ["Too large; upload it and pass objectKey."]})
    try:
        data = base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        raise validation_error({f"{field}.base64": ["Not valid base64."]}) from None
    name = f"input-{file_name}"
    key = output_object_key(user_id=user.pk, task_id=task_id, filename=name)
    # mimeType is filled in when the file is written (sniffed like any stored object).
    return _Base64Input(
        item={"objectKey": key, "mimeType": "", "size": len(data)}, file_name=name, data=data
    )


def _stage_base64_inputs(*, user, task_id: str, decoded: list[_Base64Input]) -> list[str]:
    """Write decoded base64 inputs as staged media (reachable by nobody until the submit's
    transaction publishes them); returns their keys, for the cleanup if the submit fails."""
    keys = [pending.item["objectKey"] for pending in decoded]
    try:
        for pending in decoded:
            media = media_store_output(
                user_id=user.pk,
                task_id=task_id,
                filename=pending.file_name,
                stream=io.BytesIO(pending.data),
                size=len(pending.data),
                staged=True,
            )
            pending.item.update(
                objectKey=media.object_key, mimeType=media.mime_type, size=media.size
            )
    except BaseException:
        _discard_base64_inputs(keys)
        raise
    return keys


def _discard_base64_inputs(keys: list[str]) -> None:
    """Remove what a failed submit wrote (files and rows); the reconciler catches the rest."""
    if keys:
        media_discard_staged(object_keys=keys)


@contextlib.contextmanager
def _discarded_on_failure(keys: list[str]):
    """Around a submit transaction: when it fails (402, a conflict, a rollback), remove the
    base64 inputs it would have published."""
    try:
        yield
    except BaseException:
        _discard_base64_inputs(keys)
        raise


def _bind_media_params(*, user, ability, params: dict, inputs: list[dict]) -> dict:
    """Media params take an uploaded ``objectKey`` (the user's own) or an http(s) URL (through
    the SSRF guard): given in ``params``, or else the next ``inputs`` item in order. ``inputs``
    gains what was given only in ``params``."""

    names = ability_media_params(ability)
    if not names:
        return params
    known = {item.get("objectKey") or item.get("url") for item in inputs}
    free = [item.get("objectKey") or item.get("url") for item in inputs]
    for name in names:
        value = params.get(name)
        if value:
            if not isinstance(value, str):
                raise validation_error({f"params.{name}": ["Must be an objectKey or a URL."]})
            if value in free:
                free.remove(value)
            elif value in known:
                continue
            elif value.startswith(("http://", "https://")):
                validate_callback_url(value, field=f"params.{name}")
                inputs.append({"url": value})
            else:
                try:
                    media = media_get_uploaded_for_user(user=user, object_key=value)
                except AppError:
                    raise validation_error(
                        {f"params.{name}": ["No uploaded object of yours has this key."]}
                    ) from None
                inputs.append(
                    {"objectKey": media.object_key, "mimeType": media.mime_type, "size": media.size}
                )
            known.add(value)
        elif free:
            params[name] = free.pop(0)
    return params


def _validate_callback_events(events: list[str] | None) -> list[str]:
    if not events:
        return []
    unknown = sorted(set(events) - CALLBACK_EVENT_TYPES)
    if unknown:
        raise validation_error(
            {
                "callbackEvents": [
                    f"Unknown: {', '.join(unknown)}. Known: {sorted(CALLBACK_EVENT_TYPES)}"
                ]
            }
        )
    return sorted(set(events))


def task_submit(
    *,
    user,
    action: str,
    params: dict[str, Any] | None = None,
    inputs: list[Any] | None = None,
    priority: int = 0,
    callback_url: str = "",
    callback_events: list[str] | None = None,
    client_ref: str = "",
    preset: str | None = None,
    batch: TaskBatch | None = None,
    original_task: Task | None = None,
    service_key=None,
    test_binding=None,
) -> Task:
    """Create a queued task with its hold and first event in one transaction; dispatch on commit.

    ``test_binding`` (the console's "test run"): the task runs only on that binding and is free.
    Base64 inputs are decoded and checked first, written staged only when the balance covers
    the task, and published in the transaction that freezes; if it fails they are removed
    (docs/adr/0011-money-holes.md). The returned task's ``staged_inputs`` names them.
    """

    if test_binding is not None:
        ability = test_binding.ability
        bindings = [test_binding]
        if test_binding.missing_node_classes:
            raise AppError(
                codes.NO_EXECUTOR,
                f"{test_binding.executor.name} lacks node class(es) "
                f"{', '.join(test_binding.missing_node_classes)} this workflow needs.",
                details={"missingNodeClasses": test_binding.missing_node_classes},
            )
    else:
        ability = ability_get_active(code=action)
        bindings = list(bindings_for_ability(ability))
    if not bindings:
        raise AppError(codes.NO_EXECUTOR)
    if not isinstance(params, dict | type(None)):
        raise validation_error({"params": ["Must be an object."]})
    if callback_url:
        validate_callback_url(callback_url, field="callbackUrl")
    events = _validate_callback_events(callback_events)
    public_id = new_id("tsk")
    normalised_inputs, decoded = _normalise_inputs(
        user=user, inputs=inputs or [], task_id=public_id
    )
    if ability.requires_image and not normalised_inputs:
        raise validation_error({"inputs": ["This ability needs an input image."]})
    params = _bind_media_params(
        user=user, ability=ability, params=dict(params or {}), inputs=normalised_inputs
    )
    merged = ability_validate_params(ability=ability, params=params, preset=preset)

    points = 0 if test_binding is not None else ability.points
    if decoded and points:
        # Refuse early what the freeze would refuse, before writing anything (the freeze below
        # still decides); docs/adr/0011-money-holes.md.
        account_require_balance(user=user, points=points)
    staged = _stage_base64_inputs(user=user, task_id=public_id, decoded=decoded)

    first = bindings[0]
    now = timezone.now()
    # On PostgreSQL a paid submit ends with the freeze, whose statement records the submit's
    # events too (ADR 0034): the user's account row is locked for that statement and the
    # commit only. Otherwise the events are recorded together at the end of the block.
    # (A callback's delivery is recorded with its event: such a submit records them as before.)
    carried = (
        connection.vendor == "postgresql"
        and points > 0
        and not staged
        and not (
            callback_url
            and {"task.queued", "task.running"} & set(events or DEFAULT_CALLBACK_EVENTS)
        )
    )
    # No savepoint: a failure anywhere below fails the whole submit (the caller's transaction
    # or this one rolls back), so none is needed; two statements fewer.
    recorded_at_end = contextlib.nullcontext() if carried else events_batched()
    with _discarded_on_failure(staged), transaction.atomic(savepoint=False), recorded_at_end:
        # A free slot with nobody waiting for it: the task starts in this transaction, claimed
        # before the wallet and event rows like every executor claim (ADR 0018).
        started = _claim_at_submit(bindings) if settings.TASK_START_AT_SUBMIT else None
        task = Task(
            public_id=public_id,
            user=user,
            ability=ability,
            action=ability.code,
            preset=preset or "",
            params=merged,
            inputs=normalised_inputs,
            priority=priority,
            max_attempts=max(b.max_attempts for b in bindings),
            points=points,
            executor_state={"testBinding": test_binding.pk} if test_binding is not None else {},
            callback_url=callback_url or "",
            callback_events=events,
            client_ref=client_ref or "",
            batch=batch,
            original_task=original_task,
            service_key=service_key,
            queue_timeout=first.queue_timeout,
            run_timeout=first.run_timeout,
            queue_deadline=now + timedelta(seconds=first.queue_timeout),
            created_at=now,
        )
        if started is not None:
            task.run_timeout = started.run_timeout  # before the hold's lifetime is computed
        if task.points > 0:
            task.hold_id = new_hold_id()  # frozen below, after the task's own rows
        # "queued", as every task's stream begins: emitted after the freeze's event, as read
        # before the start below changes the task.
        queued = copy.copy(task) if started is not None else None
        if started is not None:
            _start(task, started, now)
            _observe_dispatch(task, now)
        task.save(force_insert=True)
        media_publish(object_keys=staged)
        for item in normalised_inputs:
            if item.get("objectKey"):
                TaskAsset.objects.create(
                    task=task,
                    kind=TaskAsset.Kind.INPUT,
                    object_key=item["objectKey"],
                    mime_type=item.get("mimeType") or "",
                    size=item.get("size"),
                )
        # "queued" first, as every task's stream begins, after the freeze's event.
        statuses = [queued, task] if queued is not None else [task]
        carried_events = (
            [("task.status", task_status_payload(each)) for each in statuses] if carried else []
        )
        if task.points > 0:
            # The freeze last: the user's account row, which all the user's submits and
            # settles share, stays locked only from here to the commit (ADR 0030).
            hold_freeze(
                user=user,
                task_id=task.public_id,
                points=task.points,
                action=ability.code,
                channel="task",
                ttl_seconds=task_token_max_age(task),
                new_task=True,
                hold_id=task.hold_id,
                events_after=carried_events,
            )
        if not carried:
            for each in statuses:
                _emit_status(each)
        if started is not None:
            enqueue_on_commit(actor_named(RUN_ACTOR), task.public_id, task.attempts)
        else:
            _enqueue_dispatch()
    task.staged_inputs = staged
    return task


def _binding_rank(binding: WorkflowBinding, tried: frozenset = frozenset()) -> tuple:
    """Claim order: dispatchable executors as last read, executors not yet tried by the task,
    binding priority, least loaded, then weights."""
    executor = binding.executor
    return (
        not executor.is_dispatchable,
        executor.pk in tried,
        -binding.priority,
        executor.in_flight / max(executor.max_concurrency, 1),
        -binding.weight,
        -executor.weight,
        executor.pk,
    )


def _claim_at_submit(bindings: list) -> WorkflowBinding | None:
    """Claim a run slot for a task being submitted, on the best of ``bindings`` whose executor
    has one free and no queued task that could run there: a queued task is always first to a
    freed slot, so starting here never jumps the queue (ADR 0018). One guarded update per
    binding tried; None leaves the task to the dispatch pass."""
    # As in ``_claim_executor``: what the cache says of an executor only ranks it.
    usable = [b for b in bindings if not b.missing_node_classes]
    for binding in sorted(usable, key=_binding_rank):
        if update_run(_claim_at_submit_statement(binding.executor_id)):
            return binding
    return None


@functools.lru_cache(maxsize=1024)
def _claim_at_submit_statement(executor_id: int) -> tuple[str, tuple]:
    """``_claim_at_submit``'s guarded update for one executor, compiled once per process (ADR
    0028): the ORM took longer to build it than PostgreSQL to run it. A row locked by another
    claim or release is skipped, not waited for (ADR 0030)."""
    waiting = Task.objects.filter(
        status=TaskStatus.QUEUED,
        ability__bindings__executor_id=OuterRef("pk"),
        ability__bindings__enabled=True,
    )
    # SKIP LOCKED: a submit never waits for another transaction's claim or release of the same
    # row (in a burst every submit queued behind it); it leaves the task to the dispatch pass.
    free = _claimable(executor_id).filter(~Exists(waiting)).order_by()
    free = free.select_for_update(skip_locked=True)
    return update_statement(
        Executor.objects.filter(pk__in=free.values("pk")), in_flight=F("in_flight") + 1
    )


@functools.lru_cache(maxsize=1024)
def _claim_statement(executor_id: int) -> tuple[str, tuple]:
    """``_claim_executor``'s guarded update for one executor, compiled once per process."""
    return update_statement(_claimable(executor_id), in_flight=F("in_flight") + 1)


def _claimable(executor_id: int) -> QuerySet:
    """The executor's row while it can take one more run: enabled, not unhealthy, a slot free."""
    return Executor.objects.filter(
        pk=executor_id, enabled=True, in_flight__lt=F("max_concurrency")
    ).exclude(health_status=HealthStatus.UNHEALTHY)


def _start(task: Task, binding: WorkflowBinding, now) -> None:
    """Move ``task`` (queued, in memory) to its first attempt on ``binding``, whose executor's
    slot the caller claimed. The caller saves the row and emits the status."""
    task.status = TaskStatus.RUNNING
    task.binding = binding
    task.executor = binding.executor
    task.attempts += 1
    task.started_at = task.started_at or now
    task.heartbeat_at = now
    task.dispatched_at = now
    task.run_timeout = binding.run_timeout
    task.run_deadline = now + timedelta(seconds=binding.run_timeout)


def _observe_dispatch(task: Task, now) -> None:
    if task.attempts == 1:
        observe_on_commit(
            TASK_DISPATCH_SECONDS, (now - task.created_at).total_seconds(), ability=task.action
        )


def batch_submit(
    *,
    user,
    action: str,
    items: list[dict[str, Any]],
    callback_url: str = "",
    template: TaskTemplate | None = None,
    service_key=None,
) -> tuple[TaskBatch, list[Task]]:
    """All tasks or none: one hold per task, one transaction."""
    if not isinstance(items, list) or not items:
        raise validation_error({"items": ["Give at least one item."]})
    if len(items) > 100:
        raise validation_error({"items": ["At most 100 items per batch."]})
    staged: list[str] = []  # base64 inputs written so far, removed if the batch fails
    with _discarded_on_failure(staged), transaction.atomic():
        batch = TaskBatch.objects.create(
            public_id=new_id("bat"),
            user=user,
            action=action,
            template=template,
            callback_url=callback_url or "",
        )
        tasks = []
        for index, item in enumerate(items):
            if not isinstance(item, dict):
                raise validation_error({f"items[{index}]": ["Must be an object."]})
            try:
                tasks.append(
                    task_submit(
                        user=user,
                        action=action,
                        params=item.get("params") or {},
                        inputs=item.get("inputs") or [],
                        callback_url=callback_url,
                        client_ref=str(item.get("clientRef") or ""),
                        batch=batch,
                        service_key=service_key,
                    )
                )
                staged.extend(tasks[-1].staged_inputs)
            except AppError as exc:
                if exc.code == "VALIDATION_ERROR":
                    fields = exc.details.get("fields", {})
                    raise validation_error(
                        {f"items[{index}].{k}": v for k, v in fields.items()}, exc.message
                    ) from None
                raise
        batch.points = sum(task.points for task in tasks)
        batch.save(update_fields=["points"])
    return batch, tasks


TEMPLATE_FIELDS = ["name", "description", "ability", "params", "items", "enabled"]


def template_create(
    *,
    ability,
    name: str,
    items: list,
    description: str = "",
    params: dict | None = None,
    enabled: bool = True,
) -> TaskTemplate:
    """A task template (a named ability with default params and a list of items)."""
    template = TaskTemplate(
        public_id=new_id("tpl"),
        ability=ability,
        name=required_text(name, field="name", max_length=200),
        description=description,
        params=params or {},
        items=items,
        enabled=enabled,
    )
    template.save()
    return template


def template_update(*, template: TaskTemplate, **changes: Any) -> TaskTemplate:
    template, _ = model_update(instance=template, fields=TEMPLATE_FIELDS, data=changes)
    return template


def template_delete(*, template: TaskTemplate) -> None:
    model_delete(instance=template, what="task template")


def template_create_batch(
    *, user, template: TaskTemplate, overrides: dict[str, Any] | None = None
) -> tuple[TaskBatch, list[Task]]:
    overrides = overrides or {}
    if not isinstance(overrides, dict):
        raise validation_error({"overrides": ["Must be an object."]})
    items = []
    for item in template.items or []:
        item = item if isinstance(item, dict) else {}
        params = {**(template.params or {}), **(item.get("params") or {}), **overrides}
        items.append({"params": params, "inputs": item.get("inputs") or []})
    if not items:
        items = [{"params": {**(template.params or {}), **overrides}, "inputs": []}]
    return batch_submit(user=user, action=template.ability.code, items=items, template=template)


# --- Dispatch --------------------------------------------------------------------------------


def _enqueue_dispatch() -> None:
    """Ring the dispatch doorbell after commit; one already waiting covers it (ADR 0034)."""
    ring_on_commit(actor_named(DISPATCH_ACTOR))


def _candidate_bindings(task: Task, cache: dict) -> list:
    """The bindings ``task`` may run on (its test binding, or its ability's runnable ones),
    fetched once per ability per dispatch pass."""
    pinned = task.executor_state.get("testBinding")
    key = ("binding", pinned) if pinned else ("ability", task.ability_id)
    if key not in cache:
        if pinned:
            cache[key] = list(
                WorkflowBinding.objects.filter(pk=pinned).select_related(
                    "workflow", "workflow__active_version", "workflow_version", "executor"
                )
            )
        else:
            # The pass changes its bindings' executors (the in-flight counts it ranks by): its
            # own copies, not the process's cached catalog.
            cache[key] = [_own_copy(b) for b in bindings_for_ability_id(task.ability_id)]
    return cache[key]


def _own_copy(binding: WorkflowBinding) -> WorkflowBinding:
    mine = copy.copy(binding)
    mine.executor = copy.copy(binding.executor)
    return mine


def _ranked_bindings(task: Task | _Queued, cache: dict, *, only: int | None = None) -> list:
    """The bindings ``task`` could start on (all, or those on executor ``only``), in claim order
    (``_binding_rank``, executors the task already tried last)."""
    tried = frozenset(task.executor_state.get("triedExecutors", []))
    candidates = [
        b
        for b in _candidate_bindings(task, cache)
        if not b.missing_node_classes and only in (None, b.executor_id)
    ]
    return sorted(candidates, key=lambda b: _binding_rank(b, tried))


def _claim_executor(task: Task, cache: dict, *, only: int | None = None):
    """Claim a run slot for ``task`` on the best binding's executor; (binding, executor) or None.

    A slot is claimed with one guarded update of the executor's ``in_flight`` counter (it only
    goes up while below ``max_concurrency`` and the executor is dispatchable), not by counting
    running tasks; the counter is given back when the run ends (``_release_slot``).
    """
    # Capacity, health and enablement as read (possibly from the process's catalog cache) only
    # rank the candidates; the guarded update below decides on the row as it is now.
    for binding in _ranked_bindings(task, cache, only=only):
        if update_run(_claim_statement(binding.executor_id)):
            binding.executor.in_flight += 1  # the pass's view, for ranking the next tasks
            return binding, binding.executor
        binding.executor.in_flight = binding.executor.max_concurrency  # full: rank it last
    return None


def _release_slot(task: Task) -> tuple[bool | None, str | None]:
    """Give back the run slot of a task that leaves ``running`` (called under the task's lock,
    in the transaction that changes its status, so exactly once per claimed slot).

    Returns (waiting, the executor's name). On PostgreSQL the same statement tells whether a
    queued task could take the freed slot (False when none could: a finish then skips its
    hand-off; None when not known) and names the executor (None when not read)."""
    if task.status != TaskStatus.RUNNING or not task.executor_id:
        return None, None
    if connection.vendor != "postgresql":
        slot = Executor.objects.filter(pk=task.executor_id, in_flight__gt=0)
        slot.update(in_flight=F("in_flight") - 1)
        return None, None
    with connection.cursor() as cursor:
        cursor.execute(*_release_statement(task.executor_id))
        row = cursor.fetchone()
    return (None, None) if row is None else (bool(row[0]), row[1])


@functools.lru_cache(maxsize=1024)
def _release_statement(executor_id: int) -> tuple[str, tuple]:
    """``_release_slot``'s statement for one executor, compiled once per process (ADR 0028)."""
    waiting, params = _queued_for(executor_id).values("pk")[:1].query.sql_with_params()
    table = connection.ops.quote_name(Executor._meta.db_table)
    return (
        f"UPDATE {table} SET in_flight = in_flight - 1 "  # noqa: S608 - our names only
        f"WHERE id = %s AND in_flight > 0 RETURNING EXISTS ({waiting}), name",
        (executor_id, *params),
    )


@functools.lru_cache(maxsize=1024)
def _first_in_line_statement(executor_id: int) -> tuple[str, tuple]:
    """The queued tasks first in line (priority, then age) among those that could run on the
    executor, three at most: (id, ability id, executor state). Compiled once per executor per
    process (ADR 0028)."""
    first = _queued_for(executor_id).order_by("-priority", "created_at", "pk")
    return first.values_list("pk", "ability_id", "executor_state")[:3].query.sql_with_params()


def _queued_for(executor_id: int) -> QuerySet[Task]:
    """Queued tasks that could run on the executor (their ability has an enabled binding there)."""
    return Task.objects.filter(
        status=TaskStatus.QUEUED,
        ability__bindings__executor_id=executor_id,
        ability__bindings__enabled=True,
    )


def executors_recount_in_flight() -> int:
    """Repair ``in_flight`` counters that differ from the running tasks (a crash between claim
    and commit cannot leave one, but an operator's SQL or a restored backup can). The executor
    row is locked while it is recounted, so no claim interleaves. Returns the number fixed."""
    running = dict(
        Task.objects.filter(status=TaskStatus.RUNNING, executor__isnull=False)
        .values("executor_id")
        .annotate(n=Count("id"))
        .values_list("executor_id", "n")
    )
    suspects = [
        pk
        for pk, in_flight in Executor.objects.values_list("pk", "in_flight")
        if in_flight != running.get(pk, 0)
    ]
    fixed = 0
    for pk in suspects:
        with transaction.atomic():
            executor = Executor.objects.select_for_update().filter(pk=pk).first()
            if executor is None:
                continue
            count = Task.objects.filter(executor_id=pk, status=TaskStatus.RUNNING).count()
            if executor.in_flight != count:
                Executor.objects.filter(pk=pk).update(in_flight=count)
                logger.warning(
                    "executor %s counted %s runs in flight, %s are running: recounted",
                    executor.name,
                    executor.in_flight,
                    count,
                )
                fixed += 1
    return fixed


def tasks_dispatch_pending(*, limit: int = 100, max_rounds: int = 20) -> int:
    """Start queued tasks, highest priority then oldest first, while executors have capacity.

    An ability whose executors are all busy is skipped for the rest of the pass (its later tasks
    could not start either), and the next candidates are fetched without it, so a long queue of
    one busy ability never starves another ability's tasks.
    """
    blocked_abilities: set[int] = set()
    waiting: set[int] = set()
    bindings: dict = {}
    started = 0
    now = timezone.now()
    for _ in range(max_rounds):
        candidates = list(
            Task.objects.filter(status=TaskStatus.QUEUED)
            .exclude(ability_id__in=blocked_abilities)
            .exclude(pk__in=waiting)
            .order_by("-priority", "created_at", "pk")
            .values_list("pk", "ability_id", "executor_state")[:limit]
        )
        for pk, ability_id, state in candidates:
            if ability_id in blocked_abilities:
                continue
            outcome = _dispatch_one(pk, now, bindings, queued=_Queued(pk, ability_id, state))
            if outcome == "started":
                started += 1
            elif outcome == "blocked":
                blocked_abilities.add(ability_id)
            else:
                waiting.add(pk)
        if len(candidates) < limit:
            break
    return started


class _PassCoalescer:
    """One dispatch pass at a time per process, however many doorbells ring (ADR 0030).

    A burst of submits rings a doorbell per queued task. Run as they came, the passes ran side
    by side on the worker threads, each queueing on the same executor row, and a run message
    waited behind them. Here a doorbell that arrives while a pass runs only asks for one more
    pass, started after the running one ends: that pass begins after the doorbell arrived, so
    after the commit that rang it, and sees its task. Nothing rung is dropped; a thousand
    doorbells during one pass cost one more pass."""

    def __init__(self, ring_again):
        self._ring_again = ring_again  # sends a doorbell (the dispatch actor's message)
        self._lock = threading.Lock()
        self._running = False
        self._again = False

    def ring(self, run_pass) -> int | None:
        """Run ``run_pass`` now, and again while doorbells arrived during it; None when a pass
        already running takes this doorbell."""
        with self._lock:
            if self._running:
                self._again = True
                return None
            self._running = True
        started = 0
        try:
            while True:
                started += run_pass()
                with self._lock:
                    if not self._again:
                        self._running = False
                        return started
                    self._again = False
        except BaseException:
            with self._lock:
                self._running = False
                rung = self._again
                self._again = False
            if rung:
                self._ring_again()  # a doorbell taken by this pass is not lost with it
            raise


_passes = _PassCoalescer(_enqueue_dispatch)


def tasks_dispatch_doorbell() -> int | None:
    """The dispatch actor's entry: a pass, coalesced with the others of this process."""
    return _passes.ring(tasks_dispatch_pending)


class _Queued(NamedTuple):
    """What a dispatch pass reads of a queued task to rank its bindings, without locking it."""

    pk: int
    ability_id: int
    executor_state: dict


def _dispatch_one(
    pk: int,
    now,
    bindings: dict,
    *,
    only: int | None = None,
    queued: _Queued | None = None,
) -> str:
    """Claim an executor for one queued task: "started", "blocked" (no capacity) or "skipped".
    ``only`` limits it to one executor.
    With ``queued`` (the task as read unlocked) on PostgreSQL, a start is one statement
    (``_start_in_one``); otherwise, and when that cannot decide, the step-by-step start below."""
    if queued is not None and connection.vendor == "postgresql":
        outcome = _start_in_one(queued, now, bindings, only=only)
        if outcome is not None:
            return outcome
    with transaction.atomic(), events_batched():
        # SKIP LOCKED: a task another dispatch pass is starting is that pass's, not a wait.
        task = _QUEUED_TASK_TO_START.get(pk)
        if task is None:
            return "skipped"
        not_before = task.executor_state.get("notBefore")
        if not_before and not_before > now.timestamp():
            return "skipped"
        claim = _claim_executor(task, bindings, only=only)
        if claim is None:
            return "blocked"
        binding, _ = claim
        _start(task, binding, now)
        if not _hold_outlives(task, task.run_deadline):
            # Never run what can no longer be charged (docs/adr/0011-money-holes.md).
            _release_slot(task)
            task_finish(
                task_id=task.public_id,
                status=TaskStatus.FAILED,
                error_code=codes.TASK_HOLD_EXPIRED.code,
                error_message="The task's hold expired before it could start.",
            )
            return "skipped"
        task.external_id = ""
        state = dict(task.executor_state)
        state.pop("notBefore", None)
        state.pop("submitted", None)
        task.executor_state = state
        task.save()
        _observe_dispatch(task, now)
        _emit_status(task)
        enqueue_on_commit(actor_named(RUN_ACTOR), task.public_id, task.attempts)
    return "started"


class _HoldLapsed(Exception):
    """The start's statement claimed a slot for a task whose hold can no longer be charged."""


def _start_in_one(queued: _Queued, now, cache: dict, *, only: int | None = None) -> str | None:
    """Start a queued task on the best binding with a free slot, one statement per binding
    tried (PostgreSQL; docs/adr/0031-a-queued-start-in-one-statement.md): "started", "blocked"
    or "skipped" as ``_dispatch_one``; None when the task's hold can no longer be charged
    (nothing written: the step-by-step start fails it)."""
    for binding in _ranked_bindings(queued, cache, only=only):
        executor = binding.executor
        try:
            with transaction.atomic(), events_batched():
                outcome = _start_statement_run(queued.pk, binding, now)
        except _HoldLapsed:
            return None
        if outcome == "full":
            executor.in_flight = executor.max_concurrency  # rank it last for the pass
            continue
        if outcome == "started":
            executor.in_flight += 1  # the pass's view, for ranking the next tasks
        return outcome
    return "blocked"


def _start_statement_run(pk: int, binding: WorkflowBinding, now) -> str:
    """Run the start's statement for one binding, inside the caller's transaction and
    ``events_batched``: "started" (the status event raised, the run message sent on commit),
    "full" (the executor had no free slot: nothing written) or "skipped" (the task is not queued,
    not due, or another pass is starting it)."""
    deadline = now + timedelta(seconds=binding.run_timeout)
    hold_cte, hold_params = hold_outlive_in_statement(
        key_sql="(SELECT hold_id FROM q)",
        after_sql="EXISTS (SELECT 1 FROM x)",
        expires_at=deadline + timedelta(seconds=settings.TASK_HOLD_MARGIN),
        name="h",
    )
    claim_sql, claim_params = _claim_statement(binding.executor_id)
    params = [
        pk, TaskStatus.QUEUED, now.timestamp(),
        *claim_params,
        *hold_params,
        TaskStatus.RUNNING, binding.pk, binding.executor_id, now, now, now,
        binding.run_timeout, deadline, now,
    ]  # fmt: skip
    with connection.cursor() as cursor:
        cursor.execute(_start_sql(claim_sql, hold_cte), params)
        row = cursor.fetchone()
    if row[0] is None:
        return "skipped"
    if not row[1]:
        return "full"
    if row[2] is None:
        raise _HoldLapsed  # the slot was claimed: undone with the caller's transaction
    task = _task_from_row(row[2:])
    _observe_dispatch(task, now)
    _emit_status(task)
    enqueue_on_commit(actor_named(RUN_ACTOR), task.public_id, task.attempts)
    return "started"


@functools.cache
def _start_sql(claim_sql: str, hold_cte: str) -> str:
    """One statement that starts a queued task's next attempt on a binding: lock the task (SKIP
    LOCKED: one another pass is starting is that pass's) while it is queued and due, claim a
    slot with the executor's guarded update (``_claim_statement``), extend the task's hold past
    the run's deadline (``wallet``'s CTE) and move the task to running. Locks in the dispatch
    order: task, executor, hold. Returns the task's id (none: skipped), whether a slot was
    claimed, and the started task's columns (none with a slot claimed: the hold lapsed)."""
    quote = connection.ops.quote_name
    task_table, executor_table = quote(Task._meta.db_table), quote(Executor._meta.db_table)
    task_columns = ", ".join(f"t.{quote(f.column)}" for f in Task._meta.concrete_fields)
    # Only table and column names of our own models are interpolated; values are parameters.
    locked = (
        f"SELECT t.id, t.hold_id FROM {task_table} t WHERE t.id = %s AND t.status = %s "  # noqa: S608
        "AND COALESCE((t.executor_state ->> 'notBefore')::float8, 0) <= %s "
        "FOR UPDATE OF t SKIP LOCKED"
    )
    claim = f"{claim_sql} AND EXISTS (SELECT 1 FROM q) RETURNING {executor_table}.id"  # noqa: S608
    started = (
        f"UPDATE {task_table} t SET status = %s, binding_id = %s, executor_id = %s, "  # noqa: S608
        "attempts = t.attempts + 1, started_at = COALESCE(t.started_at, %s), heartbeat_at = %s, "
        "dispatched_at = %s, run_timeout = %s, run_deadline = %s, external_id = '', "
        "executor_state = t.executor_state - 'notBefore' - 'submitted', updated_at = %s "
        "FROM q WHERE t.id = q.id AND EXISTS (SELECT 1 FROM x) "
        f"AND (q.hold_id = '' OR EXISTS (SELECT 1 FROM h)) RETURNING {task_columns}"
    )
    return (
        f"WITH q AS ({locked}), x AS ({claim}), {hold_cte}, s AS ({started}) "  # noqa: S608
        "SELECT (SELECT id FROM q), EXISTS (SELECT 1 FROM x), s.* "
        "FROM (SELECT 1) one LEFT JOIN s ON true"
    )


def _hand_off(executor_id: int, now) -> bool:
    """Start the queued task first in line (priority, then age) among those that could run on
    the executor whose slot a finish just freed; True when it started (ADR 0018). Inside the
    finishing transaction (the step-by-step finish) under a savepoint of its own, or after a
    success's own statement (ADR 0031). A failure here never fails the finish, which then
    rings the dispatch doorbell instead."""
    field = Task._meta.get_field("executor_state")
    try:
        with connection.cursor() as cursor:
            cursor.execute(*_first_in_line_statement(executor_id))
            first = cursor.fetchall()
        # Only the freed executor: inside a finish its row is already the transaction's, while
        # another executor's row would be locked after the wallet's, against the order every
        # transaction keeps (executor, then wallet), and deadlock with a submit.
        for pk, ability_id, state in first:
            queued = _Queued(pk, ability_id, field.from_db_value(state, None, connection) or {})
            outcome = _dispatch_one(pk, now, {}, only=executor_id, queued=queued)
            if outcome != "skipped":  # one already being started by a pass: the next in line
                return outcome == "started"
    except DatabaseError as exc:
        logger.warning("handing executor %s's freed slot on failed: %s", executor_id, exc)
    return False


def _hand_off_after_success(executor_id: int) -> None:
    """After a success's statement freed a slot a queued task waits for: hand it on, else ring."""
    if not _hand_off(executor_id, timezone.now()):
        _dispatch_if_queued()


def queue_position(task: Task) -> int | None:
    """1-based position among queued tasks of the same ability that would start before it."""
    if task.status != TaskStatus.QUEUED:
        return None
    ahead = Task.objects.filter(status=TaskStatus.QUEUED, ability_id=task.ability_id).filter(
        Q(priority__gt=task.priority)
        | Q(priority=task.priority, created_at__lt=task.created_at)
        | Q(priority=task.priority, created_at=task.created_at, pk__lt=task.pk)
    )
    return ahead.count() + 1


# --- The hold outlives the task ----------------------------------------------------------------


def _hold_outlives(task: Task, deadline) -> bool:
    """Extend the task's hold past ``deadline`` (plus ``TASK_HOLD_MARGIN``) whenever a deadline
    moves; False when the hold can no longer be charged (settled or overdue). One statement."""
    if not task.hold_id:
        return True
    return hold_outlive(
        hold_id=task.hold_id,
        expires_at=deadline + timedelta(seconds=settings.TASK_HOLD_MARGIN),
    )


def _charge(task: Task) -> bool:
    """Confirm the task's hold; False when it expired first (the task then fails, uncharged)."""
    if hold_confirm_by_id(hold_id=task.hold_id, expired_ok=True) is None:
        logger.error("hold %s expired before its task %s was charged", task.hold_id, task.public_id)
        return False
    return True


# --- Progress, finish, retry -----------------------------------------------------------------


def task_progress(*, task_id: str, attempt: int, progress: int, detail: dict | None = None) -> bool:
    """Record progress of a running attempt; False when the attempt is no longer current."""
    progress = max(0, min(99, int(progress)))
    now = timezone.now()
    with transaction.atomic():
        task = (
            Task.objects.select_for_update()
            .filter(public_id=task_id, status=TaskStatus.RUNNING, attempts=attempt)
            .first()
        )
        if task is None:
            return False
        changed = progress > task.progress
        task.heartbeat_at = now
        fields = ["heartbeat_at", "updated_at"]
        if changed:
            task.progress = progress
            fields.append("progress")
        task.save(update_fields=fields)
        if changed:
            payload = task_status_payload(task)
            if detail:
                payload["detail"] = detail
            emit(
                user_id=task.user_id,
                type="task.progress",
                payload=payload,
                task_id=task_id,
                webhook=_callback(task, "task.progress"),
            )
    return True


def task_heartbeat(*, task_id: str, attempt: int) -> str | None:
    """Touch the attempt's heartbeat; return the task status (None if the attempt is stale)."""
    updated = Task.objects.filter(
        public_id=task_id, attempts=attempt, status=TaskStatus.RUNNING
    ).update(heartbeat_at=timezone.now())
    if updated:
        return TaskStatus.RUNNING
    row = Task.objects.filter(public_id=task_id).values_list("status", "attempts").first()
    if row is None or row[1] != attempt:
        return None
    return row[0]


def task_run_claim(*, task_id: str, attempt: int, worker: str, loaded: Task | None = None) -> bool:
    """Record ``worker`` as the process running this attempt. False when the attempt is no longer
    current, or another worker that is still alive holds it (a duplicate or late message).

    ``loaded``: the task row as the caller just read it. When no other worker holds it, the
    claim is one statement guarded by the row's ``updated_at`` (nothing changed it since it was
    read) and ``loaded`` gets the new state; otherwise, the locked path below (ADR 0018)."""

    if loaded is not None and loaded.executor_state.get("worker") in (None, "", worker):
        now = timezone.now()
        state = {**loaded.executor_state, "worker": worker}
        if Task.objects.filter(
            pk=loaded.pk,
            attempts=attempt,
            status=TaskStatus.RUNNING,
            updated_at=loaded.updated_at,
        ).update(executor_state=state, heartbeat_at=now, updated_at=now):
            loaded.executor_state, loaded.heartbeat_at, loaded.updated_at = state, now, now
            return True
    with transaction.atomic():
        task = (
            Task.objects.select_for_update()
            .filter(public_id=task_id, attempts=attempt, status=TaskStatus.RUNNING)
            .first()
        )
        if task is None:
            return False
        holder = task.executor_state.get("worker")
        if holder and holder != worker:
            alive = Lease.objects.filter(
                name=worker_lease_name(holder), holder=holder, expires_at__gt=timezone.now()
            ).exists()
            if alive:
                return False
        task.executor_state = {**task.executor_state, "worker": worker}
        task.heartbeat_at = timezone.now()
        task.save(update_fields=["executor_state", "heartbeat_at", "updated_at"])
    return True


def task_set_external(*, task_id: str, attempt: int, external_id: str, state: dict) -> None:
    """Persist the executor-side id of an attempt before it is submitted (idempotent submit).

    ``state`` is the attempt's whole executor state as its runner holds it (loaded with the
    attempt, after its claim): one guarded update, a no-op for an attempt no longer current."""
    Task.objects.filter(public_id=task_id, attempts=attempt, status=TaskStatus.RUNNING).update(
        external_id=external_id, executor_state=state, updated_at=timezone.now()
    )


def _asset_dict(asset: TaskAsset | MediaObject) -> dict[str, Any]:
    item = {"objectKey": asset.object_key, "mimeType": asset.mime_type, "size": asset.size}
    if asset.width:
        item["width"] = asset.width
        item["height"] = asset.height
    return item


# The reads of the dispatch and finish paths, compiled once per process (ADR 0028).
_QUEUED_TASK_TO_START = RowReader(
    Task, "pk", where={"status": TaskStatus.QUEUED}, lock="skip_locked"
)
_TASK_TO_FINISH = RowReader(Task, "public_id", lock="update")


def _executor_name(task: Task, released_from: str | None) -> str:
    """The executor's name for a metric label: as the slot's release read it, else its row."""
    if released_from is not None:
        return released_from
    return task.executor.name if task.executor_id else ""


def task_finish(
    *,
    task_id: str,
    status: str,
    attempt: int | None = None,
    outputs: list[Any] | None = None,
    result: Any = None,
    error_code: str = "",
    error_message: str = "",
) -> Task:
    """Move a task to a terminal state and settle its hold, once.

    ``outputs`` are stored media objects (``media_app.models.MediaObject``), usually staged: a
    success publishes them in this transaction, together with the confirm; any other ending
    leaves them staged for the sweep. Objects written without their row yet
    (``media_write_output``, no ``pk``) are recorded: published by the one-statement success,
    staged before any other path. A call for a stale attempt, or for a task already terminal,
    changes nothing and returns the task as it is.
    """

    if status not in {TaskStatus.SUCCEEDED, TaskStatus.FAILED, TaskStatus.CANCELED}:
        raise ValueError(f"not a terminal status: {status}")
    if status == TaskStatus.SUCCEEDED and attempt is not None and connection.vendor == "postgresql":
        try:
            if transaction.get_connection().in_atomic_block:
                # Inside a caller's transaction: under a savepoint, events recorded together.
                with transaction.atomic(), events_batched():
                    done = _succeed_in_one(task_id, attempt, outputs or [], result)
            else:
                # Its own transaction: the statement, its events included, is all of it.
                done = _succeed_in_one(task_id, attempt, outputs or [], result, alone=True)
            if done is not None:
                return done
        except DataError as exc:
            if getattr(exc.__cause__, "sqlstate", "") != _NOT_CHARGED:
                raise
            # The hold could not be charged after all (expired at the last moment): nothing
            # was written; the path below ends the task failed, deterministically.
    if outputs:
        # Rows for the outputs not recorded yet: staged, so that whatever ends the task below,
        # the sweep finds what it does not publish.
        media_stage(outputs)
    with transaction.atomic(), events_batched():
        task = _TASK_TO_FINISH.get(task_id)
        if task is None:
            raise Task.DoesNotExist(f"task {task_id}")
        if task.is_terminal or (attempt is not None and task.attempts != attempt):
            return task
        # The run slot first: every transaction that touches an executor row does so before
        # the wallet and event rows (dispatch: task, executor, hold, cursor), or the two deadlock.
        waiting, executor_name = _release_slot(task)
        freed = task.status == TaskStatus.RUNNING and task.executor_id and waiting is not False
        # Settle first: a success whose hold expired ends failed, deterministically.
        if task.hold_id:
            # One statement each on PostgreSQL (ADR 0019).
            if status == TaskStatus.SUCCEEDED and not _charge(task):
                status = TaskStatus.FAILED
                error_code = codes.TASK_HOLD_EXPIRED.code
                error_message = "The task's hold expired before it could be charged."
            if status != TaskStatus.SUCCEEDED:
                hold_release_by_id(hold_id=task.hold_id)
        now = timezone.now()
        task.status = status
        task.finished_at = now
        task.result = result
        if status == TaskStatus.SUCCEEDED:
            task.progress = 100
            task.error_code = ""
            task.error_message = ""
        else:
            task.error_code = error_code or codes.EXECUTOR_ERROR.code
            task.error_message = (error_message or "")[:4000]
        task.save(update_fields=_FINISHED_FIELDS)
        if task.dispatched_at is not None:
            observe_on_commit(
                TASK_RUN_SECONDS,
                (now - task.dispatched_at).total_seconds(),
                ability=task.action,
                executor=_executor_name(task, executor_name),
                status=status,
            )
        output_items = None
        if outputs is not None and status == TaskStatus.SUCCEEDED:
            # Outputs become reachable here, with the charge; otherwise they stay staged and
            # the reconciler sweeps them (docs/adr/0011-money-holes.md).
            media_publish(object_keys=[media.object_key for media in outputs])
            # The task ends here, once, so it has no outputs yet: one insert for all of them.
            assets = [
                TaskAsset(
                    task=task,
                    kind=TaskAsset.Kind.OUTPUT,
                    object_key=media.object_key,
                    mime_type=media.mime_type or "",
                    size=media.size,
                    width=media.width,
                    height=media.height,
                    sha256=media.sha256 or "",
                    node_id=getattr(media, "node_id", "") or "",
                )
                for media in outputs
            ]
            if assets:
                TaskAsset.objects.bulk_create(assets)
            output_items = [_asset_dict(asset) for asset in assets]
        _emit_status(task, outputs=output_items)
        # The freed slot goes to the queued task first in line for it, in this transaction.
        # When none took it, a queued task is looked for after the commit, so a submit that
        # found the executor full and queued meanwhile is seen either there or by the dispatch
        # pass its own commit rings (ADR 0018).
        if not (freed and _hand_off(task.executor_id, now)):
            transaction.on_commit(_dispatch_if_queued, robust=True)
    return task


# --- A success in one statement (PostgreSQL; docs/adr/0024-a-success-in-one-statement.md) ------

_NOT_CHARGED = "22012"  # division_by_zero: the statement's own way to undo itself


@functools.cache
def _succeed_sql(
    settle_ctes: str, settle_columns: str, media_cte: str, event_ctes: str = "", seq_sql: str = ""
) -> str:
    """One statement that ends a running attempt succeeded: lock the task, give back the run
    slot (and tell whether a queued task waits for it: ADR 0031), confirm the hold
    (``wallet``'s CTEs), write the task's end, publish its outputs (``media_app``'s CTE) and
    insert its assets. Locks in the finish's order: task, executor,
    hold, account. A hold that cannot be charged makes the statement fail (division by zero),
    which undoes all of it. With ``event_ctes`` the statement records the events too (then the
    event cursor is locked last), for a task without a callback (a callback's delivery is
    recorded with its event by the batch)."""
    quote = connection.ops.quote_name
    task_table, executor_table = quote(Task._meta.db_table), quote(Executor._meta.db_table)
    binding_table = quote(WorkflowBinding._meta.db_table)
    asset_table = quote(TaskAsset._meta.db_table)
    task_columns = ", ".join(f"t.{quote(f.column)}" for f in Task._meta.concrete_fields)
    # Only table and column names of our own models are interpolated; values are parameters.
    waiting = (
        f"SELECT 1 FROM {task_table} q JOIN {binding_table} b ON b.ability_id = q.ability_id "  # noqa: S608
        "WHERE q.status = %s AND b.executor_id = (SELECT executor_id FROM k) AND b.enabled"
    )
    locked = (
        f"SELECT t.id, t.executor_id, t.hold_id FROM {task_table} t WHERE t.public_id = %s "  # noqa: S608
        "AND t.attempts = %s AND t.status = %s AND t.hold_id <> '' AND t.executor_id IS NOT NULL"
        f"{' AND t.callback_url = %s' if event_ctes else ''} FOR UPDATE OF t"
    )
    slot = (
        f"UPDATE {executor_table} x SET in_flight = x.in_flight - 1 FROM k "  # noqa: S608
        "WHERE x.id = k.executor_id AND x.in_flight > 0 RETURNING x.id, x.name"
    )
    ended = (
        f"UPDATE {task_table} t SET status = %s, finished_at = %s, result = %s, progress = 100, "  # noqa: S608
        "error_code = '', error_message = '', updated_at = %s FROM k "
        f"WHERE t.id = k.id AND EXISTS (SELECT 1 FROM wallet_settled) RETURNING {task_columns}"
    )
    asset_columns = [
        "object_key", "mime_type", "size", "width", "height", "sha256", "node_id"
    ]  # fmt: skip
    assets = (
        f"INSERT INTO {asset_table} (task_id, kind, created_at, {', '.join(asset_columns)}) "  # noqa: S608
        f"SELECT e.id, %s, %s, u.* FROM e CROSS JOIN unnest(%s::text[], %s::text[], "
        "%s::bigint[], %s::int[], %s::int[], %s::text[], %s::text[]) AS u RETURNING id"
    )
    return (
        f"WITH k AS ({locked}), x AS ({slot}), {settle_ctes}, e AS ({ended}), "  # noqa: S608
        f"{media_cte}, a AS ({assets}){', ' + event_ctes if event_ctes else ''} "
        # In this order: the task's lock, the slot, the hold (and account), the task's end,
        # the event cursor.
        "SELECT (SELECT id FROM k), (SELECT name FROM x), (SELECT executor_id FROM k), "
        f"EXISTS ({waiting}), "
        "CASE WHEN EXISTS (SELECT 1 FROM k) THEN 1 / (SELECT count(*) FROM wallet_settled)::int "
        f"END, {settle_columns}, {seq_sql or 'NULL'}, e.* FROM (SELECT 1) one LEFT JOIN e ON true"
    )


def _succeed_in_one(
    task_id: str, attempt: int, outputs: list, result: Any, *, alone: bool = False
) -> Task | None:
    """``task_finish`` of a success, in one statement: inside the caller's transaction and
    ``events_batched``, or ``alone`` (outside any transaction), with its two events recorded by
    the statement itself, which is then the whole transaction. None when it did not apply, with
    nothing written: the attempt is not current and running, the task has no hold, or
    (``alone``) the task has a callback URL. A queued task waiting for the executor gets the
    freed slot after the commit (ADR 0031)."""
    settle = hold_confirm_in_statement(
        key_sql="(SELECT hold_id FROM k)", after_sql="(SELECT count(*) FROM x) >= 0"
    )
    media_cte, media_params = media_publish_in_statement(
        media=outputs, when_sql="EXISTS (SELECT 1 FROM e)"
    )
    items = [_asset_dict(media) for media in outputs]  # a media object has the same fields
    # What task_status_payload gives a succeeded task with these outputs.
    status_payload = {
        "taskId": task_id,
        "status": TaskStatus.SUCCEEDED.value,
        "progress": 100,
        "outputs": items,
    }
    recorded = None
    if alone:
        wallet_type, wallet_payload_sql = settle.event_sql
        recorded = emit_several_in_statement(
            events=[
                (wallet_type, wallet_payload_sql, []),
                ("task.status", "%s::jsonb", [json.dumps(status_payload)]),
            ],
            source="wallet_settled CROSS JOIN wallet_moved CROSS JOIN e",
            user_sql="e.user_id",
            task_sql="e.public_id",
        )
        if recorded is None:  # no statement recorder (events unpersisted): in a transaction
            with transaction.atomic(), events_batched():
                return _succeed_in_one(task_id, attempt, outputs, result)
    sql = _succeed_sql(
        settle.ctes,
        settle.columns,
        media_cte,
        recorded.ctes if recorded else "",
        recorded.last_seq_sql if recorded else "",
    )
    now = timezone.now()
    result_db = Task._meta.get_field("result").get_db_prep_save(result, connection)
    columns: list[list] = [[], [], [], [], [], [], []]
    for media in outputs:
        values = (
            media.object_key, media.mime_type or "", media.size, media.width, media.height,
            media.sha256 or "", getattr(media, "node_id", "") or "",
        )  # fmt: skip
        for column, value in zip(columns, values, strict=True):
            column.append(value)
    params = [
        task_id, attempt, TaskStatus.RUNNING,
        *([""] if recorded else []),
        *settle.params,
        TaskStatus.SUCCEEDED, now, result_db, now,
        *media_params,
        TaskAsset.Kind.OUTPUT, now, *columns,
        *(recorded.params if recorded else []),
        TaskStatus.QUEUED,
    ]  # fmt: skip
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        row = cursor.fetchone()
    if row is None or row[0] is None:
        return None
    executor_name, executor_id, waiting = row[1], row[2], row[3]
    settled = row[5 : 5 + settle.width]
    last_seq = row[5 + settle.width]
    task = _task_from_row(row[6 + settle.width :])
    hold = settle.settled(settled, raise_event=recorded is None)
    if task.dispatched_at is not None:
        observe_on_commit(
            TASK_RUN_SECONDS,
            (now - task.dispatched_at).total_seconds(),
            ability=task.action,
            executor=executor_name or "",
            status=task.status,
        )
    if recorded is not None:
        recorded.emitted(
            last_seq,
            user_id=task.user_id,
            task_id=task.public_id,
            payloads=[settle.event_payload(hold), status_payload],
        )
    else:
        _emit_status(task, outputs=items)
    if waiting:
        # The freed slot goes to the queued task first in line for it, after the commit
        # (ADR 0031); a submit never takes a slot a queued task waits for (ADR 0018).
        transaction.on_commit(functools.partial(_hand_off_after_success, executor_id), robust=True)
    else:
        # No queued task waited for the executor when the statement looked; one queued since
        # is found by this check after the commit, or by the dispatch pass its submit rang.
        transaction.on_commit(_dispatch_if_queued, robust=True)
    return task


def _task_from_row(values) -> Task:
    """A task from its columns as the database returned them (``RETURNING t.*``)."""
    fields = Task._meta.concrete_fields
    converted = []
    for field, value in zip(fields, values, strict=True):
        if hasattr(field, "from_db_value"):
            value = field.from_db_value(value, None, connection)
        converted.append(value)
    return Task.from_db(connection.alias, [f.attname for f in fields], converted)


# The fields a finish changes: the update writes only these (not the task's JSON documents).
_FINISHED_FIELDS = (
    "status",
    "finished_at",
    "result",
    "progress",
    "error_code",
    "error_message",
    "updated_at",
)


def _dispatch_if_queued() -> None:
    table = connection.ops.quote_name(Task._meta.db_table)
    with connection.cursor() as cursor:  # one plain read: the ORM's exists() costs more to build
        cursor.execute(f"SELECT 1 FROM {table} WHERE status = %s LIMIT 1", [TaskStatus.QUEUED])  # noqa: S608
        queued = cursor.fetchone() is not None
    if queued:
        _enqueue_dispatch()  # outside a transaction: sent now


def task_requeue_or_fail(
    *, task_id: str, attempt: int, error_code: str, error_message: str
) -> Task:
    """After a transient failure: queue the task again (preferring another executor) or fail it."""
    with transaction.atomic():
        task = Task.objects.select_for_update().get(public_id=task_id)
        if task.is_terminal or task.attempts != attempt or task.status != TaskStatus.RUNNING:
            return task
        if task.attempts >= task.max_attempts:
            return task_finish(
                task_id=task_id,
                status=TaskStatus.FAILED,
                attempt=attempt,
                error_code=error_code,
                error_message=error_message,
            )
        now = timezone.now()
        backoff = min(2 ** (task.attempts - 1), 30)
        state = dict(task.executor_state)
        tried = list(dict.fromkeys([*state.get("triedExecutors", []), task.executor_id]))
        state.update(
            triedExecutors=tried,
            notBefore=(now + timedelta(seconds=backoff)).timestamp(),
            lastError={"code": error_code, "message": error_message[:500]},
        )
        _release_slot(task)
        task.status = TaskStatus.QUEUED
        task.executor = None
        task.binding = None
        task.external_id = ""
        task.progress = 0
        task.executor_state = state
        task.queue_deadline = now + timedelta(seconds=task.queue_timeout)
        task.run_deadline = None
        if not _hold_outlives(task, task.queue_deadline):
            return task_finish(
                task_id=task_id,
                status=TaskStatus.FAILED,
                attempt=attempt,
                error_code=codes.TASK_HOLD_EXPIRED.code,
                error_message="The task's hold expired before it could be retried.",
            )
        task.save()
        _emit_status(task)
        enqueue_on_commit(actor_named(DISPATCH_ACTOR), delay=backoff * 1000 + 50)
    return task


# --- Cancel, retry, receipts -----------------------------------------------------------------


def task_cancel(*, task: Task) -> Task:
    with transaction.atomic():
        locked = Task.objects.select_for_update().get(pk=task.pk)
        if locked.is_terminal:
            raise AppError(codes.TASK_NOT_CANCELABLE, details={"status": locked.status})
        was_running = locked.status == TaskStatus.RUNNING
        executor_id, external_id, state = (
            locked.executor_id,
            locked.external_id,
            locked.executor_state,
        )
        locked = task_finish(
            task_id=locked.public_id,
            status=TaskStatus.CANCELED,
            error_code=codes.TASK_CANCELED.code,
            error_message="Canceled by the user.",
        )
        if was_running and executor_id:
            enqueue_on_commit(
                actor_named(INTERRUPT_ACTOR), executor_id, external_id, state.get("clientId", "")
            )
    return locked


def task_retry(*, task: Task) -> Task:
    if task.status not in {TaskStatus.FAILED, TaskStatus.CANCELED}:
        raise AppError(codes.TASK_NOT_RETRYABLE, details={"status": task.status})
    inputs = [
        {"objectKey": item["objectKey"]} if item.get("objectKey") else {"url": item["url"]}
        for item in task.inputs
    ]
    return task_submit(
        user=task.user,
        action=task.action,
        params=task.params,
        inputs=inputs,
        priority=task.priority,
        callback_url=task.callback_url,
        callback_events=task.callback_events,
        client_ref=task.client_ref,
        original_task=task,
        service_key=task.service_key,
    )


def _stale_attempt(task: Task, attempt: int) -> AppError:
    return AppError(
        codes.TASK_ATTEMPT_STALE, details={"attempt": attempt, "currentAttempt": task.attempts}
    )


def task_complete_receipt(
    *,
    task: Task,
    attempt: int,
    status: str,
    outputs: list[dict[str, Any]] | None = None,
    result: Any = None,
    error: dict[str, Any] | None = None,
) -> Task:
    """A receipt from the executor or agent (authenticated by the task token of ``attempt``).

    Only the current attempt may report: a token of an earlier attempt, or of one that was
    given up on (the task is queued again), is 409 ``TASK_ATTEMPT_STALE`` and changes nothing
    (docs/adr/0011-money-holes.md).
    """

    if task.attempts != attempt or task.status == TaskStatus.QUEUED:
        raise _stale_attempt(task, attempt)
    if task.is_terminal:
        if task.status == status:
            return task
        raise AppError(codes.TASK_ALREADY_FINISHED, details={"status": task.status})
    media = []
    for index, item in enumerate(outputs or []):
        key = item.get("objectKey") if isinstance(item, dict) else None
        if not key:
            raise validation_error({f"outputs[{index}].objectKey": ["Required."]})
        try:
            media.append(media_get_uploaded_for_user(user=task.user, object_key=key))
        except AppError:
            raise validation_error(
                {f"outputs[{index}].objectKey": ["No uploaded object of the task's user."]}
            ) from None
    if status == TaskStatus.SUCCEEDED:
        finished = task_finish(
            task_id=task.public_id,
            status=TaskStatus.SUCCEEDED,
            attempt=attempt,
            outputs=media,
            result=result,
        )
    else:
        error = error or {}
        finished = task_finish(
            task_id=task.public_id,
            status=TaskStatus.FAILED,
            attempt=attempt,
            outputs=media,
            result=result,
            error_code=str(error.get("code") or codes.EXECUTOR_ERROR.code)[:64],
            error_message=str(error.get("message") or "The executor reported a failure."),
        )
    if finished.attempts != attempt or not finished.is_terminal:
        raise _stale_attempt(finished, attempt)  # the task moved on meanwhile
    return finished
