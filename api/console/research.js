// The desk console's Research page (see console.js for Desk): the strategies side by side
// (stitched out-of-sample curves, metrics, correlation), each one's walk-forward winners per
// window with where every number comes from (Dagster asset, MLflow run, or why no link), and
// for the roles that may, a rebuild or a backtest launched and followed to its end.
"use strict";

(() => {
const { CONTEXT, api, el, fill, table, number, percent, when, may } = Desk;

const POLL_MS = 2000;
const ENDED = new Set(["SUCCESS", "FAILURE", "CANCELED"]);
const LAUNCHES = {
  research_rebuild: ["Rebuild research", "factors and screening, then every walk-forward " +
                     "window and the portfolio"],
  backtest: ["Run backtest", "every walk-forward window's search and frozen winner, then " +
             "the stitched out-of-sample backtest"],
};
// The comparison's metrics as the API names them: [heading, key, format].
const METRICS = [["Total return", "total_return", percent], ["CAGR", "cagr", percent],
                 ["Sharpe", "sharpe", number], ["Sortino", "sortino", number],
                 ["Max drawdown", "max_drawdown", percent],
                 ["Volatility", "annual_volatility", percent], ["Calmar", "calmar", number],
                 ["Win rate", "win_rate", percent]];

// ------------------------------------------------------------------ links

function external(url, text, title) {
  return el("a", { href: url, target: "_blank", rel: "noopener", title }, text);
}

// A figure linked to where it comes from (plain text when there is no link).
function linked(text, link, what) {
  return link.url ? external(link.url, text, `Open ${what}`) : text;
}

// Both sources of a row: the missing one is named (why: in the note under the table).
function sources(links, runId) {
  const part = (link, label, detail) => el("span", { class: "nowrap" }, link.url
    ? external(link.url, `${label} ↗`, link.url)
    : el("span", { class: "muted", title: `${link.missing}${detail}` }, `no ${label} link`));
  return el("span", {}, part(links.dagster_asset, "Dagster", ""), el("br"),
            part(links.mlflow_run, "MLflow", runId ? ` (run ${runId})` : ""));
}

// Why links are missing, once per reason, under the table they are missing from.
function missingNote(linksList, what) {
  const reasons = new Map();
  for (const links of linksList) {
    for (const [label, link] of [["Dagster", links.dagster_asset],
                                 ["MLflow", links.mlflow_run]]) {
      if (link.url) continue;
      const line = `No ${label} link: ${link.missing}`;
      reasons.set(line, (reasons.get(line) || 0) + 1);
    }
  }
  return [...reasons].map(([line, count]) =>
    el("p", { class: "muted small missing-link" },
       `${line} (${count} ${what}${count > 1 ? "s" : ""}).`));
}

// ------------------------------------------------------------------ strategies side by side

async function loadResearch() {
  const comparison = await api("/strategies/compare?max_points=1000");
  const found = await Promise.all(comparison.strategies.map(
    (name) => api(`/strategies/${encodeURIComponent(name)}/windows`)));
  const windows = Object.fromEntries(found.map((w) => [w.strategy, w]));
  drawGrowth(comparison);
  fill("metrics", ...metricsTable(comparison, windows));
  fill("correlation", correlationTable(comparison));
  fill("windows", ...(comparison.strategies.length
    ? comparison.strategies.flatMap((name) => windowTable(windows[name]))
    : [el("p", { class: "muted" }, "No strategy has stored results yet.")]));
}

function commonSessions(comparison) {
  const first = comparison.strategies[0];
  return first ? comparison.metrics[first].sessions : null;
}

function drawGrowth(comparison) {
  const chart = document.getElementById("growth-chart");
  const note = document.getElementById("growth-note");
  if (!comparison.dates.length) {
    chart.hidden = true;
    note.textContent = comparison.strategies.length
      ? `The strategies (${comparison.strategies.join(", ")}) share fewer than 2 ` +
        "out-of-sample sessions: there is nothing to draw side by side."
      : "No strategy has stored out-of-sample results yet: a backtest (below) stores them.";
    return;
  }
  note.textContent = `${comparison.strategies.length} strategies, each rebased to 1 on ` +
    `${comparison.start}, over the ${number(commonSessions(comparison), 0)} sessions all of ` +
    `them cover (${comparison.start} to ${comparison.end}). Hover for every strategy's ` +
    "value on a day; click a name in the legend to hide or show its curve.";
  chart.hidden = false;
  const traces = comparison.strategies.map((name) => ({
    x: comparison.dates, y: comparison.growth[name], name: plotText(name), mode: "lines",
    hovertemplate: "%{y:.3f}" }));
  Plotly.react(chart, traces, {
    margin: { l: 60, r: 20, t: 10, b: 40 }, height: 380, hovermode: "x unified",
    legend: { orientation: "h", y: 1.12 }, xaxis: { type: "date" },
    yaxis: { title: { text: "Growth of 1" }, tickformat: ".2f" },
    shapes: [{ type: "line", xref: "paper", x0: 0, x1: 1, y0: 1, y1: 1,
               line: { color: "#8a94a3", dash: "dash", width: 1 } }],
  }, { displaylogo: false, responsive: true });
}

// Plotly reads tags in trace names as markup: the API's text is shown as text.
function plotText(text) {
  return String(text).replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
}

function metricsTable(comparison, windows) {
  const rows = comparison.strategies.map((name) => ({
    name, metrics: comparison.metrics[name], links: windows[name].oos_backtest,
    asset: windows[name].asset_key }));
  const columns = [
    ["Strategy", (r) => r.name],
    ...METRICS.map(([label, key, format]) => [
      label, (r) => linked(format(r.metrics[key]), r.links.dagster_asset,
                           `${r.asset} in Dagster`), true, (r) => r.metrics[key]]),
    ["Sessions", (r) => number(r.metrics.sessions, 0), true, (r) => r.metrics.sessions],
    ["Dagster asset", (r) => r.asset],
    ["Sources", (r) => sources(r.links), false, (r) => r.links.mlflow_run.url || ""]];
  const span = comparison.start
    ? `Over the sessions every strategy covers (${comparison.start} to ${comparison.end}), ` +
      "so the figures compare like for like. "
    : "";
  const intro = el("p", { class: "muted" }, span + "Each figure links to the strategy's " +
    "stored oos_backtest asset in Dagster; MLflow opens its newest stitched-backtest run. " +
    "Click a heading to sort.");
  return [intro, table(columns, rows, "No strategy has stored results yet."),
          ...missingNote(rows.map((r) => r.links), "strategy")];
}

function correlationTable(comparison) {
  const names = comparison.strategies;
  if (!Object.keys(comparison.correlation).length) {
    return el("p", { class: "muted" }, names.length > 1
      ? "Too few common sessions for a correlation."
      : "A correlation needs two strategies with stored results.");
  }
  const row = (name) => ({ name, values: comparison.correlation[name] });
  const columns = [["Strategy", (r) => r.name],
                   ...names.map((other) => [other, (r) => number(r.values[other]), true,
                                            (r) => r.values[other]])];
  return el("div", {}, el("p", { class: "muted" }, "Of the daily returns over the common " +
                          "sessions: near 1, two strategies move together."),
            table(columns, names.map(row), ""));
}

// ------------------------------------------------------------------ walk-forward winners

function winner(w) {
  if (w.no_trade === null) return "unknown (wfo_results not stored)";
  if (w.no_trade) return `no trade, in cash: ${w.no_trade_reason || "no reason stored"}`;
  return w.factors.join(" + ");
}

function windowTable(found) {
  const run = (w) => `the MLflow run of window ${w.window}`;
  const columns = [
    ["Window", (w) => el("span", { class: "nowrap" }, linked(
      w.window, w.links.dagster_asset, `wfo_results ${w.window} in Dagster`)), false,
     (w) => w.window],
    ["Out of sample", (w) => el("span", { class: "nowrap" }, `${w.oos_start} to ${w.oos_end}`),
     false, (w) => w.oos_start],
    ["Sessions", (w) => number(w.sessions, 0), true, (w) => w.sessions],
    ["Winner (factors)", winner],
    ["Top N", (w) => w.top_n ?? "—", true, (w) => w.top_n],
    ["Rebalance", (w) => w.rebalance_every === null ? "—" : `every ${w.rebalance_every}`,
     true, (w) => w.rebalance_every],
    ["Weighting", (w) => w.weighting ?? "—"],
    ["OOS return", (w) => linked(percent(w.oos_metrics.total_return), w.links.mlflow_run,
                                 run(w)), true, (w) => w.oos_metrics.total_return],
    ["OOS Sharpe", (w) => linked(number(w.oos_metrics.sharpe), w.links.mlflow_run, run(w)),
     true, (w) => w.oos_metrics.sharpe],
    ["OOS max DD", (w) => linked(percent(w.oos_metrics.max_drawdown), w.links.mlflow_run,
                                 run(w)), true, (w) => w.oos_metrics.max_drawdown],
    ["Sources", (w) => sources(w.links, w.mlflow_run_id), false,
     (w) => w.links.mlflow_run.url || ""]];
  const about = found.winners_stored
    ? `${found.windows.length} windows, the newest (trading now) first until sorted. ` +
      "Each frozen winner traded its window's " +
      "out-of-sample sessions; its figures are that window's own and link to its MLflow " +
      "run, the window to its wfo_results partition in Dagster."
    : "wfo_results is not stored for this strategy: the windows come from the stitched " +
      "backtest's sessions, their winners unknown.";
  return [el("h3", { "data-strategy": found.strategy }, found.strategy),
          el("p", { class: "muted" }, about),
          table(columns, [...found.windows].reverse(), "No walk-forward window stored.", "",
                10),
          ...missingNote(found.windows.map((w) => w.links), "window")];
}

// ------------------------------------------------------------------ launch and follow

async function showLaunch() {
  // Once: the page loads again when the stream catches up, and a run followed here stays.
  if (document.getElementById("launch-status") || document.getElementById("launch-no-control")) {
    return;
  }
  if (!may("research.launch")) {
    fill("launch", el("p", { class: "muted", id: "launch-no-control" },
      `Your role (${CONTEXT.role}) reads research results but cannot launch a rebuild or ` +
      "a backtest (that needs the research.launch permission)."));
    return;
  }
  const reason = el("input", { id: "launch-reason", type: "text", maxlength: "500",
                               size: "48", placeholder: "e.g. new quarter of data loaded" });
  const buttons = Object.entries(LAUNCHES).map(([kind, [label, what]]) => {
    const button = el("button", { type: "button", "data-launch": kind, title: what }, label);
    button.addEventListener("click", () => launch(kind, reason.value.trim(), buttons));
    return button;
  });
  fill("launch",
    el("p", { class: "muted" }, "Rebuild research: " + LAUNCHES.research_rebuild[1] +
       ". Backtest: " + LAUNCHES.backtest[1] + ". Both run in Dagster for the " +
       "deployment's own strategy; the page follows the run until it ends."),
    el("label", { for: "launch-reason" }, "Reason (written to the audit log) "), reason,
    el("div", { class: "controls" }, ...buttons),
    el("div", { id: "launch-status", role: "status" }));
}

function launchStatus(...nodes) {
  document.getElementById("launch-status").replaceChildren(...nodes);
}

async function launch(kind, reason, buttons) {
  if (reason.length < 3) {
    launchStatus(el("p", { class: "error" }, "Give a reason of at least 3 characters: " +
                       "it goes to the audit log."));
    return;
  }
  const label = LAUNCHES[kind][0];
  buttons.forEach((b) => { b.disabled = true; });
  launchStatus(el("p", { class: "loading" }, `${label}: asking Dagster…`));
  try {
    const launched = await api("/runs", { method: "POST", body: { kind, reason } });
    await follow(launched, label);
  } catch (error) {
    launchStatus(el("p", { class: "error", id: "launch-refused" },
                    `${label} was not launched (the API answered ${error.status}): ` +
                    error.message));
  } finally {
    buttons.forEach((b) => { b.disabled = false; });
  }
}

// What the run is doing, and what the deployment runs after it.
function runState(run, label, next) {
  const failed = run.status === "FAILURE";
  const line = el("p", { class: `run-state${failed ? " error" : ""}`,
                         "data-status": run.status, "data-run": run.run_id },
    `${label}: run ${run.run_id} of ${run.job} is ${run.status}` +
    (run.ended_at ? ` (ended ${when(run.ended_at)})` : "") +
    (failed ? ". Its log in Dagster says why." : ""));
  const then = !next ? "" : !ENDED.has(run.status)
    ? `When it succeeds, the deployment's sensors run ${next}.`
    : run.status === "SUCCESS" ? `The deployment's sensors now run ${next}.`
    : `Nothing follows it: ${next} run only after a success.`;
  return [line, el("p", { class: "muted" }, then)];
}

// Poll the run's status until it ends; a failed poll is said and retried.
async function follow(launched, label) {
  const open = launched.dagster_url
    ? external(launched.dagster_url, "Open the run in Dagster ↗")
    : el("span", { class: "muted" }, "No Dagster UI is configured: no link to the run.");
  for (;;) {
    let run = null;
    try {
      run = await api(`/runs/${encodeURIComponent(launched.run_id)}`);
      const [line, then] = runState(run, label, launched.then.join(", "));
      launchStatus(line, el("p", {}, open), then);
    } catch (error) {
      launchStatus(el("p", { class: "error" }, `Reading the status of run ` +
                      `${launched.run_id} failed (${error.message}); trying again.`),
                   el("p", {}, open));
    }
    if (run && ENDED.has(run.status)) return loadResearch();
    await new Promise((resolve) => window.setTimeout(resolve, POLL_MS));
  }
}

Desk.page({ loads: [showLaunch, loadResearch] });
})();
