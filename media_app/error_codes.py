"""Error codes of the media app (docs/adr/0007-media-storage.md)."""

from podi.errors import ErrorCode

MEDIA_UPLOAD_UNAUTHORIZED = ErrorCode(
    "MEDIA_UPLOAD_UNAUTHORIZED", 401, "The upload key is missing, invalid, expired or revoked."
)
MEDIA_STS_INVALID_PARAM = ErrorCode(
    "MEDIA_STS_INVALID_PARAM", 400, "The upload parameters are not acceptable."
)
MEDIA_STS_UNAVAILABLE = ErrorCode(
    "MEDIA_STS_UNAVAILABLE", 503, "Temporary upload credentials could not be issued; retry later."
)
MEDIA_CALLBACK_INVALID = ErrorCode(
    "MEDIA_CALLBACK_INVALID", 400, "The storage callback was refused."
)
MEDIA_UPLOAD_INCOMPLETE = ErrorCode(
    "MEDIA_UPLOAD_INCOMPLETE", 409, "The object is not in storage yet; finish the upload first."
)
MEDIA_UPLOAD_MISMATCH = ErrorCode(
    "MEDIA_UPLOAD_MISMATCH",
    400,
    "The stored object does not match the declared size or type; it was removed.",
)
MEDIA_DOWNLOAD_DENIED = ErrorCode("MEDIA_DOWNLOAD_DENIED", 403, "You may not download this object.")
MEDIA_OBJECT_NOT_FOUND = ErrorCode("MEDIA_OBJECT_NOT_FOUND", 404, "No such media object.")
MEDIA_PATH_INVALID = ErrorCode("MEDIA_PATH_INVALID", 400, "The path is not acceptable.")
MEDIA_TOO_LARGE = ErrorCode("MEDIA_TOO_LARGE", 413, "The file is larger than the limit.")
MEDIA_STORAGE_ERROR = ErrorCode(
    "MEDIA_STORAGE_ERROR", 502, "The storage backend failed; retry later."
)
