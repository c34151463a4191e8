// The desk console's Book page (see console.js for Desk).
"use strict";

(() => {
const { CONTEXT, ACCOUNT, api, el, fill, table, number, percent, when } = Desk;

// Orders and fills: the newest RECENT are read, then sorted and paged in the page.
const RECENT = 500;

function recentNote(page, what) {
  const text = page.total > page.items.length
    ? `The newest ${page.items.length} of ${page.total} ${what} (newest first until sorted).`
    : `${page.total} ${what}, newest first until sorted.`;
  return el("p", { class: "muted small" }, text);
}

async function loadCash() {
  const cash = await api(`/accounts/${ACCOUNT}/cash`);
  fill("cash", el("p", { class: "big" }, number(cash.balance)),
       el("p", { class: "muted" }, `Opened with ${number(cash.initial_cash)}`));
}

async function loadPnl() {
  const pnl = await api(`/accounts/${ACCOUNT}/pnl`);
  const last = pnl.sessions[pnl.sessions.length - 1];
  const gap = (value) => percent(value, 3);
  const parity = pnl.within_tolerance === null ? "no backtest figure to compare yet"
    : `${pnl.within_tolerance ? "within" : "OUT of"} tolerance (worst ` +
      `${gap(pnl.max_abs_difference)}, tolerance ${percent(pnl.parity_tolerance)})`;
  fill("pnl",
    last ? el("p", { class: `big ${last.pnl < 0 ? "loss" : "gain"}` },
              (last.pnl > 0 ? "+" : "") + number(last.pnl)) : "",
    last ? el("p", { class: "muted" }, `Since the account opened with ` +
              `${number(pnl.initial_cash)}: equity ${number(last.equity)} at the end of ` +
              `session ${last.date} (valued once per session)`)
         : el("p", { class: "muted" }, "No session valued yet (positions_report writes one " +
                                      "per session)."),
    el("p", {}, `Parity with the backtest: ${parity}`),
    table([["Session", (s) => s.date], ["Equity", (s) => number(s.equity), true, (s) => s.equity],
           ["P&L", (s) => number(s.pnl), true, (s) => s.pnl],
           ["Backtest equity", (s) => number(s.backtest_equity), true,
            (s) => s.backtest_equity],
           ["Difference", (s) => gap(s.difference), true, (s) => s.difference]],
          [...pnl.sessions].reverse(), "No valuations yet.", "", 10));
  drawEquity(pnl);
}

// Sessions, not calendar days: the axis has no gaps for weekends and holidays, and Plotly
// thins the labels of a long history.
const SESSION_AXIS = { type: "category", nticks: 10, tickangle: 0 };

// The paper book's equity per session beside the backtest engine's equity for the same
// approved signals (positions_report's figure): the gap is the parity the desk watches.
function drawEquity(pnl) {
  const chart = document.getElementById("equity-chart");
  const note = document.getElementById("equity-note");
  if (!pnl.sessions.length) {
    chart.hidden = true;
    note.textContent = "No session valued yet: the chart starts with the first valuation.";
    return;
  }
  const dates = pnl.sessions.map((s) => s.date);
  const backtest = pnl.sessions.map((s) => s.backtest_equity);
  const traces = [{ x: dates, y: pnl.sessions.map((s) => s.equity), name: "Paper book",
                    mode: "lines+markers", line: { color: "#1f5fa8", width: 2 } }];
  if (backtest.some((v) => v !== null)) {
    traces.push({ x: dates, y: backtest, name: "Backtest, same signals", mode: "lines+markers",
                  line: { color: "#e07b00", width: 2, dash: "dot" } });
  }
  note.textContent = traces.length > 1 ? "" : "No backtest figure for these sessions yet " +
    "(positions_report stores one per session): the paper equity alone is drawn.";
  chart.hidden = false;
  Plotly.react(chart, traces, {
    margin: { l: 70, r: 20, t: 10, b: 40 }, height: 280, hovermode: "x unified",
    legend: { orientation: "h", y: 1.12 }, xaxis: SESSION_AXIS,
    yaxis: { title: { text: "Equity" }, tickformat: ",.0f" },
    shapes: [{ type: "line", xref: "paper", x0: 0, x1: 1, y0: pnl.initial_cash,
               y1: pnl.initial_cash, line: { color: "#8a94a3", dash: "dash", width: 1 } }],
  }, { displaylogo: false, responsive: true });
}

async function loadPositions() {
  const page = await api(`/accounts/${ACCOUNT}/positions?limit=500`);
  fill("positions", table([["Fund", (p) => p.symbol],
                           ["Quantity", (p) => number(p.quantity, 0), true, (p) => p.quantity],
                           ["Cost basis", (p) => number(p.cost), true, (p) => p.cost]],
                          page.items, "No open position."));
}

async function loadOrders() {
  const page = await api(`/orders?account_id=${ACCOUNT}&limit=${RECENT}`);
  fill("orders", table([["Session", (o) => o.session], ["Fund", (o) => o.symbol],
                        ["Side", (o) => o.side],
                        ["Quantity", (o) => number(o.quantity, 0), true, (o) => o.quantity],
                        ["Filled", (o) => number(o.filled_quantity, 0), true,
                         (o) => o.filled_quantity],
                        ["Avg price", (o) => number(o.average_price, 3), true,
                         (o) => o.average_price],
                        ["Status", (o) => o.status], ["Order", (o) => o.order_id]],
                       page.items, "No orders."), recentNote(page, "orders"));
}

async function loadFills() {
  const page = await api(`/accounts/${ACCOUNT}/fills?limit=${RECENT}`);
  fill("fills", table([["Filled at", (f) => when(f.filled_at), false, (f) => f.filled_at],
                       ["Fund", (f) => f.symbol], ["Side", (f) => f.side],
                       ["Quantity", (f) => number(f.quantity, 0), true, (f) => f.quantity],
                       ["Price", (f) => number(f.price, 3), true, (f) => f.price],
                       ["Commission", (f) => number(f.commission), true, (f) => f.commission],
                       ["Fill", (f) => f.fill_id]], page.items, "No fills."),
       recentNote(page, "fills"));
}

Desk.page({ loads: [loadCash, loadPnl, loadPositions, loadOrders, loadFills],
            live: { fill: [loadFills, loadPositions, loadCash, loadOrders],
                    order: [loadOrders] } });
})();
