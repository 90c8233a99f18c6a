// One node: its state (GET /v1/nodes/{name}), its power history
// (GET /v1/nodes/{name}/requests) and its audit trail (GET /v1/nodes/{name}/events),
// refreshed every few seconds; operators get every power action and the
// cancel of a pending request, admins the maintenance switch too.

import {
  $, ACTION_LABEL, AnswerError, api, between, boot, clock, condition, duration, el, inSync,
  poll, requestSummary, since, startAgeTicker, stateBadge, statusBadge,
} from "./common.js";
import { cancelRequestButton, maintenanceControls, powerButtons } from "./actions.js";

const HISTORY_LIMIT = 50;
const EVENTS_LIMIT = 100;
const name = document.body.dataset.node;
const base = `/v1/nodes/${encodeURIComponent(name)}`;

let identity = null;
let poller = null;
let lastButtons = null;
let lastMaintenance = null;

async function refresh() {
  const [node, history, events] = await Promise.all([
    api(base),
    api(`${base}/requests?limit=${HISTORY_LIMIT}`),
    api(`${base}/events?limit=${EVENTS_LIMIT}`),
  ]);
  const missing = node.status === 404;
  $("#not-found").hidden = !missing;
  $("#node-body").hidden = missing;
  if (missing) {
    $("#not-found-text").textContent = `${(node.data && node.data.detail) || "not found"}. It may have been deleted.`;
    return;
  }
  for (const answer of [node, history, events]) if (!answer.ok) throw new AnswerError(answer);
  renderNode(node.data);
  renderHistory(history.data, node.data.outstanding_request);
  renderEvents(events.data);
}

function set(id, ...children) {
  $(id).replaceChildren(...children.flat(Infinity).filter((child) => child !== null && child !== undefined));
}

function renderNode(node) {
  const state = condition(node);
  const badges = [];
  if (state === "drift") badges.push(el("span", { className: "chip chip-drift", text: "drift" }));
  if (state === "busy") badges.push(el("span", { className: "chip chip-busy", text: "request in progress" }));
  if (node.maintenance) badges.push(el("span", { className: "flag flag-maintenance", text: "maintenance" }));
  if (node.power_fault) badges.push(el("span", { className: "flag flag-fault", text: "power fault" }));
  set("#node-badges", badges);

  set("#n-observed", stateBadge(node.power_state), " ",
    node.power_state_at ? since(node.power_state_at, "read ") : el("span", { className: "age", text: "not read from the BMC yet" }));
  const sync = inSync(node);
  set("#n-desired",
    stateBadge(node.desired_power_state, { desired: true }), " ",
    node.desired_power_state_at ? since(node.desired_power_state_at, "set ") : null,
    sync === false ? el("span", { className: `chip ${state === "busy" ? "chip-busy" : "chip-drift"}`, text: state === "busy" ? "converging" : "drift" }) : null);
  set("#n-outstanding", requestSummary(node.outstanding_request));
  set("#n-checked", node.last_checked_at ? since(node.last_checked_at) : el("span", { className: "muted", text: "never" }));
  set("#n-error", node.last_error ? el("span", { className: "error-text wrap", text: node.last_error }) : el("span", { className: "muted", text: "none" }));

  set("#n-bmc", el("code", { text: `${node.username}@${node.address}:${node.port}` }));
  set("#n-driver", node.driver);
  set("#n-tags", node.tags.length ? node.tags.map((tag) => el("span", { className: "tag", text: tag })) : el("span", { className: "muted", text: "none" }));
  set("#n-maintenance", node.maintenance
    ? [el("span", { className: "flag flag-maintenance", text: "yes: the sweeper leaves it alone" }),
      el("div", { className: "maintenance-why" }, [
        el("span", { className: "maintenance-reason-text", text: node.maintenance_reason || "no reason given" }),
        node.maintenance_by ? [" · by ", el("strong", { className: "maintenance-by", text: node.maintenance_by })] : null,
        node.maintenance_since ? [" · ", since(node.maintenance_since, "since ")] : null,
      ].flat())]
    : "no");
  set("#n-fault", node.power_fault
    ? [el("span", { className: "flag flag-fault", text: "yes" }), " ", el("span", { text: node.power_fault_reason || "" }), node.power_fault_at ? [" ", since(node.power_fault_at, "since ")] : null]
    : "no");

  if (identity.canAct) {
    const outstanding = node.outstanding_request;
    const key = outstanding ? `${outstanding.id}:${outstanding.status}` : "";
    if (lastButtons !== key) {
      lastButtons = key;
      const done = () => poller.now();
      set("#node-actions", powerButtons(identity, name, outstanding, done),
        outstanding ? cancelRequestButton(identity, name, outstanding, done) : null);
    }
    const maintenanceKey = JSON.stringify([node.maintenance, node.maintenance_reason]);
    if (lastMaintenance !== maintenanceKey) {
      lastMaintenance = maintenanceKey;
      set("#maintenance-actions", maintenanceControls(identity, node, () => poller.now()));
    }
  }
}

function outcome(request) {
  if (request.status === "succeeded") {
    if (request.action === "query") return `read ${request.observed_after || "?"}`;
    if (!request.command_sent) return `already ${request.observed_after || request.observed_before}: nothing sent`;
    const sent = request.command_sent === request.action ? "" : ` (sent ${ACTION_LABEL[request.command_sent].toLowerCase()})`;
    return `verified ${request.observed_after || "?"}${sent}`;
  }
  if (request.status === "failed" || request.status === "cancelled") return request.error || request.status;
  if (request.status === "running") return request.command_sent_at ? `command sent ${clock(request.command_sent_at)}, checking` : `step: ${request.next_step}`;
  return "waiting for a worker";
}

function renderHistory(page, outstanding) {
  const rows = page.items.map((request) => {
    const waited = between(request.created_at, request.started_at);
    const took = request.finished_at
      ? between(request.started_at || request.created_at, request.finished_at)
      : null;
    const running = !request.finished_at && request.started_at;
    return el("tr", {
      className: outstanding && outstanding.id === request.id ? "is-busy" : "",
      dataset: { request: request.id, status: request.status },
    }, [
      el("td", { title: request.created_at }, [clock(request.created_at)]),
      el("td", { className: "req-action", text: request.action.replace("_", " ") }),
      el("td", {}, [statusBadge(request.status)]),
      el("td", { className: "num", text: String(request.attempt) }),
      el("td", { text: request.requested_by }),
      el("td", { className: "num", text: request.started_at ? duration(waited) : "–" }),
      el("td", { className: "num" }, [running ? since(request.started_at, "started ") : duration(took)]),
      el("td", { className: request.status === "failed" ? "error-text wrap" : "wrap", text: outcome(request) }),
    ]);
  });
  $("#history tbody").replaceChildren(...rows);
  $("#history-empty").hidden = rows.length > 0;
  $("#history-count").textContent = page.total > page.items.length
    ? `latest ${page.items.length} of ${page.total}` : `${page.total} in all`;
}

function renderEvents(page) {
  const rows = page.items.map((event) => el("tr", { dataset: { kind: event.kind } }, [
    el("td", { title: event.created_at }, [clock(event.created_at)]),
    el("td", {}, [el("span", { className: `event-kind kind-${event.kind}`, text: event.kind.replaceAll("_", " ") })]),
    el("td", { text: event.actor }),
    el("td", { className: "wrap", text: event.message || "" }),
    el("td", {}, [event.request_id ? el("code", { text: event.request_id.slice(0, 8), title: event.request_id }) : "–"]),
  ]));
  $("#events tbody").replaceChildren(...rows);
  $("#events-empty").hidden = rows.length > 0;
  $("#events-count").textContent = page.total > page.items.length
    ? `latest ${page.items.length} of ${page.total}` : `${page.total} in all`;
}

boot((who) => {
  identity = who;
  poller = poll(refresh, Number(document.body.dataset.refreshMs));
  startAgeTicker();
});
