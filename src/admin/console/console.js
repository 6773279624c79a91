// The admin console. Everything shown comes from this listener (/console.json, /explain) and
// is written with textContent: route names, claims and messages are never parsed as HTML.
"use strict";

let token = "";            // the admin token, when the listener needs one: memory only
let previous = null;       // the last counters, for rates
const REFRESH_MS = 5000;

function headers(extra) {
  const h = Object.assign({}, extra || {});
  if (token) h["Authorization"] = "Bearer " + token;
  return h;
}

function cell(row, text, cls) {
  const td = document.createElement("td");
  td.textContent = text;
  if (cls) td.className = cls;
  row.appendChild(td);
  return td;
}

function setStatus(text, bad) {
  const s = document.getElementById("status");
  s.textContent = text;
  s.className = bad ? "bad" : "";
}

function ago(unix) {
  if (!unix) return "never";
  const s = Math.max(0, Math.round(Date.now() / 1000 - unix));
  return s < 120 ? s + " s ago" : Math.round(s / 60) + " min ago";
}

function render(data, now) {
  const body = document.querySelector("#routes tbody");
  body.replaceChildren();
  const secs = previous ? (now - previous.at) / 1000 : 0;
  data.routes.forEach((r, i) => {
    const tr = document.createElement("tr");
    tr.dataset.route = r.name;
    cell(tr, String(i + 1));
    cell(tr, r.name);
    cell(tr, r.methods ? r.methods.join(" ") : "any");
    cell(tr, r.path);
    cell(tr, r.auth === "jwt" ? "JWT" + (r.issuers ? " (" + r.issuers.join(", ") + ")" : "") : "public");
    cell(tr, r.auth === "jwt" ? r.scopes : "-");
    cell(tr, r.limits ? r.limits + " by " + r.limit_keys.join(" ; ") : "-");
    cell(tr, r.upstream);
    cell(tr, r.require_tls ? "required" : "-");
    let rate = "-", denied = "-";
    const before = previous && previous.routes[r.name];
    if (before && secs > 0) {
      rate = ((r.requests_total - before.requests_total) / secs).toFixed(2);
      denied = ((r.denials_total - before.denials_total) / secs).toFixed(2);
    }
    cell(tr, rate, "num");
    cell(tr, denied, "num" + (denied !== "-" && Number(denied) > 0 ? " bad" : ""));
    body.appendChild(tr);
  });
  const ib = document.querySelector("#issuers tbody");
  ib.replaceChildren();
  data.issuers.forEach((i) => {
    const tr = document.createElement("tr");
    cell(tr, i.name);
    cell(tr, i.issuer);
    cell(tr, i.algorithms.join(", "));
    cell(tr, i.kids.length ? i.kids.join(", ") : "(none loaded)");
    cell(tr, ago(i.last_refresh_unix));
    cell(tr, "in " + i.next_refresh_in_secs + " s");
    cell(tr, i.healthy ? "ok" : (i.ready ? i.failures_in_a_row + " failed fetches" : "no keys yet"),
      i.healthy ? "ok" : "bad");
    ib.appendChild(tr);
  });
  const routes = {};
  data.routes.forEach((r) => { routes[r.name] = r; });
  previous = { at: now, routes: routes };
}

async function load() {
  try {
    const resp = await fetch("/console.json", { headers: headers(), cache: "no-store" });
    if (resp.status === 401) {
      document.getElementById("token-form").hidden = false;
      setStatus("this listener needs its admin token", true);
      return false;
    }
    if (!resp.ok) {
      setStatus("console.json: HTTP " + resp.status, true);
      return false;
    }
    render(await resp.json(), Date.now());
    setStatus("updated " + new Date().toLocaleTimeString());
    return true;
  } catch (e) {
    setStatus("cannot reach the admin listener", true);
    return false;
  }
}

function parseHeaders(text) {
  const out = {};
  text.split("\n").map((l) => l.trim()).filter((l) => l).forEach((l) => {
    const i = l.indexOf(":");
    if (i <= 0) throw new Error("header line without a name: " + l);
    const name = l.slice(0, i).trim().toLowerCase();
    (out[name] = out[name] || []).push(l.slice(i + 1).trim());
  });
  return out;
}

async function explain() {
  const out = document.getElementById("explain-result");
  out.textContent = "…";
  let req;
  try {
    req = {
      method: document.getElementById("x-method").value.trim() || "GET",
      path: document.getElementById("x-path").value.trim(),
      tls: document.getElementById("x-tls").checked,
      headers: parseHeaders(document.getElementById("x-headers").value),
    };
  } catch (e) {
    out.textContent = e.message;
    return;
  }
  const t = document.getElementById("x-token").value.trim();
  if (t) req.token = t;
  try {
    const resp = await fetch("/explain", {
      method: "POST",
      headers: headers({ "Content-Type": "application/json" }),
      body: JSON.stringify(req),
    });
    const e = await resp.json();
    if (!resp.ok) {
      out.textContent = "explain refused: " + (e.error_description || resp.status);
      return;
    }
    const head = e.forwarded ? "FORWARDED to " + e.upstream : e.status + " " + e.reason;
    out.textContent = head + "\n\n" + e.lines.join("\n");
    out.dataset.status = String(e.status);
  } catch (err) {
    out.textContent = "cannot reach the admin listener";
  }
}

// `#explain?method=POST&path=/v1/x&tls=1` fills the form and explains at once (a link to
// share). A token is never taken from the URL.
function fromFragment() {
  const m = location.hash.match(/^#explain\?(.*)$/);
  if (!m) return false;
  const q = new URLSearchParams(m[1]);
  if (q.get("method")) document.getElementById("x-method").value = q.get("method");
  if (q.get("path")) document.getElementById("x-path").value = q.get("path");
  document.getElementById("x-tls").checked = q.get("tls") === "1";
  if (q.get("headers")) document.getElementById("x-headers").value = q.get("headers");
  return true;
}

document.addEventListener("DOMContentLoaded", async () => {
  document.getElementById("explain-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    explain();
  });
  document.getElementById("token-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    token = document.getElementById("token").value.trim();
    if (await load()) document.getElementById("token-form").hidden = true;
  });
  await load();
  if (fromFragment()) await explain();
  setInterval(load, REFRESH_MS);
});
