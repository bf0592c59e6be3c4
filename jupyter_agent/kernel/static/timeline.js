// Checkpoint timeline of a jupyter-agent agent (anywidget ES module, no build step).
//
// The kernel sends each new checkpoint once, as one "append" custom message that
// also carries the summary fields it changed; the `entries` trait holds a window
// of the latest entries and is resent only when the shown run changes, an
// execution ends, or more entries are asked for. The
// entries live in a per-model store (keyed by the `uid` trait) that is filled
// from `initialize`, so a view rendered late, or a second view, misses nothing.

const STORES = (globalThis.__jupyterAgentTimelines ??= new Map());
const EXTRA = 50; // live entries kept beyond the window before the oldest are dropped
const LOG_LIMIT = 20000;

// Kind icons and labels, and status labels, come from the kernel (jupyter_agent.vocab)
// in the `header` trait, so the timeline says what the cell output and the badge say.
const kindOf = (model, kind) => ((model.get("header") || {}).kinds || {})[kind] || ["•", (kind || "").replace(/_/g, " ")];
const statusLabel = (model, st) => ((model.get("header") || {}).statuses || {})[st] || (st || "").replace(/_/g, " ");

function storeOf(model) {
  const uid = model.get("uid");
  let s = STORES.get(uid);
  if (!s) {
    s = { uid, run: "", first: 0, window: 100, entries: [], log: "", views: new Set(), listening: false, stale: false, heard: Date.now() / 1000 };
    STORES.set(uid, s);
    takeSnapshot(s, model.get("entries"));
    s.log = model.get("log") || "";
  }
  return s;
}

function takeSnapshot(s, snap) {
  snap = snap || {};
  s.run = snap.run || "";
  s.entries = (snap.items || []).slice();
  s.first = snap.first || 0;
  s.window = Math.max(100, s.entries.length);
}

// The kernel side of the model is gone (kernel restarted or shut down, comm closed):
// what the view shows is only the status as of the last update, and it must say so.
function markStale(s, stale) {
  if (s.stale === stale) return;
  s.stale = stale;
  s.views.forEach((v) => v.renderStale());
}

function heard(s) {
  s.heard = Date.now() / 1000;
  markStale(s, false);
}

// A checkpoint's message carries the summary fields that changed and any other trait
// that changed with it (the kernel does not send those again). Set here only: the
// kernel already has these values, and this module never saves traits back.
function applyState(model, msg) {
  const state = { ...(msg.state || {}) };
  if (msg.summary) state.summary = { ...(model.get("summary") || {}), ...msg.summary };
  if (Object.keys(state).length) model.set(state);
}

function listen(model, s) {
  if (s.listening) return;
  s.listening = true;
  model.on("comm:close", () => markStale(s, true));
  model.on("destroy", () => markStale(s, true));
  // The widget manager sets comm_live to false when the kernel restarts (a live comm is
  // only ever set up before this listener); anything the kernel sends later revives it.
  model.on("comm_live_update", () => markStale(s, true));
  model.on("change", () => heard(s));
  model.on("change:entries", () => {
    takeSnapshot(s, model.get("entries"));
    s.views.forEach((v) => v.renderList());
  });
  model.on("change:log", () => {
    s.log = model.get("log") || "";
    s.views.forEach((v) => v.renderLog());
  });
  model.on("msg:custom", (msg) => {
    heard(s);
    if (msg.type === "append" || msg.type === "update") applyState(model, msg);
    if (msg.type === "append") {
      if (msg.run !== s.run) return;
      const end = s.first + s.entries.length;
      let fresh = msg.entries;
      if (msg.start < end) fresh = fresh.slice(end - msg.start); // already have some
      else if (msg.start > end) {
        // Missed some (a view that started late): keep the newest, older load on demand.
        s.entries = [];
        s.first = msg.start;
      }
      if (!fresh.length) return;
      s.entries.push(...fresh);
      let dropped = 0;
      if (s.entries.length > s.window + EXTRA) {
        dropped = s.entries.length - s.window;
        s.entries.splice(0, dropped);
        s.first += dropped;
      }
      s.views.forEach((v) => v.appendRows(fresh, dropped));
    } else if (msg.type === "log") {
      s.log = (s.log + msg.text).slice(-LOG_LIMIT);
      s.views.forEach((v) => v.appendLog(msg.text));
    }
  });
}

// -- formatting -------------------------------------------------------------------

function h(tag, props, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(props || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") el.className = v;
    else if (k === "text") el.textContent = v;
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "dataset") Object.assign(el.dataset, v);
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

const pad = (n) => String(n).padStart(2, "0");
function fmtTime(t) {
  const d = new Date(t * 1000);
  return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}
function fmtMs(ms) {
  if (ms < 1000) return `${Math.round(ms)} ms`;
  if (ms < 60000) return `${(ms / 1000).toFixed(1)} s`;
  return `${Math.floor(ms / 60000)} min ${Math.round((ms % 60000) / 1000)} s`;
}
function fmtSize(b) {
  if (b < 1024) return `${b} B`;
  if (b < 1024 * 1024) return `${(b / 1024).toFixed(1)} kB`;
  return `${(b / 1024 / 1024).toFixed(1)} MB`;
}
// Counts as the Python side writes them (vocab.tokens): "1,658 tokens". An
// estimate is said once, in the header, not marked on each number.
function fmtCount(n) {
  return Number(n || 0).toLocaleString("en-US");
}
function fmtTokens(n) {
  return `${fmtCount(n)} ${n === 1 ? "token" : "tokens"}`;
}
const plural = (n, word) => `${fmtCount(n)} ${word}${n === 1 ? "" : "s"}`;
const statusClass = (s) => `ja-st-${(s || "none").replace(/_/g, "-")}`;
const key = (e) => `${e.run}:${e.step}`;

// -- one view -----------------------------------------------------------------------

class View {
  constructor(model, el, s) {
    this.model = model;
    this.s = s;
    this.selected = null; // {run, step} of the opened checkpoint
    this.opened = new Set(); // child runs whose branch is shown
    this.editing = false;
    el.classList.add("ja-timeline");
    this.root = el;
    this.headerEl = h("div", { class: "ja-header" });
    this.staleEl = h("div", { class: "ja-stale-note", hidden: true });
    this.planEl = h("details", { class: "ja-plan", hidden: true });
    this.runsEl = h("div", { class: "ja-runs" });
    this.noticeEl = h("div", { class: "ja-notice" });
    this.approvalEl = h("div", { class: "ja-approval" });
    this.listEl = h("div", { class: "ja-list", role: "list" });
    this.detailEl = h("div", { class: "ja-detail" });
    this.logPre = h("pre", { class: "ja-log-text" });
    this.logEl = h("details", { class: "ja-log" }, h("summary", { text: "Background output" }), this.logPre);
    el.replaceChildren(
      this.headerEl,
      this.staleEl,
      this.planEl,
      this.runsEl,
      this.noticeEl,
      this.approvalEl,
      h("div", { class: "ja-body" }, this.listEl, this.detailEl),
      this.logEl,
    );
    this.renderHeader();
    this.renderRuns();
    this.renderNotice();
    this.renderApproval();
    this.renderList();
    this.renderDetail();
    this.renderLog();
    // ipywidgets marks a view whose kernel went away (restart) with this class; anywidget
    // drops that listener of the view, so the model's comm_live_update is heard here too.
    this.observer = new MutationObserver(() => this.checkDisconnected());
    this.observer.observe(el, { attributes: true, attributeFilter: ["class"] });
    this.checkDisconnected();
  }

  checkDisconnected() {
    if (this.root.closest(".jupyter-widgets-disconnected")) markStale(this.s, true);
  }

  renderStale() {
    this.root.classList.toggle("ja-stale", this.s.stale);
    this.renderHeader();
    this.renderApproval();
    this.updateBusy();
  }

  send(msg) {
    this.model.send(msg);
  }

  get kernelBusy() {
    // A cell running in the foreground: the kernel reads clicks only after it ends.
    const sum = this.model.get("summary") || {};
    return sum.status === "running" && !sum.busy;
  }

  // header: agent, model, status, checkpoints and steps, tokens, size, plan, Pause
  renderHeader() {
    const head = this.model.get("header") || {};
    const sum = this.model.get("summary") || {};
    const stale = this.s.stale;
    const stats = [];
    if (sum.total) stats.push(`${plural(sum.total, "checkpoint")} · ${plural(sum.steps || 0, "step")}`);
    if (sum.tokens) {
      let tok = fmtTokens(sum.tokens);
      if (sum.prompt_tokens || sum.completion_tokens) {
        tok += ` (${fmtCount(sum.prompt_tokens || 0)} prompt / ${fmtCount(sum.completion_tokens || 0)} completion)`;
      }
      if (sum.cached_tokens) {
        const rate = sum.cache_hit_rate ? ` (${Math.round(sum.cache_hit_rate * 100)}%)` : "";
        tok += ` · ${fmtCount(sum.cached_tokens)} cached${rate}`;
      }
      if (sum.estimated) tok += " (offline model: estimated)";
      if (sum.saved_tokens) tok += ` · resumes saved ${fmtCount(sum.saved_tokens)}`;
      stats.push(tok);
    }
    if (sum.cost_usd != null) stats.push(`$${sum.cost_usd.toFixed(4)}`);
    if (sum.size) stats.push(fmtSize(sum.size));
    const plan = sum.plan;
    // Without its kernel the view cannot know the status now: never claim "running".
    let badge = sum.text || "";
    if (stale && sum.status === "running") badge = `was running at ${fmtTime(this.s.heard)}`;
    const parts = [
      h("span", { class: "ja-title" }, h("span", { class: "ja-logo", text: "◷" }), "Agent ", h("b", { text: head.agent || "" })),
      sum.model ? h("span", { class: "ja-model", title: "model", text: sum.model }) : null,
      h("span", { class: `ja-badge ${stale ? "ja-st-stale" : statusClass(sum.status)}`, text: badge }),
      plan && plan.total ? h("span", { class: "ja-plan-progress", title: "plan: done / total", text: `plan ${plan.text}` }) : null,
      h("span", { class: "ja-stats", text: stats.join(" · ") }),
      h("span", { class: "ja-spacer" }),
      sum.can_pause && !stale
        ? h("button", { class: "ja-btn ja-pause", onclick: () => this.send({ type: "pause" }), text: "Pause" })
        : null,
      stale
        ? null
        : h("button", {
            class: "ja-btn ja-ghost",
            title: "Reload from the store",
            onclick: () => this.send({ type: "refresh" }),
            text: "↻",
          }),
    ];
    this.headerEl.replaceChildren(...parts.filter(Boolean));
    this.staleEl.hidden = !stale;
    this.staleEl.textContent = stale
      ? `Kernel restarted or disconnected — status as of ${fmtTime(this.s.heard)}. ` +
        `Run %agent timeline ${head.agent || "NAME"} for the current status.`
      : "";
    this.renderPlan(plan);
  }

  // the latest plan the agent made (update_plan), as a checklist
  renderPlan(plan) {
    const items = (plan && plan.items) || [];
    this.planEl.hidden = !items.length;
    if (!items.length) return this.planEl.replaceChildren();
    const mark = { done: "☑", in_progress: "◐", pending: "☐" };
    this.planEl.replaceChildren(
      h("summary", { text: `Plan ${plan.text}` }),
      h(
        "ul",
        { class: "ja-plan-items" },
        ...items.map((i) =>
          h("li", { class: `ja-plan-${i.status.replace(/_/g, "-")}`, dataset: { status: i.status } }, `${mark[i.status] || "•"} ${i.title}`),
        ),
      ),
    );
  }

  // runs: first run, restarts, forks as an indented branch list
  renderRuns() {
    const runs = this.model.get("runs") || [];
    const current = this.model.get("run_id");
    if (runs.length < 2) {
      this.runsEl.replaceChildren();
      this.runsEl.hidden = true;
      return;
    }
    this.runsEl.hidden = false;
    this.runsEl.replaceChildren(
      h("span", { class: "ja-runs-label", text: "Runs" }),
      ...runs.map((r) =>
        h(
          "button",
          {
            class: `ja-run ${r.id === current ? "ja-selected" : ""}`,
            style: `margin-left: ${r.depth * 14}px`,
            title: `${r.label}: ${r.text}${r.latest ? " (latest: re-running the cell continues it)" : ""}`,
            dataset: { run: r.id },
            onclick: () => this.send({ type: "run", run: r.id }),
          },
          h("span", { class: `ja-dot ${statusClass(r.status)}` }),
          r.parent ? `${r.depth ? "└ " : ""}${r.label} ⋔ ${r.parent}@${r.parent_step}` : r.label,
          h("span", { class: "ja-run-text", text: ` ${r.text}` }),
          r.what_if ? h("span", { class: "ja-what-if", text: r.what_if }) : null,
          r.latest ? h("span", { class: "ja-latest", text: "latest" }) : null,
        ),
      ),
    );
  }

  renderNotice() {
    const n = this.model.get("notice") || {};
    this.noticeEl.hidden = !n.text;
    this.noticeEl.className = `ja-notice ja-notice-${n.level || "info"}`;
    this.noticeEl.textContent = n.text || "";
  }

  // the call waiting for approval: Approve, Edit, Reject with a note. It may be a
  // delegated child's call (p.agent), which the shown run (p.parent) waits for.
  renderApproval() {
    const p = this.model.get("pending") || {};
    const sum = this.model.get("summary") || {};
    if (!p.call_id || (p.parent || p.run) !== this.model.get("run_id")) {
      this.approvalEl.replaceChildren();
      this.approvalEl.hidden = true;
      this.editing = false;
      return;
    }
    this.approvalEl.hidden = false;
    const code = h("textarea", { class: "ja-code-edit", spellcheck: "false", rows: Math.min(14, p.code.split("\n").length + 1) });
    code.value = p.code;
    code.readOnly = !this.editing;
    const note = h("input", { class: "ja-note", type: "text", placeholder: "Note for the model (sent with Reject)" });
    const disabled = sum.busy || this.s.stale;
    const approve = h("button", {
      class: "ja-btn ja-primary",
      disabled,
      text: "Approve",
      onclick: () => {
        const edited = this.editing && code.value !== p.code;
        this.send({ type: "approve", call_id: p.call_id, code: edited ? code.value : null });
        this.editing = false;
      },
    });
    const edit = h("button", {
      class: "ja-btn",
      disabled,
      text: this.editing ? "Cancel edit" : "Edit",
      onclick: () => {
        this.editing = !this.editing;
        this.renderApproval();
      },
    });
    code.addEventListener("input", () => {
      approve.textContent = code.value !== p.code ? "Run edited code" : "Approve";
    });
    const reject = h("button", {
      class: "ja-btn ja-danger",
      disabled,
      text: "Reject",
      onclick: () => this.send({ type: "reject", call_id: p.call_id, note: note.value }),
    });
    this.approvalEl.replaceChildren(
      h(
        "div",
        { class: "ja-approval-head" },
        h("b", { text: "Waiting for approval" }),
        p.agent ? h("span", { class: "ja-approval-child", text: ` · child agent ${p.agent}` }) : null,
        ` · checkpoint ${p.step} · ${p.tool}`,
      ),
      code,
      h("div", { class: "ja-actions" }, approve, edit, reject, note),
    );
    if (this.editing) code.focus();
  }

  // the list of checkpoints
  renderList() {
    const s = this.s;
    const rows = [];
    if (s.first > 0) {
      rows.push(
        h("button", {
          class: "ja-more",
          text: `Show earlier (${s.first} more)`,
          onclick: () => this.send({ type: "more", size: s.entries.length + 200 }),
        }),
      );
    }
    let prev = null;
    for (const e of s.entries) {
      const div = this.divider(prev, e);
      if (div) rows.push(div);
      rows.push(...this.rows(e));
      prev = e;
    }
    if (!s.entries.length) rows.push(h("div", { class: "ja-empty", text: "No checkpoints yet." }));
    this.listEl.replaceChildren(...rows);
    this.listEl.scrollTop = this.listEl.scrollHeight;
  }

  appendRows(fresh, dropped) {
    if (dropped) return this.renderList();
    const stick = this.listEl.scrollHeight - this.listEl.scrollTop - this.listEl.clientHeight < 40;
    this.listEl.querySelector(".ja-empty")?.remove();
    const all = this.s.entries;
    let prev = all[all.length - fresh.length - 1] || null;
    for (const e of fresh) {
      const div = this.divider(prev, e);
      if (div) this.listEl.append(div);
      this.listEl.append(...this.rows(e));
      prev = e;
    }
    if (stick) this.listEl.scrollTop = this.listEl.scrollHeight;
  }

  divider(prev, e) {
    if (!prev || prev.run === e.run) return null;
    const runs = this.model.get("runs") || [];
    const r = runs.find((x) => x.id === e.run);
    return h("div", { class: "ja-divider", text: `⋔ ${r ? r.label : "fork"} branches off after checkpoint ${prev.step}` });
  }

  // a row, and under a delegate row whose branch is open, the child's checkpoints indented
  rows(e, depth = 0) {
    const out = [this.row(e, depth)];
    const c = e.child;
    if (c && c.items && this.opened.has(c.run)) {
      for (const ce of c.items) out.push(...this.rows(ce, depth + 1));
    }
    return out;
  }

  childLink(c, depth) {
    const open = this.opened.has(c.run);
    return h("button", {
      class: `ja-child-link ${statusClass(c.status)}`,
      title: c.items ? `${open ? "Hide" : "Show"} the checkpoints of child agent ${c.agent}` : `Child agent ${c.agent}`,
      dataset: { child: c.run },
      onclick: (ev) => {
        ev.stopPropagation();
        if (!c.items) return;
        if (open) this.opened.delete(c.run);
        else this.opened.add(c.run);
        this.renderList();
      },
      text: `${c.items ? (open ? "▾" : "▸") : "↳"} child agent ${c.agent} · ${c.text}`,
    });
  }

  row(e, depth = 0) {
    const [icon, label] = kindOf(this.model, e.kind);
    const inherited = !depth && e.run !== this.s.run;
    const meta = [fmtTime(e.time), fmtMs(e.ms)];
    if (e.tokens) meta.push(fmtTokens(e.tokens));
    meta.push(fmtSize(e.size));
    const sel = this.selected && this.selected.run === e.run && this.selected.step === e.step;
    return h(
      "div",
      {
        class: `ja-row ${statusClass(e.status)} ja-k-${e.kind}${inherited ? " ja-inherited" : ""}${sel ? " ja-selected" : ""}${depth ? " ja-child-row" : ""}`,
        role: "listitem",
        tabindex: "0",
        style: depth ? `margin-left: ${depth * 18}px` : null,
        title: inherited ? "From the run this one was forked from" : null,
        dataset: { key: key(e), kind: e.kind, step: String(e.step) },
        onclick: () => this.open(e),
        onkeydown: (ev) => (ev.key === "Enter" ? this.open(e) : null),
      },
      h("span", { class: "ja-step", text: e.step }),
      h("span", { class: "ja-kind" }, h("span", { class: "ja-icon", text: icon }), label),
      // the text shortens with an ellipsis; the child link after it stays whole and clickable
      h(
        "span",
        { class: "ja-summary", title: e.text || e.summary },
        h("span", { class: "ja-summary-text", text: e.text || e.summary }),
        e.child ? this.childLink(e.child, depth) : null,
      ),
      h("span", { class: "ja-meta", text: meta.join(" · ") }),
    );
  }

  open(e) {
    this.selected = { run: e.run, step: e.step };
    this.listEl.querySelectorAll(".ja-row.ja-selected").forEach((r) => r.classList.remove("ja-selected"));
    this.listEl.querySelector(`.ja-row[data-key="${key(e)}"]`)?.classList.add("ja-selected");
    this.send({ type: "open", run: e.run, step: e.step });
    this.renderDetail();
  }

  // the opened checkpoint: messages, tool call and result, variables, Fork and Rewind
  renderDetail() {
    if (!this.selected) {
      this.detailEl.replaceChildren(h("div", { class: "ja-empty", text: "Click a checkpoint to see its messages, tool call and variables." }));
      return;
    }
    const { run, step } = this.selected;
    const d = this.model.get("detail") || {};
    const loaded = d.run === run && d.step === step;
    const e = loaded ? d : this.s.entries.find((x) => x.run === run && x.step === step) || { run, step };
    const info = loaded ? {} : e.info || {};
    const [icon, label] = kindOf(this.model, e.kind);
    const parts = [
      h(
        "div",
        { class: "ja-detail-head" },
        h("b", { text: `Checkpoint ${step}` }),
        ` · ${icon} ${label}`,
        e.status && e.status !== "running"
          ? h("span", { class: `ja-badge ${statusClass(e.status)}`, text: statusLabel(this.model, e.status) })
          : null,
      ),
      e.text ? h("div", { class: "ja-detail-summary", text: e.text }) : null,
      e.summary && e.summary !== e.text ? h("div", { class: "ja-detail-summary", text: e.summary }) : null,
    ];
    if (loaded) {
      for (const m of d.messages || []) parts.push(this.message(m));
      if (d.call && d.kind !== "model") {
        parts.push(this.section(`Tool call · ${d.call.name}`, h("pre", { class: "ja-code", text: d.call.code ?? d.call.arguments ?? "" })));
      }
      if (d.decision) {
        const dec = d.decision;
        parts.push(this.section("Decision", `${dec.action}${dec.note ? `: ${dec.note}` : ""}`, dec.code ? h("pre", { class: "ja-code", text: dec.code }) : null));
      }
    } else {
      if (info.code) parts.push(this.section("Code", h("pre", { class: "ja-code", text: info.code })));
      parts.push(
        h("div", {
          class: "ja-hint",
          text: this.kernelBusy ? "Messages load when the running cell has finished." : "Loading messages…",
        }),
      );
    }
    const vars = loaded ? d.vars || [] : Object.entries(info.vars || {}).map(([name, v]) => ({ name, ...v }));
    if (vars.length) {
      parts.push(
        this.section(
          "Variables changed",
          h(
            "table",
            { class: "ja-vars" },
            h("tr", {}, h("th", { text: "name" }), h("th", { text: "type" }), h("th", { text: "value" }), h("th", { text: "size" })),
            ...vars.map((v) =>
              h("tr", {}, h("td", { class: "ja-var", text: v.name }), h("td", { text: v.type }), h("td", { class: "ja-repr", text: v.repr }), h("td", { text: fmtSize(v.size || 0) })),
            ),
          ),
        ),
      );
    }
    const deleted = loaded ? d.deleted || [] : info.deleted || [];
    if (deleted.length) parts.push(this.section("Deleted", deleted.join(", ")));
    const unsaved = Object.entries((loaded ? d.unsaved : info.unsaved) || {});
    if (unsaved.length) {
      parts.push(this.section("Not saved", h("ul", { class: "ja-unsaved" }, ...unsaved.map(([n, why]) => h("li", {}, h("b", { text: n }), `: ${why}`)))));
    }
    if (loaded && d.namespace) {
      parts.push(h("div", { class: "ja-hint", text: `Agent variables at this point: ${d.namespace.join(", ") || "none"}` }));
    }
    const cmp = this.model.get("comparison") || {};
    if (cmp.run === run && cmp.step === step && cmp.text) {
      parts.push(this.section(`Compared with ${cmp.other}`, h("pre", { class: "ja-code ja-compare", text: cmp.text })));
    }
    // Fork and Rewind act on this agent's runs, not on a child's (open its own timeline).
    const own = (this.model.get("runs") || []).some((r) => r.id === run) || run === this.model.get("run_id");
    if (own) parts.push(this.detailActions(loaded ? d : null));
    // replaceChildren writes a null as the text "null": drop the parts this checkpoint has not
    this.detailEl.replaceChildren(...parts.filter(Boolean));
    this.updateBusy();
  }

  // Fork and Rewind act on the opened checkpoint; built once, so a typed
  // instruction survives the detail being re-rendered when its payload arrives.
  // A fork may be a "what if": the model's reply or the tool's output, prefilled
  // and edited here, or another model.
  detailActions(d) {
    if (!this.actionsEl) {
      this.instructionEl = h("textarea", { class: "ja-instruction", rows: 2, placeholder: "New instruction for the fork (optional)" });
      this.editLabel = h("div", { class: "ja-hint" });
      this.editEl = h("textarea", { class: "ja-edit", rows: 6 });
      this.editBox = h("div", { class: "ja-edit-box" }, this.editLabel, this.editEl);
      this.modelEl = h("input", { class: "ja-fork-model", type: "text", placeholder: "Another model for the fork (optional)" });
      this.forkBtn = h("button", {
        class: "ja-btn ja-primary",
        text: "Fork from here",
        title: "Start a new run from this checkpoint; this run stays as it is",
        onclick: () => {
          const msg = { type: "fork", ...this.selected, instruction: this.instructionEl.value, model: this.modelEl.value };
          if (this.editing && this.editEl.value !== this.editing.text) msg[this.editing.what] = this.editEl.value;
          this.send(msg);
          this.instructionEl.value = "";
          this.modelEl.value = "";
          if (this.editing) this.editEl.value = this.editing.text;
        },
      });
      this.rewindBtn = h("button", {
        class: "ja-btn",
        text: "Rewind namespace",
        title: "Put the agent's variables back as they were at this checkpoint",
        onclick: () => this.send({ type: "rewind", ...this.selected }),
      });
      // "compare with…": a checkpoint of this run (a number), or RUN@N / NAME@N of any agent
      this.compareEl = h("input", {
        class: "ja-compare-with",
        placeholder: "Compare with… (checkpoint N, RUN@N or NAME@N)",
        onkeydown: (ev) => {
          if (ev.key === "Enter") this.compareBtn.click();
        },
      });
      this.compareBtn = h("button", {
        class: "ja-btn",
        text: "Compare",
        title: "Show the messages, variables and files that differ from this checkpoint to another",
        onclick: () => {
          const other = this.compareEl.value.trim();
          if (other) this.send({ type: "compare", ...this.selected, other });
        },
      });
      this.actionsEl = h(
        "div",
        { class: "ja-detail-actions" },
        this.editBox,
        this.instructionEl,
        this.modelEl,
        h("div", { class: "ja-actions" }, this.forkBtn, this.rewindBtn),
        h("div", { class: "ja-actions" }, this.compareEl, this.compareBtn),
      );
    }
    this.prefill(d);
    return this.actionsEl;
  }

  // The edit box holds the opened checkpoint's reply or output, once per checkpoint,
  // so what is typed survives re-renders; a fork sends it only if it was changed.
  prefill(d) {
    const key = d ? `${d.run}@${d.step}` : "";
    if (key === this.editKey) return;
    this.editKey = key;
    const ed = (d && d.editable) || null;
    this.editing = ed ? { what: "reply" in ed ? "reply" : "output", text: ed.reply ?? ed.output } : null;
    this.editBox.hidden = !this.editing;
    if (!this.editing) return;
    this.editLabel.textContent =
      this.editing.what === "reply"
        ? "The model's reply: edit it to fork with this reply instead (text, or JSON with tool_calls)"
        : "The tool's output: edit it to fork with the model reading this instead";
    this.editEl.value = this.editing.text;
  }

  updateBusy() {
    const busy = Boolean((this.model.get("summary") || {}).busy) || this.s.stale;
    if (this.forkBtn) this.forkBtn.disabled = busy;
    if (this.rewindBtn) this.rewindBtn.disabled = busy;
  }

  section(title, ...content) {
    return h("div", { class: "ja-section" }, h("div", { class: "ja-section-title", text: title }), ...content);
  }

  message(m) {
    const body = [];
    if (m.content) body.push(h("pre", { class: "ja-msg-text", text: m.content }));
    for (const c of m.tool_calls || []) {
      body.push(h("div", { class: "ja-call-name", text: `→ ${c.name}` }), h("pre", { class: "ja-code", text: c.code ?? c.arguments ?? "" }));
    }
    return h("div", { class: `ja-msg ja-role-${m.role}` }, h("div", { class: "ja-role", text: m.role === "tool" ? "tool result" : m.role }), ...body);
  }

  renderLog() {
    this.logEl.hidden = !this.s.log;
    this.logPre.textContent = this.s.log;
    this.logPre.scrollTop = this.logPre.scrollHeight;
  }

  appendLog(text) {
    if (this.logEl.hidden) {
      this.logEl.hidden = false;
      this.logEl.open = true;
    }
    this.logPre.append(text);
    if (this.logPre.textContent.length > LOG_LIMIT * 1.5) this.logPre.textContent = this.s.log;
    this.logPre.scrollTop = this.logPre.scrollHeight;
  }
}

export default {
  initialize({ model }) {
    const s = storeOf(model);
    listen(model, s);
    return () => STORES.delete(s.uid);
  },
  render({ model, el }) {
    const s = storeOf(model);
    listen(model, s); // in case this runtime did not call initialize
    const view = new View(model, el, s);
    s.views.add(view);
    model.on("change:summary", () => {
      view.renderHeader();
      view.renderApproval();
      view.updateBusy();
    });
    model.on("change:header", () => view.renderHeader());
    model.on("change:runs", () => view.renderRuns());
    model.on("change:run_id", () => {
      view.renderRuns();
      view.renderApproval();
    });
    model.on("change:pending", () => view.renderApproval());
    model.on("change:notice", () => view.renderNotice());
    model.on("change:detail", () => view.renderDetail());
    model.on("change:comparison", () => view.renderDetail());
    return () => {
      view.observer.disconnect();
      s.views.delete(view);
    };
  },
};
