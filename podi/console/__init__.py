"""The operator console: the admin site, its operations dashboard and ``/metrics``.

The top layer: it reads tasks, wallet, integrations and live events; nothing below imports it.
"""
