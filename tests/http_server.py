"""A local HTTP server for download tests: 127.0.0.1, a random free port, one thread per request, no internet.

Files are served as ``/<mode>/<name>``; the mode says how:

* ``good``       the file, with Range support
* ``missing``    404
* ``truncated``  Content-Length of the whole file, half the body, then the connection closes
* ``corrupt``    the right length of bytes that are not a video
* ``slow``       waits ``slow_seconds`` before answering (a client's socket timeout fires first)
* ``flaky``      503 for the first ``flaky_failures`` requests of each path, then like ``good``
* ``gated``      waits until :attr:`LocalServer.gate` is set, then like ``good``

Files named in :attr:`LocalServer.hold` wait for the gate in every mode. ``hits`` counts requests per path.

Failing on purpose, in every mode: :attr:`LocalServer.script` maps a file name to the status codes its first
requests get (e.g. ``[503, 503]``, then it is served); :meth:`LocalServer.throttle` answers 429 to every request
for a while, starting with the next one. ``log`` records ``(time.monotonic(), path, status)`` of every request (200 unless the script, the
throttle or a 404 answered), ``cookies`` the ``(path, Cookie header)`` of every request.
"""
from __future__ import annotations

import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class LocalServer:
    def __init__(self, files: dict[str, bytes], slow_seconds: float = 5.0, flaky_failures: int = 1):
        self.files, self.slow_seconds, self.flaky_failures = files, slow_seconds, flaky_failures
        self.hits: Counter = Counter()
        self.gate = threading.Event()
        self.hold: set[str] = set()
        self.script: dict[str, list[int]] = {}
        self.throttled_until = 0.0
        self.throttle_armed: float | None = None
        self.log: list[tuple[float, str, int]] = []
        self.cookies: list[tuple[str, str]] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def template(self, mode: str) -> str:
        """A url template for the download stage: ``<base>/<mode>/{video_id}.mp4``."""
        return f"{self.base}/{mode}/{{video_id}}.mp4"

    def __enter__(self) -> "LocalServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self.gate.set()
        self.httpd.shutdown()
        self.httpd.server_close()

    def throttle(self, seconds: float) -> None:
        """Answer 429 to every request for ``seconds`` from the next request on."""
        with self._lock:
            self.throttle_armed = seconds

    def _count(self, path: str) -> int:
        with self._lock:
            self.hits[path] += 1
            return self.hits[path]

    def _scripted(self, name: str) -> int | None:
        """The forced status of this request (429 while throttled, then the file's script), or None."""
        with self._lock:
            if self.throttle_armed is not None:
                self.throttled_until, self.throttle_armed = time.monotonic() + self.throttle_armed, None
            if time.monotonic() < self.throttled_until:
                return 429
            codes = self.script.get(name)
            return codes.pop(0) if codes else None

    def _record(self, path: str, status: int) -> None:
        with self._lock:
            self.log.append((time.monotonic(), path, status))

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:       # keep test output clean
                pass

            def do_HEAD(self) -> None:
                self._serve(body=False)

            def do_GET(self) -> None:
                self._serve(body=True)

            def _serve(self, body: bool) -> None:
                n = server._count(self.path)
                server.cookies.append((self.path, self.headers.get("Cookie", "")))
                parts = self.path.lstrip("/").split("/", 1)
                mode, name = (parts + [""])[:2]
                data = server.files.get(name)
                forced = server._scripted(name)
                if forced is not None:
                    server._record(self.path, forced)
                    return self.send_error(forced)
                if data is None or mode == "missing":
                    server._record(self.path, 404)
                    return self.send_error(404, "Not Found")
                server._record(self.path, 200)
                if mode == "slow" and server._stop.wait(server.slow_seconds):
                    return
                if mode == "gated" or name in server.hold:
                    server.gate.wait()
                if mode == "flaky" and n <= server.flaky_failures:
                    return self.send_error(503, "Service Unavailable")
                if mode == "corrupt":
                    data = bytes((i * 37) % 251 for i in range(len(data)))
                self._send(data, body, truncate=mode == "truncated")

            def _send(self, data: bytes, body: bool, truncate: bool) -> None:
                start, end = 0, len(data) - 1
                ranged = self.headers.get("Range", "").startswith("bytes=")
                if ranged:
                    first, _, last = self.headers["Range"][6:].partition("-")
                    start, end = int(first or 0), int(last) if last else len(data) - 1
                self.send_response(206 if ranged else 200)
                self.send_header("Content-Type", "video/mp4")
                self.send_header("Accept-Ranges", "bytes")
                self.send_header("Content-Length", str(end - start + 1))
                if ranged:
                    self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
                self.end_headers()
                if body:
                    payload = data[start:end + 1]
                    try:
                        self.wfile.write(payload[:len(payload) // 2] if truncate else payload)
                        self.wfile.flush()
                    except (BrokenPipeError, ConnectionResetError):    # the client went away (killed)
                        self.close_connection = True
                if truncate:
                    self.close_connection = True

        return Handler
