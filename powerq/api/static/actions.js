// The buttons that change things, and the report of every answer they get:
// power actions (POST /v1/nodes/{name}/power), cancelling a pending request
// (DELETE /v1/requests/{id}), maintenance on/off with a reason
// (PATCH /v1/nodes/{name}, admin) and cancelling a batch (DELETE /v1/batches/{id}).
//
// A button the signed-in role may not use is shown disabled, saying which role
// it needs; the server decides anyway, and its 403 is reported like any answer.
// No answer is swallowed: 2xx, 409, 403, 422, 5xx and "no answer at all" each
// leave a message.

import { ACTION_LABEL, allowed, api, confirmDialog, el, notify, problemText } from "./common.js";

export const POWER_ACTIONS = ["on", "off", "soft_off", "cycle", "reset", "query"];
const BUTTON_LABEL = { on: "On", off: "Off", soft_off: "Soft off", cycle: "Cycle", reset: "Reset", query: "Query" };
const DESIRED_AFTER = { on: "on", off: "off", soft_off: "off", cycle: "on", reset: "on" };
const CONFIRM_TEXT = {
  off: (node) => `${node} will be switched off. This cannot be cancelled once a worker has started it.`,
  soft_off: (node) => `${node} is asked to shut down (ACPI); if it is still on when the deadline passes, it is switched off hard. This cannot be cancelled once a worker has started it.`,
  cycle: (node) => `${node} will be switched off and on again (if it is off, it is switched on). This cannot be cancelled once a worker has started it.`,
  reset: (node) => `${node} is reset at once, without shutting down. This cannot be cancelled once a worker has started it.`,
};

// --- reporting answers ---------------------------------------------------------

/** A message for any answer that is not the success the caller expected. */
export function reportFailure(subject, label, answer, role = "operator") {
  const data = answer.data || {};
  if (answer.status === 401) return notify("error", `${subject}: ${label} not sent`, "Your token is no longer valid. Sign in again.");
  if (answer.status === 403) {
    return notify("error", `${subject}: ${label} not allowed (403)`, `Your token's role may not do this (an ${role} token is needed).`);
  }
  if (answer.status === 404) return notify("error", `${subject}: ${label} failed (404)`, problemText(answer));
  if (answer.status === 409) {
    return notify("error", `${subject}: ${label} refused (409 conflict)`, data.detail || problemText(answer));
  }
  if (answer.status === 422) return notify("error", `${subject}: ${label} refused (422 invalid)`, problemText(answer));
  if (answer.status === 503) {
    return notify("error", `${subject}: ${label} not recorded`, `powerq cannot reach its database: ${problemText(answer)}. Nothing was recorded; try again.`);
  }
  return notify("error", `${subject}: ${label} failed`, problemText(answer));
}

/** Report the API's answer to a power request as a readable message. */
export function reportPowerAnswer(node, action, answer) {
  const label = ACTION_LABEL[action];
  const data = answer.data || {};
  const request = data.request;
  if (answer.status === 202) {
    const desired = DESIRED_AFTER[action];
    const wanted = desired ? ` Desired state is now ${desired}.` : "";
    if (data.dispatched === false) {
      return notify("warning", `${node}: ${label} recorded`,
        `The request is saved but the worker queue could not be reached; the sweeper will start it shortly.${wanted}`);
    }
    const verb = action === "query" ? "will read the BMC's power state" : "will be verified against the BMC";
    return notify("success", `${node}: ${label} requested`, `Request ${request.id.slice(0, 8)} is queued and ${verb}.${wanted}`);
  }
  if (answer.status === 200) {
    return notify("info", `${node}: ${label} already in progress`,
      `An identical request (${request.status}${request.attempt ? `, attempt ${request.attempt}` : ""}) was already outstanding, so no new one was made.`);
  }
  if (answer.status === 409 && data.outstanding) {
    const outstanding = data.outstanding;
    return notify("error", `${node}: ${label} refused (409 conflict)`,
      `${node} is busy with a ${ACTION_LABEL[outstanding.action].toLowerCase()} request (${outstanding.status}, requested by ${outstanding.requested_by}). Only one power action runs on a machine at a time and an in-flight one is never cancelled: try again when it has finished${outstanding.status === "pending" ? ", or cancel the pending one" : ""}.`);
  }
  if (answer.status === 403) {
    return notify("error", `${node}: ${label} not allowed`, "Your token's role may not request power actions (an operator token is needed).");
  }
  return reportFailure(node, label, answer);
}

/** Send a call; a call that got no answer at all is reported as unconfirmed. */
async function send(subject, label, path, options, unconfirmed) {
  try {
    return await api(path, options);
  } catch (error) {
    notify("error", `${subject}: ${label} unconfirmed`, `${error.message}. ${unconfirmed}`);
    return null;
  }
}

// --- buttons -------------------------------------------------------------------

/** A button that runs `run()` once at a time; disabled (saying why) without `role`. */
function actionButton({ identity, role, text, title, className, dataset, run }) {
  const permitted = allowed(identity, role);
  const button = el("button", {
    type: "button",
    className: `btn btn-small ${className || ""}`.trim(),
    text,
    title: permitted ? title : `${title} (needs an ${role} token)`,
    dataset: { ...dataset, ...(permitted ? {} : { denied: role }) },
  });
  button.disabled = !permitted;
  button.addEventListener("click", async () => {
    button.disabled = true;
    try {
      await run();
    } finally {
      button.disabled = false;
    }
  });
  return button;
}

/** Ask for `action` on `node` (confirming disruptive ones); report the answer. */
export async function requestPower(node, action) {
  const label = ACTION_LABEL[action];
  if (CONFIRM_TEXT[action]) {
    const ok = await confirmDialog({ title: `${label} ${node}?`, text: CONFIRM_TEXT[action](node), ok: label });
    if (!ok) return null;
  }
  const answer = await send(node, label, `/v1/nodes/${encodeURIComponent(node)}/power`,
    { method: "POST", body: { action } },
    "The request may or may not have been recorded: check the node's history before trying again.");
  if (answer) reportPowerAnswer(node, action, answer);
  return answer;
}

/** Buttons for `actions` on `node`; the outstanding action is marked. */
export function powerButtons(identity, node, outstanding, onAnswer, actions = POWER_ACTIONS) {
  const group = el("div", { className: "power-buttons", role: "group", "aria-label": `Power ${node}` });
  for (const action of actions) {
    const current = outstanding && outstanding.action === action;
    const button = actionButton({
      identity,
      role: "operator",
      text: BUTTON_LABEL[action],
      title: `${ACTION_LABEL[action]} ${node}`,
      className: `btn-${action}${current ? " is-current" : ""}`,
      dataset: { action, node },
      run: async () => {
        const answer = await requestPower(node, action);
        if (answer && onAnswer) onAnswer(answer);
      },
    });
    button.setAttribute("aria-pressed", current ? "true" : "false");
    group.append(button);
  }
  return group;
}

/** "Cancel request" for a node's outstanding request (only a pending one can be). */
export function cancelRequestButton(identity, node, request, onAnswer) {
  const running = request.status !== "pending";
  const button = actionButton({
    identity,
    role: "operator",
    text: "Cancel request",
    title: running
      ? `The ${request.action} request is running: an in-flight action is never cancelled`
      : `Cancel the pending ${request.action} request on ${node}`,
    className: "btn-cancel",
    dataset: { cancel: request.id, node },
    run: async () => {
      const label = `cancel ${ACTION_LABEL[request.action].toLowerCase()}`;
      const ok = await confirmDialog({
        title: `Cancel the ${ACTION_LABEL[request.action].toLowerCase()} request on ${node}?`,
        text: "Only a request no worker has started can be cancelled; the node's desired state goes back to what it was before it.",
        ok: "Cancel request",
      });
      if (!ok) return;
      const answer = await send(node, label, `/v1/requests/${request.id}`, { method: "DELETE" },
        "Check the node's history: the request may or may not have been cancelled.");
      if (!answer) return;
      if (answer.ok) notify("success", `${node}: request cancelled`, `The ${request.action} request ${request.id.slice(0, 8)} is cancelled; it will not run.`);
      else reportFailure(node, label, answer);
      if (onAnswer) onAnswer(answer);
    },
  });
  // A running request cannot be cancelled: say so on the (disabled) button.
  if (running && !button.dataset.denied) button.disabled = true;
  return button;
}

/** PATCH the node's maintenance flag (with a reason when entering); report the answer. */
export async function setMaintenance(node, on, reason) {
  const label = on ? "enter maintenance" : "leave maintenance";
  const body = on ? { maintenance: true, maintenance_reason: reason } : { maintenance: false };
  const answer = await send(node, label, `/v1/nodes/${encodeURIComponent(node)}`, { method: "PATCH", body },
    "Reload the node to see whether the change was made.");
  if (!answer) return null;
  if (answer.ok) {
    notify("success", `${node}: ${on ? "in maintenance" : "out of maintenance"}`,
      on ? `Reason: ${reason}. The sweeper will not correct this node.` : "The sweeper corrects drift on this node again.");
  } else {
    reportFailure(node, label, answer, "admin");
  }
  return answer;
}

/**
 * Maintenance controls for `node`: "Leave maintenance" when it is in it, else
 * "Maintenance…", which opens a small inline form asking for the reason.
 */
export function maintenanceControls(identity, node, onAnswer) {
  const box = el("div", { className: "maintenance-controls", dataset: { node: node.name } });
  if (node.maintenance) {
    box.append(actionButton({
      identity, role: "admin", text: "Leave maintenance", title: `Take ${node.name} out of maintenance`,
      className: "btn-maintenance-off", dataset: { maintenance: "off" },
      run: async () => {
        const answer = await setMaintenance(node.name, false);
        if (answer && onAnswer) onAnswer(answer);
      },
    }));
    return box;
  }
  const input = el("input", { type: "text", className: "maintenance-reason", maxlength: "500", placeholder: "Reason (e.g. RMA ticket, DIMM swap)", "aria-label": `Why ${node.name} goes into maintenance` });
  const submit = el("button", { type: "submit", className: "btn btn-small btn-primary", text: "Enter maintenance" });
  const close = el("button", { type: "button", className: "btn btn-small btn-quiet", text: "Cancel" });
  const form = el("form", { className: "maintenance-form", action: "#", hidden: true, autocomplete: "off" }, [input, submit, close]);
  const open = actionButton({
    identity, role: "admin", text: "Maintenance…", title: `Put ${node.name} in maintenance (asks for a reason)`,
    className: "btn-maintenance-on", dataset: { maintenance: "on" },
    run: async () => {
      form.hidden = false;
      open.hidden = true;
      input.focus();
    },
  });
  close.addEventListener("click", () => {
    form.hidden = true;
    open.hidden = false;
  });
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const reason = input.value.trim();
    if (!reason) {
      notify("warning", `${node.name}: a reason is needed`, "Say why the node goes into maintenance; it is shown to everyone.");
      input.focus();
      return;
    }
    submit.disabled = true;
    try {
      const answer = await setMaintenance(node.name, true, reason);
      if (answer && answer.ok) {
        form.hidden = true;
        open.hidden = false;
      }
      if (answer && onAnswer) onAnswer(answer);
    } finally {
      submit.disabled = false;
    }
  });
  box.append(open, form);
  return box;
}

/** "Cancel batch": cancels its held and pending requests (running ones finish). */
export function cancelBatchButton(identity, batch, onAnswer) {
  const title = batch.name || batch.id.slice(0, 8);
  return actionButton({
    identity, role: "operator", text: "Cancel batch", title: `Cancel what has not started of batch ${title}`,
    className: "btn-cancel-batch", dataset: { cancelBatch: batch.id },
    run: async () => {
      const ok = await confirmDialog({
        title: `Cancel batch ${title}?`,
        text: "Its held and pending requests are cancelled and their nodes' desired states put back; requests already running finish.",
        ok: "Cancel batch",
      });
      if (!ok) return;
      const answer = await send(`Batch ${title}`, "cancel", `/v1/batches/${batch.id}`, { method: "DELETE" },
        "Reload the batch to see what was cancelled.");
      if (!answer) return;
      if (answer.ok) {
        const counts = answer.data.counts;
        notify("success", `Batch ${title}: cancelled`,
          `${counts.cancelled} request(s) cancelled; ${counts.running} already running will finish.`);
      } else {
        reportFailure(`Batch ${title}`, "cancel", answer);
      }
      if (onAnswer) onAnswer(answer);
    },
  });
}

/** The maintenance flag's text: "maintenance: reason (by who)". */
export function maintenanceText(node) {
  const parts = ["maintenance"];
  if (node.maintenance_reason) parts.push(`: ${node.maintenance_reason}`);
  if (node.maintenance_by) parts.push(` (by ${node.maintenance_by})`);
  return parts.join("");
}
