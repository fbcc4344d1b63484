"""Test-only routes layered over the real URL map (used with ``@pytest.mark.urls``)."""

import io

from django.contrib.auth import get_user_model
from django.db import connection
from django.http import FileResponse
from django.urls import path
from rest_framework import serializers
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.views import APIView

from podi.auth import IsStaffPrincipal
from podi.idempotency import idempotent
from podi.ids import new_id
from podi.models import Lease
from podi.pagination import paginate
from podi.urls import handler404, handler500  # noqa: F401
from podi.urls import urlpatterns as real_urlpatterns


class BoomApi(APIView):
    permission_classes = [AllowAny]

    def get(self, request):
        raise RuntimeError("secret internal detail")


class CreateThingApi(APIView):
    class InputSerializer(serializers.Serializer):
        name = serializers.CharField(max_length=20)

    @idempotent
    def post(self, request):
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        lease = Lease.objects.create(name=new_id("thing"), holder=data.validated_data["name"])
        return Response({"id": lease.name, "name": lease.holder}, status=201)


class StaffOnlyApi(APIView):
    permission_classes = [IsStaffPrincipal]

    def get(self, request):
        return Response({"ok": True})


class ScopedApi(APIView):
    scope_area = "wallet"

    def get(self, request):
        return Response({"ok": True})

    def post(self, request):
        return Response({"ok": True})


class UserListApi(APIView):
    permission_classes = [IsStaffPrincipal]

    class OutputSerializer(serializers.Serializer):
        id = serializers.IntegerField()

    def get(self, request):
        return paginate(request, get_user_model().objects.order_by("pk"), self.OutputSerializer)


def streamed_file(request):
    """A streamed answer (a ``FileResponse``) larger than the ASGI handler's chunk size, from a
    view that used the database, as the media download does."""
    get_user_model().objects.exists()
    used = connection  # this thread's connection wrapper

    class Body(io.BytesIO):
        def read(self, *args):
            # Whether the view's thread still held its connection while the answer streams.
            STREAMED_CONNECTIONS.append(used.connection)
            return super().read(*args)

    return FileResponse(Body(STREAMED_BODY), content_type="application/octet-stream")


STREAMED_BODY = bytes(range(256)) * 1024  # 256 KiB
STREAMED_CONNECTIONS: list = []


urlpatterns = [
    path("api/test/streamed", streamed_file),
    path("api/test/staff-only", StaffOnlyApi.as_view()),
    path("api/test/scoped", ScopedApi.as_view()),
    path("api/test/users", UserListApi.as_view()),
    path("api/test/boom", BoomApi.as_view()),
    path("api/test/things", CreateThingApi.as_view()),
    *real_urlpatterns,
]
