// Latch console: keeps the pending queue current from the server's event stream.
// Every value is inserted as text (textContent), never as markup.
"use strict";

(function () {
  const body = document.getElementById("pending");
  if (!body || !body.dataset.live) {
    return;
  }
  const status = document.getElementById("live-status");
  const empty = document.getElementById("empty");
  const columns = ["state", "host", "requester", "op", "target", "count", "rule", "received", "expires", "votes"];

  function setStatus(text) {
    if (status) {
      status.textContent = text;
      status.dataset.state = text;
    }
  }

  function cell(row, name, value) {
    const td = document.createElement("td");
    if (name === "target") {
      const code = document.createElement("code");
      code.textContent = value;
      td.appendChild(code);
    } else {
      td.textContent = value;
    }
    if (name === "state" || name === "count") {
      td.className = name;
    }
    row.appendChild(td);
  }

  function rowFor(r) {
    const tr = document.createElement("tr");
    tr.dataset.approvalId = r.id;
    tr.dataset.state = r.state;
    const open = document.createElement("td");
    const a = document.createElement("a");
    a.className = "open";
    a.href = "/requests/" + encodeURIComponent(r.id);
    a.textContent = "Review";
    open.appendChild(a);
    tr.appendChild(open);
    for (const c of columns) {
      cell(tr, c, String(r[c] ?? ""));
    }
    return tr;
  }

  function find(id) {
    for (const tr of body.rows) {
      if (tr.dataset.approvalId === id) {
        return tr;
      }
    }
    return null;
  }

  function refresh() {
    const n = body.rows.length;
    if (empty) {
      empty.hidden = n > 0;
    }
    document.title = (n > 0 ? "(" + n + ") " : "") + "Pending requests · Latch";
  }

  function upsert(r) {
    const old = find(r.id);
    if (r.state !== "pending") {
      if (old) {
        old.remove();
      }
      return;
    }
    const tr = rowFor(r);
    if (old) {
      old.replaceWith(tr);
    } else {
      body.insertBefore(tr, body.firstChild);
    }
  }

  const source = new EventSource(body.dataset.live);
  source.addEventListener("open", () => setStatus("live"));
  source.addEventListener("snapshot", (e) => {
    const rows = JSON.parse(e.data);
    body.replaceChildren(...rows.map(rowFor));
    setStatus("live");
    refresh();
  });
  source.addEventListener("request", (e) => {
    upsert(JSON.parse(e.data));
    refresh();
  });
  source.addEventListener("resync", () => setStatus("catching up"));
  source.addEventListener("error", () => {
    if (source.readyState === EventSource.CLOSED) {
      // The server refused the stream (signed out, or stopping): a reload shows why.
      setStatus("disconnected");
      setTimeout(() => window.location.reload(), 3000);
    } else {
      setStatus("reconnecting");
    }
  });
})();
