// fleet's operators' page: polls /api/state every 2 s and builds every table with
// textContent only, so whatever Redis holds (a payload with <script>) is shown as text.
// Actions are POSTs carrying the token from sessionStorage as Authorization: Bearer.
"use strict";

const POLL_MS = 2000;
const TOKEN_KEY = "fleet-web-token";
let canAct = false;

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (cls) node.className = cls;
  return node;
}

function token() {
  return sessionStorage.getItem(TOKEN_KEY) || "";
}

function show(id, text) {
  const node = document.getElementById(id);
  node.textContent = text || "";
  node.hidden = !text;
}

function table(id, columns, rows, makeRow, emptyText) {
  const t = typeof id === "string" ? document.getElementById(id) : id;
  t.replaceChildren();
  const head = el("tr");
  columns.forEach((c) => head.appendChild(el("th", c)));
  t.appendChild(head);
  if (!rows.length) {
    const tr = el("tr");
    const td = el("td", emptyText, "empty");
    td.colSpan = columns.length;
    tr.appendChild(td);
    t.appendChild(tr);
  }
  rows.forEach((r) => t.appendChild(makeRow(r)));
  return t;
}

function row(cells) {
  const tr = el("tr");
  cells.forEach(([text, cls]) => tr.appendChild(el("td", text, cls)));
  return tr;
}

function age(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  if (seconds < 90) return `${Math.round(seconds)} s`;
  if (seconds < 5400) return `${Math.round(seconds / 60)} min`;
  return `${(seconds / 3600).toFixed(1)} h`;
}

function bytes(n) {
  if (n === null || n === undefined) return "–";
  return `${(n / 1048576).toFixed(0)} MiB`;
}

function known(v) {
  return v === null || v === undefined ? "–" : v;
}

function renderQueues(queues) {
  table("queues", ["queue", "ready", "deferred", "in progress", "dead letters", "live replicas", "stale replicas", "jobs / min"],
    queues, (q) => row([[q.queue], [q.ready, "n"], [q.deferred, "n"], [q.in_progress, "n"], [q.dead_letters, "n"],
      [q.live_replicas, "n"], [q.stale_replicas, "n"], [q.finished_last_minute, "n"]]), "no queues");
}

function renderReplicas(replicas) {
  table("replicas", ["queue", "replica", "state", "last beat", "running", "done", "retried", "dead-lettered", "pool", "RSS"],
    replicas, (r) => {
      const tr = row([[r.queue], [r.replica], [r.problem ? `problem: ${r.problem}` : (r.live ? "live" : "stale")],
        [age(r.beat_age_s), "n"], [known(r.running), "n"], [known(r.succeeded), "n"], [known(r.retried), "n"],
        [known(r.dead_lettered), "n"], [known(r.pool_size), "n"], [bytes(r.rss_bytes), "n"]]);
      if (!r.live || r.problem) tr.className = "stale";
      return tr;
    }, "no replica beats: no worker runs on this namespace");
}

function renderRuns(runs) {
  table("runs", ["run", "progress", "done / total", "rendered", "skipped", "failed", "images/s", "ETA"],
    runs, (r) => {
      const tr = row([[r.run_id]]);
      const cell = el("td");
      const bar = el("progress");
      bar.max = Math.max(r.total, 1);
      bar.value = r.done;
      cell.appendChild(bar);
      tr.appendChild(cell);
      [[`${r.done} / ${r.total}`, "n"], [r.rendered, "n"], [r.skipped, "n"], [r.failed, "n"],
        [r.images_per_s, "n"], [r.finished ? "finished" : (r.eta_s === null ? "–" : age(r.eta_s)), "n"]]
        .forEach(([text, cls]) => tr.appendChild(el("td", text, cls)));
      return tr;
    }, "no bulk run");
}

function actionButton(label, cls, action, params, confirmText) {
  const b = el("button", label, cls);
  b.type = "button";
  b.addEventListener("click", () => act(action, params, confirmText));
  return b;
}

function renderDead(dead) {
  const box = document.getElementById("dead");
  box.replaceChildren();
  const armed = canAct && token();
  Object.entries(dead).forEach(([queue, found]) => {
    const section = el("section");
    section.dataset.queue = queue;
    const title = el("h3", `${queue}: ${found.count} dead letter(s)` +
      (found.count > found.letters.length ? `, the oldest ${found.letters.length} shown` : ""));
    section.appendChild(title);
    if (armed && found.count) {
      section.appendChild(actionButton(`Retry all of ${queue}`, "retry-all", "retry", { queue }));
      section.appendChild(actionButton(`Purge all of ${queue}`, "purge-all", "purge", { queue },
        `Purge all ${found.count} dead letter(s) of ${queue}?`));
    }
    if (found.count) {
      const columns = ["job", "function", "reason", "payload", "tries", "failed at"];
      if (armed) columns.push("actions");
      const t = table(el("table"), columns, found.letters, (l) => {
        const tr = row([[l.job_id, "code"], [l.function], [`${l.error_type}: ${l.message}`, "code reason"],
          [JSON.stringify(l.args), "code payload"], [l.tries, "n"], [new Date(l.failed_at * 1000).toLocaleString()]]);
        tr.dataset.jobId = l.job_id;
        if (armed) {
          const cell = el("td");
          cell.appendChild(actionButton("Retry", "retry", "retry", { job_id: l.job_id }));
          cell.appendChild(actionButton("Purge", "purge", "purge", { job_id: l.job_id },
            `Purge dead letter ${l.job_id}?`));
          tr.appendChild(cell);
        }
        return tr;
      }, "");
      section.appendChild(t);
    }
    box.appendChild(section);
  });
}

function renderMode() {
  const form = document.getElementById("token-form");
  form.hidden = !canAct;
  document.getElementById("token-forget").hidden = !token();
  document.getElementById("token").hidden = !!token();
  document.getElementById("token-use").hidden = !!token();
  show("mode", canAct ? (token() ? "actions on" : "read-only until you give the token")
    : "read-only (no WEB_TOKEN set)");
}

async function act(action, params, confirmText) {
  if (confirmText && !window.confirm(confirmText)) return;
  const query = new URLSearchParams(params).toString();
  try {
    const answer = await fetch(`api/dead/${action}?${query}`, {
      method: "POST",
      headers: { Authorization: `Bearer ${token()}` },
      credentials: "omit",
    });
    const body = await answer.json();
    if (!answer.ok) {
      show("error", body.error || `${action}: HTTP ${answer.status}`);
      return;
    }
    if (action === "retry") {
      const refused = Object.entries(body.refused);
      show("said", `queued again: ${Object.keys(body.queued).length}` +
        (refused.length ? `; refused: ${refused.map(([id, why]) => `${id} (${why})`).join("; ")}` : ""));
    } else {
      show("said", `purged: ${body.purged}`);
    }
    show("error", "");
  } catch (err) {
    show("error", `${action} failed: ${err}`);
  }
  await refresh();
}

async function refresh() {
  try {
    const answer = await fetch("api/state", { credentials: "omit" });
    const state = await answer.json();
    if (!answer.ok) throw new Error(state.error || `HTTP ${answer.status}`);
    canAct = state.actions;
    show("where", `namespace ${state.namespace} · Redis ${state.redis}`);
    show("updated", `updated ${new Date(state.now * 1000).toLocaleTimeString()}`);
    renderMode();
    renderQueues(state.queues);
    renderReplicas(state.replicas);
    renderRuns(state.runs);
    renderDead(state.dead);
    if (document.getElementById("error").textContent.startsWith("state:")) show("error", "");
  } catch (err) {
    show("error", `state: ${err.message || err}`);
  }
}

async function poll() {
  await refresh();
  setTimeout(poll, POLL_MS);
}

document.addEventListener("DOMContentLoaded", () => {
  document.getElementById("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const typed = document.getElementById("token").value.trim();
    if (typed) sessionStorage.setItem(TOKEN_KEY, typed);
    document.getElementById("token").value = "";
    refresh();
  });
  document.getElementById("token-forget").addEventListener("click", () => {
    sessionStorage.removeItem(TOKEN_KEY);
    refresh();
  });
  poll();
});
