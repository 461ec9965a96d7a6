"""Running the service's ASGI app on uvicorn (httptools and uvloop; see the README for the choice)."""

from __future__ import annotations

import socket

import uvicorn

from stepbatch.service.batcher import LiveBatcher


class Server(uvicorn.Server):
    """uvicorn's server, which on SIGTERM/SIGINT also closes the open batch at once: uvicorn waits for
    the requests in flight to be answered before it shuts the app down, and those wait for their batch."""

    def __init__(self, config: uvicorn.Config, batcher: LiveBatcher):
        super().__init__(config)
        self.batcher = batcher

    def handle_exit(self, sig, frame) -> None:
        self.batcher.drain_soon()
        super().handle_exit(sig, frame)
        # uvicorn re-raises the signal once it has shut down, which would kill the process before
        # the command closes its store (and the embedded database); the command exits 0 instead.
        self._captured_signals.clear()


def run(app, listener: socket.socket, log_level: str = "info") -> None:
    """Serve `app` on an already bound socket until SIGTERM/SIGINT, then shut down cleanly."""
    config = uvicorn.Config(app, log_level=log_level, access_log=False, loop="uvloop", http="httptools",
                            timeout_graceful_shutdown=None, lifespan="on")
    Server(config, app.state.service.batcher).run(sockets=[listener])
