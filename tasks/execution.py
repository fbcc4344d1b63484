"""Running one task attempt on its executor, and the reconciler's passes over tasks.

``task_run`` is what the ``run_task`` actor does: build a run context, let the executor's adapter
submit and follow, store the outputs through Django storage, then finish the task. It checks the
task's state first and at every heartbeat, so a duplicate message or a canceled task is harmless.
A ComfyUI attempt is only submitted in the actor thread; this process's executor session follows
it and ``tasks.followers`` concludes it (docs/adr/0015-executor-sessions.md).
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import threading
import time
from concurrent.futures import Future
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import InterfaceError, OperationalError, connection, transaction
from django.utils import timezone

from integrations.executors.base import ExecutorError
from integrations.executors.registry import run_adapter_for, session_for
from integrations.executors.runtime import InputFile, RunResult, RunStopped, download_opener
from integrations.models import Executor
from integrations.selectors import bindings_for_ability_id
from integrations.templating import fill_template
from integrations.validation import media_params
from media_app.selectors import media_staged
from media_app.services import (
    media_discard_staged,
    media_open,
    media_stage,
    media_write_output,
    signed_download_url,
)
from podi.common import RowReader
from podi.events import actor_named, enqueue_on_commit
from podi.models import Lease
from podi.runtime import WORKER_LEASE_PREFIX, current_worker_id, worker_lease_name
from podi.urlguard import url_refusal
from tasks import error_codes as codes
from tasks import followers
from tasks.models import TERMINAL_STATUSES, Task, TaskStatus
from tasks.services import (
    RUN_ACTOR,
    executors_recount_in_flight,
    task_callback_url,
    task_heartbeat,
    task_progress,
    task_run_claim,
    task_set_external,
    task_token,
    tasks_dispatch_pending,
)
from tasks.services import (
    task_finish as _task_finish,
)
from tasks.services import (
    task_requeue_or_fail as _task_requeue_or_fail,
)

logger = logging.getLogger("podi.tasks.execution")

HEARTBEAT_EVERY = 5.0
# A running attempt whose worker has not touched its heartbeat for this long is presumed dead.
HEARTBEAT_STALE = timedelta(seconds=60)
TIMEOUT_GRACE = timedelta(seconds=30)
# Staged media without a task row are a failed submit's leftovers once this old.
STAGED_ORPHAN_GRACE = timedelta(minutes=10)


def _retrying(write):
    """Run a state write again when the database refused it for a lock conflict (a deadlock
    victim on PostgreSQL, a busy SQLite). The writes are idempotent under the task's lock."""

    def run(**kwargs):
        for attempt in range(4):
            try:
                return write(**kwargs)
            except OperationalError:
                if attempt == 3:
                    raise
                time.sleep(0.05 * 2**attempt)
        return None

    return run


task_finish = _retrying(_task_finish)
task_requeue_or_fail = _retrying(_task_requeue_or_fail)


class TaskRunContext:
    """The ``RunContext`` an adapter sees for one attempt of one task."""

    def __init__(self, task: Task, attempt: int):
        self.task = task
        self.task_id = task.public_id
        self.user_id = task.user_id
        self.attempt = attempt
        self.params = dict(task.params)
        self.deadline = task.run_deadline or (timezone.now() + timedelta(seconds=task.run_timeout))
        self.external_id = task.external_id
        self.state = dict(task.executor_state)
        version = task.binding.resolved_version() if task.binding else None
        if version is None:
            raise ExecutorError("The binding has no workflow version to run.", permanent=True)
        self.definition = version.definition
        self.kind = task.binding.workflow.kind
        self.params_schema = version.params_schema or {}
        self.outputs_declared = version.outputs or []
        self.inputs = self._inputs()
        self._last_beat = 0.0
        self._last_progress = -1

    def _inputs(self) -> list[InputFile]:
        files = []
        for name in media_params(self.params_schema):
            value = self.params.get(name)
            if not value:
                continue
            if value.startswith(("http://", "https://")):
                # Checked again now: DNS may have changed since the submit.
                reason = url_refusal(value)
                if reason:
                    raise ExecutorError(f"Input {name}: {reason}", permanent=True)
                files.append(
                    InputFile(
                        param=name,
                        object_key=value.split("?", 1)[0].rsplit("/", 1)[-1] or name,
                        mime_type="",
                        open=download_opener(value, timeout=settings.EXECUTOR_HTTP_TIMEOUT),
                        url=lambda ttl, value=value: value,
                    )
                )
                continue
            mime = next(
                (i.get("mimeType", "") for i in self.task.inputs if i.get("objectKey") == value),
                "",
            )
            files.append(
                InputFile(
                    param=name,
                    object_key=value,
                    mime_type=mime,
                    open=lambda key=value: contextlib.closing(media_open(object_key=key)),
                    url=lambda ttl, key=value: signed_download_url(object_key=key, ttl=ttl)[0],
                )
            )
        return files

    def fill(self, overrides: dict[str, Any] | None = None) -> Any:
        values = {**self.params, **(overrides or {})}
        system = {
            "taskId": self.task_id,
            "callbackUrl": task_callback_url(self.task),
            "callbackToken": task_token(self.task),
        }
        return fill_template(self.definition, values, system=system, kind=self.kind)

    def save_external(self, external_id: str, **state: Any) -> None:
        self.external_id = external_id
        self.state.update(state)
        task_set_external(
            task_id=self.task_id, attempt=self.attempt, external_id=external_id, state=self.state
        )

    def progress(self, percent: float, detail: dict[str, Any] | None = None) -> None:
        value = int(max(0, min(99, percent)))
        if value <= self._last_progress:
            self.check()
            return
        self._last_progress = value
        if not task_progress(
            task_id=self.task_id, attempt=self.attempt, progress=value, detail=detail
        ):
            raise RunStopped(self._stop_reason())
        self._last_beat = time.monotonic()

    def check(self) -> None:
        if timezone.now() > self.deadline:
            raise RunStopped("timeout")
        if time.monotonic() - self._last_beat < HEARTBEAT_EVERY:
            return
        self._last_beat = time.monotonic()
        status = task_heartbeat(task_id=self.task_id, attempt=self.attempt)
        if status != TaskStatus.RUNNING:
            raise RunStopped(status or "superseded")

    def _stop_reason(self) -> str:
        status = (
            Task.objects.filter(public_id=self.task_id).values_list("status", flat=True).first()
        )
        return status or "superseded"


def _adapter_for(executor):
    return run_adapter_for(executor)


def _store_outputs(task: Task, outputs, early: Early | None = None) -> list:
    """Write the run's outputs to storage. Their rows are written by ``task_finish``: on
    PostgreSQL a success records them published in its one statement (ADR 0024); any other
    path stages them first. An output ``early`` fetched already (ADR 0026) is not fetched
    again."""
    stored: list = []
    try:
        for index, output in enumerate(outputs):
            media = early.take(output) if early is not None else None
            stored.append(media or _write_output(task, output, index))
    except BaseException:
        try:
            media_stage(stored)  # what was written stays findable by the sweep
        except Exception:  # noqa: BLE001 - the first error is the one to report
            logger.warning("task %s: could not record its written outputs", task.public_id)
        raise
    return stored


def _write_output(task: Task, output, index: int):
    """One output's bytes in storage, under a key of this attempt's own
    (``results/<user>/<task>/[a<attempt>-]<node>-<name>``): a late conclusion of a superseded
    attempt never writes over the bytes of the one that succeeded, so nothing has to be read
    before writing."""
    name = output.filename or f"output-{index}"
    if output.node_id:
        name = f"{output.node_id}-{name}"
    if task.attempts > 1:
        name = f"a{task.attempts}-{name}"
    if output.text is not None:
        media = media_write_output(
            user_id=task.user_id,
            task_id=task.public_id,
            filename=name if "." in name else f"{name}.txt",
            stream=io.BytesIO(output.text.encode()),
            mime_type="text/plain; charset=utf-8",
            fresh=True,
        )
    else:
        with output.open() as stream:
            media = media_write_output(
                user_id=task.user_id,
                task_id=task.public_id,
                filename=name,
                stream=stream,
                mime_type=output.mime_type,
                fresh=True,
            )
    media.node_id = output.node_id
    return media


class Early:
    """Outputs of a followed ComfyUI prompt fetched as soon as their node reported them
    (``executed``), while the prompt still runs (docs/adr/0026-outputs-fetched-early.md).

    The conclusion ``take``s each output it finds in ``/history``: a fetch done or under way is
    waited for; one not started yet is called off and fetched by the conclusion itself (so a
    busy finisher pool never waits on itself). ``close`` ends it: what was fetched and not
    taken is staged, so the sweep finds it; a fetch still under way stages its own result."""

    def __init__(self, task: Task):
        self.task = task
        self._lock = threading.Lock()
        self._fetches: dict[tuple, Future] = {}
        self._closed = False

    def heard(self, runner, node_id: str, ui: dict, declared: set[str]) -> None:
        """A node reported outputs (called in the session's reader thread: never blocks)."""
        for output in runner.output_files(node_id, ui, declared):
            if output.open is None or not output.ref:
                continue  # nothing to download
            with self._lock:
                if self._closed or output.ref in self._fetches:
                    continue
                future: Future = Future()
                self._fetches[output.ref] = future
            followers.spawn(self._fetch, output, future)

    def _fetch(self, output, future: Future) -> None:
        if not future.set_running_or_notify_cancel():
            return  # called off: the conclusion fetches it itself
        try:
            media = _write_output(self.task, output, 0)
        except BaseException as exc:  # noqa: BLE001 - the conclusion fetches it again
            future.set_exception(exc)
            return
        with self._lock:
            orphan = self._closed
            future.set_result(media)
        if orphan:
            media_stage([media])

    def take(self, output):
        """The stored media of ``output`` if it was fetched early, else None."""
        with self._lock:
            future = self._fetches.pop(output.ref, None) if output.ref else None
        if future is None or future.cancel():
            return None
        try:
            media = future.result()
        except Exception as exc:  # noqa: BLE001 - fetched again by the conclusion
            logger.info(
                "task %s: an early fetch failed (%s); fetching again", self.task.public_id, exc
            )
            return None
        return media  # ``_write_output`` set its node

    def close(self) -> None:
        with self._lock:
            self._closed = True
            left = list(self._fetches.values())
            self._fetches.clear()
        fetched = []
        for future in left:
            if future.cancel() or not future.done():
                continue  # called off, or still under way (it stages its own result)
            if future.exception() is None:
                fetched.append(future.result())
        if fetched:
            media_stage(fetched)


# Attempts whose actor thread is in this process now: a duplicate message for one is skipped
# (as is one for an attempt this process follows, see ``tasks.followers``).
_running_here: set[tuple[str, int]] = set()
_running_lock = threading.Lock()


def task_run(*, task_id: str, attempt: int) -> str:
    """Run (or resume) one attempt. Returns what happened, for logs and tests.

    In a worker process the attempt is first claimed for this worker (``task_run_claim``), so a
    dead worker's attempt is resumed by exactly one live worker and a late duplicate is skipped.
    A ComfyUI attempt returns "following" once submitted: this process's executor session
    follows it and a finisher thread concludes it (docs/adr/0015-executor-sessions.md).
    """

    worker = current_worker_id()
    with _running_lock:
        busy = (task_id, attempt) in _running_here
        if not busy:
            _running_here.add((task_id, attempt))
    if busy:
        return "skipped"
    try:
        if followers.following(task_id, attempt):
            # Re-sent while we follow it (a resume after our database outage): keep it ours.
            if worker:
                task_run_claim(task_id=task_id, attempt=attempt, worker=worker)
            return "skipped"
        return _task_run(task_id=task_id, attempt=attempt, worker=worker)
    finally:
        with _running_lock:
            _running_here.discard((task_id, attempt))


class _Attempt:
    """One attempt being run: the task row as loaded, and its run context once built."""

    def __init__(self, task: Task, attempt: int):
        self.task = task
        self.attempt = attempt
        self.context: TaskRunContext | None = None
        self.early: Early | None = None  # outputs fetched while a followed prompt runs


_TASKS = RowReader(Task, "public_id")  # compiled once per process (ADR 0028)


def _load(task_id: str) -> Task | None:
    """The task row, its binding (workflow, versions) and executor from the process's catalog
    cache (ADR 0018) when they are there, read with the row when they are not."""
    task = _TASKS.get(task_id)
    if task is None or not task.binding_id:
        return task
    binding = next(
        (b for b in bindings_for_ability_id(task.ability_id) if b.pk == task.binding_id), None
    )
    if binding is None or binding.executor_id != task.executor_id:
        return _load_joined(task_id)
    task.binding = binding
    task.executor = binding.executor
    return task


def _load_joined(task_id: str) -> Task | None:
    return (
        Task.objects.select_related(
            "executor",
            "binding__workflow__active_version",
            "binding__workflow_version",
            "ability",
        )
        .filter(public_id=task_id)
        .first()
    )


def _task_run(*, task_id: str, attempt: int, worker: str | None) -> str:
    """Load the attempt, claim it for this worker (in a worker process), and run it."""
    task = _load(task_id)
    if task is None or task.status != TaskStatus.RUNNING or task.attempts != attempt:
        return "skipped"
    if worker:
        if not task_run_claim(task_id=task_id, attempt=attempt, worker=worker, loaded=task):
            return "skipped"
        if task.executor_state.get("worker") != worker:
            task = _load(task_id)  # claimed on the locked path: read what it wrote
            if task is None or task.status != TaskStatus.RUNNING or task.attempts != attempt:
                return "skipped"
    run = _Attempt(task, attempt)

    def start() -> RunResult | None:
        run.context = TaskRunContext(task, attempt)
        session = session_for(task.executor, spawn=followers.spawn)
        if session is None:
            return _adapter_for(task.executor).run(run.context)
        _follow_on(session, run)
        return None

    return _conclude(run, start)


def _follow_on(session, run: _Attempt) -> None:
    """Submit (unless a resumed attempt already did) and hand the prompt to the session."""
    context = run.context
    runner = session.runner
    # A saved prompt id is followed when ComfyUI has it (the POST went through before this
    # attempt's worker died), and submitted afresh when it has not.
    resumed = bool(context.external_id) and (
        bool(context.state.get("submitted")) or runner.knows(context.external_id)
    )
    if resumed:
        prompt_id = context.external_id
    else:
        graph = runner.prepare(context)
        prompt_id = runner.submit(context, graph, session.client_id)
    own = context.state.get("clientId") == session.client_id
    if own:
        run.early = Early(run.task)
        declared = {str(n) for n in context.outputs_declared}
    entry = followers.Followed(
        task_id=run.task.public_id,
        attempt=run.attempt,
        deadline=context.deadline,
        on_stop=lambda reason: _stopped(session, run, entry, prompt_id, reason),
    )
    followers.follow(entry)
    session.follow(
        prompt_id,
        on_progress=lambda percent, detail: followers.report_progress(entry, percent, detail),
        on_ended=lambda found, error: _ended(session, run, entry, prompt_id, found, error),
        on_output=(
            (lambda node, ui: run.early.heard(session.runner, node, ui, declared)) if own else None
        ),
        total_nodes=len(context.state.get("nodes") or []) or 1,
        own=own,
        check_now=resumed,
    )


def _ended(session, run: _Attempt, entry, prompt_id: str, found, error) -> None:
    """The session saw the prompt end (``found``: its history entry) or lose it (``error``)."""
    if not followers.claim_end(entry):
        return  # stopped meanwhile (canceled, timed out, superseded)
    try:

        def outcome() -> RunResult:
            if error is not None:
                raise error
            return session.runner.outcome(run.context, prompt_id, found)

        _conclude_when_the_database_answers(run, outcome)
    finally:
        _close_early(run)
        followers.unfollow(entry)


# While the database is out (restarted, failed over), a finisher retries the conclusion instead of
# dropping it: ComfyUI's answer is in hand, and the next reconciler path would only come after
# HEARTBEAT_STALE. Storing outputs and finishing are idempotent for the attempt.
DATABASE_OUT = (OperationalError, InterfaceError)
CONCLUDE_RETRY_FOR = 120.0


def _conclude_when_the_database_answers(run: _Attempt, produce) -> str | None:
    delay, waited = 0.5, 0.0
    while True:
        try:
            return _conclude(run, produce)
        except DATABASE_OUT as exc:
            if waited >= CONCLUDE_RETRY_FOR:
                logger.error(
                    "task %s attempt %s: the database stayed out for %.0f s (%s); left to the "
                    "reconciler",
                    run.task.public_id,
                    run.attempt,
                    waited,
                    exc,
                )
                return None
            logger.warning(
                "task %s attempt %s: database out while concluding (%s); retrying in %.1f s",
                run.task.public_id,
                run.attempt,
                exc,
                delay,
            )
            connection.close()  # a broken connection is not reused
            time.sleep(delay)
            waited += delay
            delay = min(delay * 2, 8.0)


def _stopped(session, run: _Attempt, entry, prompt_id: str, reason: str) -> None:
    """The monitor stopped a followed attempt: past its deadline, or no longer ours to run."""
    session.unfollow(prompt_id)
    try:
        if reason == "timeout":
            _conclude(run, functools.partial(_raise, RunStopped("timeout")))
    finally:
        _close_early(run)
        followers.unfollow(entry)


def _close_early(run: _Attempt) -> None:
    if run.early is not None:
        try:
            run.early.close()
        except Exception:  # noqa: BLE001 - the sweep's grace covers what could not be staged
            logger.warning("task %s: could not record its early outputs", run.task.public_id)


def _raise(exc: BaseException):
    raise exc


def _conclude(run: _Attempt, produce) -> str:
    """Run ``produce()`` and end the attempt the way its outcome says; ``produce`` returning
    None means it is followed elsewhere now ("following")."""
    task, attempt = run.task, run.attempt
    task_id, executor = task.public_id, task.executor
    try:
        outcome = produce()
        if outcome is None:
            return "following"
        media = _store_outputs(task, outcome.outputs, run.early)
    except RunStopped as stop:
        if stop.reason == "timeout":
            _interrupt_quietly(executor, run.context.external_id, run.context.state)
            task_finish(
                task_id=task_id,
                status=TaskStatus.FAILED,
                attempt=attempt,
                error_code=codes.TASK_TIMEOUT.code,
                error_message=f"Ran longer than {task.run_timeout} s.",
            )
            return "timeout"
        return f"stopped:{stop.reason}"
    except ExecutorError as exc:
        if exc.permanent:
            task_finish(
                task_id=task_id,
                status=TaskStatus.FAILED,
                attempt=attempt,
                error_code=getattr(exc, "code", "") or codes.EXECUTOR_ERROR.code,
                error_message=str(exc),
            )
            return "failed"
        task_requeue_or_fail(
            task_id=task_id,
            attempt=attempt,
            error_code=getattr(exc, "code", "") or codes.EXECUTOR_ERROR.code,
            error_message=str(exc),
        )
        return "requeued"
    except DATABASE_OUT:
        raise  # the database is out, not the run: the caller retries or the reconciler resumes
    except Exception as exc:
        # A bug or an unexpected answer: recorded and treated as transient, never silent.
        logger.exception("task %s attempt %s crashed", task_id, attempt)
        task_requeue_or_fail(
            task_id=task_id,
            attempt=attempt,
            error_code=codes.EXECUTOR_ERROR.code,
            error_message=f"{type(exc).__name__}: {exc}",
        )
        return "requeued"
    task_finish(
        task_id=task_id,
        status=TaskStatus.SUCCEEDED,
        attempt=attempt,
        outputs=media,
        result=outcome.result,
    )
    return "succeeded"


def _interrupt_quietly(executor, external_id: str, state: dict[str, Any]) -> None:
    if executor is None or not external_id:
        return
    try:
        _adapter_for(executor).cancel(external_id, state)
    except ExecutorError as exc:
        logger.warning("interrupting %s on %s failed: %s", external_id, executor, exc)


def executor_interrupt(*, executor_id: int, external_id: str, state: dict[str, Any]) -> None:
    executor = Executor.objects.filter(pk=executor_id).first()
    if executor is None:
        return
    _adapter_for(executor).cancel(external_id, state)


# --- Reconciler ------------------------------------------------------------------------------


def tasks_fail_queue_timeouts(*, now=None) -> int:
    now = now or timezone.now()
    failed = 0
    for task_id in Task.objects.filter(
        status=TaskStatus.QUEUED, queue_deadline__lt=now
    ).values_list("public_id", flat=True)[:500]:
        task = task_finish(
            task_id=task_id,
            status=TaskStatus.FAILED,
            error_code=codes.TASK_QUEUE_TIMEOUT.code,
            error_message="No executor picked the task up before its queue timeout.",
        )
        failed += task.error_code == codes.TASK_QUEUE_TIMEOUT.code
    return failed


def tasks_fail_run_timeouts(*, now=None) -> int:
    """Running tasks past their deadline (plus grace, for the worker to act first)."""
    now = now or timezone.now()
    failed = 0
    rows = Task.objects.filter(
        status=TaskStatus.RUNNING, run_deadline__lt=now - TIMEOUT_GRACE
    ).select_related("executor")[:500]
    for task in rows:
        _interrupt_quietly(task.executor, task.external_id, task.executor_state)
        finished = task_finish(
            task_id=task.public_id,
            status=TaskStatus.FAILED,
            attempt=task.attempts,
            error_code=codes.TASK_TIMEOUT.code,
            error_message=f"Ran longer than {task.run_timeout} s.",
        )
        failed += finished.error_code == codes.TASK_TIMEOUT.code
    return failed


def tasks_resume_silent(*, now=None) -> int:
    """Running attempts whose worker went silent: hand them to a new worker to resume.

    The resumed run asks the executor about the known external id: finished → collect outputs;
    still running → follow; unknown → lost (retried or failed). A guarded update makes sure only
    one reconciler pass re-enqueues a given attempt.
    """
    now = now or timezone.now()
    resumed = 0
    stale = Task.objects.filter(
        status=TaskStatus.RUNNING, heartbeat_at__lt=now - HEARTBEAT_STALE
    ).values_list("public_id", "attempts", "heartbeat_at")[:200]
    for task_id, attempt, beat in stale:
        with transaction.atomic():
            task = (
                Task.objects.select_for_update()
                .filter(
                    public_id=task_id,
                    attempts=attempt,
                    status=TaskStatus.RUNNING,
                    heartbeat_at=beat,
                )
                .first()
            )
            if task is None:
                continue
            # A worker that has not beaten for HEARTBEAT_STALE is not running this attempt, even
            # if its process is alive (the run died on a database outage, say): release it, so
            # whichever worker takes the message may claim the attempt.
            state = dict(task.executor_state)
            state.pop("worker", None)
            Task.objects.filter(pk=task.pk).update(heartbeat_at=now, executor_state=state)
            enqueue_on_commit(actor_named(RUN_ACTOR), task_id, attempt)
            resumed += 1
    return resumed


def tasks_resume_orphaned(*, now=None) -> int:
    """Running attempts whose worker process died (its liveness lease lapsed): resume them on
    another worker now, without waiting for ``HEARTBEAT_STALE``. Guarded like
    ``tasks_resume_silent``; the resumed run claims the attempt for its own worker.

    An attempt no worker ever claimed for ``WORKER_LEASE_TTL`` is rung again too: its run message
    was lost (sent while the broker was down, or the broker restarted without its queues). A
    duplicate message is harmless: the claim lets one run through."""

    now = now or timezone.now()
    cutoff = now - timedelta(seconds=settings.WORKER_LEASE_TTL)
    rows = [
        (task_id, attempt, beat, (state or {}).get("worker"))
        for task_id, attempt, beat, state in Task.objects.filter(
            status=TaskStatus.RUNNING, heartbeat_at__lt=cutoff
        ).values_list("public_id", "attempts", "heartbeat_at", "executor_state")[:500]
    ]
    if not rows:
        return 0
    holders = {worker for *_, worker in rows if worker}
    alive = set(
        Lease.objects.filter(
            name__in=[worker_lease_name(w) for w in holders], expires_at__gt=now
        ).values_list("holder", flat=True)
    )
    resumed = 0
    for task_id, attempt, beat, worker in rows:
        if worker in alive:
            continue
        with transaction.atomic():
            claimed = Task.objects.filter(
                public_id=task_id, attempts=attempt, status=TaskStatus.RUNNING, heartbeat_at=beat
            ).update(heartbeat_at=now)
            if claimed:
                enqueue_on_commit(actor_named(RUN_ACTOR), task_id, attempt)
                resumed += 1
    if resumed:
        logger.warning("resumed %s attempts of dead workers or lost run messages", resumed)
    return resumed


def worker_leases_prune(*, now=None) -> int:
    """Forget the liveness leases of workers gone for a day."""

    now = now or timezone.now()
    deleted, _ = Lease.objects.filter(
        name__startswith=WORKER_LEASE_PREFIX, expires_at__lt=now - timedelta(days=1)
    ).delete()
    return deleted


def tasks_sweep_staged_media(*, now=None) -> int:
    """Remove staged media nobody will publish any more (docs/adr/0011-money-holes.md).

    A task's outputs are published only in the transaction that ends it succeeded, so anything
    still staged under a terminal task (failed, canceled, or stored late by a stale worker) is
    unreachable for good. Staged objects of a task that does not exist (a submit that failed
    after writing its base64 inputs and could not clean up) go after ``STAGED_ORPHAN_GRACE``.
    """
    now = now or timezone.now()
    staged = media_staged(limit=500)
    if not staged:
        return 0
    statuses = dict(
        Task.objects.filter(public_id__in={task_id for _, task_id, _ in staged}).values_list(
            "public_id", "status"
        )
    )
    doomed = [
        key
        for key, task_id, created in staged
        if statuses.get(task_id) in TERMINAL_STATUSES
        or (task_id not in statuses and created < now - STAGED_ORPHAN_GRACE)
    ]
    return media_discard_staged(object_keys=doomed) if doomed else 0


def tasks_reconcile() -> dict[str, int]:
    return {
        "queueTimeouts": tasks_fail_queue_timeouts(),
        "runTimeouts": tasks_fail_run_timeouts(),
        "orphansResumed": tasks_resume_orphaned(),
        "resumed": tasks_resume_silent(),
        "workerLeasesPruned": worker_leases_prune(),
        "inFlightRecounted": executors_recount_in_flight(),
        "dispatched": tasks_dispatch_pending(),
        "stagedMediaSwept": tasks_sweep_staged_media(),
    }
