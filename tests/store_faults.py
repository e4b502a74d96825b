"""Faults of a real store, for the fault tests: a store of the test's own, and a cutting proxy.

The session store (``s3_store``) is shared by every test; a test that pauses, kills or
restarts a store uses one of its own (:func:`own_store`), on its own data directory, so
nothing else is hurt. :class:`CuttingProxy` sits between the origin and that store and
can cut a connection in the middle of a response body, as a broken network does, while
the store itself stays healthy.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

from framecdn.embedded_s3 import EmbeddedS3
from framecdn.framestore.config import Settings


@contextlib.contextmanager
def own_store(data_dir: Path, bucket: str = "faults") -> Iterator[EmbeddedS3]:
    """A SeaweedFS store of the caller's own; stopped (and resumed first) on the way out."""
    store = EmbeddedS3(data_dir, bucket=bucket)
    store.start()
    try:
        yield store
    finally:
        store.stop()


class CuttingProxy:
    """A TCP proxy to ``target`` that can cut the next response after some bytes.

    :meth:`cut_after` arms it: the next response that passes ``after`` bytes is cut
    right there (both sides of its connection closed), once. A response's bytes are
    counted from the last bytes its client sent (HTTP/1.1 without pipelining: the
    request). Everything else is forwarded as is.
    """

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self._server = socket.socket()
        self._server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._server.bind(("127.0.0.1", 0))
        self._server.listen(64)
        self.port = self._server.getsockname()[1]
        self._lock = threading.Lock()
        self._cut_after: int | None = None
        self.cuts = 0
        self._stop = threading.Event()
        self._sockets: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def settings(self, settings: Settings) -> Settings:
        """``settings`` pointed at this proxy instead of the store."""
        return settings.with_overrides(s3_endpoint=self.endpoint)

    def cut_after(self, after: int) -> None:
        with self._lock:
            self._cut_after = after

    def __enter__(self) -> CuttingProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._server.close()
        with self._lock:
            for sock in self._sockets:
                with contextlib.suppress(OSError):
                    sock.close()
        self._thread.join(5)

    def _accept(self) -> None:
        self._server.settimeout(0.2)
        while not self._stop.is_set():
            try:
                client, _ = self._server.accept()
            except OSError:
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._sockets += [client, upstream]
            answered = [0]  # bytes of the current response on this connection
            for source, sink, response in ((client, upstream, False), (upstream, client, True)):
                threading.Thread(
                    target=self._pump, args=(source, sink, response, answered), daemon=True
                ).start()

    def _pump(
        self, source: socket.socket, sink: socket.socket, response: bool, answered: list[int]
    ) -> None:
        try:
            source.settimeout(None)
            while True:
                data = source.recv(65536)
                if not data:
                    break
                if not response:
                    answered[0] = 0  # a new request: its response starts now
                    sink.sendall(data)
                    continue
                with self._lock:
                    limit = self._cut_after
                    cut = limit is not None and answered[0] + len(data) > limit
                    if cut:
                        self._cut_after = None
                        self.cuts += 1
                if cut and limit is not None:
                    sink.sendall(data[: max(0, limit - answered[0])])
                    break
                sink.sendall(data)
                answered[0] += len(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                with contextlib.suppress(OSError):
                    sock.close()
