// The desk console's Risk & audit page (see console.js for Desk).
"use strict";

(() => {
const { CONTEXT, ACCOUNT, api, el, table, pager, when } = Desk;

const LAYER_ORDER = ["data", "signal", "account", "strategy", "instrument", "order", "conduct"];
const STATUS_COLOUR = { ok: "#2e7d32", breach: "#c62828" };
const AUDIT_PAGE = 25;
// As the report prints its figures ("1.90%"): one style on the page.
const share = (fraction) => fraction === null ? "—" : `${(100 * fraction).toFixed(1)}%`;

// ------------------------------------------------------------------ limit utilisation

async function loadLimits() {
  const limits = await api(`/accounts/${ACCOUNT}/limits`);
  const line = document.getElementById("limits-session");
  line.className = "";
  if (!limits.session) {
    line.textContent = limits.note;
    document.getElementById("limits-chart").hidden = true;
    document.getElementById("limits-table").replaceChildren();
    return;
  }
  const rows = limits.layers.flatMap((layer) => layer.limits.map((use) => ({ ...use,
                                                                           layer: layer.layer })));
  line.textContent = `Limit use of ${CONTEXT.account} on session ${limits.session} ` +
    `(compliance report of ${when(limits.generated_at)}): ` +
    (limits.breaches ? `${limits.breaches} limit${limits.breaches > 1 ? "s" : ""} in BREACH.`
                     : "no limit in breach.");
  line.classList.toggle("breach-line", limits.breaches > 0);
  drawUtilisation(rows, limits.layers);
  document.getElementById("limits-table").replaceChildren(limitTable(rows));
}

// One bar per limit with a utilisation (value / limit), grouped by layer top to bottom, green
// when ok and red in breach, against the 100 % line.
function drawUtilisation(rows, layers) {
  const chart = document.getElementById("limits-chart");
  const note = document.getElementById("limits-note");
  const measured = rows.filter((r) => r.utilisation !== null);
  const unlimited = layers.filter((l) => !l.limits.length).map((l) => l.layer);
  note.textContent = `${rows.length - measured.length} of ${rows.length} limits have no ` +
    "utilisation to draw (not limited, not measured, or checked order by order: see the " +
    "table)." + (unlimited.length ? ` The ${unlimited.join(" and ")} layers have no numeric ` +
    "limit: their checks reject by rule (see the audit log)." : "");
  if (!measured.length) {
    chart.hidden = true;
    return;
  }
  chart.hidden = false;
  const label = (r) => `${r.limit} · ${r.applies_to}`;
  const top = Math.max(110, ...measured.map((r) => 100 * r.utilisation + 10));
  Plotly.react(chart, [{
    type: "bar", orientation: "h", name: "Utilisation",
    y: [measured.map((r) => r.layer), measured.map(label)],
    x: measured.map((r) => 100 * r.utilisation),
    marker: { color: measured.map((r) => STATUS_COLOUR[r.status] || "#8a94a3") },
    text: measured.map((r) => `${share(r.utilisation)} ${r.status}`),
    textposition: "outside", cliponaxis: false,
    customdata: measured.map((r) => [r.shown_value, r.shown_bound]),
    hovertemplate: "%{y}<br>%{customdata[0]} of %{customdata[1]}: %{x:.1f}%<extra></extra>",
  }], {
    margin: { l: 260, r: 40, t: 30, b: 45 }, height: 90 + 30 * measured.length,
    showlegend: false, bargap: 0.35,
    xaxis: { title: { text: "Utilisation of the limit (%)" }, range: [0, top],
             ticksuffix: "%", zeroline: false },
    yaxis: { type: "multicategory", autorange: "reversed" },
    shapes: [{ type: "line", x0: 100, x1: 100, yref: "paper", y0: 0, y1: 1,
               line: { color: "#c62828", width: 2, dash: "dash" } }],
    annotations: [{ x: 100, y: 1, yref: "paper", yanchor: "bottom", text: "limit (100%)",
                    showarrow: false, font: { color: "#c62828", size: 11 } }],
  }, { displaylogo: false, responsive: true });
}

function limitTable(rows) {
  const status = (r) => el("span", { class: `status ${r.status === "breach" ? "rejected"
    : r.status === "ok" ? "approved" : "neutral"}` }, r.status);
  return table([
    ["Layer", (r) => r.layer, false, (r) => LAYER_ORDER.indexOf(r.layer)],
    ["Limit", (r) => r.limit], ["Applies to", (r) => r.applies_to],
    ["Value", (r) => r.shown_value, true, (r) => r.value],
    ["Limit value", (r) => r.shown_bound, true, (r) => r.bound],
    ["Utilisation", (r) => share(r.utilisation), true, (r) => r.utilisation],
    ["Status", status, false, (r) => r.status],
  ], rows, "The report lists no limit.", "", 50);
}

// ------------------------------------------------------------------ audit log

const audit = { offset: 0, filters: {} };

function auditQuery() {
  const query = new URLSearchParams({ limit: AUDIT_PAGE, offset: audit.offset });
  for (const [name, value] of Object.entries(audit.filters)) {
    if (value) query.set(name, value);
  }
  return query;
}

async function loadAudit() {
  const results = document.getElementById("audit-results");
  if (!results) return;                 // the role may not read the log: the page says so
  let page;
  try {
    page = await api(`/audit?${auditQuery()}`);
  } catch (failure) {
    results.replaceChildren(el("p", { class: "error", role: "alert" },
                                `The audit log refused the filters: ${failure.message}`));
    return;
  }
  const details = (e) => el("code", { class: "small" }, JSON.stringify(e.details));
  const rows = table([
    ["At", (e) => when(e.at), false, (e) => e.at], ["Actor", (e) => e.actor],
    ["Action", (e) => e.action], ["Entity", (e) => e.entity], ["Entity id", (e) => e.entity_id],
    ["Reason", (e) => e.reason || "—"], ["Details", details],
  ], page.items, "No audit entry matches these filters.", "", AUDIT_PAGE);
  const pages = Math.max(1, Math.ceil(page.total / AUDIT_PAGE));
  const parts = [rows];
  if (page.total) {
    parts.push(pager(Math.floor(page.offset / AUDIT_PAGE), pages, page.offset,
                     page.items.length, page.total, (n) => {
                       audit.offset = n * AUDIT_PAGE;
                       loadAudit();
                     }));
  }
  results.replaceChildren(...parts);
}

function wireAuditFilters() {
  const form = document.getElementById("audit-filters");
  if (!form) return;
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    audit.filters = Object.fromEntries(new FormData(form).entries());
    audit.offset = 0;
    loadAudit();
  });
  form.addEventListener("reset", () => {
    audit.filters = {};
    audit.offset = 0;
    window.setTimeout(loadAudit);       // after the form has cleared its fields
  });
}

document.addEventListener("DOMContentLoaded", wireAuditFilters);
// The log is read when asked (filters, pages), not on every event: a page being read must
// not shift under the reader.
Desk.page({ loads: [loadLimits, loadAudit] });
})();
