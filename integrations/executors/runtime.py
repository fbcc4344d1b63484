"""What an executor adapter needs to run one task attempt, independent of the tasks app.

The tasks app hands an adapter a ``RunContext``; the adapter submits, follows, and returns a
``RunResult`` whose outputs are opened lazily and streamed into storage by the caller. Adapters
raise ``ExecutorError(permanent=…)`` on failure and ``RunStopped`` when the context says stop.
"""

from __future__ import annotations

import contextlib
import functools
import io
import ssl
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, BinaryIO, Protocol

import certifi
import httpx

from integrations.executors.base import ExecutorError
from podi.urlguard import UrlRefused, guarded_stream


class RunStopped(Exception):  # noqa: N818 - a signal, not an error
    """The task was canceled or ran past its deadline while the adapter was following it."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass
class InputFile:
    param: str
    object_key: str
    mime_type: str
    open: Callable[[], contextlib.AbstractContextManager[BinaryIO]]
    url: Callable[[int], str]  # a signed download URL valid for the given seconds


@dataclass
class OutputFile:
    filename: str
    node_id: str = ""
    mime_type: str | None = None
    kind: str = "file"  # image | video | audio | text | file
    open: Callable[[], contextlib.AbstractContextManager[BinaryIO]] | None = None
    text: str | None = None
    # What the executor calls this output (ComfyUI: node, kind, filename, subfolder, type): the
    # same output reported twice (a socket message, then the history) has the same ``ref``.
    ref: tuple = ()


@dataclass
class RunResult:
    outputs: list[OutputFile] = field(default_factory=list)
    result: Any = None


class RunContext(Protocol):
    task_id: str
    user_id: int
    attempt: int
    params: dict[str, Any]
    inputs: list[InputFile]
    deadline: datetime
    external_id: str
    state: dict[str, Any]
    definition: Any
    params_schema: dict[str, Any]

    def fill(self, overrides: dict[str, Any] | None = None) -> Any:
        """The bound workflow definition with params (plus overrides) and system values filled."""

    def save_external(self, external_id: str, **state: Any) -> None:
        """Persist the executor-side id before submitting, so a resume can find the run."""

    def progress(self, percent: float, detail: dict[str, Any] | None = None) -> None: ...

    def check(self) -> None:
        """Heartbeat; raise ``RunStopped`` when the task was canceled or is past its deadline."""


@contextlib.contextmanager
def bytes_stream(data: bytes) -> Iterator[BinaryIO]:
    yield io.BytesIO(data)


def pointer_values(document: Any, path: str) -> list[Any]:
    """Values at a path where ``*`` matches every item of a list.

    Either a JSON pointer (``/data/*/url``) or a dotted path (``data.*.url``); ``""`` or ``/``
    is the whole document.
    """
    if path in ("", "/", "."):
        return [document]
    tokens = (
        [t.replace("~1", "/").replace("~0", "~") for t in path.lstrip("/").split("/")]
        if path.startswith("/")
        else path.split(".")
    )
    current = [document]
    for token in tokens:
        following = []
        for value in current:
            if token == "*" and isinstance(value, list):  # noqa: S105 - a wildcard
                following.extend(value)
            elif isinstance(value, dict) and token in value:
                following.append(value[token])
            elif isinstance(value, list) and token.isdigit() and int(token) < len(value):
                following.append(value[int(token)])
        current = following
    return current


@functools.cache
def ssl_context() -> ssl.SSLContext:
    """One TLS context for every executor client: building one per client costs ~30 ms of CPU."""

    return ssl.create_default_context(cafile=certifi.where())


def download_opener(
    url: str, *, timeout: float, headers: dict | None = None, trusted_origin: str | None = None
):
    """A lazy opener that streams ``url`` (input URLs, outputs that executors return as URLs).

    Goes through the SSRF guard (``podi.urlguard.guarded_stream``): the address is checked and
    pinned, and every redirect is checked again. ``trusted_origin`` is the executor's own base
    URL, which the operator configured and which may be on a private network.
    """

    @contextlib.contextmanager
    def opener() -> Iterator[BinaryIO]:
        try:
            with guarded_stream(
                url,
                timeout=timeout,
                headers=headers or {},
                trusted_origin=trusted_origin,
                verify=ssl_context(),
            ) as response:
                if response.status_code != 200:
                    raise ExecutorError(
                        f"Downloading {_shown(url)} answered {response.status_code}",
                        permanent=400 <= response.status_code < 500,
                    )
                yield io.BufferedReader(IterStream(response.iter_bytes(64 * 1024)))
        except UrlRefused as exc:
            raise ExecutorError(
                f"Refused to download {_shown(url)}: {exc.reason}", permanent=True
            ) from None
        except httpx.HTTPError as exc:
            raise ExecutorError(f"Downloading an output failed: {exc}", permanent=False) from exc

    return opener


def _shown(url: str) -> str:
    """A URL for an error message: no query string (it may carry a signature)."""
    return url.split("?", 1)[0][:200]


class IterStream(io.RawIOBase):
    def __init__(self, chunks):
        self._chunks = iter(chunks)
        self._buffer = b""

    def readable(self) -> bool:
        return True

    def readinto(self, target) -> int:
        while not self._buffer:
            try:
                self._buffer = next(self._chunks)
            except StopIteration:
                return 0
        size = min(len(target), len(self._buffer))
        target[:size] = self._buffer[:size]
        self._buffer = self._buffer[size:]
        return size
