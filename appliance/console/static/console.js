// The console's behaviour: forms that call the admin API (/admin/api/v1) with the session's
// CSRF token, the machine search, the policy editor (check as you type, diff, save, history)
// and the access explorer. No framework, nothing loaded from elsewhere.
"use strict";
(function () {
  const meta = document.querySelector("meta[name=csrf]");
  const csrf = meta ? meta.content : "";
  const status = document.getElementById("status");

  function say(text, bad) {
    if (!status) return;
    status.textContent = text;
    status.className = bad ? "bad" : "good";
  }

  async function api(method, path, body) {
    const opts = { method: method, headers: { "X-CSRF-Token": csrf }, credentials: "same-origin" };
    if (body !== undefined) {
      opts.headers["Content-Type"] = "application/json";
      opts.body = JSON.stringify(body);
    }
    const r = await fetch("/admin/api/v1" + path, opts);
    let doc = null;
    try { doc = await r.json(); } catch (e) { doc = null; }
    if (!r.ok) {
      const err = new Error((doc && (doc.detail || doc.message)) || ("HTTP " + r.status));
      err.status = r.status;
      throw err;
    }
    return doc;
  }

  function get(obj, dotted) {
    return dotted.split(".").reduce(function (o, k) { return o == null ? o : o[k]; }, obj);
  }

  function put(obj, dotted, value) {
    const parts = dotted.split(".");
    let o = obj;
    for (let i = 0; i < parts.length - 1; i++) o = o[parts[i]] = o[parts[i]] || {};
    o[parts[parts.length - 1]] = value;
  }

  function valueOf(el) {
    const t = el.dataset.type || "str";
    if (t === "bool") return el.checked;
    if (t === "int") return parseInt(el.value, 10);
    if (t === "list") return el.value.split(",").map(function (s) { return s.trim(); }).filter(Boolean);
    if (t === "hours" || t === "days") {
      const unit = t === "hours" ? 3600e3 : 86400e3;
      return new Date(Date.now() + parseFloat(el.value) * unit).toISOString().replace(/\.\d+Z$/, "Z");
    }
    return el.value;
  }

  // A form.api: its path's {name} parts come from fields marked data-in=path, its other
  // fields make the JSON body (data-type says how to read each).
  document.querySelectorAll("form.api").forEach(function (form) {
    form.addEventListener("submit", async function (ev) {
      ev.preventDefault();
      if (form.dataset.confirm && !window.confirm(form.dataset.confirm)) return;
      let path = form.dataset.path;
      const body = {};
      for (const el of form.elements) {
        if (!el.name) continue;
        if (el.dataset.in === "path") {
          path = path.replace("{" + el.name + "}", encodeURIComponent(el.value.trim()));
        } else if (el.dataset.type === "item") {
          const list = get(body, el.name) || [];
          if (el.checked) list.push(el.value);
          put(body, el.name, list);
        } else {
          put(body, el.name, valueOf(el));
        }
      }
      try {
        const doc = await api(form.dataset.method, path, form.dataset.body ? body : undefined);
        if (form.dataset.show) {
          const out = document.getElementById("secret");
          out.hidden = false;
          out.textContent = "Copy it now; it is shown only this once:\n" + get(doc, form.dataset.show);
          say("Created.", false);
          return;
        }
        say("Done.", false);
        setTimeout(function () { location.reload(); }, 300);
      } catch (e) {
        say(e.message, true);
      }
    });
  });

  // --- live: pages that show the tailnet reload when the server says it changed, unless the
  // person is typing or choosing (then at the next notice after they stop).
  function busy() {
    const a = document.activeElement;
    return Boolean(a && (a.tagName === "INPUT" || a.tagName === "TEXTAREA" || a.tagName === "SELECT"));
  }
  if (document.body.dataset.live && window.EventSource) {
    const events = new EventSource("/admin/api/v1/events?types=changed");
    let pending = null;
    events.addEventListener("changed", function () {
      clearTimeout(pending);
      pending = setTimeout(function () { if (!busy()) location.reload(); }, 1000);
    });
    window.addEventListener("pagehide", function () { events.close(); });
  }

  // --- machines: search and filter ------------------------------------------------------
  const search = document.getElementById("search");
  const filter = document.getElementById("filter");
  function applyFilter() {
    const q = search.value.toLowerCase().trim();
    const f = filter.value;
    document.querySelectorAll("tr.machine").forEach(function (tr) {
      tr.hidden = Boolean((q && !tr.dataset.search.includes(q)) || (f && tr.dataset.state !== f));
    });
  }
  if (search && filter) {
    search.addEventListener("input", applyFilter);
    filter.addEventListener("change", applyFilter);
  }

  // --- policy: check as you type, review the diff, save; history --------------------------
  function lineDiff(a, b) {
    const x = a.split("\n"), y = b.split("\n");
    const n = x.length, m = y.length;
    if (n * m > 4e6) return null;
    const L = [];
    for (let i = 0; i <= n; i++) L.push(new Int32Array(m + 1));
    for (let i = n - 1; i >= 0; i--) {
      for (let j = m - 1; j >= 0; j--) {
        L[i][j] = x[i] === y[j] ? L[i + 1][j + 1] + 1 : Math.max(L[i + 1][j], L[i][j + 1]);
      }
    }
    const out = [];
    let i = 0, j = 0;
    while (i < n && j < m) {
      if (x[i] === y[j]) { out.push([" ", x[i]]); i++; j++; }
      else if (L[i + 1][j] >= L[i][j + 1]) { out.push(["-", x[i]]); i++; }
      else { out.push(["+", y[j]]); j++; }
    }
    while (i < n) out.push(["-", x[i++]]);
    while (j < m) out.push(["+", y[j++]]);
    return out;
  }

  const editor = document.getElementById("policy");
  if (editor) {
    const live = document.getElementById("live").textContent;
    const check = document.getElementById("policy-check");
    const review = document.getElementById("review");
    const save = document.getElementById("save");
    const diffOut = document.getElementById("diff");
    let timer = null, seq = 0, valid = false;

    // Point at the line the engine names, without moving the caret out of the person's way.
    function select(line) {
      const lines = editor.value.split("\n");
      const start = lines.slice(0, line - 1).join("\n").length + (line > 1 ? 1 : 0);
      editor.dataset.errorLine = String(line);
      if (document.activeElement !== editor) editor.setSelectionRange(start, start + (lines[line - 1] || "").length);
    }

    async function validate() {
      const mine = ++seq;
      try {
        const doc = await api("POST", "/policy/validate", { policy: editor.value });
        if (mine !== seq) return;
        valid = doc.valid;
        check.textContent = valid ? "The policy is valid." : doc.errors.map(function (e) {
          return (e.line ? "line " + e.line + ", column " + e.column + ": " : "") + e.message;
        }).join("\n");
        check.className = "check " + (valid ? "good" : "bad");
        if (!valid && doc.errors[0].line) select(doc.errors[0].line);
      } catch (e) {
        if (mine !== seq) return;
        valid = false;
        check.textContent = e.message;
        check.className = "check bad";
      }
    }

    editor.addEventListener("input", function () {
      valid = false;
      save.hidden = true;
      diffOut.hidden = true;
      check.textContent = "checking…";
      check.className = "check";
      clearTimeout(timer);
      timer = setTimeout(validate, 300);
    });

    review.addEventListener("click", async function () {
      await validate();
      if (!valid) return;
      const d = lineDiff(live, editor.value);
      diffOut.textContent = "";
      if (d === null) {
        diffOut.textContent = "(too large to compare line by line)";
      } else if (!d.some(function (l) { return l[0] !== " "; })) {
        diffOut.textContent = "(no changes)";
      } else {
        d.forEach(function (l) {
          if (l[0] === " ") return;
          const span = document.createElement("span");
          span.className = l[0] === "+" ? "add" : "del";
          span.textContent = l[0] + " " + l[1] + "\n";
          diffOut.appendChild(span);
        });
      }
      diffOut.hidden = false;
      save.hidden = false;
    });

    save.addEventListener("click", async function () {
      try {
        await api("PUT", "/policy", { policy: editor.value });
        say("Saved: clients get the new policy now.", false);
        setTimeout(function () { location.reload(); }, 300);
      } catch (e) {
        say(e.message, true);
      }
    });

    document.querySelectorAll("button.view").forEach(function (b) {
      b.addEventListener("click", async function () {
        const out = document.getElementById("version");
        try {
          const doc = await api("GET", "/policy/history/" + b.dataset.version);
          out.textContent = "Version " + doc.version.id + " (" + (doc.version.author || "unknown") + "):\n\n" + doc.policy;
          out.hidden = false;
        } catch (e) {
          say(e.message, true);
        }
      });
    });
  }

  // --- access explorer -------------------------------------------------------------------
  function query(form, path, show) {
    if (!form) return;
    form.addEventListener("submit", async function (ev) {
      ev.preventDefault();
      const q = new URLSearchParams(new FormData(form)).toString();
      try {
        show(await api("GET", path + "?" + q));
      } catch (e) {
        say(e.message, true);
      }
    });
  }
  query(document.getElementById("reach"), "/policy/reach", function (d) {
    const out = document.getElementById("reach-result");
    out.textContent = (d.allowed ? "Yes — " : "No — ") + d.reason;
    out.className = "result " + (d.allowed ? "good" : "bad");
  });
  query(document.getElementById("reachers"), "/policy/reachers", function (d) {
    const out = document.getElementById("reachers-result");
    out.textContent = "";
    const ul = document.createElement("ul");
    d.sources.forEach(function (s) {
      const li = document.createElement("li");
      li.textContent = s.name + " — " + s.reason;
      ul.appendChild(li);
    });
    if (!d.sources.length) ul.textContent = "No machine may reach it.";
    out.appendChild(ul);
  });
})();
