"""Network helpers for every suite: free ports, waiting, a uvicorn server in a thread, and a
TCP relay that a test can cut.

- ``free_port()``: a port nothing listens on (``tallystick.devnet``'s).
- ``wait_for(predicate, timeout, what)``: poll until true; ``wait_http(url, process)``: poll
  a URL until it answers (devnet's), failing at once if the process behind it exits.
- ``ThreadServer(app)``: a real uvicorn server for an ASGI app in a thread
  (``with ThreadServer(app) as s: s.url``).
- ``TcpProxy``: a TCP relay (e.g. node -> anvil) that a test can cut, black-hole and restore.
"""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from collections.abc import Callable
from typing import Any

from tallystick.devnet import free_port

from bench._front import reset_connection

__all__ = ["TcpProxy", "ThreadServer", "free_port", "stop_process", "wait_for", "wait_http"]


def wait_http(
    url: str,
    process: subprocess.Popen[Any] | None = None,
    *,
    timeout: float = 60.0,
    what: str = "the server",
    log: Callable[[], str] = lambda: "",
    json: Any = None,
) -> None:
    """Poll ``GET url`` (``POST json`` when given) until it answers 2xx
    (``tallystick.devnet.wait_http``); RuntimeError at once if ``process`` exits, or after
    ``timeout``, with ``log()`` appended."""
    from tallystick.devnet import DevnetError, Proc
    from tallystick.devnet import wait_http as devnet_wait

    proc = Proc(what, process, None) if process is not None else None
    method = "GET" if json is None else "POST"
    try:
        devnet_wait(url, proc, timeout, what, method=method, json_body=json)
    except DevnetError as exc:
        raise RuntimeError(f"{exc}\n{log()}") from exc


def stop_process(process: subprocess.Popen[Any], timeout: float = 15.0) -> None:
    """SIGTERM ``process`` if it still runs; SIGKILL it after ``timeout`` seconds."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


class ThreadServer:
    """A real uvicorn server for ``app`` in a thread (``with ThreadServer(app) as s: s.url``).

    ``port`` defaults to a free one; ``lifespan="on"`` runs the app's startup and shutdown.
    """

    def __init__(self, app: Any, port: int | None = None, *, start_timeout: float = 120.0) -> None:
        import uvicorn

        self.port = port or free_port()
        config = uvicorn.Config(
            app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.start_timeout = start_timeout

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> ThreadServer:
        self.thread.start()
        deadline = time.monotonic() + self.start_timeout
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


class TcpProxy:
    """Relays 127.0.0.1:port to ``target``; a test can cut it or turn it into a black hole.

    - ``cut()``: every open connection is reset (RST) and new ones are reset on accept, as
      when the RPC process dies or its host goes down.
    - ``blackhole()``: connections stay open but nothing is forwarded either way, and new ones
      are accepted and never answered, as in a network partition or a wedged RPC server.
      Only the client's own timeouts can notice this.
    - ``restore()``: forwarding again; connections left over from a black hole are reset
      (their requests were dropped, as TCP would eventually give up on them too).
    """

    UP, CUT, BLACKHOLE = "up", "cut", "blackhole"

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self.mode = self.UP
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._server = socket.create_server(("127.0.0.1", self.port))
        self._closed = False
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def cut(self) -> None:
        self._switch(self.CUT)

    def blackhole(self) -> None:
        with self._lock:
            self.mode = self.BLACKHOLE

    def restore(self) -> None:
        self._switch(self.UP)

    def close(self) -> None:
        self._closed = True
        self.cut()
        self._server.close()

    def _switch(self, mode: str) -> None:
        with self._lock:
            stale = self.mode != self.UP
            self.mode = mode
            # Restoring a cut proxy has nothing to reset; restoring a black hole resets the
            # connections whose requests it swallowed.
            if mode == self.CUT or stale:
                for conn in self._conns:
                    reset_connection(conn)
                self._conns.clear()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            upstream = None
            if self.mode == self.UP:
                try:
                    upstream = socket.create_connection(("127.0.0.1", self.target_port))
                except OSError:
                    reset_connection(client)
                    continue
            # Registered under the lock that cut() holds, so no connection escapes a cut.
            with self._lock:
                if self.mode == self.CUT or (self.mode == self.UP and upstream is None):
                    reset_connection(client)
                    if upstream is not None:
                        reset_connection(upstream)
                    continue
                pairs = [(client, upstream), (upstream, client)] if upstream else [(client, None)]
                self._conns.update(s for s in (client, upstream) if s is not None)
            for src, dst in pairs:
                threading.Thread(target=self._pipe, args=(src, dst), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket | None) -> None:
        try:
            while data := src.recv(65536):
                if dst is not None and self.mode == self.UP:
                    dst.sendall(data)  # in a black hole the bytes are dropped
        except OSError:
            pass
        finally:
            for s in (src, dst):
                if s is not None:
                    with self._lock:
                        self._conns.discard(s)
                    reset_connection(s)


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``predicate`` every 0.1 s; AssertionError naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.1)
