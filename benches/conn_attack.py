#!/usr/bin/env python3
"""Memory of the gateway under a slow-head attack: many connections that each trickle an
unterminated request head (a script that prints figures, not a test).

Starts BINARY (default target/release/wetrials-gateway) on loopback with the default
connection limits (the config below sets none of them) in front of a tiny upstream, then
opens CONNS connections (default 300) that each send an unterminated request head: the
request line, then one LINE-byte header line every INTERVAL seconds until MAX_HEAD bytes
were sent or the gateway closed the connection. Prints the gateway's RSS (ps -o rss) before,
at its peak while the attack runs, and after every attacking connection closed, plus what the
connections saw (408 / 431 / 503 / plain close / still open at the end).

    benches/conn_attack.py [--binary PATH] [--conns 300] [--line 32768] [--interval 2]
                           [--max-head 1048576] [--duration 90]

Figures measured when this was added (2 vCPU VM under other builds' load; debug builds of
both binaries, as the release build did not fit the time; 300 connections from 127.0.0.1):
  before the limits, 32 KiB line every 2 s: RSS 19.5 -> peak 472.2 -> after 206.7 MiB
      (all 300 held ~65 s until pingora's 1 MiB head limit answered 400)
  with the limits (defaults), same attack: RSS 19.9 -> peak 32.8 -> after 33.4 MiB
      (256 got 431 at the second line, 44 got 503 from the per-address cap; 2.6 s)
  with the limits, --line 1024 (the deadline, not the size, ends it):
      RSS 19.6 -> peak 29.9 -> after 29.3 MiB (256 got 408 at 10 s, 44 got 503)
"""

import argparse
import http.server
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def rss_kib(pid):
    out = subprocess.run(["ps", "-o", "rss=", "-p", str(pid)], capture_output=True, text=True)
    return int(out.stdout.strip() or 0)


def upstream(port):
    class H(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):
            body = b'{"ok":true}'
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", port), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()


def attacker(addr, args, outcome, lock):
    try:
        s = socket.create_connection(addr, timeout=10)
    except OSError as e:
        with lock:
            outcome["connect error"] = outcome.get("connect error", 0) + 1
        return
    s.settimeout(args.interval)
    sent = 0
    line = b"X-Pad: " + b"a" * max(0, args.line - 9) + b"\r\n"
    result = "open at the end"
    deadline = time.time() + args.duration
    try:
        s.sendall(b"GET /v1/public/x HTTP/1.1\r\nHost: gw\r\n")
        while time.time() < deadline:
            try:
                data = s.recv(4096)
                if not data:
                    result = "closed"
                else:
                    result = data.split(b"\r\n", 1)[0].decode(errors="replace")
                break
            except socket.timeout:
                pass
            if sent < args.max_head:
                s.sendall(line)
                sent += len(line)
    except OSError as e:
        result = "closed (%s)" % e.__class__.__name__
    finally:
        s.close()
    with lock:
        outcome[result] = outcome.get(result, 0) + 1


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    p = argparse.ArgumentParser()
    p.add_argument("--binary", default=os.path.join(here, "..", "target", "release", "wetrials-gateway"))
    p.add_argument("--conns", type=int, default=300)
    p.add_argument("--line", type=int, default=32 * 1024)
    p.add_argument("--interval", type=float, default=2.0)
    p.add_argument("--max-head", type=int, default=1024 * 1024)
    p.add_argument("--duration", type=float, default=90.0)
    args = p.parse_args()

    up, listen, admin = free_port(), free_port(), free_port()
    upstream(up)
    tmp = tempfile.mkdtemp(prefix="conn-attack-")
    cfg = os.path.join(tmp, "gateway.toml")
    with open(cfg, "w") as f:
        f.write(
            f"""[server]
listen = "127.0.0.1:{listen}"
upgrade_sock = "{tmp}/upgrade.sock"
pid_file = "{tmp}/gateway.pid"
[admin]
listen = "127.0.0.1:{admin}"
[logging]
format = "json"
level = "warn"
access_log = false
[[upstreams]]
name = "api"
peers = ["127.0.0.1:{up}"]
[[routes]]
name = "public"
path = "/v1/public/*"
upstream = "api"
auth = "none"
"""
        )
    log = open(os.path.join(tmp, "gateway.log"), "w")
    gw = subprocess.Popen([args.binary, "--config", cfg], stdout=log, stderr=log)
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{admin}/readyz", timeout=1)
                break
            except Exception:
                time.sleep(0.1)
        # Warm up: a few ordinary requests, so "before" includes a served request.
        for _ in range(20):
            urllib.request.urlopen(f"http://127.0.0.1:{listen}/v1/public/warm", timeout=5).read()
        time.sleep(1)
        before = rss_kib(gw.pid)

        outcome, lock = {}, threading.Lock()
        threads = [
            threading.Thread(target=attacker, args=(("127.0.0.1", listen), args, outcome, lock))
            for _ in range(args.conns)
        ]
        start = time.time()
        for t in threads:
            t.start()
        peak = before
        while any(t.is_alive() for t in threads):
            peak = max(peak, rss_kib(gw.pid))
            time.sleep(0.25)
        took = time.time() - start
        time.sleep(2)
        after = rss_kib(gw.pid)
        ok = urllib.request.urlopen(f"http://127.0.0.1:{listen}/v1/public/after", timeout=5).status

        print(f"binary: {os.path.realpath(args.binary)}")
        print(
            f"attack: {args.conns} connections, {args.line}-byte header line every "
            f"{args.interval} s up to {args.max_head} bytes, at most {args.duration} s"
        )
        print(f"RSS before: {before / 1024:.1f} MiB")
        print(f"RSS peak:   {peak / 1024:.1f} MiB")
        print(f"RSS after:  {after / 1024:.1f} MiB (2 s after the last attacking connection closed)")
        print(f"attack lasted {took:.1f} s; connections ended as: {dict(sorted(outcome.items()))}")
        print(f"an ordinary request afterwards: {ok}")
    finally:
        gw.terminate()
        try:
            gw.wait(timeout=10)
        except subprocess.TimeoutExpired:
            gw.kill()


if __name__ == "__main__":
    sys.exit(main())
