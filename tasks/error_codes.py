from podi.errors import ErrorCode

TASK_NOT_FOUND = ErrorCode("TASK_NOT_FOUND", 404, "No such task.")
BATCH_NOT_FOUND = ErrorCode("BATCH_NOT_FOUND", 404, "No such batch.")
TEMPLATE_NOT_FOUND = ErrorCode("TEMPLATE_NOT_FOUND", 404, "No such task template.")
TASK_NOT_CANCELABLE = ErrorCode("TASK_NOT_CANCELABLE", 409, "The task has already finished.")
TASK_NOT_RETRYABLE = ErrorCode(
    "TASK_NOT_RETRYABLE", 409, "Only failed or canceled tasks can be retried."
)
TASK_ALREADY_FINISHED = ErrorCode("TASK_ALREADY_FINISHED", 409, "The task has already finished.")
TASK_TOKEN_INVALID = ErrorCode("TASK_TOKEN_INVALID", 401, "The task token is not valid.")
TASK_ATTEMPT_STALE = ErrorCode(
    "TASK_ATTEMPT_STALE", 409, "The task token is for an attempt that is no longer current."
)
NO_EXECUTOR = ErrorCode("NO_EXECUTOR", 503, "No executor is configured for this ability.")
TASK_QUEUE_TIMEOUT = ErrorCode(
    "TASK_QUEUE_TIMEOUT", 504, "The task waited too long for an executor."
)
TASK_TIMEOUT = ErrorCode("TASK_TIMEOUT", 504, "The task ran longer than its run timeout.")
TASK_CANCELED = ErrorCode("TASK_CANCELED", 409, "The task was canceled.")
EXECUTOR_ERROR = ErrorCode("EXECUTOR_ERROR", 502, "The executor failed.")
TASK_HOLD_EXPIRED = ErrorCode(
    "TASK_HOLD_EXPIRED", 409, "The task's hold expired before it could be charged; not charged."
)
EXECUTOR_LOST = ErrorCode("EXECUTOR_LOST", 502, "The executor lost the task.")
