"""Executor sessions (docs/adr/0015-executor-sessions.md): a ComfyUI attempt holds no worker thread
while it runs; one socket per server and process follows every prompt; /history is read once per
finished prompt; polling is only the fallback while the socket is down."""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from datetime import timedelta

import httpx
import pytest
from django.utils import timezone

from integrations.executors.comfyui.run import ComfyUIRunner
from integrations.executors.comfyui.session import ComfyUISession
from integrations.executors.registry import sessions_open
from podi.realtime.models import Event
from tasks import followers
from tasks.execution import tasks_resume_silent
from tasks.models import Task, TaskStatus
from tests.tasks.conftest import (
    SLEEP_GRAPH,
    SLEEP_SCHEMA,
    make_ability,
    make_executor,
    running_worker,
    wait_for,
)

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def one_thread_worker(transactional_db):
    """A worker with ONE thread (WORKER_THREADS=1): dispatch and every run share it."""
    with running_worker(1) as running:
        yield running


def submit(client, action: str, **params) -> str:
    response = client.post("/api/tasks/v1/submit", json={"action": action, "params": params})
    assert response.status_code == 202, response.text
    return response.json()["taskId"]


def statuses(task_ids: list[str]) -> list[str]:
    found = dict(Task.objects.filter(public_id__in=task_ids).values_list("public_id", "status"))
    return [found[t] for t in task_ids]


def all_succeeded(task_ids: list[str]) -> bool:
    return all(s == TaskStatus.SUCCEEDED for s in statuses(task_ids))


def the_session():
    (session,) = sessions_open()
    return session


def test_one_worker_thread_keeps_max_concurrency_prompts_in_comfyui(
    one_thread_worker, comfy, funded, api
):
    executor = make_executor("gpu-1", comfy.url, max_concurrency=4)
    make_ability("sleep", [executor], graph=SLEEP_GRAPH, schema=SLEEP_SCHEMA, points=1)
    client = api(funded)
    task_ids = [submit(client, "sleep", seconds=1.5) for _ in range(6)]

    def in_comfyui() -> int:
        queue = comfy.queue_snapshot()
        return len(queue["queue_running"]) + len(queue["queue_pending"])

    # One worker thread, yet four prompts are in ComfyUI's queue at once: the thread was
    # freed after each submit.
    wait_for(lambda: in_comfyui() == 4, timeout=20)
    assert Task.objects.filter(status=TaskStatus.RUNNING).count() == 4
    wait_for(lambda: all_succeeded(task_ids), timeout=60)
    # Every prompt went through one session: one client_id, one socket.
    assert len(comfy.prompts) == 6
    assert len({body["client_id"] for body in comfy.prompts.values()}) == 1
    assert comfy.ws_clients == [the_session().client_id]
    assert {body["client_id"] for body in comfy.prompts.values()} == {the_session().client_id}


def test_a_finished_prompt_costs_one_history_read_and_no_queue_poll(worker, comfy, funded, api):
    make_ability("invert", [make_executor("gpu-1", comfy.url)], points=1)
    client = api(funded)
    warm = submit(client, "invert", width=4, height=4)  # opens the session and its socket
    wait_for(lambda: all_succeeded([warm]))
    assert the_session().connected
    comfy.clear_requests()

    task_ids = [submit(client, "invert", width=4, height=4, color=c) for c in range(5)]
    wait_for(lambda: all_succeeded(task_ids), timeout=30)
    for task_id in task_ids:
        prompt_id = Task.objects.get(public_id=task_id).external_id
        assert len(comfy.requests_to(f"/history/{prompt_id}", method="GET")) == 1
    assert comfy.requests_to("/queue", method="GET") == []
    assert comfy.requests_to("/history", method="GET") == []
    assert the_session().connects == 1


def test_a_dropped_socket_falls_back_to_polling_then_reconnects(worker, comfy, funded, api):
    executor = make_executor("gpu-1", comfy.url, config={"poll_every": 0.2})
    make_ability("sleep", [executor], graph=SLEEP_GRAPH, schema=SLEEP_SCHEMA, points=1)
    client = api(funded)
    warm = submit(client, "sleep", seconds=0)
    wait_for(lambda: all_succeeded([warm]))
    session = the_session()
    assert session.connects == 1

    comfy.refuse_websockets = True  # a cut socket cannot come back for now
    comfy.drop_socket_after = 1  # cut every socket once the next prompt has sent one message
    comfy.clear_requests()
    task_id = submit(client, "sleep", seconds=1)
    wait_for(lambda: not session.connected, timeout=20)
    wait_for(lambda: all_succeeded([task_id]), timeout=30)
    prompt_id = Task.objects.get(public_id=task_id).external_id
    # Completion came from polling: /history was read more than once, /queue while absent.
    assert len(comfy.requests_to(f"/history/{prompt_id}", method="GET")) >= 2
    assert comfy.ws_clients == []
    assert session.connects == 1

    comfy.refuse_websockets = False
    wait_for(lambda: session.connected and comfy.ws_clients == [session.client_id], timeout=30)
    assert session.connects == 2
    # With the socket back, the next prompt is followed by it again: one /history read.
    comfy.clear_requests()
    after = submit(client, "sleep", seconds=0.2)
    wait_for(lambda: all_succeeded([after]), timeout=30)
    prompt_id = Task.objects.get(public_id=after).external_id
    assert len(comfy.requests_to(f"/history/{prompt_id}", method="GET")) == 1
    assert comfy.requests_to("/queue", method="GET") == []


def test_a_silent_socket_does_not_keep_a_forgotten_prompt_forever(worker, comfy, funded, api):
    """A live socket that never mentions a prompt: the sweep looks it up in /queue, then the
    lost-prompt rule applies (ComfyUI forgot it: retried, then failed)."""
    executor = make_executor("gpu-1", comfy.url, config={"lost_after": 0.5, "poll_every": 0.2})
    make_ability("invert", [executor], max_attempts=2, points=1)
    comfy.forget_prompts = True
    client = api(funded)
    task_id = submit(client, "invert")
    wait_for(lambda: Task.objects.get(public_id=task_id).status == TaskStatus.FAILED, timeout=60)
    task = Task.objects.get(public_id=task_id)
    assert (task.error_code, task.attempts) == ("EXECUTOR_LOST", 2)
    assert the_session().connected


def test_a_prompt_whose_end_message_is_lost_is_found_by_the_sweep(worker, comfy, funded, api):
    """Progress was heard, then the end never came over a live socket (lost on the way): the
    sweep finds the prompt gone from /queue and reads its history, long before the run timeout.
    Before, a prompt once heard was never swept, and its task stayed running (kept alive by its
    heartbeat) until the timeout failed it."""
    executor = make_executor("gpu-1", comfy.url, config={"poll_every": 0.2})
    make_ability("sleep", [executor], graph=SLEEP_GRAPH, schema=SLEEP_SCHEMA, points=1)
    client = api(funded)
    warm = submit(client, "sleep", seconds=0)
    wait_for(lambda: all_succeeded([warm]))
    comfy.lose_prompt_end = True
    task_id = submit(client, "sleep", seconds=0.5)
    wait_for(lambda: all_succeeded([task_id]), timeout=30)
    prompt_id = Task.objects.get(public_id=task_id).external_id
    assert not comfy.lose_prompt_end  # the end of this prompt was the one lost
    assert not [m for m in comfy.sent if m["type"] == "executing"
                and m["data"].get("node") is None and m["data"].get("prompt_id") == prompt_id]  # fmt: skip
    assert comfy.requests_to("/queue", method="GET")  # found by the sweep
    assert the_session().connected and the_session().connects == 1


def test_a_confirmation_that_never_comes_back_is_polled_instead(comfy, caplog):
    """The ``/history`` read after a prompt's end runs in a finisher thread; when that job never
    runs (its thread died, its pool never got to it), the prompt is polled once the confirmation
    is ``confirm_stale`` seconds old, instead of staying followed until its run timeout."""
    dropped: list[str] = []

    def spawn(fn, *args):
        if getattr(fn, "__name__", "") == "_confirm" and not dropped:
            dropped.append(args[0].prompt_id)  # this job is lost: it never runs
            return
        threading.Thread(target=fn, args=args, daemon=True).start()

    runner = ComfyUIRunner(
        base_url=comfy.url, connect_timeout=5, read_timeout=10, headers={}, poll_every=0.2,
        confirm_stale=1.0,
    )  # fmt: skip
    session = ComfyUISession(runner, spawn=spawn, name="stale").start()
    try:
        assert session.connected
        ended: queue.Queue = queue.Queue()
        prompt_id = str(uuid.uuid4())
        graph = {"1": {"class_type": "PodiTestSleep", "inputs": {"seconds": 0.1, "steps": 2}}}
        session.follow(
            prompt_id,
            on_progress=lambda percent, detail: None,
            on_ended=lambda entry, error: ended.put((time.monotonic(), entry, error)),
        )
        body = {"prompt": graph, "client_id": session.client_id, "prompt_id": prompt_id}
        with caplog.at_level(logging.WARNING, logger="podi.executors.comfyui.session"):
            assert httpx.post(f"{comfy.url}/api/prompt", json=body).status_code == 200
            wait_for(lambda: dropped == [prompt_id], timeout=10)
            lost_at = time.monotonic()
            at, entry, error = ended.get(timeout=15)
        assert error is None and entry["status"]["status_str"] == "success"
        assert at - lost_at >= 0.9  # not before the confirmation was stale
        assert f"confirming {prompt_id} on stale took over 1 s; polling it" in caplog.text
        assert ended.empty()  # ended once
    finally:
        session.close()


def test_outputs_reported_before_the_prompt_is_followed_are_handed_on(comfy):
    """A node can run (and report its files in ``executed``) before ``follow`` is called for its
    prompt, right after ``POST /prompt``: the session keeps those messages and hands them on when
    the prompt is followed (docs/adr/0026-outputs-fetched-early.md)."""
    runner = ComfyUIRunner(
        base_url=comfy.url, connect_timeout=5, read_timeout=10, headers={}, poll_every=0.2
    )

    def spawn(fn, *args):
        threading.Thread(target=fn, args=args, daemon=True).start()

    session = ComfyUISession(runner, spawn=spawn, name="early").start()
    try:
        prompt_id = str(uuid.uuid4())
        graph = {
            "1": {"class_type": "EmptyImage", "inputs": {"width": 4, "height": 4, "batch_size": 1, "color": 0}},
            "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "e"}},
            "3": {"class_type": "PodiTestSleep", "inputs": {"image": ["1", 0], "seconds": 30, "steps": 300}},
        }  # fmt: skip
        body = {"prompt": graph, "client_id": session.client_id, "prompt_id": prompt_id}
        assert httpx.post(f"{comfy.url}/api/prompt", json=body).status_code == 200
        wait_for(lambda: any(m["type"] == "executed" for m in comfy.sent), timeout=10)
        time.sleep(0.2)  # the reader has it too
        heard: list = []
        session.follow(
            prompt_id,
            on_progress=lambda percent, detail: None,
            on_ended=lambda entry, error: None,
            on_output=lambda node, ui: heard.append((node, ui)),
        )
        ((node, ui),) = heard
        assert node == "2" and ui["images"][0]["filename"].startswith("e_")
        runner.cancel(prompt_id, {})
    finally:
        session.close()


def test_followed_attempts_are_heartbeaten_per_process_and_a_cancel_stops_following(
    worker, comfy, funded, api
):
    executor = make_executor("gpu-1", comfy.url, max_concurrency=2)
    make_ability("sleep", [executor], graph=SLEEP_GRAPH, schema=SLEEP_SCHEMA, points=1)
    client = api(funded)
    task_ids = [submit(client, "sleep", seconds=30) for _ in range(2)]
    wait_for(lambda: followers.followed_count() == 2, timeout=20)
    old = timezone.now() - timedelta(minutes=2)
    Task.objects.filter(public_id__in=task_ids).update(heartbeat_at=old)
    # The process's monitor touches both heartbeats (no worker thread is running them).
    wait_for(
        lambda: not Task.objects.filter(public_id__in=task_ids, heartbeat_at__lte=old).exists(),
        timeout=20,
    )
    assert tasks_resume_silent() == 0

    assert client.post(f"/api/tasks/v1/{task_ids[0]}/cancel").status_code == 200
    prompt_id = Task.objects.get(public_id=task_ids[0]).external_id
    # Running → interrupted; still pending in ComfyUI's queue → deleted from it.
    wait_for(lambda: prompt_id in comfy.interrupts or prompt_id in comfy.deleted)
    wait_for(lambda: followers.followed_count() == 1, timeout=20)
    assert not followers.following(task_ids[0], 1)
    assert followers.following(task_ids[1], 1)
    assert Task.objects.get(public_id=task_ids[0]).status == TaskStatus.CANCELED


def test_progress_is_coalesced_and_only_rises(worker, comfy, funded, api):
    executor = make_executor("gpu-1", comfy.url)
    make_ability("sleep", [executor], graph=SLEEP_GRAPH, schema=SLEEP_SCHEMA, points=1)
    graph = {"1": {"class_type": "PodiTestSleep", "inputs": {"seconds": 2, "steps": 200}}}
    make_ability("steps", [executor], graph=graph, schema={"type": "object"}, points=1)
    client = api(funded)
    task_id = submit(client, "steps")
    wait_for(lambda: all_succeeded([task_id]), timeout=30)
    prompt_id = Task.objects.get(public_id=task_id).external_id
    sent = [
        m for m in comfy.sent if m["type"] == "progress" and m["data"].get("prompt_id") == prompt_id
    ]
    written = [
        e.payload["progress"]
        for e in Event.objects.filter(task_public_id=task_id, type="task.progress").order_by("seq")
    ]
    assert len(sent) == 200
    assert written, "no progress was written"
    assert written == sorted(set(written))  # strictly rising
    assert len(written) < len(sent) / 4  # coalesced, not one write per socket message


def test_an_edited_executor_gets_a_new_session_and_the_idle_old_one_closes(
    worker, comfy, funded, api
):
    executor = make_executor("gpu-1", comfy.url)
    make_ability("invert", [executor], points=1)
    client = api(funded)
    first = submit(client, "invert")
    wait_for(lambda: all_succeeded([first]))
    old = the_session()
    executor.config = {"poll_every": 0.5}
    executor.save(update_fields=["config"])
    second = submit(client, "invert")
    wait_for(lambda: all_succeeded([second]))
    new = the_session()
    assert new is not old
    assert not old.connected
    assert comfy.ws_clients == [new.client_id]
    prompts = [comfy.prompts[Task.objects.get(public_id=t).external_id] for t in (first, second)]
    assert [p["client_id"] for p in prompts] == [old.client_id, new.client_id]
