"""Auth (``/api/auth/v1``) and ``/health``."""

from __future__ import annotations

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import IntegrityError, transaction
from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.authentication import get_authorization_header
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.views import APIView
from rest_framework_simplejwt.exceptions import TokenError
from rest_framework_simplejwt.tokens import AccessToken, RefreshToken

from podi import error_codes as codes
from podi.auth import access_tokens_revoke, service_key_of
from podi.errors import AppError, validation_error
from podi.health import run_checks
from podi.schema import error_responses
from podi.services import user_create, user_identity_errors
from podi.throttling import LoginAddressThrottle, LoginNameThrottle


class UserSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    username = serializers.CharField()
    email = serializers.EmailField(allow_blank=True)
    isStaff = serializers.BooleanField(source="is_staff")


class TokenPairSerializer(serializers.Serializer):
    accessToken = serializers.CharField()
    refreshToken = serializers.CharField()
    expiresIn = serializers.IntegerField(help_text="Seconds until the access token expires.")
    user = UserSerializer()


def _token_pair(user, refresh: RefreshToken | None = None) -> dict:
    refresh = refresh or RefreshToken.for_user(user)
    return TokenPairSerializer(
        {
            "accessToken": str(refresh.access_token),
            "refreshToken": str(refresh),
            "expiresIn": settings.JWT_ACCESS_TTL,
            "user": user,
        }
    ).data


class LoginApi(APIView):
    authentication_classes: list = []
    permission_classes = [AllowAny]
    throttle_classes = [LoginAddressThrottle, LoginNameThrottle]

    class InputSerializer(serializers.Serializer):
        username = serializers.CharField(required=False, max_length=254)
        email = serializers.CharField(required=False, max_length=254)
        password = serializers.CharField(max_length=4096, trim_whitespace=False)

        def validate(self, attrs):
            if not attrs.get("username") and not attrs.get("email"):
                raise serializers.ValidationError({"username": ["Give a username or an email."]})
            return attrs

    @extend_schema(
        request=InputSerializer,
        responses={200: TokenPairSerializer, **error_responses(400, 401, 403, 429)},
        auth=[],
        summary="Log in with username (or email) and password",
    )
    def post(self, request):
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        login = data.validated_data.get("username") or data.validated_data.get("email")
        password = data.validated_data["password"]
        user = _user_for_login(login)
        if user is None:
            get_user_model()().set_password(password)  # spend the same time as a real check
            raise AppError(codes.INVALID_CREDENTIALS)
        if not user.check_password(password):
            raise AppError(codes.INVALID_CREDENTIALS)
        if not user.is_active:
            raise AppError(codes.USER_INACTIVE)
        return Response(_token_pair(user))


def _user_for_login(login: str):
    """An email (unique, case-insensitive) or a username. Usernames hold no "@" since 0003;
    an older one that does still logs in when no account has it as its email."""
    User = get_user_model()
    if "@" in login:
        by_email = User.objects.filter(email__iexact=login).exclude(email="").first()
        if by_email is not None:
            return by_email
    return User.objects.filter(username=login).first()


class RefreshApi(APIView):
    authentication_classes: list = []
    permission_classes = [AllowAny]

    class InputSerializer(serializers.Serializer):
        refreshToken = serializers.CharField(max_length=4096)

    @extend_schema(
        request=InputSerializer,
        responses={200: TokenPairSerializer, **error_responses(400, 401)},
        auth=[],
        summary="Trade a refresh token for a new token pair (the old refresh token is revoked)",
    )
    def post(self, request):
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        try:
            old = RefreshToken(data.validated_data["refreshToken"])
        except TokenError as exc:
            raise AppError(codes.AUTH_INVALID, f"Refresh token rejected: {exc}") from None
        user = get_user_model().objects.filter(pk=old.get("user_id")).first()
        if user is None or not user.is_active:
            raise AppError(codes.AUTH_INVALID, "Refresh token names no active user.")
        try:
            old.blacklist()
        except IntegrityError:
            raise AppError(codes.AUTH_INVALID, "Refresh token already used.") from None
        return Response(_token_pair(user))


class LogoutApi(APIView):
    authentication_classes: list = []
    permission_classes = [AllowAny]

    class InputSerializer(serializers.Serializer):
        refreshToken = serializers.CharField(max_length=4096)

    @extend_schema(
        request=InputSerializer,
        responses={204: None, **error_responses(400, 401)},
        auth=[],
        summary="Log out: revoke the refresh token and the user's access tokens",
        description="The refresh token is revoked for good; the access token sent in "
        "`Authorization` (if any) and every access token of the user issued before this second "
        "stop working at once (other devices refresh to continue).",
    )
    def post(self, request):
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        try:
            refresh = RefreshToken(data.validated_data["refreshToken"])
        except TokenError as exc:
            raise AppError(codes.AUTH_INVALID, f"Refresh token rejected: {exc}") from None
        try:
            refresh.blacklist()
        except IntegrityError:
            pass  # already revoked
        access_tokens_revoke(user_id=refresh.get("user_id"), jti=_presented_access_jti(request))
        return Response(status=204)


def _presented_access_jti(request) -> str | None:
    """The jti of a valid access token in ``Authorization``, if the logout request sent one."""
    header = get_authorization_header(request).split()
    if len(header) != 2 or header[0].lower() != b"bearer":
        return None
    try:
        return str(AccessToken(header[1].decode("ascii"))["jti"])
    except (TokenError, UnicodeDecodeError, KeyError):
        return None


class MeApi(APIView):
    class OutputSerializer(UserSerializer):
        serviceKey = serializers.DictField(required=False, help_text="Present for service keys.")

    @extend_schema(responses={200: OutputSerializer, **error_responses(401)}, summary="Who am I")
    def get(self, request):
        data = dict(UserSerializer(request.user).data)
        key = service_key_of(request)
        if key is not None:
            data["serviceKey"] = {"id": key.pk, "name": key.name, "scopes": key.scopes}
        return Response(data)


class RegisterApi(APIView):
    authentication_classes: list = []
    permission_classes = [AllowAny]
    throttle_classes = [LoginAddressThrottle]

    class InputSerializer(serializers.Serializer):
        username = serializers.RegexField(
            r"^[\w.+-]+\Z",
            max_length=150,
            error_messages={"invalid": "Letters, digits and . + - _ only (no @)."},
        )
        email = serializers.EmailField(required=False, allow_blank=True, default="")
        password = serializers.CharField(max_length=4096, trim_whitespace=False)

    @extend_schema(
        request=InputSerializer,
        responses={201: TokenPairSerializer, **error_responses(400, 403, 429)},
        auth=[],
        summary="Create an account (only when ALLOW_REGISTRATION=true)",
    )
    def post(self, request):
        if not settings.ALLOW_REGISTRATION:
            raise AppError(codes.REGISTRATION_CLOSED)
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        values = data.validated_data
        User = get_user_model()
        candidate = User(username=values["username"], email=values["email"])
        try:
            validate_password(values["password"], candidate)
        except DjangoValidationError as exc:
            raise validation_error({"password": list(exc.messages)}) from None
        errors = user_identity_errors(username=values["username"], email=values["email"])
        if errors:
            raise validation_error(errors)
        try:
            with transaction.atomic():
                user = user_create(
                    username=values["username"], email=values["email"], password=values["password"]
                )
        except IntegrityError:  # a concurrent registration won the race
            raise validation_error(
                user_identity_errors(username=values["username"], email=values["email"])
                or {"username": ["This username or email is taken."]}
            ) from None
        return Response(_token_pair(user), status=201)


class HealthApi(APIView):
    authentication_classes: list = []
    permission_classes = [AllowAny]
    throttle_classes: list = []

    @extend_schema(
        responses={
            200: inline_serializer(
                "Health",
                {
                    "status": serializers.ChoiceField(choices=["ok", "degraded"]),
                    "pid": serializers.IntegerField(),
                    "checks": serializers.DictField(child=serializers.DictField()),
                },
            ),
            503: inline_serializer(
                "HealthDown",
                {
                    "status": serializers.ChoiceField(choices=["degraded"]),
                    "pid": serializers.IntegerField(),
                    "checks": serializers.DictField(child=serializers.DictField()),
                },
            ),
        },
        auth=[],
        summary="Health of the database, channel layer, broker and storage",
    )
    def get(self, request):
        report = run_checks()
        status = 503 if report["checks"]["database"]["status"] != "ok" else 200
        return Response(report, status=status)
