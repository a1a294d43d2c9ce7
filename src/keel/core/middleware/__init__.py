"""Pure ASGI middleware (no BaseHTTPMiddleware: it costs throughput and breaks streaming)."""
