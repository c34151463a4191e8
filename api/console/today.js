// The desk console's Today page (see console.js for Desk).
"use strict";

(() => {
const { CONTEXT, ACCOUNT, api, el, fill, table, number, percent, when } = Desk;

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

Desk.page({ loads: [loadToday], live: { signal: [loadToday] } });
})();
