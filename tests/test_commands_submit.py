"""`ddss submit` against a cluster whose dashboard wants a Ray auth token it was not given (or
given a wrong one): one line and exit code 2, not Ray's AuthenticationError traceback (a job
server that answers 401 / 403 as Ray's does; the submission itself: tests/test_submit.py)."""
import http.server
import threading

import pytest

from cli_fixtures import fails


@pytest.fixture
def refusing_dashboard():
    """http://127.0.0.1:PORT answering every request with the status in `status[0]`."""
    status = [401]

    class Handler(http.server.BaseHTTPRequestHandler):
        def _refuse(self):
            body = b"Unauthorized: missing or invalid authentication token"
            self.send_response(status[0])
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = do_PUT = _refuse

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", status
    server.shutdown()
    server.server_close()


def test_a_missing_or_wrong_auth_token_is_one_line(refusing_dashboard, capsys, monkeypatch):
    address, status = refusing_dashboard
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    fails(["submit", "evaluate", "--address", address, "--no-follow"], capsys,
          "the Ray cluster refused the request: Authentication required", "RAY_AUTH_TOKEN")
    status[0] = 403
    monkeypatch.setenv("RAY_AUTH_TOKEN", "0" * 32)
    fails(["submit", "evaluate", "--address", address, "--no-follow"], capsys,
          "the Ray cluster refused the request: Authentication failed", "RAY_AUTH_TOKEN_PATH")
