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
  // Validation errors name the field they are about (``loc``: where, then the field).
  if (Array.isArray(detail)) {
    return detail.map((d) => {
      const field = Array.isArray(d.loc) && d.loc.length > 1 ? d.loc[d.loc.length - 1] : "";
      return field ? `${field}: ${d.msg}` : d.msg;
    }).join("; ");
  }
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

// A table of rows held in the page: a click on a column's heading sorts by it (again: the
// other way), and more than PAGE_ROWS rows are shown a page at a time. A column is
// [label, cell(row), numeric?, key(row)?]: the key sorts (default: the cell's text).
const PAGE_ROWS = 25;

function table(columns, rows, empty, width = "", pageRows = PAGE_ROWS) {
  if (!rows.length) return el("p", { class: "muted" }, empty);
  const view = { rows: [...rows], page: 0, column: null, ascending: true };
  const wrap = el("div", { class: `table-wrap ${width}` });
  const sortKey = (column, row) => {
    const [, cell, , key] = column;
    if (key) return key(row);
    const shown = cell(row);
    return shown instanceof Node ? shown.textContent : String(shown ?? "");
  };
  const sortBy = (index) => {
    view.ascending = view.column === index ? !view.ascending : true;
    view.column = index;
    const column = columns[index];
    view.rows.sort((a, b) => compareKeys(sortKey(column, a), sortKey(column, b),
                                         view.ascending));
    view.page = 0;
    draw();
  };
  function draw() {
    const pages = Math.max(1, Math.ceil(view.rows.length / pageRows));
    const first = view.page * pageRows;
    const shown = view.rows.slice(first, first + pageRows);
    const head = el("tr", {}, ...columns.map(([label, , numeric], index) => {
      const sorted = view.column === index ? (view.ascending ? "ascending" : "descending")
        : "none";
      const button = el("button", { type: "button", class: "sort",
                                    title: `Sort by ${label}` }, label);
      button.addEventListener("click", () => sortBy(index));
      return el("th", { class: numeric ? "num" : "", "aria-sort": sorted }, button);
    }));
    const body = shown.map((row) => el("tr", {}, ...columns.map(([, cell, numeric]) =>
      el("td", numeric ? { class: "num" } : {}, cell(row)))));
    const parts = [el("table", {}, el("thead", {}, head), el("tbody", {}, ...body))];
    if (pages > 1) parts.push(pager(view.page, pages, first, shown.length, view.rows.length,
                                    (page) => { view.page = page; draw(); }));
    wrap.replaceChildren(...parts);
  }
  draw();
  return wrap;
}

const blank = (key) => key === null || key === undefined || key === "";

function compareKeys(a, b, ascending = true) {
  if (a === b) return 0;
  if (blank(a)) return 1;             // blanks last, whichever way the column is sorted
  if (blank(b)) return -1;
  const order = typeof a === "number" && typeof b === "number" ? a - b
    : String(a).localeCompare(String(b), "en", { numeric: true });
  return ascending ? order : -order;
}

// Previous / next for a table's pages; ``go(page)`` shows a page (0-based).
function pager(page, pages, first, count, total, go) {
  const previous = el("button", { type: "button", "data-page": "previous" }, "‹ Previous");
  const next = el("button", { type: "button", "data-page": "next" }, "Next ›");
  previous.disabled = page === 0;
  next.disabled = page >= pages - 1;
  previous.addEventListener("click", () => go(page - 1));
  next.addEventListener("click", () => go(page + 1));
  return el("div", { class: "pager" }, previous,
            el("span", { class: "muted" }, `${first + 1}–${first + count} of ${total}`), next);
}

const number = (value, digits = 2) => value === null || value === undefined ? "—" :
  Number(value).toLocaleString("en-US", { minimumFractionDigits: digits,
                                          maximumFractionDigits: digits });
const percent = (value, digits = 2) => value === null || value === undefined ? "—" :
  (100 * Number(value)).toFixed(digits) + " %";
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

// A confirmation dialog's call with its reason (at least 3 characters: it goes to the audit
// log); a refusal is shown in the dialog. True once the call succeeded.
async function callWithReason(reasonId, errorId, call) {
  const reason = document.getElementById(reasonId).value.trim();
  const error = document.getElementById(errorId);
  const refuse = (text) => {
    error.textContent = text;
    error.hidden = false;
    return false;
  };
  if (reason.length < 3) {
    return refuse("Give a reason of at least 3 characters: it goes to the audit log.");
  }
  try {
    await call(reason);
  } catch (failure) {
    return refuse(`Refused: ${failure.message}`);
  }
  return true;
}

async function confirmKillSwitch(event) {
  event.preventDefault();
  const dialog = document.getElementById("kill-dialog");
  const done = await callWithReason("kill-reason", "kill-error", (reason) =>
    api(`/accounts/${ACCOUNT}/kill-switch/${dialog.dataset.action}`,
        { method: "POST", body: { reason } }));
  if (!done) return;
  dialog.close();
  await loadKillSwitch();
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

// ------------------------------------------------------------------ pages

// Each page's script registers what it loads and what it reads again when an event of the
// account arrives: Desk.page({ loads: [...], live: { fill: [...], ... } }).
const PAGE = { loads: [], live: {} };

function registerPage({ loads = [], live = {} }) {
  PAGE.loads.push(...loads);
  for (const [type, reloads] of Object.entries(live)) {
    PAGE.live[type] = [...(PAGE.live[type] || []), ...reloads];
  }
}

function loadPage() {
  for (const load of [loadKillSwitch, ...PAGE.loads]) guarded("Loading the page", load)();
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
    const loads = event.type === "kill_switch" ? [loadKillSwitch] : PAGE.live[event.type] || [];
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

// What the pages' scripts use (they run after this one, before the document is loaded).
window.Desk = { CONTEXT, ACCOUNT, ApiError, api, el, fill, table, pager, number, percent,
                when, showError, guarded, callWithReason,
                may: (p) => CONTEXT.permissions.includes(p), page: registerPage };
document.addEventListener("DOMContentLoaded", start);
