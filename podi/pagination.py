"""``?page=1&pageSize=20`` (max 100) → ``{items, total, page, pageSize, totalPages}``."""

from __future__ import annotations

import math

from rest_framework.pagination import PageNumberPagination
from rest_framework.response import Response

from podi.errors import validation_error

MAX_PAGE_SIZE = 100
MAX_PAGE = 1_000_000  # beyond it an offset can overflow the database's integers


class PagePagination(PageNumberPagination):
    page_size = 20
    page_size_query_param = "pageSize"
    max_page_size = MAX_PAGE_SIZE
    page_query_param = "page"

    def get_page_size(self, request):
        raw = request.query_params.get(self.page_size_query_param)
        if raw is None:
            return self.page_size
        try:
            size = int(raw)
        except ValueError:
            raise validation_error({"pageSize": ["Must be an integer."]}) from None
        if not 1 <= size <= self.max_page_size:
            raise validation_error({"pageSize": [f"Must be between 1 and {self.max_page_size}."]})
        return size

    def paginate_queryset(self, queryset, request, view=None):
        raw = request.query_params.get(self.page_query_param, "1")
        try:
            page = int(raw)
        except ValueError:
            raise validation_error({"page": ["Must be an integer."]}) from None
        if not 1 <= page <= MAX_PAGE:
            raise validation_error({"page": [f"Must be between 1 and {MAX_PAGE}."]})
        self.request = request
        self._size = self.get_page_size(request)
        self._page_number = page
        self._total = queryset.count() if hasattr(queryset, "count") else len(queryset)
        start = (page - 1) * self._size
        return list(queryset[start : start + self._size])

    def get_paginated_response(self, data):
        return Response(
            {
                "items": data,
                "total": self._total,
                "page": self._page_number,
                "pageSize": self._size,
                "totalPages": math.ceil(self._total / self._size) if self._total else 0,
            }
        )

    def get_paginated_response_schema(self, schema):
        return {
            "type": "object",
            "required": ["items", "total", "page", "pageSize", "totalPages"],
            "properties": {
                "items": schema,
                "total": {"type": "integer"},
                "page": {"type": "integer"},
                "pageSize": {"type": "integer"},
                "totalPages": {"type": "integer"},
            },
        }

    def get_schema_operation_parameters(self, view):
        return [
            {
                "name": "page",
                "required": False,
                "in": "query",
                "schema": {"type": "integer", "minimum": 1, "maximum": MAX_PAGE},
            },
            {
                "name": "pageSize",
                "required": False,
                "in": "query",
                "schema": {"type": "integer", "minimum": 1, "maximum": MAX_PAGE_SIZE},
            },
        ]


def paginate(request, queryset, serializer_class, *, context=None):
    """Paginate a queryset in a plain APIView and return the envelope response."""
    paginator = PagePagination()
    rows = paginator.paginate_queryset(queryset, request)
    data = serializer_class(rows, many=True, context=context or {"request": request}).data
    return paginator.get_paginated_response(data)
