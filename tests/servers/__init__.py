"""Loopback test servers (ComfyUI and Coze protocol fakes) used by PODI's tests."""

from tests.servers.base import LoopbackServer, RecordedRequest
from tests.servers.comfyui import ComfyUITestServer
from tests.servers.coze import DEFAULT_WORKFLOW_ID, CozeTestServer, CozeWorkflowError

__all__ = [
    "ComfyUITestServer",
    "CozeTestServer",
    "CozeWorkflowError",
    "DEFAULT_WORKFLOW_ID",
    "LoopbackServer",
    "RecordedRequest",
]
