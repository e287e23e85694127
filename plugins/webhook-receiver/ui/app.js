// The webhook receiver's page: its `stats` management route, and webhooks as they arrive on its
// `events` route (server-sent events). Both are reached with the admin page's session.
"use strict";

const base = "/admin/plugins/webhook-receiver";

async function stats() {
  const resp = await fetch(`${base}/stats`);
  if (!resp.ok) return;
  const s = await resp.json();
  document.getElementById("received").textContent = s.received;
  document.getElementById("rejected").textContent = s.rejected;
  const body = document.querySelector("#sources tbody");
  body.replaceChildren();
  for (const [source, n] of Object.entries(s.by_source)) {
    const row = body.insertRow();
    row.insertCell().textContent = source;
    row.insertCell().textContent = n;
  }
  document.body.dataset.ready = "true";
}

const events = new EventSource(`${base}/events`);
events.addEventListener("webhook", (e) => {
  const w = JSON.parse(e.data);
  const li = document.createElement("li");
  li.className = "mono";
  li.textContent = `${w.source}: ${w.body}`;
  document.getElementById("events").prepend(li);
  stats();
});

stats();
setInterval(stats, 5000);
