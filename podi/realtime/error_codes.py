"""Error codes of live events: the stream's ``{"type":"error","code","message"}`` frames.

The status is what the same refusal would be over HTTP; a socket only sends code and message.
"""

from podi.errors import ErrorCode

INVALID_MESSAGE = ErrorCode("INVALID_MESSAGE", 400, "The message is not valid.")
FORBIDDEN = ErrorCode("FORBIDDEN", 403, "Only staff may subscribe to all events.")
TASK_NOT_FOUND = ErrorCode("TASK_NOT_FOUND", 404, "No such task of yours.")
TOO_MANY_SUBSCRIPTIONS = ErrorCode(
    "TOO_MANY_SUBSCRIPTIONS", 429, "Too many task subscriptions on this connection."
)
RESUME_TOO_FAR = ErrorCode("RESUME_TOO_FAR", 400, "Too many events to replay.")
