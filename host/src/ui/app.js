// The gateway's admin page: reads the admin API with the session cookie, reloads on request.
// Requests that change something carry `x-gateway-ui: 1`, without which the gateway refuses the
// cookie (a page of another site cannot add the header).
"use strict";

const text = (value) => document.createTextNode(value === undefined || value === null ? "" : String(value));

function cell(row, value, className) {
  const td = row.insertCell();
  if (value instanceof Node) td.appendChild(value); else td.appendChild(text(value));
  if (className) td.className = className;
  return td;
}

async function api(method, path) {
  const resp = await fetch(path, { method, headers: method === "GET" ? {} : { "x-gateway-ui": "1" } });
  if (resp.status === 401) { location.href = "/ui/"; throw new Error("signed out"); }
  const body = await resp.json();
  if (!resp.ok) throw new Error(body.error ? body.error.message : resp.statusText);
  return body;
}

function say(message) { document.getElementById("status").textContent = message; }

function hooks(plugin) {
  const list = document.createElement("ul");
  for (const h of plugin.hooks || []) {
    const li = document.createElement("li");
    li.textContent = `${h.hook}: ${h.p99_us === null ? "–" : h.p99_us + " µs"} (${h.calls})`;
    list.appendChild(li);
  }
  return list;
}

function reloadButton(name) {
  const button = document.createElement("button");
  button.type = "button";
  button.textContent = "Reload";
  button.dataset.plugin = name;
  button.addEventListener("click", async () => {
    button.disabled = true;
    try {
      const r = await api("POST", `/admin/plugins/${encodeURIComponent(name)}/reload`);
      say(`${name}: ${r.outcome}`);
    } catch (e) { say(`${name}: ${e.message}`); }
    button.disabled = false;
    refresh();
  });
  return button;
}

function render(plugins, upstreams) {
  const body = document.querySelector("#plugins tbody");
  body.replaceChildren();
  const pages = document.getElementById("plugin-pages");
  pages.replaceChildren();
  for (const p of plugins) {
    const row = body.insertRow();
    row.dataset.plugin = p.name;
    cell(row, p.name, "name");
    cell(row, p.version);
    cell(row, p.sha256.slice(0, 12), "mono").title = p.sha256;
    cell(row, p.capabilities.join(", "));
    cell(row, p.calls, "num");
    cell(row, p.errors, "num");
    cell(row, hooks(p));
    cell(row, p.quarantined ? "quarantined" : "serving", p.quarantined ? "bad" : "good");
    cell(row, p.retired_versions_mapped, "num");
    cell(row, new Date(p.loaded_at_unix_ms).toISOString(), "loaded mono");
    cell(row, reloadButton(p.name));
    if (p.ui) {
      const a = document.createElement("a");
      a.href = p.ui.entry;
      a.textContent = p.ui.sidebar;
      a.dataset.plugin = p.name;
      pages.appendChild(a);
    }
  }
  const models = document.querySelector("#models tbody");
  models.replaceChildren();
  for (const m of upstreams.models) {
    const row = models.insertRow();
    [m.model, m.upstream_model, m.served_by, m.kind].forEach((v) => cell(row, v));
  }
  const ups = document.querySelector("#upstreams tbody");
  ups.replaceChildren();
  for (const u of upstreams.upstreams) {
    const row = ups.insertRow();
    [u.name, u.kind, u.base_url].forEach((v) => cell(row, v));
  }
}

async function refresh() {
  try {
    const [plugins, upstreams] = await Promise.all([api("GET", "/admin/plugins"), api("GET", "/admin/upstreams")]);
    render(plugins.plugins, upstreams);
    document.body.dataset.ready = "true";
  } catch (e) { say(e.message); }
}

document.getElementById("reload-all").addEventListener("click", async () => {
  try {
    const r = await api("POST", "/admin/reload");
    say(r.results.map((x) => `${x.plugin}: ${x.outcome || x.error}`).join("; "));
  } catch (e) { say(e.message); }
  refresh();
});

refresh();
setInterval(refresh, 5000);
