"""Tests of the loopback test servers through real HTTP and WebSocket clients (no Django)."""

from __future__ import annotations

import json
import socket
import time
import uuid

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from tests.servers.comfyui import ComfyUITestServer, png_decode, solid_png
from tests.servers.coze import DEFAULT_WORKFLOW_ID, CozeTestServer, CozeWorkflowError


# ============================================================================ helpers
@pytest.fixture
def comfy():
    srv = ComfyUITestServer().start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def http(comfy):
    with httpx.Client(base_url=comfy.url, timeout=10) as c:
        yield c


class WS:
    """Collects the JSON messages of one /ws connection."""

    def __init__(self, server: ComfyUITestServer, client_id: str = "w1"):
        self.cm = connect(f"{server.ws_url}/ws?clientId={client_id}", open_timeout=5)
        self.ws = self.cm.__enter__()
        self.msgs: list[dict] = []

    def recv(self, timeout: float = 5.0) -> dict:
        m = json.loads(self.ws.recv(timeout=timeout))
        self.msgs.append(m)
        return m

    def until(self, pred, timeout: float = 5.0) -> dict:
        end = time.monotonic() + timeout
        while True:
            m = self.recv(timeout=max(0.01, end - time.monotonic()))
            if pred(m):
                return m

    def until_done(self, prompt_id: str, timeout: float = 5.0) -> list[dict]:
        start = len(self.msgs)
        self.until(
            lambda m: (
                m["type"] == "executing"
                and m["data"].get("node") is None
                and m["data"].get("prompt_id") == prompt_id
            ),
            timeout,
        )
        return self.msgs[start:]

    def close(self) -> None:
        self.cm.__exit__(None, None, None)


def graph(prefix: str = "job-1/inv", width: int = 64, height: int = 48, color: int = 0xFF0000):
    return {
        "1": {
            "class_type": "EmptyImage",
            "inputs": {"width": width, "height": height, "batch_size": 1, "color": color},
        },
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": prefix}},
    }


def sleep_graph(seconds: float = 2.0, steps: int = 20):
    return {"1": {"class_type": "PodiTestSleep", "inputs": {"seconds": seconds, "steps": steps}}}


def submit(http: httpx.Client, prompt: dict, client_id: str = "w1", **extra) -> str:
    pid = extra.pop("prompt_id", str(uuid.uuid4()))
    r = http.post(
        "/api/prompt", json={"prompt": prompt, "client_id": client_id, "prompt_id": pid, **extra}
    )
    assert r.status_code == 200, r.text
    assert r.json()["prompt_id"] == pid
    return pid


# ============================================================================ ComfyUI
def test_happy_path_message_order_history_and_view(comfy, http):
    ws = WS(comfy)
    first = ws.recv()
    assert first == {
        "type": "status",
        "data": {"status": {"exec_info": {"queue_remaining": 0}}, "sid": "w1"},
    }
    pid = submit(http, graph())
    msgs = ws.until_done(pid)
    kinds = [(m["type"], m["data"].get("node")) for m in msgs]
    assert kinds == [
        ("status", None),
        ("status", None),
        ("execution_start", None),
        ("execution_cached", None),
        ("progress_state", None),
        ("executing", "1"),
        ("progress_state", None),
        ("progress_state", None),
        ("executing", "2"),
        ("progress_state", None),
        ("progress_state", None),
        ("executing", "3"),
        ("executed", "3"),
        ("progress_state", None),
        ("execution_success", None),
        ("status", None),
        ("executing", None),
    ]
    assert [
        m["data"]["status"]["exec_info"]["queue_remaining"] for m in msgs if m["type"] == "status"
    ] == [1, 1, 0]
    executed = next(m for m in msgs if m["type"] == "executed")["data"]
    image = {"filename": "inv_00001_.png", "subfolder": "job-1", "type": "output"}
    assert executed == {
        "node": "3",
        "display_node": "3",
        "output": {"images": [image]},
        "prompt_id": pid,
    }
    ps = msgs[-4]["data"]["nodes"]
    assert set(ps) == {"1", "2", "3"} and all(v["state"] == "finished" for v in ps.values())

    entry = http.get(f"/api/history/{pid}").json()[pid]
    assert list(entry) == ["prompt", "outputs", "status", "meta"]
    assert entry["prompt"][0] == 0 and entry["prompt"][1] == pid
    assert entry["prompt"][3]["client_id"] == "w1" and entry["prompt"][4] == ["3"]
    assert entry["outputs"] == {"3": {"images": [image]}}
    assert entry["status"]["status_str"] == "success" and entry["status"]["completed"] is True
    assert [m[0] for m in entry["status"]["messages"]] == [
        "execution_start",
        "execution_cached",
        "execution_success",
    ]
    assert entry["meta"]["3"] == {
        "node_id": "3",
        "display_node": "3",
        "parent_node": None,
        "real_node_id": "3",
    }

    r = http.get("/view", params=image)
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert r.headers["content-disposition"] == 'filename="inv_00001_.png"'
    w, h, ch, px = png_decode(r.content)
    assert (w, h, ch) == (64, 48, 3) and px[:3] == bytes((0, 255, 255))
    # Off-by-one of the real float32 pipeline: 255 - 65 -> 189 (checked against ComfyUI 0.8.0).
    pid2 = submit(http, graph("job-1/mid", 2, 2, 0x417F10))
    ws.until_done(pid2)
    img2 = comfy.history(pid2)[pid2]["outputs"]["3"]["images"][0]
    assert png_decode(http.get("/view", params=img2).content)[3][:3] == bytes((189, 127, 239))
    ws.close()


def test_history_written_after_success_before_null_and_cache(comfy, http):
    comfy.history_delay = 0.5
    ws = WS(comfy)
    pid = submit(http, graph("c/x"))
    ws.until(lambda m: m["type"] == "execution_success")
    assert http.get(f"/history/{pid}").json() == {}
    ws.until_done(pid)
    assert pid in http.get(f"/history/{pid}").json()
    comfy.history_delay = 0
    pid2 = submit(http, graph("c/x"))
    msgs = ws.until_done(pid2)
    cached = next(m for m in msgs if m["type"] == "execution_cached")["data"]
    assert cached["nodes"] == ["1", "2", "3"]
    assert not [m for m in msgs if m["type"] == "executing" and m["data"]["node"]]
    out = comfy.history(pid2)[pid2]["outputs"]["3"]["images"][0]["filename"]
    assert out == "x_00001_.png"  # served from cache: points at the first file
    ws.close()


def test_validation_errors(comfy, http):
    r = http.post("/prompt", json={"client_id": "w1"})
    assert r.status_code == 400 and r.json()["error"]["type"] == "no_prompt"
    g = graph()
    g["1"]["inputs"]["width"] = 0
    r = http.post("/prompt", json={"prompt": g})
    assert r.status_code == 400
    assert r.json() == {
        "error": {
            "type": "prompt_outputs_failed_validation",
            "message": "Prompt outputs failed validation",
            "details": "",
            "extra_info": {},
        },
        "node_errors": {
            "1": {
                "errors": [
                    {
                        "type": "value_smaller_than_min",
                        "message": "Value 0 smaller than min of 1",
                        "details": "width",
                        "extra_info": {
                            "input_name": "width",
                            "input_config": [
                                "INT",
                                {"default": 512, "min": 1, "max": 16384, "step": 1},
                            ],
                            "received_value": 0,
                        },
                    }
                ],
                "dependent_outputs": ["3"],
                "class_type": "EmptyImage",
            }
        },
    }
    g = graph()
    g["2"]["class_type"] = "NoSuchNode"
    err = http.post("/prompt", json={"prompt": g}).json()
    assert err["error"]["type"] == "invalid_prompt" and err["error"]["details"] == "Node ID '#2'"
    g = graph()
    del g["3"]
    assert http.post("/prompt", json={"prompt": g}).json()["error"]["type"] == "prompt_no_outputs"
    g = {
        "5": {"class_type": "LoadImage", "inputs": {"image": "missing.png"}},
        "6": {"class_type": "PreviewImage", "inputs": {"images": ["5", 0]}},
    }
    r = http.post("/prompt", json={"prompt": g})
    assert r.status_code == 400
    assert r.json()["node_errors"]["5"]["errors"][0] == {
        "type": "custom_validation_failed",
        "message": "Custom validation failed for node",
        "details": "image - Invalid image file: missing.png",
        "extra_info": {"input_name": "image"},
    }
    assert (
        http.post(
            "/prompt", content=b"{nope", headers={"content-type": "application/json"}
        ).status_code
        == 500
    )
    assert comfy.queue_snapshot() == {"queue_running": [], "queue_pending": []}


def test_partial_validity_is_200_with_node_errors(comfy, http):
    ws = WS(comfy)
    g = graph("p/ok")
    g["5"] = {"class_type": "LoadImage", "inputs": {"image": "missing.png"}}
    g["6"] = {"class_type": "PreviewImage", "inputs": {"images": ["5", 0]}}
    r = http.post("/prompt", json={"prompt": g, "client_id": "w1"})
    assert r.status_code == 200
    body = r.json()
    assert body["node_errors"]["5"]["dependent_outputs"] == ["6"]
    ws.until_done(body["prompt_id"])
    entry = comfy.history(body["prompt_id"])[body["prompt_id"]]
    assert entry["prompt"][4] == ["3"] and list(entry["outputs"]) == ["3"]
    ws.close()


def test_runtime_error_and_injected_failure(comfy, http):
    ws = WS(comfy)
    pid = submit(http, graph("../escape"))
    msgs = ws.until_done(pid)
    err = next(m for m in msgs if m["type"] == "execution_error")["data"]
    assert err["node_type"] == "SaveImage" and err["exception_type"] == "Exception"
    assert "Saving image outside the output folder is not allowed" in err["exception_message"]
    assert set(err) >= {
        "prompt_id",
        "node_id",
        "executed",
        "traceback",
        "current_inputs",
        "current_outputs",
        "timestamp",
    }
    assert err["current_inputs"]["filename_prefix"] == ["../escape"]
    assert not [m for m in msgs if m["type"] == "execution_success"]
    st = comfy.history(pid)[pid]["status"]
    assert st["status_str"] == "error" and st["completed"] is False
    assert st["messages"][-1][0] == "execution_error"

    comfy.fail_next_prompt_with = {
        "message": "CUDA out of memory",
        "exception_type": "torch.OutOfMemoryError",
        "node_id": "2",
    }
    pid = submit(http, graph("f/x"))
    err = next(m for m in ws.until_done(pid) if m["type"] == "execution_error")["data"]
    assert (err["node_id"], err["exception_type"]) == ("2", "torch.OutOfMemoryError")
    assert err["executed"] == ["1"] and comfy.fail_next_prompt_with is None
    ws.close()


def test_queue_delete_and_interrupt_running_sleep(comfy, http):
    ws = WS(comfy)
    running = submit(http, sleep_graph(3.0, 30))
    ws.until(lambda m: m["type"] == "progress" and m["data"]["prompt_id"] == running)
    pending = submit(http, sleep_graph(0.1, 1))
    q = http.get("/api/queue").json()
    assert [i[1] for i in q["queue_running"]] == [running]
    assert len(q["queue_running"][0]) == 5 and q["queue_running"][0][4] == ["1"]
    assert [i[1] for i in q["queue_pending"]] == [pending]
    assert http.get("/prompt").json() == {"exec_info": {"queue_remaining": 2}}
    r = http.post("/queue", json={"delete": [pending, running]})
    assert r.status_code == 200 and r.text == ""
    assert comfy.deleted == [pending]
    t0 = time.monotonic()
    r = http.post("/interrupt", json={"prompt_id": running})
    assert r.status_code == 200 and r.text == ""
    msgs = ws.until_done(running)
    assert time.monotonic() - t0 < 1.0
    intr = next(m for m in msgs if m["type"] == "execution_interrupted")["data"]
    assert intr["node_type"] == "PodiTestSleep" and intr["executed"] == []
    st = comfy.history(running)[running]["status"]
    assert (st["status_str"], st["completed"], st["messages"][-1][0]) == (
        "error",
        False,
        "execution_interrupted",
    )
    assert comfy.interrupts == [running]
    assert http.get(f"/history/{pending}").json() == {}
    assert http.post("/interrupt").status_code == 200  # idle: harmless
    ws.close()


def test_priority_order_and_history_endpoints(comfy, http):
    ws = WS(comfy)
    blocker = submit(http, sleep_graph(0.3, 3))
    ws.until(lambda m: m["type"] == "executing" and m["data"].get("node") == "1")
    normal = submit(http, graph("o/a"))
    front = submit(http, graph("o/b"), front=True)
    explicit = submit(
        http,
        {
            "9": {"class_type": "PrimitiveString", "inputs": {"value": "o/c"}},
            **{k: v for k, v in graph("x", color=5).items() if k != "3"},
            "3": {
                "class_type": "SaveImage",
                "inputs": {"images": ["2", 0], "filename_prefix": ["9", 0]},
            },
        },
        number=-100,
    )
    pending = http.get("/queue").json()["queue_pending"]
    assert sorted(i[0] for i in pending) == [-100.0, -2, 1]
    for pid in (blocker, explicit, front, normal):
        ws.until_done(pid)  # strictly one at a time, lowest number first
    assert list(http.get("/history").json()) == [blocker, explicit, front, normal]
    assert list(http.get("/history", params={"max_items": 2}).json()) == [front, normal]
    assert list(http.get("/history", params={"max_items": 1, "offset": 1}).json()) == [explicit]
    out = comfy.history(explicit)[explicit]["outputs"]["3"]["images"][0]
    assert (out["subfolder"], out["filename"]) == ("o", "c_00001_.png")
    assert http.post("/history", json={"delete": [blocker]}).status_code == 200
    assert http.get(f"/history/{blocker}").json() == {}
    http.post("/history", json={"clear": True})
    assert http.get("/history").json() == {}
    ws.close()


def test_forgotten_prompt_and_client_isolation(comfy, http):
    other = WS(comfy, "other")
    other.recv()
    comfy.forget_prompts = True
    pid = submit(http, graph("f/g"))
    time.sleep(0.2)
    assert http.get(f"/history/{pid}").json() == {}
    assert http.get("/queue").json() == {"queue_running": [], "queue_pending": []}
    assert pid in comfy.prompts
    comfy.forget_prompts = False
    pid = submit(http, graph("f/h"), client_id="w1")
    comfy.wait_for_history(pid)
    time.sleep(0.1)
    with pytest.raises(TimeoutError):
        while True:
            m = other.recv(timeout=0.2)
            assert m["type"] == "status"  # only broadcasts reach a foreign socket
    other.close()


def test_dropped_socket_and_silent_socket(comfy, http):
    ws = WS(comfy)
    ws.recv()
    comfy.drop_socket_after = 3
    pid = submit(http, graph("d/x"))
    with pytest.raises(ConnectionClosed) as exc:
        for _ in range(10):
            ws.recv(timeout=2)
    assert exc.value.rcvd is None  # abrupt: no close frame
    entry = comfy.wait_for_history(pid)
    assert entry["status"]["status_str"] == "success"
    comfy.silent_socket = True
    ws2 = WS(comfy, "w2")
    pid = submit(http, graph("d/y"), client_id="w2")
    comfy.wait_for_history(pid)
    with pytest.raises(TimeoutError):
        ws2.recv(timeout=0.3)
    ws2.close()


def test_upload_dedupe_and_load(comfy, http):
    red, blue = solid_png(8, 6, (255, 0, 0)), solid_png(8, 6, (0, 0, 255))

    def up(data, **form):
        return http.post("/upload/image", files={"image": ("in.png", data, "image/png")}, data=form)

    assert up(red, subfolder="jobs/a").json() == {
        "name": "in.png",
        "subfolder": "jobs/a",
        "type": "input",
    }
    assert up(red, subfolder="jobs/a").json()["name"] == "in.png"
    assert up(blue, subfolder="jobs/a").json()["name"] == "in (1).png"
    assert up(blue, subfolder="jobs/a", overwrite="true").json()["name"] == "in.png"
    r = up(red, type="bogus")
    assert r.status_code == 500 and "Server got itself in trouble" in r.text
    assert up(red, subfolder="../../etc").status_code == 400
    assert http.post("/upload/image", data={"subfolder": "x"}).status_code == 400
    assert [u["duplicate"] for u in comfy.uploads] == [False, True, False, False]
    rec = comfy.requests_to("/upload/image")[0]
    assert rec.form["image"]["filename"] == "in.png" and rec.form["subfolder"] == "jobs/a"
    ws = WS(comfy)
    g = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "jobs/a/in (1).png"}},
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "l/x"}},
    }
    pid = submit(http, g)
    ws.until_done(pid)
    img = comfy.history(pid)[pid]["outputs"]["3"]["images"][0]
    assert png_decode(http.get("/view", params=img).content)[3][:3] == bytes((255, 255, 0))
    ws.close()


def test_view_semantics(comfy, http):
    comfy.add_input_file("a.png", solid_png(2, 2), subfolder="s")

    def view(**q):
        return http.get("/view", params=q).status_code

    assert view(filename="../secret.png") == 400
    assert view(filename="/etc/passwd") == 400
    assert view(filename="a.png", type="bogus") == 400
    assert view(filename="passwd", subfolder="../../../etc") == 403
    assert view(filename="nope.png") == 404
    assert view() == 404
    assert view(filename="a.png", subfolder="s", type="input") == 200
    assert view(filename="a.png [input]", subfolder="s") == 200
    assert view(filename="s/a.png", type="input") == 404  # only the basename is used


def test_info_endpoints_and_http_knobs(comfy, http):
    info = http.get("/object_info/EmptyImage").json()["EmptyImage"]
    assert info["input"]["required"]["width"] == [
        "INT",
        {"default": 512, "min": 1, "max": 16384, "step": 1},
    ]
    assert info["input_order"] == {"required": ["width", "height", "batch_size", "color"]}
    assert http.get("/object_info/Nope").json() == {}
    assert "PodiTestSleep" in http.get("/api/object_info").json()
    stats = http.get("/system_stats").json()
    assert stats["system"]["comfyui_version"] == "0.8.0" and stats["devices"][0]["type"] == "cpu"
    assert http.get("/features").json()["max_upload_size"] == 100 * 1024 * 1024

    comfy.installed_nodes = {"EmptyImage", "SaveImage"}
    assert http.get("/object_info/ImageInvert").json() == {}
    err = http.post("/prompt", json={"prompt": graph()}).json()["error"]
    assert err["message"] == "Cannot execute because node ImageInvert does not exist."
    comfy.installed_nodes = None
    comfy.garbage = True
    with pytest.raises(json.JSONDecodeError):
        json.loads(http.get("/system_stats").text)
    comfy.garbage = False
    comfy.http_status_override = 500
    assert http.get("/queue").status_code == 500
    comfy.http_status_override = None
    comfy.http_delay = 0.5
    with pytest.raises(httpx.ReadTimeout):
        http.get("/queue", timeout=0.1)
    comfy.http_delay = 0
    assert http.get("/queue", headers={"Origin": "http://evil.example"}).status_code == 403
    assert [r.path for r in comfy.requests_to("/queue")][:1] == ["/queue"]


def test_kill_restart_and_fast_stop():
    srv = ComfyUITestServer().start()
    http = httpx.Client(base_url=srv.url, timeout=5)
    ws = WS(srv)
    ws.recv()
    pid = submit(http, sleep_graph(5.0, 50))
    ws.until(lambda m: m["type"] == "progress")
    port = srv.port
    srv.kill()
    with pytest.raises(ConnectionClosed):
        ws.recv(timeout=2)
    with pytest.raises(httpx.TransportError):
        http.get("/queue")
    srv.restart()
    assert srv.port == port
    assert http.get(f"/history/{pid}").json() == {}
    assert http.get("/queue").json() == {"queue_running": [], "queue_pending": []}
    assert pid in srv.prompts  # observation logs survive
    ws = WS(srv)
    ws.recv()
    t0 = time.monotonic()
    srv.stop()
    assert time.monotonic() - t0 < 2.0
    with pytest.raises(ConnectionClosed) as exc:
        ws.recv(timeout=2)
    assert exc.value.rcvd is not None and exc.value.rcvd.code == 1001
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0
    http.close()


# ============================================================================ Coze
@pytest.fixture
def coze():
    def failing(params):
        raise CozeWorkflowError(720701013, "plugin timeout")

    srv = CozeTestServer(
        token="pat_test",
        workflows={DEFAULT_WORKFLOW_ID: "echo", "wf_static": {"output": "hi"}, "wf_fail": failing},
    )
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def capi(coze):
    with httpx.Client(
        base_url=coze.url, timeout=10, headers={"Authorization": "Bearer pat_test"}
    ) as c:
        yield c


def test_coze_sync_run_and_errors(coze, capi):
    r = capi.post(
        "/v1/workflow/run",
        json={"workflow_id": DEFAULT_WORKFLOW_ID, "parameters": {"prompt": "cat"}},
    )
    body = r.json()
    assert r.status_code == 200 and body["code"] == 0
    assert r.headers["X-Tt-Logid"] == body["detail"]["logid"]
    out = json.loads(body["data"])
    assert out["prompt"] == "cat" and out["image_url"].startswith(coze.url + "/files/")
    assert set(body) >= {"execute_id", "debug_url", "usage"}
    png = httpx.get(out["image_url"]).content
    assert png_decode(png)[:2] == (64, 64)

    bad = httpx.post(
        coze.url + "/v1/workflow/run",
        json={"workflow_id": DEFAULT_WORKFLOW_ID},
        headers={"Authorization": "Bearer wrong"},
    )
    assert bad.status_code == 200 and bad.json()["code"] == 4100 and "X-Tt-Logid" in bad.headers
    assert capi.post("/v1/workflow/run", json={"workflow_id": "nope"}).json()["code"] == 4200
    assert (
        capi.post(
            "/v1/workflow/run",
            json={"workflow_id": DEFAULT_WORKFLOW_ID, "bot_id": "1", "app_id": "2"},
        ).json()["code"]
        == 4000
    )
    fail = capi.post("/v1/workflow/run", json={"workflow_id": "wf_fail"}).json()
    assert (fail["code"], fail["msg"]) == (720701013, "plugin timeout")
    coze.business_error = (4009, "system busy")
    assert capi.post("/v1/workflow/run", json={"workflow_id": "wf_static"}).json()["code"] == 4009
    coze.business_error = None
    coze.http_status_override = 502
    r = capi.post("/v1/workflow/run", json={"workflow_id": "wf_static"})
    assert r.status_code == 502 and r.headers["content-type"].startswith("text/html")
    coze.http_status_override = None
    assert coze.requests_to("/v1/workflow/run")[0].json["parameters"] == {"prompt": "cat"}


def test_coze_async_run_and_history(coze, capi):
    coze.async_polls_before_done = 2
    r = capi.post(
        "/v1/workflow/run",
        json={"workflow_id": "wf_static", "is_async": True, "ext": {"user_id": "u1"}},
    ).json()
    assert r["code"] == 0 and r["data"] == "" and r["execute_id"]
    url = f"/v1/workflows/wf_static/run_histories/{r['execute_id']}"
    states = [capi.get(url).json()["data"][0]["execute_status"] for _ in range(3)]
    assert states == ["Running", "Running", "Success"]
    h = capi.get(url).json()["data"][0]
    assert json.loads(json.loads(h["output"])["Output"]) == {"output": "hi"}
    assert (h["run_mode"], h["error_code"], h["connector_uid"]) == (2, "", "u1")
    assert capi.get("/v1/workflows/wf_static/run_histories/123").json()["code"] == 4314
    r = capi.post("/v1/workflow/run", json={"workflow_id": "wf_fail", "is_async": True}).json()
    url = f"/v1/workflows/wf_fail/run_histories/{r['execute_id']}"
    capi.get(url)
    capi.get(url)
    h = capi.get(url).json()["data"][0]
    assert (h["execute_status"], h["error_code"], h["error_message"]) == (
        "Fail",
        "720701013",
        "plugin timeout",
    )


def _sse(text: str) -> list[dict]:
    events = []
    for block in text.strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.split("\n"))
        assert set(fields) == {"id", "event", "data"}
        events.append(
            {"id": int(fields["id"]), "event": fields["event"], "data": json.loads(fields["data"])}
        )
    return events


def test_coze_stream_run_and_upload(coze, capi):
    r = capi.post("/v1/workflow/stream_run", json={"workflow_id": "wf_static"})
    assert r.headers["content-type"].startswith("text/event-stream")
    ev = _sse(r.text)
    assert [e["id"] for e in ev] == list(range(len(ev)))
    assert [e["event"] for e in ev] == ["Message", "Message", "Message", "Done"]
    end = ev[-2]["data"]
    assert end["node_title"] == "" and json.loads(end["content"]) == {"output": "hi"}
    ev = _sse(capi.post("/v1/workflow/stream_run", json={"workflow_id": "wf_fail"}).text)
    assert ev[-1] == {
        "id": ev[-1]["id"],
        "event": "Error",
        "data": {"error_code": 720701013, "error_message": "plugin timeout"},
    }
    r = capi.post("/v1/workflow/stream_run", json={"workflow_id": "nope"})
    assert r.headers["content-type"].startswith("application/json") and r.json()["code"] == 4200
    up = capi.post("/v1/files/upload", files={"file": ("a.png", solid_png(2, 2), "image/png")})
    data = up.json()["data"]
    assert data["file_name"] == "a.png" and data["bytes"] == len(solid_png(2, 2))
    assert coze.uploads[0]["id"] == data["id"]
