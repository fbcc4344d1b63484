"""Media API (``/api/media/v1``) and the local backend's signed PUT/GET endpoints."""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.http import FileResponse, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import serializers
from rest_framework.permissions import SAFE_METHODS, AllowAny, BasePermission, IsAuthenticated
from rest_framework.response import Response
from rest_framework.views import APIView

from media_app import selectors, services, tokens
from media_app.error_codes import MEDIA_PATH_INVALID, MEDIA_TOO_LARGE
from media_app.models import MediaObject
from media_app.paths import file_path_of, normalise_file_path
from podi.access import READ, WRITE, Principal
from podi.auth import ScopePermission, acting_user, principal_of
from podi.error_codes import METHOD_NOT_ALLOWED
from podi.errors import AppError, json_error, validation_error
from podi.pagination import paginate
from podi.schema import error_responses
from podi.throttling import WindowRateThrottle

MULTIPART_OVERHEAD = 64 * 1024


def _may_act_for_anyone(request) -> bool:
    """Staff, and service-account keys with the media scope of the request's level."""
    level = READ if request.method in SAFE_METHODS else WRITE
    return principal_of(request).acts_for_anyone(selectors.AREA, level)


class MediaObjectSerializer(serializers.Serializer):
    objectKey = serializers.CharField(source="object_key")
    status = serializers.CharField()
    purpose = serializers.CharField()
    ownerId = serializers.IntegerField(source="owner_id")
    bucket = serializers.CharField()
    fileName = serializers.CharField(source="file_name")
    size = serializers.IntegerField()
    mimeType = serializers.CharField(source="mime_type")
    sha256 = serializers.CharField()
    width = serializers.IntegerField(allow_null=True)
    height = serializers.IntegerField(allow_null=True)
    taskId = serializers.CharField(source="task_id")
    createdAt = serializers.DateTimeField(source="created_at")
    uploadedAt = serializers.DateTimeField(source="uploaded_at", allow_null=True)


# --- Upload keys ---------------------------------------------------------------------------


class UploadKeyApi(APIView):
    scope_area = "media"

    class InputSerializer(serializers.Serializer):
        userId = serializers.IntegerField(required=False, allow_null=True)

    class OutputSerializer(serializers.Serializer):
        uploadKey = serializers.CharField()
        expiresIn = serializers.IntegerField(help_text="Seconds.")
        expiresAt = serializers.DateTimeField()

    @extend_schema(
        request=InputSerializer,
        responses={200: OutputSerializer, **error_responses(400, 401, 403, 404)},
        summary="Issue an upload key (for the caller, or userId with media:write / staff)",
    )
    def post(self, request):
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        user = acting_user(request, data.validated_data.get("userId"))
        key, expires_at = services.upload_key_issue(user=user)
        return Response(
            self.OutputSerializer(
                {"uploadKey": key, "expiresIn": settings.UPLOAD_TOKEN_TTL, "expiresAt": expires_at}
            ).data
        )


class UploadKeyRevokeApi(APIView):
    scope_area = "media"

    class InputSerializer(serializers.Serializer):
        userId = serializers.IntegerField(required=False, allow_null=True)

    class OutputSerializer(serializers.Serializer):
        userId = serializers.IntegerField()
        keyVersion = serializers.IntegerField()

    @extend_schema(
        request=InputSerializer,
        responses={200: OutputSerializer, **error_responses(400, 401, 403, 404)},
        summary="Revoke every outstanding upload key of the caller (or of userId)",
    )
    def post(self, request):
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        user = acting_user(request, data.validated_data.get("userId"))
        version = services.upload_keys_revoke(user=user)
        return Response(self.OutputSerializer({"userId": user.pk, "keyVersion": version}).data)


# --- Upload grants -----------------------------------------------------------------------------


class UploadKeyThrottle(WindowRateThrottle):
    """Per upload-key user at the principal rate; per address at the anonymous rate otherwise."""

    scope = "principal"

    def get_cache_key(self, request, view):
        raw = request.data.get("uploadKey") if isinstance(request.data, dict) else None
        try:
            claims = tokens.upload_key_read(raw)
        except tokens.TokenInvalid:
            self.rate = self.THROTTLE_RATES.get("anon")
            self.num_requests, self.duration = self.parse_rate(self.rate)
            return self.cache_format % {
                "scope": self.scope,
                "ident": f"anon:{self.get_ident(request)}",
            }
        return self.cache_format % {"scope": self.scope, "ident": f"user:{claims.user_id}"}


class OssCredentialsSerializer(serializers.Serializer):
    accessKeyId = serializers.CharField()
    accessKeySecret = serializers.CharField(help_text="Temporary (STS) secret.")
    securityToken = serializers.CharField()
    expiration = serializers.CharField()
    bucket = serializers.CharField()
    region = serializers.CharField()
    endpoint = serializers.CharField()
    rootPrefix = serializers.CharField()


class StsApi(APIView):
    authentication_classes: list = []
    permission_classes = [AllowAny]
    throttle_classes = [UploadKeyThrottle]

    class InputSerializer(serializers.Serializer):
        uploadKey = serializers.CharField(max_length=tokens.MAX_TOKEN_LENGTH)
        fileName = serializers.CharField(max_length=255)
        mimeType = serializers.CharField(max_length=255)
        fileSize = serializers.IntegerField()
        taskId = serializers.CharField(required=False, allow_blank=True, max_length=64)

    class OutputSerializer(serializers.Serializer):
        provider = serializers.ChoiceField(choices=["local", "oss", "s3"])
        objectKey = serializers.CharField()
        expireIn = serializers.IntegerField(help_text="Seconds the upload grant is valid.")
        expiresAt = serializers.DateTimeField()
        bucket = serializers.CharField(allow_blank=True)
        method = serializers.CharField(help_text="PUT (local) or POST (S3, OSS PostObject).")
        uploadUrl = serializers.CharField(required=False, help_text="local: signed PUT URL.")
        headers = serializers.DictField(
            child=serializers.CharField(), required=False, help_text="local: headers to send."
        )
        url = serializers.CharField(required=False, help_text="S3/OSS: where to POST the form.")
        fields = serializers.DictField(
            child=serializers.CharField(),
            required=False,
            help_text="S3/OSS: form fields to send before the `file` field (which goes last).",
        )
        region = serializers.CharField(required=False)
        endpoint = serializers.CharField(required=False)
        callback = serializers.CharField(required=False, help_text="OSS: base64 callback param.")
        isTemporary = serializers.BooleanField(required=False)
        ossCredentials = OssCredentialsSerializer(
            required=False, help_text="OSS with OSS_ROLE_ARN: STS credentials for ali-oss."
        )

    @extend_schema(
        request=InputSerializer,
        responses={200: OutputSerializer, **error_responses(400, 401, 429, 503)},
        auth=[],
        summary="Exchange an upload key for direct-upload credentials and an objectKey",
    )
    def post(self, request):
        raw = request.data.get("uploadKey") if isinstance(request.data, dict) else None
        user = services.upload_key_user(raw)
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        values = data.validated_data
        media, credentials, ttl = services.media_upload_grant(
            user=user,
            file_name=values["fileName"],
            mime_type=values["mimeType"],
            file_size=values["fileSize"],
            task_id=values.get("taskId", ""),
        )
        payload = {
            "provider": media.backend,
            "objectKey": media.object_key,
            "expireIn": ttl,
            "expiresAt": media.created_at + timedelta(seconds=ttl),
            "bucket": media.bucket,
            **credentials,
        }
        return Response(self.OutputSerializer(payload).data)


class CompleteApi(APIView):
    """Authenticated by a bearer token (owner, staff, service key) or by the uploadKey."""

    scope_area = "media"
    permission_classes = [AllowAny, ScopePermission]

    class InputSerializer(serializers.Serializer):
        objectKey = serializers.CharField(max_length=1024)
        uploadKey = serializers.CharField(
            required=False, max_length=tokens.MAX_TOKEN_LENGTH, help_text="When no bearer token."
        )

    @extend_schema(
        request=InputSerializer,
        responses={200: MediaObjectSerializer, **error_responses(400, 401, 403, 404, 409)},
        summary="Record a finished upload (S3/local; also OSS when the callback did not arrive)",
    )
    def post(self, request):
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        if request.user and request.user.is_authenticated:
            principal = principal_of(request)
        else:
            user = services.upload_key_user(data.validated_data.get("uploadKey"))
            principal = Principal.for_user(user)
        media = selectors.media_get_for_principal(
            principal, data.validated_data["objectKey"], action=WRITE
        )
        media = services.media_complete(media=media)
        return Response(MediaObjectSerializer(media).data)


class OssCallbackApi(APIView):
    """Called by OSS, not by users: trust comes only from the RSA signature."""

    authentication_classes: list = []
    permission_classes = [AllowAny]
    throttle_classes: list = []

    class OutputSerializer(serializers.Serializer):
        objectKey = serializers.CharField(source="object_key")
        status = serializers.CharField()
        size = serializers.IntegerField()
        mimeType = serializers.CharField(source="mime_type")
        width = serializers.IntegerField(allow_null=True)
        height = serializers.IntegerField(allow_null=True)

    @extend_schema(
        request={"application/x-www-form-urlencoded": OpenApiTypes.OBJECT},
        responses={200: OutputSerializer, **error_responses(400)},
        auth=[],
        summary="OSS upload callback (RSA-signed by OSS; returned to the uploading browser)",
    )
    def post(self, request):
        raw = request._request
        body = raw.body
        media = services.media_oss_callback(
            authorization=raw.headers.get("Authorization"),
            pubkey_url=raw.headers.get("X-Oss-Pub-Key-Url"),
            path=raw.path,
            query=raw.META.get("QUERY_STRING", ""),
            body=body,
            content_type=raw.content_type or "",
        )
        return Response(self.OutputSerializer(media).data)


# --- Downloads ---------------------------------------------------------------------------------


class SignedDownloadApi(APIView):
    scope_area = "media"

    class InputSerializer(serializers.Serializer):
        objectKey = serializers.CharField(max_length=1024)
        ttl = serializers.IntegerField(
            required=False,
            default=600,
            min_value=services.SIGNED_TTL_MIN,
            max_value=services.SIGNED_TTL_MAX,
        )

    class OutputSerializer(serializers.Serializer):
        url = serializers.CharField()
        expiresAt = serializers.DateTimeField()

    @extend_schema(
        request=InputSerializer,
        responses={200: OutputSerializer, **error_responses(400, 401, 403, 404)},
        summary="A signed, expiring download URL (owner or staff)",
    )
    def post(self, request):
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        media = selectors.media_get_downloadable(
            principal_of(request), data.validated_data["objectKey"]
        )
        url, expires_at = services.signed_download_url(
            object_key=media.object_key, ttl=data.validated_data["ttl"]
        )
        return Response(self.OutputSerializer({"url": url, "expiresAt": expires_at}).data)


# --- File API (seed 003) -----------------------------------------------------------------------


class IsStaffOrServiceKey(BasePermission):
    message = "The file API is for staff and service-account keys with the media scope."

    def has_permission(self, request, view) -> bool:
        return _may_act_for_anyone(request)


class FileOutputSerializer(serializers.Serializer):
    path = serializers.SerializerMethodField()
    objectKey = serializers.CharField(source="object_key")
    size = serializers.IntegerField()
    mimeType = serializers.CharField(source="mime_type")
    sha256 = serializers.CharField()
    uploadedAt = serializers.DateTimeField(source="uploaded_at", allow_null=True)

    def get_path(self, media: MediaObject) -> str:
        return file_path_of(media.object_key)


_PATH_PARAMETER = OpenApiParameter(
    "path", OpenApiTypes.STR, OpenApiParameter.PATH, description="File path (may contain /)."
)


class FilesApi(APIView):
    scope_area = "media"
    permission_classes = [IsAuthenticated, ScopePermission, IsStaffOrServiceKey]

    class InputSerializer(serializers.Serializer):
        file = serializers.FileField()
        path = serializers.CharField(max_length=4096, trim_whitespace=False)

    class UploadOutputSerializer(FileOutputSerializer):
        url = serializers.CharField(help_text="Signed download URL (10 minutes).")

    @extend_schema(
        parameters=[OpenApiParameter("prefix", OpenApiTypes.STR, OpenApiParameter.QUERY)],
        responses={200: FileOutputSerializer(many=True), **error_responses(400, 401, 403)},
        summary="List files under a prefix",
    )
    def get(self, request):
        prefix = normalise_file_path(
            request.query_params.get("prefix", ""), allow_empty=True, directory=True
        )
        if request.query_params.get("prefix", "").endswith("/") and prefix:
            prefix += "/"
        return paginate(request, selectors.file_list(prefix=prefix), FileOutputSerializer)

    @extend_schema(
        request={"multipart/form-data": InputSerializer},
        responses={201: UploadOutputSerializer, **error_responses(400, 401, 403, 413)},
        summary="Upload a file to a path (overwrites)",
    )
    def post(self, request):
        try:
            declared = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            declared = 0
        services.file_too_large(declared - MULTIPART_OVERHEAD if declared else None)
        raw_path = request.data.get("path", request.data.get("file_path"))
        upload = request.data.get("file")
        if not hasattr(upload, "read"):
            raise validation_error({"file": ["A file is required (multipart field `file`)."]})
        if not isinstance(raw_path, str):
            raise AppError(MEDIA_PATH_INVALID, "A path is required.")
        path = normalise_file_path(raw_path)
        if upload.size is not None and upload.size > settings.MEDIA_MAX_UPLOAD_BYTES:
            raise AppError(MEDIA_TOO_LARGE, details={"maxBytes": settings.MEDIA_MAX_UPLOAD_BYTES})
        with upload.open("rb") as stream:
            media = services.file_put(
                user=request.user,
                path=path,
                stream=stream,
                mime_type=upload.content_type or "",
                file_name=upload.name or "",
            )
        media.url, _ = services.signed_download_url(object_key=media.object_key, ttl=600)
        return Response(self.UploadOutputSerializer(media).data, status=201)


class FileDetailApi(APIView):
    scope_area = "media"
    permission_classes = [IsAuthenticated, ScopePermission, IsStaffOrServiceKey]

    class DeleteOutputSerializer(serializers.Serializer):
        path = serializers.CharField()
        status = serializers.CharField()

    @extend_schema(
        parameters=[_PATH_PARAMETER],
        responses={
            (200, "application/octet-stream"): OpenApiResponse(OpenApiTypes.BINARY),
            **error_responses(400, 401, 403, 404),
        },
        summary="Download a file (streamed)",
    )
    def get(self, request, path: str):
        media = selectors.file_get(path=normalise_file_path(path))
        stream = services.media_open(object_key=media.object_key)
        response = FileResponse(
            stream,
            content_type=media.mime_type or "application/octet-stream",
            as_attachment=True,
            filename=file_path_of(media.object_key).rsplit("/", 1)[-1],
        )
        response["Content-Length"] = str(media.size)
        return response

    @extend_schema(
        parameters=[_PATH_PARAMETER],
        responses={200: DeleteOutputSerializer, **error_responses(400, 401, 403, 404)},
        summary="Delete a file",
    )
    def delete(self, request, path: str):
        normalised = normalise_file_path(path)
        media = services.media_delete(media=selectors.file_get(path=normalised))
        return Response(
            self.DeleteOutputSerializer({"path": normalised, "status": media.status}).data
        )


# --- Local backend: signed PUT / GET (plain Django views, mounted at the site root) -------------


def _envelope(exc: AppError) -> HttpResponse:
    return json_error(exc.error, exc.message, exc.details)


def _method_not_allowed(allowed: str) -> HttpResponse:
    response = json_error(METHOD_NOT_ALLOWED, f"Use {allowed}.")
    response["Allow"] = allowed
    return response


def _content_length(request) -> int | None:
    raw = request.META.get("CONTENT_LENGTH")
    if raw in (None, ""):
        return None
    try:
        value = int(raw)
    except ValueError:
        raise validation_error({"Content-Length": ["Must be an integer."]}) from None
    if value < 0:
        raise validation_error({"Content-Length": ["Must not be negative."]})
    return value


@csrf_exempt
def local_upload(request, token: str):
    """``PUT /media-upload/<token>``: the body is the file, with the declared Content-Type."""
    if request.method != "PUT":
        return _method_not_allowed("PUT")
    try:
        media = services.local_upload_receive(
            token=token,
            stream=request,
            content_type=request.META.get("CONTENT_TYPE", ""),
            content_length=_content_length(request),
        )
    except AppError as exc:
        return _envelope(exc)
    return JsonResponse({"objectKey": media.object_key, "status": "stored"})


def local_download(request, token: str):
    """``GET /media-download/<token>``: streams the object while the signature is valid."""
    if request.method not in ("GET", "HEAD"):
        return _method_not_allowed("GET, HEAD")
    try:
        stream, media = services.local_download_open(token=token)
    except AppError as exc:
        return _envelope(exc)
    inline = media.mime_type.startswith(("image/", "video/", "audio/"))
    response = FileResponse(
        stream,
        content_type=media.mime_type or "application/octet-stream",
        as_attachment=not inline,
        filename=media.object_key.rsplit("/", 1)[-1],
    )
    response["Content-Length"] = str(media.size)
    response["Cache-Control"] = "private, max-age=60"
    response["Content-Security-Policy"] = "default-src 'none'; sandbox"
    return response
