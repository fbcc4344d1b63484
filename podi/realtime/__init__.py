"""Live events: each user's event log, the WebSocket stream, ``/api/notify/v1/*`` and webhooks.

Other apps use :func:`podi.realtime.events.emit` and the registrations next to it; nothing else.
See docs/adr/0006-live-events.md.
"""
