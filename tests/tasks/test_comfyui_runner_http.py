"""The ComfyUI runner's HTTP layer (docs/adr/0033-comfyui-calls-on-urllib3.md): one connection
pool per runner, shared by a session; failures below HTTP are retryable executor errors that
name the call; the base URL's own path and the executor's headers reach the server; an output
left half-read never hands its connection to the next call."""

from __future__ import annotations

import os
import socket
import time
import uuid
from pathlib import Path

import httpx
import pytest

from integrations.executors.base import ExecutorError
from integrations.executors.comfyui.run import ComfyUIRunner


def runner_for(url: str, *, read_timeout: float = 5, headers: dict | None = None) -> ComfyUIRunner:
    return ComfyUIRunner(
        base_url=url, connect_timeout=2, read_timeout=read_timeout, headers=headers or {}
    )


class Ctx:
    task_id = "tsk_http"
    attempt = 1
    outputs_declared: list = []

    def check(self) -> None:
        pass


def finished_entry(runner: ComfyUIRunner, comfy, graph: dict) -> tuple[str, dict]:
    prompt_id = str(uuid.uuid4())
    body = {"prompt": graph, "client_id": "t", "prompt_id": prompt_id}
    assert httpx.post(f"{comfy.url}/api/prompt", json=body).status_code == 200
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        entry = runner.history(prompt_id)
        if entry is not None:
            return prompt_id, entry
        time.sleep(0.02)
    raise AssertionError("the prompt did not finish")


IMAGE = {
    "1": {"class_type": "EmptyImage", "inputs": {"width": 96, "height": 96, "batch_size": 1, "color": 7}},
    "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "http/out"}},
}  # fmt: skip


def test_a_session_pool_serves_sequential_calls_on_one_connection(comfy):
    runner = runner_for(comfy.url)
    pool = runner.open_client()
    try:
        for _ in range(5):
            assert runner.history(str(uuid.uuid4())) is None
            assert runner.queued_ids() == set()
        assert (pool.num_requests, pool.num_connections) == (10, 1)
    finally:
        pool.close()


def test_the_base_urls_path_and_the_executors_headers_reach_the_server(comfy):
    """A ComfyUI behind a proxy path: every call keeps the path (this server answers 404 there,
    which the runner reports as a retryable error)."""
    runner = runner_for(f"{comfy.url}/behind/proxy/", headers={"Authorization": "Bearer k-1"})
    with pytest.raises(ExecutorError) as raised:
        runner.history("p-1")
    assert "history answered 404" in raised.value.message and not raised.value.permanent
    seen = comfy.requests[-1]
    assert seen.path == "/behind/proxy/api/history/p-1"
    assert seen.headers.get("Authorization") == "Bearer k-1"


def test_a_slow_answer_is_a_retryable_timeout_that_names_the_call(comfy):
    runner = runner_for(comfy.url, read_timeout=0.2)
    comfy.http_delay = 0.6
    with pytest.raises(ExecutorError) as raised:
        runner.queued_ids()
    assert raised.value.message.startswith("ComfyUI timed out on /queue")
    assert not raised.value.permanent


def test_a_refused_connection_is_retryable_and_unreachable_not_a_timeout():
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    runner = runner_for(f"http://127.0.0.1:{port}")
    with pytest.raises(ExecutorError) as raised:
        runner.history("p-1")
    assert raised.value.message.startswith("ComfyUI unreachable on /history/p-1")
    assert not raised.value.permanent


def test_an_output_read_to_its_end_leaves_its_connection_to_the_next_call(comfy):
    runner = runner_for(comfy.url)
    pool = runner.open_client()
    try:
        prompt_id, entry = finished_entry(runner, comfy, IMAGE)
        (output,) = runner.outcome(Ctx(), prompt_id, entry).outputs
        with output.open() as stream:
            data = stream.read()
        assert data[1:4] == b"PNG"
        assert runner.history(prompt_id)["status"]["status_str"] == "success"
        assert pool.num_connections == 1
    finally:
        pool.close()


def test_an_output_left_half_read_does_not_hand_its_connection_on(comfy):
    """Its unread bytes would be read as the start of the next answer."""
    big = os.urandom(1024 * 1024)  # far more than one read of the stream
    Path(comfy.output_dir, "big.bin").write_bytes(big)
    runner = runner_for(comfy.url)
    pool = runner.open_client()
    try:
        output = runner._output_file("9", "files", {"filename": "big.bin", "type": "output"})
        with output.open() as stream:
            assert stream.read(4) == big[:4]
        for _ in range(3):  # every later call gets a whole, well-formed answer
            assert runner.queued_ids() == set()
        with output.open() as stream:
            assert stream.read() == big
    finally:
        pool.close()


def test_a_missing_output_is_permanent_and_its_connection_is_not_kept(comfy):
    runner = runner_for(comfy.url)
    pool = runner.open_client()
    try:
        missing = runner._output_file("9", "images", {"filename": "gone.png", "type": "output"})
        with pytest.raises(ExecutorError) as raised, missing.open():
            pass
        assert raised.value.permanent and "/view answered 404" in raised.value.message
        assert runner.queued_ids() == set()
    finally:
        pool.close()
