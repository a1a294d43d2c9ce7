"""Uvicorn's worker supervisor, closing its listening socket first when it stops.

With several workers the supervisor binds the socket and each worker serves a copy. On
SIGTERM the workers close theirs and drain, but the supervisor's copy stayed open until
the last worker had finished: meanwhile the kernel kept completing new connections that
no process would ever serve, so load balancers and clients waited instead of being
refused and going elsewhere (found by tests/deploy/test_production_server.py).
"""

from __future__ import annotations

from typing import Any

import uvicorn
from uvicorn.supervisors import Multiprocess


class ListenerClosingMultiprocess(Multiprocess):
    def terminate_all(self) -> None:
        # Once every worker has closed its copy too, new connections are refused.
        for sock in self.sockets:
            sock.close()
        super().terminate_all()


def run_uvicorn(app: str, *, workers: int, reload: bool, **options: Any) -> None:
    """Run Uvicorn as `uvicorn.run` would, with this supervisor for several workers."""
    if workers > 1 and not reload:
        config = uvicorn.Config(app, workers=workers, **options)
        ListenerClosingMultiprocess(config, sockets=[config.bind_socket()]).run()
    else:
        uvicorn.run(app, workers=workers, reload=reload, **options)
