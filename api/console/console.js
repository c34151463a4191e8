// The desk console's script: reads the desk API with the browser session's cookie (the
// X-Desk-Console header marks the call as this site's own) and follows the event stream.
// Text from the API is only ever set as text (never as HTML).
"use strict";

const CONTEXT = JSON.parse(document.getElementById("console-context").textContent);
const ACCOUNT = encodeURIComponent(CONTEXT.account);
const RECONNECT_MS = 2000;
// Set once the browser leaves the page (a link, signing out): a call refused meanwhile must
// not reload the page over the navigation the user asked for.
let leaving = false;
window.addEventListener("beforeunload", () => { leaving = true; });

function renewSession() {
  // The page load renews the access cookie from the session, or sends to the sign-in page.
  if (!leaving) window.location.reload();
}

class ApiError extends Error {
  constructor(status, detail) {
    super(detail);
    this.status = status;
  }
}

async function api(path, options = {}) {
  const headers = { "X-Desk-Console": "1", Accept: "application/json" };
  if (options.body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch("/api/v1" + path, {
    method: options.method || "GET", headers, credentials: "same-origin",
    body: options.body === undefined ? undefined : JSON.stringify(options.body),
  });
  if (response.status === 401) {
    renewSession();
    throw new ApiError(401, "the session expired: reloading");
  }
  const body = await response.json().catch(() => null);
  if (!response.ok) throw new ApiError(response.status, describe(body, response.status));
  return body;
}

function describe(body, status) {
  const detail = body && body.detail;
  if (typeof detail === "string") return detail;
  if (Array.isArray(detail)) return detail.map((d) => d.msg).join("; ");
  return `the API answered ${status}`;
}

function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, value);
  for (const child of children) {
    node.append(child instanceof Node ? child : String(child ?? ""));
  }
  return node;
}

function fill(sectionId, ...nodes) {
  const section = document.getElementById(sectionId);
  const heading = section.querySelector("h2");
  section.replaceChildren(...(heading ? [heading] : []), ...nodes);
}

function table(columns, rows, empty, width = "") {
  if (!rows.length) return el("p", { class: "muted" }, empty);
  const head = el("tr", {}, ...columns.map(([label, , numeric]) =>
    el("th", numeric ? { class: "num" } : {}, label)));
  const body = rows.map((row) => el("tr", {}, ...columns.map(([, cell, numeric]) =>
    el("td", numeric ? { class: "num" } : {}, cell(row)))));
  // Wide tables scroll inside their card instead of spilling out of it.
  return el("div", { class: `table-wrap ${width}` },
            el("table", {}, el("thead", {}, head), el("tbody", {}, ...body)));
}

const number = (value, digits = 2) => value === null || value === undefined ? "—" :
  Number(value).toLocaleString("en-US", { minimumFractionDigits: digits,
                                          maximumFractionDigits: digits });
const percent = (value) => value === null || value === undefined ? "—" :
  (100 * Number(value)).toFixed(2) + " %";
const when = (iso) => iso ? new Date(iso).toISOString().replace("T", " ").slice(0, 16) +
  " UTC" : "—";

function showError(what, error) {
  const banner = document.getElementById("error-banner");
  banner.textContent = `${what}: ${error.message}`;
  banner.hidden = false;
}

function guarded(what, load) {
  return () => load().catch((error) => showError(what, error));
}

// ------------------------------------------------------------------ kill switch

async function loadKillSwitch() {
  const state = await api(`/accounts/${ACCOUNT}/kill-switch`);
  const banner = document.getElementById("kill-banner");
  banner.hidden = !state.engaged;
  banner.textContent = state.engaged
    ? `KILL SWITCH ENGAGED on ${CONTEXT.account}: no order is submitted. Reason: ` +
      `${state.reason || "none given"} (by ${state.actor || "unknown"}, ${when(state.at)})`
    : "";
  document.body.classList.toggle("killed", state.engaged);
  const line = document.getElementById("kill-switch-state");
  if (!line) return;
  line.className = state.engaged ? "state engaged" : "state released";
  line.textContent = state.engaged
    ? `Engaged: orders of ${CONTEXT.account} are stopped.`
    : `Released: orders of ${CONTEXT.account} flow.`;
  if (state.at) {
    line.append(el("br"), el("span", { class: "muted" },
      `Last change ${when(state.at)} by ${state.actor || "unknown"}: ${state.reason || ""}`));
  }
  for (const button of document.querySelectorAll("[data-kill-switch]")) {
    button.hidden = (button.dataset.killSwitch === "engage") === state.engaged;
  }
}

const KILL_EFFECT = {
  engage: "Every order submission of the account stops; executions in flight cancel what " +
    "is open.",
  release: "Order submissions of the account resume with the next execution.",
};

function openKillDialog(action) {
  const dialog = document.getElementById("kill-dialog");
  dialog.dataset.action = action;
  document.getElementById("kill-dialog-title").textContent =
    `${action === "engage" ? "Engage" : "Release"} the kill switch of ${CONTEXT.account}?`;
  document.getElementById("kill-dialog-effect").textContent = KILL_EFFECT[action];
  document.getElementById("kill-confirm").textContent =
    action === "engage" ? "Engage kill switch" : "Release kill switch";
  document.getElementById("kill-reason").value = "";
  document.getElementById("kill-error").hidden = true;
  dialog.showModal();
}

async function confirmKillSwitch(event) {
  event.preventDefault();
  const dialog = document.getElementById("kill-dialog");
  const reason = document.getElementById("kill-reason").value.trim();
  const error = document.getElementById("kill-error");
  if (reason.length < 3) {
    error.textContent = "Give a reason of at least 3 characters: it goes to the audit log.";
    error.hidden = false;
    return;
  }
  try {
    await api(`/accounts/${ACCOUNT}/kill-switch/${dialog.dataset.action}`,
              { method: "POST", body: { reason } });
    dialog.close();
    await loadKillSwitch();
  } catch (failure) {
    error.textContent = `Refused: ${failure.message}`;
    error.hidden = false;
  }
}

function wireKillSwitch() {
  for (const button of document.querySelectorAll("[data-kill-switch]")) {
    button.addEventListener("click", () => openKillDialog(button.dataset.killSwitch));
  }
  const form = document.getElementById("kill-form");
  if (!form) return;
  form.addEventListener("submit", confirmKillSwitch);
  document.getElementById("kill-cancel").addEventListener(
    "click", () => document.getElementById("kill-dialog").close());
}

// ------------------------------------------------------------------ today

function reasonRows(reasons) {
  return table([["Layer", (r) => r.layer ?? "—"], ["Rule", (r) => r.rule ?? "—"],
                ["Subject", (r) => r.subject ?? "—"], ["Why", (r) => r.message ?? JSON.stringify(r)]],
               reasons, "No rule objected: every check of the gate passed.");
}

async function loadToday() {
  const page = await api(`/signals?account_id=${ACCOUNT}&limit=1`);
  const signal = page.items[0];
  if (!signal) {
    const none = `No signal has been decided for ${CONTEXT.account} yet.`;
    fill("decision", el("p", { class: "muted" }, none));
    fill("freshness", el("p", { class: "muted" }, "No data session has reached the gate."));
    fill("quality", el("p", { class: "muted" }, "No session to check yet."));
    fill("target", el("p", { class: "muted" }, "No target portfolio yet."));
    return;
  }
  showDecision(signal);
  showFreshness(signal);
  await Promise.all([loadSessionDecisions(signal), loadQuality(signal.as_of),
                     loadTarget(signal)]);
}

function showDecision(signal) {
  const weights = Object.entries(signal.weights).sort((a, b) => b[1] - a[1]);
  fill("decision",
    el("p", {}, el("span", { class: `status ${signal.status}` }, signal.status.toUpperCase()),
       ` ${signal.strategy}, session ${signal.as_of}, decided ${when(signal.decided_at)}`),
    el("h3", {}, "Reasons"), reasonRows(signal.reasons),
    el("h3", {}, "Weights proposed to the gate"),
    table([["Fund", ([symbol]) => symbol], ["Weight", ([, w]) => percent(w), true]], weights,
          "All cash: no fund proposed.", "narrow"),
    el("p", { class: "muted small" }, `Signal ${signal.signal_id}`));
}

async function loadSessionDecisions(latest) {
  // A session can hold several signals (re-run weights, a superseded one): the desk sees all.
  const session = `/signals?account_id=${ACCOUNT}&since=${latest.as_of}&until=${latest.as_of}`;
  const page = await api(`${session}&limit=50`);
  const others = page.items.filter((s) => s.signal_id !== latest.signal_id);
  if (!others.length) return;
  document.getElementById("decision").append(
    el("h3", {}, `Earlier decisions of session ${latest.as_of}`),
    table([["Status", (s) => el("span", { class: `status ${s.status}` }, s.status)],
           ["Strategy", (s) => s.strategy], ["Decided", (s) => when(s.decided_at)],
           ["Reasons", (s) => s.reasons.map((r) => r.message ?? r.rule).join("; ") || "none"],
           ["Signal", (s) => s.signal_id]], others, ""));
}

function showFreshness(signal) {
  const days = Math.floor((Date.now() - Date.parse(signal.as_of + "T00:00:00Z")) / 86400000);
  const stale = days > 3;
  fill("freshness",
    el("p", { class: stale ? "state engaged" : "state released" },
       `Latest session ${signal.as_of}: ${days === 0 ? "today" : `${days} day(s) ago`}` +
       (stale ? " — stale: no newer data has reached the gate." : "")),
    el("p", { class: "muted" }, `Data version ${signal.data_version || "not recorded"}; ` +
       `Dagster run ${signal.dagster_run_id || "not recorded"}.`));
}

async function loadQuality(session) {
  let quality;
  try {
    quality = await api(`/quality/sessions/${session}`);
  } catch (error) {
    // 404: nothing checked for the session; 503: no Dagster instance configured.
    if (error.status === 404) {
      fill("quality", el("p", { class: "state engaged" },
        `No quality check has run on the data of session ${session}.`),
        el("p", { class: "muted" }, "Its market data was not materialised with checks " +
           "on this deployment's Dagster instance."));
      return;
    }
    if (error.status !== 503) throw error;
    fill("quality", el("p", { class: "muted" }, `Quality checks cannot be read: ${error.message}`));
    return;
  }
  fill("quality",
    el("p", { class: quality.passed ? "state released" : "state engaged" },
       quality.passed ? "Every blocking check passed." : "A blocking check failed."),
    table([["Asset", (c) => c.asset], ["Check", (c) => c.check],
           ["Result", (c) => (c.passed ? "passed" : "FAILED")],
           ["Severity", (c) => c.severity + (c.blocking ? " (blocking)" : "")],
           ["Evaluated", (c) => when(c.evaluated_at)]], quality.checks, "No checks."));
}

async function loadTarget(signal) {
  let strategy;
  try {
    strategy = await api(`/strategies/${encodeURIComponent(signal.strategy)}`);
  } catch (error) {
    if (error.status !== 404) throw error;
    fill("target", el("p", { class: "muted" }, `Strategy ${signal.strategy}: ${error.message}.`));
    return;
  }
  const target = strategy.target_portfolio;
  if (!target) {
    fill("target", el("p", { class: "muted" },
      `No target portfolio of ${signal.strategy} is stored on this deployment.`));
    return;
  }
  fill("target",
    el("p", {}, `${signal.strategy} as of ${target.as_of}, walk-forward window ${target.window}`),
    table([["Fund", (w) => w.symbol], ["Weight", (w) => percent(w.weight), true],
           ["Rank", (w) => (w.rank === null ? "—" : String(w.rank)), true],
           ["Why in or out", (w) => w.reason]],
          target.weights, "No fund in the target."));
}

// ------------------------------------------------------------------ book

async function loadCash() {
  const cash = await api(`/accounts/${ACCOUNT}/cash`);
  fill("cash", el("p", { class: "big" }, number(cash.balance)),
       el("p", { class: "muted" }, `Opened with ${number(cash.initial_cash)}`));
}

async function loadPnl() {
  const pnl = await api(`/accounts/${ACCOUNT}/pnl`);
  const last = pnl.sessions[pnl.sessions.length - 1];
  const parity = pnl.within_tolerance === null ? "no backtest figure to compare yet"
    : pnl.within_tolerance ? `within tolerance (worst ${percent(pnl.max_abs_difference)})`
    : `OUT of tolerance (worst ${percent(pnl.max_abs_difference)}, ` +
      `tolerance ${percent(pnl.parity_tolerance)})`;
  fill("pnl",
    last ? el("p", { class: `big ${last.pnl < 0 ? "loss" : "gain"}` },
              (last.pnl > 0 ? "+" : "") + number(last.pnl)) : "",
    last ? el("p", { class: "muted" }, `Since the account opened with ` +
              `${number(pnl.initial_cash)}: equity ${number(last.equity)} at the end of ` +
              `session ${last.date} (valued once per session)`)
         : el("p", { class: "muted" }, "No session valued yet (positions_report writes one " +
                                      "per session)."),
    el("p", {}, `Parity with the backtest: ${parity}`),
    table([["Session", (s) => s.date], ["Equity", (s) => number(s.equity), true],
           ["P&L", (s) => number(s.pnl), true],
           ["Backtest equity", (s) => number(s.backtest_equity), true],
           ["Difference", (s) => percent(s.difference), true]],
          pnl.sessions.slice(-10).reverse(), "No valuations yet."));
}

async function loadPositions() {
  const page = await api(`/accounts/${ACCOUNT}/positions?limit=500`);
  fill("positions", table([["Fund", (p) => p.symbol], ["Quantity", (p) => number(p.quantity, 0), true],
                           ["Cost basis", (p) => number(p.cost), true]], page.items, "No open position."));
}

async function loadOrders() {
  const page = await api(`/orders?account_id=${ACCOUNT}&limit=50`);
  fill("orders", table([["Session", (o) => o.session], ["Fund", (o) => o.symbol],
                        ["Side", (o) => o.side], ["Quantity", (o) => number(o.quantity, 0), true],
                        ["Filled", (o) => number(o.filled_quantity, 0), true],
                        ["Avg price", (o) => number(o.average_price, 3), true],
                        ["Status", (o) => o.status], ["Order", (o) => o.order_id]],
                       page.items, "No orders."),
       el("p", { class: "muted small" }, `${page.items.length} of ${page.total} shown`));
}

async function loadFills() {
  const page = await api(`/accounts/${ACCOUNT}/fills?limit=50`);
  fill("fills", table([["Filled at", (f) => when(f.filled_at)], ["Fund", (f) => f.symbol],
                       ["Side", (f) => f.side], ["Quantity", (f) => number(f.quantity, 0), true],
                       ["Price", (f) => number(f.price, 3), true],
                       ["Commission", (f) => number(f.commission), true],
                       ["Fill", (f) => f.fill_id]], page.items, "No fills."),
       el("p", { class: "muted small" }, `${page.items.length} of ${page.total} shown`));
}

// What to read again when an event of the account arrives, per page.
const LIVE_LOADS = {
  book: { fill: [loadFills, loadPositions, loadCash, loadOrders], order: [loadOrders],
          kill_switch: [loadKillSwitch] },
  today: { signal: [loadToday], kill_switch: [loadKillSwitch] },
};
const PAGE_LOADS = { book: [loadCash, loadPnl, loadPositions, loadOrders, loadFills],
                     today: [loadKillSwitch, loadToday] };

function loadPage() {
  for (const load of PAGE_LOADS[document.body.dataset.page]) guarded("Loading the page", load)();
}

function follow() {
  const status = document.getElementById("live-status");
  const scheme = window.location.protocol === "https:" ? "wss" : "ws";
  const socket = new WebSocket(`${scheme}://${window.location.host}/api/v1/events`);
  socket.addEventListener("message", (message) => {
    const event = JSON.parse(message.data);
    if (event.type === "notice") {
      status.textContent = event.payload.notice === "subscribed" ? "live" : "live (catching up)";
      status.className = "live on";
      if (event.payload.notice !== "subscribed") loadPage();
      return;
    }
    if (event.account !== CONTEXT.account) return;
    const loads = LIVE_LOADS[document.body.dataset.page][event.type] || [];
    for (const load of loads) guarded("Refreshing the page", load)();
  });
  socket.addEventListener("close", (closed) => {
    if (leaving) return;
    status.textContent = "disconnected: reconnecting…";
    status.className = "live off";
    // 4401: the access token expired or was revoked.
    if (closed.code === 4401) renewSession();
    else window.setTimeout(follow, RECONNECT_MS);
  });
}

// ------------------------------------------------------------------ start

function start() {
  const select = document.querySelector("[data-submit-on-change]");
  select.addEventListener("change", () => select.form.submit());
  wireKillSwitch();
  loadPage();
  follow();
}

start();
