"""Realtime: WebSocket channels (API.md, "Realtime"), delivered across processes and
hosts by the broker, resumable after a reconnect."""
