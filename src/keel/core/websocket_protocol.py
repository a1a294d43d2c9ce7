"""Uvicorn's WebSocket protocol, closing with 1001 ("going away") on shutdown.

Uvicorn's own closes open connections with 1012 ("service restart") when the server
stops; API.md promises 1001, which clients take as "reconnect elsewhere". Everything
else is Uvicorn's sans-I/O implementation (on the `websockets` package) as it is.
"""

from __future__ import annotations

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

GOING_AWAY = 1001


class GoingAwayWebSocketProtocol(WebSocketsSansIOProtocol):
    def shutdown(self) -> None:
        if self.close_sent or not self.handshake_complete:
            super().shutdown()
            return
        self.stop_keepalive()
        self.queue.put_nowait({"type": "websocket.disconnect", "code": GOING_AWAY})
        self.conn.send_close(GOING_AWAY, "server shutting down")
        self.transport.write(b"".join(self.conn.data_to_send()))
        self.transport.close()
