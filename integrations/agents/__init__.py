"""GPU-server agents, a Django app of their own (label ``agents``): a sidecar on each ComfyUI
server that heartbeats, fetches its resource manifest and reports the sync tasks PODI pushes to it
(README "GPU-server agents", docs/adr/0008-gpu-server-agents.md).

Modules: ``models``, ``tokens`` (JWTs with a ``kid``), ``manifests`` (validation and diff of
manifest content), ``services/`` (every write, one module per concern), ``selectors``
(fetch-or-404 and token-bound reads), ``push`` (the outbound HTTP call), ``apis`` + ``urls``
(``/api/agent/v1/…``; ``/api/admin/agents…``, ``/api/admin/manifests…``), ``actors``
(reconciler steps: offline detection, push retries, expiry), ``admin`` (the console pages) and
``error_codes``.
"""
