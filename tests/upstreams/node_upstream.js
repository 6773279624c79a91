// A real upstream for the gateway's attack tests: Node's http server, which hands the
// request target to the app exactly as received (`req.url`, not normalised) and keeps header
// names as sent (`req.rawHeaders`). It answers what it got; `GET /__hits` answers how many
// requests reached it (itself not counted). Under `/v1/spelled/` it answers with mixed-case
// header names and its own reason phrase.
//
// Usage: node node_upstream.js   -> prints the port it listens on (127.0.0.1), then serves.
"use strict";
const http = require("http");

let hits = 0;
const server = http.createServer((req, res) => {
  let body;
  if (req.url === "/__hits") {
    body = JSON.stringify({ hits });
  } else {
    hits += 1;
    body = JSON.stringify({
      method: req.method,
      url: req.url,
      host: req.headers.host || null,
      raw_headers: req.rawHeaders,
    });
  }
  if (req.url.startsWith("/v1/spelled/")) {
    // Names in mixed case and a reason phrase of its own, for the header-spelling test.
    res.writeHead(200, "Fine Thanks", {
      "Content-Type": "application/json",
      "Content-Length": Buffer.byteLength(body),
      "X-Upstream-MiXed": "1",
    });
  } else {
    res.writeHead(200, {
      "content-type": "application/json",
      "content-length": Buffer.byteLength(body),
    });
  }
  res.end(body);
});
server.listen(0, "127.0.0.1", () => {
  process.stdout.write(`${server.address().port}\n`);
});
