// Batches: the list (GET /v1/batches, counts only, newest first) and one batch
// (GET /v1/batches/{id}: counts and a page of per-node results), with their
// progress, refreshed every few seconds; operators can cancel what has not
// started (DELETE /v1/batches/{id}).

import { $, ACTION_LABEL, AnswerError, api, boot, clock, el, nodeHref, poll, since, startAgeTicker, statusBadge } from "./common.js";
import { cancelBatchButton } from "./actions.js";

const LIST_PAGE = 25;
const RESULTS_PAGE = 100;
const STATES = ["succeeded", "failed", "cancelled", "refused", "running", "pending", "held"];
const DONE = new Set(["succeeded", "failed", "cancelled", "refused"]);
const batchId = document.body.dataset.batch || null;

let identity = null;
let poller = null;
let offset = 0;
let lastActions = null;

async function get(path) {
  const answer = await api(path);
  if (!answer.ok) throw new AnswerError(answer);
  return answer.data;
}

// --- progress ------------------------------------------------------------------

function doneCount(batch) {
  return STATES.filter((state) => DONE.has(state)).reduce((sum, state) => sum + batch.counts[state], 0);
}

/** A bar with one segment per state, and the counts in words. */
function progress(batch) {
  const done = doneCount(batch);
  const bar = el("div", {
    className: "progress", role: "progressbar", "aria-valuemin": "0", "aria-valuemax": String(batch.total),
    "aria-valuenow": String(done), "aria-label": `${done} of ${batch.total} nodes done`,
  });
  for (const state of STATES) {
    const n = batch.counts[state];
    if (!n) continue;
    const segment = el("span", { className: `progress-part part-${state}`, title: `${n} ${state}` });
    segment.style.width = `${(100 * n) / Math.max(1, batch.total)}%`;
    bar.append(segment);
  }
  const words = STATES.filter((state) => batch.counts[state]).map((state) => `${batch.counts[state]} ${state}`);
  const status = batch.finished ? (batch.cancelled_at ? "finished (cancelled)" : "finished") : (batch.cancelled_at ? "cancelled, running ones finishing" : "in progress");
  return el("div", { className: "progress-wrap", dataset: { done: String(done), total: String(batch.total), finished: String(batch.finished) } }, [
    bar,
    el("span", { className: "progress-text", text: `${done} of ${batch.total} done · ${status}${words.length ? ` · ${words.join(", ")}` : ""}` }),
  ]);
}

function title(batch) {
  return batch.name || batch.id.slice(0, 8);
}

// --- the list --------------------------------------------------------------------

async function refreshList() {
  const page = await get(`/v1/batches?limit=${LIST_PAGE}&offset=${offset}`);
  const rows = page.items.map((batch) => el("tr", { dataset: { batch: batch.id, finished: String(batch.finished) } }, [
    el("td", { className: "c-name" }, [el("a", { href: `/batches/${batch.id}`, text: title(batch) })]),
    el("td", { className: "req-action", text: ACTION_LABEL[batch.action] || batch.action }),
    el("td", {}, [batch.requested_by, " · ", since(batch.created_at)]),
    el("td", { className: "c-progress" }, [progress(batch)]),
    identity.canAct
      ? el("td", { className: "c-actions" }, [batch.finished ? null : cancelBatchButton(identity, batch, () => poller.now())])
      : null,
  ]));
  $("#batches tbody").replaceChildren(...rows);
  $("#empty").hidden = rows.length > 0;
  pager(page.total, page.items.length, LIST_PAGE);
}

// --- one batch ---------------------------------------------------------------------

async function refreshBatch() {
  const answer = await api(`/v1/batches/${batchId}?limit=${RESULTS_PAGE}&offset=${offset}`);
  const missing = answer.status === 404;
  $("#not-found").hidden = !missing;
  $("#batch-body").hidden = missing;
  if (missing) {
    $("#not-found-text").textContent = `${(answer.data && answer.data.detail) || "not found"}.`;
    return;
  }
  if (!answer.ok) throw new AnswerError(answer);
  const batch = answer.data;
  $("#batch-title").textContent = `Batch ${title(batch)}: ${ACTION_LABEL[batch.action] || batch.action}`;
  $("#batch-crumb").textContent = title(batch);
  $("#batch-meta").textContent = `${batch.total} nodes · requested by ${batch.requested_by} at ${clock(batch.created_at)}`
    + `${batch.max_in_flight ? ` · at most ${batch.max_in_flight} at once` : ""}${batch.stagger_s ? ` · ${batch.stagger_s} s apart` : ""}`;
  $("#batch-progress").replaceChildren(progress(batch));
  const key = `${batch.finished}`;
  if (identity.canAct && lastActions !== key) {
    lastActions = key;
    $("#batch-actions").replaceChildren(...(batch.finished ? [] : [cancelBatchButton(identity, batch, () => poller.now())]));
  }
  $("#results tbody").replaceChildren(...batch.nodes.map(resultRow));
  $("#results-count").textContent = `${batch.total} in all`;
  pager(batch.total, batch.nodes.length, RESULTS_PAGE);
}

function resultRow(result) {
  const request = result.request;
  return el("tr", { dataset: { node: result.node, state: result.state } }, [
    el("td", { className: "c-name" }, [el("a", { href: nodeHref(result.node), text: result.node })]),
    el("td", {}, [statusBadge(result.state)]),
    el("td", { text: result.outcome }),
    el("td", {}, request
      ? [el("code", { text: request.id.slice(0, 8), title: request.id }), request.attempt ? ` · attempt ${request.attempt}` : ""]
      : ["–"]),
    el("td", { className: "wrap" }, [el("span", { className: result.error ? "error-text wrap" : "", text: outcomeText(result) })]),
  ]);
}

function outcomeText(result) {
  if (result.error) return result.error;
  const request = result.request;
  if (!request) return "–";
  if (request.status === "succeeded") return `${request.evidence || "done"}${request.observed_after ? `: ${request.observed_after}` : ""}`;
  if (request.status === "running") return `step: ${request.next_step}`;
  return result.state === "held" ? "waiting for its turn in the batch" : "waiting for a worker";
}

// --- paging ------------------------------------------------------------------------

function pager(total, shown, size) {
  $("#page-text").textContent = total ? `${offset + 1}–${offset + shown} of ${total}` : "";
  $("#page-prev").disabled = offset === 0;
  $("#page-next").disabled = offset + shown >= total;
  $("#pager").hidden = total <= size && offset === 0;
}

function wirePager(size) {
  $("#page-prev").addEventListener("click", () => {
    offset = Math.max(0, offset - size);
    poller.now();
  });
  $("#page-next").addEventListener("click", () => {
    offset += size;
    poller.now();
  });
}

boot((who) => {
  identity = who;
  wirePager(batchId ? RESULTS_PAGE : LIST_PAGE);
  poller = poll(batchId ? refreshBatch : refreshList, Number(document.body.dataset.refreshMs));
  startAgeTicker();
});
