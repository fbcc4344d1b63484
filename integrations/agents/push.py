"""The one outbound call of the agent protocol: ``POST {agent baseUrl}/tasks``.

Judges the answer and says what to do next; it never writes to the database (the caller records
the outcome) and never raises for network trouble.

* 2xx → ``accepted``: the agent took the task.
* 409 → ``busy``: the agent is doing something else; push again later (not a failure).
* timeouts, refused connections, 408/425/429 and 5xx → ``retry`` (a bounded number of times).
* any other answer (3xx — redirects are not followed —, 4xx) → ``permanent``: fail the task.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx
from django.conf import settings

from integrations.executors.base import describe_http_failure

CONNECT_TIMEOUT = 5.0
RETRYABLE_STATUSES = frozenset({408, 425, 429})
USER_AGENT = "PODI-agent-push/1"


@dataclass(frozen=True)
class PushOutcome:
    kind: str  # accepted | busy | retry | permanent
    status_code: int | None
    message: str


def read_timeout() -> float:
    return float(min(settings.EXECUTOR_HTTP_TIMEOUT, 15))


def push_timeout() -> httpx.Timeout:
    read = read_timeout()
    return httpx.Timeout(read, connect=min(CONNECT_TIMEOUT, read))


def push_url(base_url: str) -> str | None:
    """``{baseUrl}/tasks``, or None when the base URL is not http(s) with a host."""
    parts = urlsplit((base_url or "").strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    return base_url.strip().rstrip("/") + "/tasks"


def _snippet(response: httpx.Response) -> str:
    text = response.text[:300].replace("\n", " ").strip()
    return f": {text}" if text else ""


def push_task(*, base_url: str, body: dict) -> PushOutcome:
    url = push_url(base_url)
    if url is None:
        return PushOutcome(
            "permanent", None, f"The agent's base URL {base_url[:100]!r} is not an http(s) URL."
        )
    timeout = push_timeout()
    try:
        with httpx.Client(timeout=timeout, follow_redirects=False) as client:
            response = client.post(url, json=body, headers={"User-Agent": USER_AGENT})
    except httpx.HTTPError as exc:
        return PushOutcome("retry", None, describe_http_failure(exc, url, read_timeout()))
    status = response.status_code
    if 200 <= status < 300:
        return PushOutcome("accepted", status, f"The agent accepted the task (HTTP {status}).")
    if status == 409:
        return PushOutcome("busy", status, f"The agent is busy (HTTP 409){_snippet(response)}")
    if status in RETRYABLE_STATUSES or status >= 500:
        return PushOutcome("retry", status, f"The agent answered HTTP {status}{_snippet(response)}")
    return PushOutcome(
        "permanent", status, f"The agent refused the task with HTTP {status}{_snippet(response)}"
    )
