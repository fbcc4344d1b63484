"""Coze-specific errors and the meaning of its envelope codes (protocols.md §2.8)."""

from integrations.executors.base import ExecutorError

#: Codes that mean the token itself is wrong or lacks permission.
AUTH_CODES = frozenset({4100, 4101, 700012006})
#: Codes worth retrying later (busy, rate limits, model errors, internal errors).
TRANSIENT_CODES = frozenset({4009, 4013, 4020, 4102, 5000})
NOT_FOUND_CODE = 4200
EXECUTION_NOT_FOUND_CODE = 4314


class CozeError(ExecutorError):
    """A Coze call failed; ``code`` is the envelope code (or the HTTP status), ``logid`` the
    ``X-Tt-Logid`` that Coze support asks for."""

    def __init__(
        self, message: str, *, code: int | None = None, logid: str = "", permanent: bool = False
    ):
        super().__init__(message, permanent, details={"code": code, "logid": logid})
        self.code = code
        self.logid = logid

    @classmethod
    def from_envelope(cls, code: int, msg: str, logid: str = "") -> "CozeError":
        suffix = f" (logid {logid})" if logid else ""
        return cls(
            f"Coze error {code}: {msg}{suffix}",
            code=code,
            logid=logid,
            permanent=code not in TRANSIENT_CODES,
        )
