"""A real decoding upstream for the gateway's attack tests: a WSGI app on Python's wsgiref.

wsgiref percent-decodes the path into PATH_INFO (so `%2F` becomes `/`) and maps header
names to `HTTP_*` variables with `-` read as `_` (so `X_Auth_Subject` and `X-Auth-Subject`
land in one variable, joined with a comma). The app routes on PATH_INFO like a small Flask
app would and answers what it served and which identity it saw.

Usage: python3 wsgi_upstream.py   -> prints the port it listens on (127.0.0.1), then serves.
`GET /__hits` answers how many requests reached the app (itself not counted).
"""

import json
import re
import sys
import threading
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

ROUTES = [
    (re.compile(r"^/v1/studies/[^/]+/participants$"), "participants"),
    (re.compile(r"^/v1/studies/[^/]+$"), "study"),
    (re.compile(r"^/v1/admin/users/[^/]+$"), "admin_user"),
    (re.compile(r"^/v1/admin/users$"), "admin_users"),
]

hits = 0
lock = threading.Lock()


def app(environ, start_response):
    global hits
    path = environ.get("PATH_INFO", "")
    if path == "/__hits":
        body = json.dumps({"hits": hits}).encode()
    else:
        with lock:
            hits += 1
        handler = next((name for rx, name in ROUTES if rx.match(path)), "not_found")
        body = json.dumps(
            {
                "handler": handler,
                "path_info": path,
                "sub": environ.get("HTTP_X_AUTH_SUBJECT"),
                "scopes": environ.get("HTTP_X_AUTH_SCOPES"),
                "client_id": environ.get("HTTP_X_AUTH_CLIENT_ID"),
                "forwarded_for": environ.get("HTTP_X_FORWARDED_FOR"),
                "forwarded_proto": environ.get("HTTP_X_FORWARDED_PROTO"),
                "request_id": environ.get("HTTP_X_REQUEST_ID"),
            }
        ).encode()
    start_response(
        "200 OK",
        [("Content-Type", "application/json"), ("Content-Length", str(len(body)))],
    )
    return [body]


class Quiet(WSGIRequestHandler):
    def log_message(self, *args):
        pass


class Threaded(ThreadingMixIn, WSGIServer):
    daemon_threads = True


def main():
    server = make_server("127.0.0.1", 0, app, server_class=Threaded, handler_class=Quiet)
    print(server.server_port, flush=True)
    server.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
