"""ComfyUI client: health (``/system_stats`` + ``/object_info``). See protocols.md §1.

Every route is called under the ``/api`` prefix (config ``api_prefix``; set it to ``""`` for a
ComfyUI older than the prefix), with no ``Origin`` header, so ComfyUI's origin guard never fires.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from integrations.executors.base import (
    BaseHttpClient,
    ExecutorError,
    HealthRequirements,
    HealthResult,
)
from integrations.executors.comfyui.errors import ComfyUIError, ComfyUINodeMissing

if TYPE_CHECKING:
    from integrations.models import Executor


def node_classes_of(definition: Any) -> set[str]:
    """The ``class_type`` of every node of an API-format graph."""
    if not isinstance(definition, dict):
        return set()
    return {
        node["class_type"]
        for node in definition.values()
        if isinstance(node, dict) and isinstance(node.get("class_type"), str)
    }


class ComfyUIClient(BaseHttpClient):
    path_prefix = "/api"

    def __init__(self, *, api_prefix: str = "/api", **kwargs: Any):
        super().__init__(**kwargs)
        self.path_prefix = api_prefix.rstrip("/")

    @classmethod
    def from_executor(cls, executor: Executor) -> ComfyUIClient:
        config = executor.config or {}
        return cls(api_prefix=str(config.get("api_prefix", "/api")), **cls._common_kwargs(executor))

    def _get_json(self, path: str) -> Any:
        response = self._request("GET", path)
        if response.status_code != 200:
            raise ComfyUIError(
                f"GET {path} answered HTTP {response.status_code}: {response.text[:120].strip()!r}",
                permanent=400 <= response.status_code < 500,
            )
        return self._json(response, what=f"GET {path}")

    def system_stats(self) -> dict:
        stats = self._get_json("/system_stats")
        if not isinstance(stats, dict) or not isinstance(stats.get("system"), dict):
            raise ComfyUIError("GET /system_stats did not answer a ComfyUI system_stats object.")
        return stats

    def object_info(self) -> dict:
        info = self._get_json("/object_info")
        if not isinstance(info, dict):
            raise ComfyUIError("GET /object_info did not answer an object of node classes.")
        return info

    def check_node_classes(self, required: set[str] | frozenset[str]) -> None:
        """Raise ``ComfyUINodeMissing`` when any required class is not installed."""
        if not required:
            return
        installed = set(self.object_info())
        missing = sorted(set(required) - installed)
        if missing:
            raise ComfyUINodeMissing(missing)

    def health(self, *, requirements: HealthRequirements | None = None) -> HealthResult:
        requirements = requirements or HealthRequirements()
        try:
            stats = self.system_stats()
            installed = self.object_info()
        except ExecutorError as exc:
            return HealthResult.unhealthy(exc.message)
        system = stats["system"]
        devices = stats.get("devices") if isinstance(stats.get("devices"), list) else []
        details = {
            "comfyuiVersion": system.get("comfyui_version"),
            "pythonVersion": system.get("python_version"),
            "devices": [d.get("name") for d in devices if isinstance(d, dict)],
            "nodeClasses": len(installed),
            "requiredNodeClasses": sorted(requirements.node_classes),
        }
        # A missing node class is a binding's problem, not the server's: the health service
        # marks only the bindings whose workflow needs it (see ``bindings_check_nodes``).
        details["missingNodeClasses"] = sorted(set(requirements.node_classes) - set(installed))
        return HealthResult("healthy", "", details, node_classes=frozenset(installed))
