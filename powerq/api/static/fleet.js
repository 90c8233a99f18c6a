// The fleet page: one page of nodes (PAGE_SIZE rows) filtered and paged by the
// API, the counts from GET /v1/summary, and refreshes by delta.
//
// A refresh asks for the summary and for the nodes *of the page's name range*
// changed since the previous summary's `as_of` (minus OVERLAP_MS, for writes
// that committed late): rows are patched in place. The page itself is fetched
// again only when the view changes (filters, page), when a change moves a node
// into or out of the view, when the fleet's size changes, when more changed
// than a page holds, and every FULL_EVERY refreshes (changes that leave no
// mark, see powerq/fleet_summary.py). docs/status-page.md has the figures.

import {
  $, AnswerError, api, boot, condition, el, inSync, nodeHref, poll,
  requestSummary, since, startAgeTicker, stateBadge,
} from "./common.js";
import { cancelRequestButton, maintenanceControls, maintenanceText, powerButtons } from "./actions.js";

export const PAGE_SIZE = 100;
const OVERLAP_MS = 10000;
const FULL_EVERY = 10;
const FILTER_KEYS = ["tag", "state", "desired", "show", "name"];
const INPUT_FOR = { tag: "#f-tag", state: "#f-state", desired: "#f-desired", show: "#f-show", name: "#f-name" };
const MORE_ACTIONS = ["soft_off", "reset", "query"];

let identity = null;
let poller = null;
const knownTags = new Set();
// What the page shows: the view it was loaded for, its rows, and the clock.
const view = { key: null, offset: 0, total: 0, nodes: new Map(), asOf: null, fleet: null, deltas: 0 };

// --- filters and page (kept in the page URL so a view can be shared; never the token) ---

function readFilters() {
  const params = new URLSearchParams(location.search);
  const filters = {};
  for (const key of FILTER_KEYS) filters[key] = (params.get(key) || "").trim();
  filters.page = Math.max(1, Number.parseInt(params.get("page") || "1", 10) || 1);
  return filters;
}

function writeFilters(filters) {
  const params = new URLSearchParams();
  for (const key of FILTER_KEYS) if (filters[key]) params.set(key, filters[key]);
  if (filters.page > 1) params.set("page", String(filters.page));
  const query = params.toString();
  history.replaceState(null, "", query ? `?${query}` : location.pathname);
}

function filtersFromInputs() {
  const filters = {};
  for (const key of FILTER_KEYS) filters[key] = $(INPUT_FOR[key]).value.trim();
  filters.tag = filters.tag.split(/[\s,]+/).filter(Boolean).join(",");
  return filters;
}

function showFilters(filters) {
  for (const key of FILTER_KEYS) $(INPUT_FOR[key]).value = filters[key];
}

/** Query parameters of GET /v1/nodes for these filters (all applied by the server). */
function apiQuery(filters) {
  const query = new URLSearchParams();
  if (filters.tag) query.set("tag", filters.tag);
  if (filters.state) query.set("power_state", filters.state);
  if (filters.desired) query.set("desired_power_state", filters.desired);
  if (filters.show === "fault") query.set("power_fault", "true");
  if (filters.show === "maintenance") query.set("maintenance", "true");
  if (["drift", "busy", "ok"].includes(filters.show)) query.set("condition", filters.show);
  if (filters.name) query.set("name_prefix", filters.name);
  return query;
}

/** Whether `node` is in the view `filters` select (the server's rules, for deltas). */
function matches(node, filters) {
  if (filters.tag && !filters.tag.split(",").every((tag) => node.tags.includes(tag))) return false;
  if (filters.state && node.power_state !== filters.state) return false;
  if (filters.desired && (node.desired_power_state || "none") !== filters.desired) return false;
  if (filters.show === "fault" && !node.power_fault) return false;
  if (filters.show === "maintenance" && !node.maintenance) return false;
  if (["drift", "busy"].includes(filters.show) && condition(node) !== filters.show) return false;
  if (filters.show === "ok" && condition(node) !== "") return false;
  if (filters.name && !node.name.startsWith(filters.name)) return false;
  return true;
}

function applyFilters(changes) {
  const filters = { ...filtersFromInputs(), page: 1, ...changes };
  showFilters(filters);
  writeFilters(filters);
  poller.now();
}

function goToPage(page) {
  writeFilters({ ...readFilters(), page });
  poller.now();
}

function wireFilters() {
  showFilters(readFilters());
  let debounce = null;
  const changed = () => {
    clearTimeout(debounce);
    debounce = setTimeout(() => applyFilters({}), 250);
  };
  for (const key of FILTER_KEYS) {
    const input = $(INPUT_FOR[key]);
    input.addEventListener(input.tagName === "SELECT" ? "change" : "input", changed);
  }
  $("#filters").addEventListener("submit", (event) => {
    event.preventDefault();
    applyFilters({});
  });
  $("#f-clear").addEventListener("click", () => applyFilters({ tag: "", state: "", desired: "", show: "", name: "" }));
  for (const button of document.querySelectorAll("#counts button.count")) {
    button.addEventListener("click", () => applyFilters(countFilter(button.dataset.count)));
  }
  $("#page-prev").addEventListener("click", () => goToPage(readFilters().page - 1));
  $("#page-next").addEventListener("click", () => goToPage(readFilters().page + 1));
}

/** Clicking a count shows those nodes (clicking the active one again clears it). */
function countFilter(count) {
  const current = filtersFromInputs();
  if (count === "total") return { state: "", show: "" };
  if (["on", "off", "unknown"].includes(count)) return { state: current.state === count ? "" : count };
  return { show: current.show === count ? "" : count };
}

// --- loading -------------------------------------------------------------------

async function get(path) {
  const answer = await api(path);
  if (!answer.ok) throw new AnswerError(answer);
  return answer.data;
}

const viewKey = (filters) => `${apiQuery(filters)}|${filters.page}`;

async function refresh() {
  const filters = readFilters();
  const current = viewKey(filters) === view.key && view.asOf && view.deltas < FULL_EVERY;
  if (!current) return loadPage(filters, await get("/v1/summary"));
  const [summary, changed] = await Promise.all([get("/v1/summary"), get(`/v1/nodes?${deltaQuery()}`)]);
  if (!applyDelta(changed, summary, filters)) return loadPage(filters, summary);
  view.deltas += 1;
  view.asOf = summary.as_of;
  renderCounts(summary, filters);
}

/** The nodes of the page's name range changed since the last summary (minus the overlap). */
function deltaQuery() {
  const query = new URLSearchParams();
  query.set("changed_since", new Date(Date.parse(view.asOf) - OVERLAP_MS).toISOString());
  const names = [...view.nodes.keys()];
  if (names.length && view.offset > 0) query.set("name_from", names[0]);
  if (names.length && view.offset + names.length < view.total) query.set("name_to", names[names.length - 1]);
  query.set("limit", String(PAGE_SIZE));
  return query;
}

/** Patch the rows the delta changed; false when the page must be fetched again. */
function applyDelta(changed, summary, filters) {
  if (summary.nodes !== view.fleet || changed.total > changed.items.length) return false;
  for (const node of changed.items) {
    const shown = view.nodes.has(node.name);
    const fits = matches(node, filters);
    if (shown !== fits) return false; // it moved into or out of the view
    if (shown) view.nodes.set(node.name, node);
  }
  renderRows([...view.nodes.values()]);
  return true;
}

async function loadPage(filters, summary) {
  let page = filters.page;
  let answer = await get(`/v1/nodes?${pageQuery(filters, page)}`);
  if (answer.items.length === 0 && answer.total > 0) { // past the end: the last page
    page = Math.ceil(answer.total / PAGE_SIZE);
    writeFilters({ ...filters, page });
    answer = await get(`/v1/nodes?${pageQuery(filters, page)}`);
  }
  Object.assign(view, {
    key: viewKey({ ...filters, page }), offset: answer.offset, total: answer.total,
    nodes: new Map(answer.items.map((node) => [node.name, node])),
    asOf: summary.as_of, fleet: summary.nodes, deltas: 0,
  });
  renderCounts(summary, filters);
  renderSummary(filters, answer.total, summary.nodes);
  renderPager(answer);
  renderRows(answer.items);
  $("#empty").hidden = answer.items.length > 0;
  for (const node of answer.items) for (const tag of node.tags) knownTags.add(tag);
  renderTagList();
}

function pageQuery(filters, page) {
  const query = apiQuery(filters);
  query.set("limit", String(PAGE_SIZE));
  query.set("offset", String((page - 1) * PAGE_SIZE));
  return query;
}

// --- rendering -------------------------------------------------------------------

const number = new Intl.NumberFormat("en");

function renderSummary(filters, total, fleet) {
  const noun = (n) => (n === 1 ? "node" : "nodes");
  const filtered = apiQuery(filters).toString() !== "";
  $("#summary").textContent = filtered
    ? `${number.format(total)} of ${number.format(fleet)} ${noun(fleet)} match the filters`
    : `${number.format(fleet)} ${noun(fleet)}`;
}

function renderPager(answer) {
  const first = answer.total ? answer.offset + 1 : 0;
  const last = answer.offset + answer.items.length;
  $("#page-text").textContent = `${number.format(first)}–${number.format(last)} of ${number.format(answer.total)}`;
  $("#page-prev").disabled = answer.offset === 0;
  $("#page-next").disabled = last >= answer.total;
  $("#pager").hidden = answer.total <= PAGE_SIZE && answer.offset === 0;
}

function renderCounts(summary, filters) {
  const counts = {
    total: summary.nodes, ...summary.observed, drift: summary.drift, busy: summary.busy,
    fault: summary.power_fault, maintenance: summary.maintenance, batches: summary.batches_running,
  };
  for (const card of document.querySelectorAll("#counts .count")) {
    const key = card.dataset.count;
    card.querySelector(".count-n").textContent = number.format(counts[key]);
    card.classList.toggle("is-zero", counts[key] === 0 && key !== "total");
    if (card.tagName === "BUTTON") {
      const active = key === filters.state || key === filters.show;
      card.setAttribute("aria-pressed", active ? "true" : "false");
    }
  }
  const r = summary.requests;
  $("#fleet-requests").textContent = `Requests outstanding: ${number.format(r.pending)} pending, ${number.format(r.running)} running, ${number.format(r.held)} held by their batch · ${number.format(summary.in_sync)} in sync, ${number.format(summary.converging)} converging`;
}

function renderTagList() {
  const list = $("#tag-list");
  if (list.children.length === knownTags.size) return;
  list.replaceChildren(...[...knownTags].sort().map((tag) => el("option", { value: tag })));
}

/** What a row shows; a row is rebuilt only when this changes. */
function signature(node) {
  const r = node.outstanding_request;
  return JSON.stringify([
    node.power_state, node.power_state_at, node.desired_power_state, node.maintenance,
    node.maintenance_reason, node.maintenance_by, node.power_fault, node.power_fault_reason,
    node.last_error, node.tags, r && [r.id, r.status, r.attempt, r.next_step],
  ]);
}

function renderRows(nodes) {
  const tbody = $("#nodes tbody");
  const existing = new Map([...tbody.children].map((tr) => [tr.dataset.node, tr]));
  const rows = nodes.map((node) => {
    const sig = signature(node);
    const old = existing.get(node.name);
    if (old && old.dataset.sig === sig) return old;
    const fresh = row(node, sig);
    if (old) keepOpen(old, fresh);
    return fresh;
  });
  // Reorder/replace in place, leaving unchanged rows (and their buttons) alone.
  rows.forEach((tr, index) => {
    if (tbody.children[index] !== tr) tbody.insertBefore(tr, tbody.children[index] || null);
  });
  while (tbody.children.length > rows.length) tbody.lastElementChild.remove();
}

/** A rebuilt row keeps an open "More" menu and a reason being typed. */
function keepOpen(old, fresh) {
  const menu = old.querySelector(".more-actions[open]");
  if (!menu) return;
  fresh.querySelector(".more-actions").open = true;
  const form = old.querySelector(".maintenance-form:not([hidden])");
  const input = fresh.querySelector(".maintenance-form input");
  if (!form || !input) return;
  input.value = form.querySelector("input").value;
  input.closest("form").hidden = false;
  fresh.querySelector("[data-maintenance='on']").hidden = true;
}

function row(node, sig) {
  const state = condition(node);
  const tr = el("tr", { className: state ? `is-${state}` : "", dataset: { node: node.name, sig, condition: state || "ok" } });
  tr.append(
    el("td", { className: "c-name" }, [
      el("a", { href: nodeHref(node.name), text: node.name }),
      node.tags.length ? el("div", { className: "tags" }, node.tags.map((tag) => el("span", { className: "tag", text: tag }))) : null,
    ]),
    el("td", { className: "c-observed" }, [
      stateBadge(node.power_state), " ",
      node.power_state_at ? since(node.power_state_at) : el("span", { className: "age", text: "not read yet" }),
    ]),
    el("td", { className: "c-desired" }, desiredCell(node)),
    el("td", { className: "c-request" }, [requestSummary(node.outstanding_request)]),
    el("td", { className: "c-error" }, node.last_error
      ? [el("span", { className: "error-text", text: node.last_error, title: node.last_error })]
      : [el("span", { className: "muted", text: "–" })]),
    el("td", { className: "c-flags" }, flags(node)),
  );
  if (identity.canAct) tr.append(el("td", { className: "c-actions" }, actions(node)));
  return tr;
}

/** On / Off / Cycle in the row; the rarer actions in a "More" menu. */
function actions(node) {
  const done = () => poller.now();
  const more = el("details", { className: "more-actions" }, [
    el("summary", { className: "btn btn-small btn-quiet", text: "More", title: `More actions on ${node.name}` }),
    el("div", { className: "more-menu" }, [
      powerButtons(identity, node.name, node.outstanding_request, done, MORE_ACTIONS),
      node.outstanding_request ? cancelRequestButton(identity, node.name, node.outstanding_request, done) : null,
      maintenanceControls(identity, node, done),
    ]),
  ]);
  return [powerButtons(identity, node.name, node.outstanding_request, done, ["on", "off", "cycle"]), more];
}

function desiredCell(node) {
  const cell = [stateBadge(node.desired_power_state, { desired: true })];
  const sync = inSync(node);
  if (sync === false && node.outstanding_request) {
    cell.push(el("span", { className: "chip chip-busy", text: "converging", title: "A request is working on it" }));
  } else if (sync === false) {
    cell.push(el("span", { className: "chip chip-drift", text: "drift", title: `Observed ${node.power_state}, desired ${node.desired_power_state}, and nothing is in progress` }));
  }
  return cell;
}

function flags(node) {
  const out = [];
  if (node.maintenance) {
    const title = `The sweeper never corrects this node${node.maintenance_since ? ` (since ${node.maintenance_since})` : ""}`;
    out.push(el("span", { className: "flag flag-maintenance", text: maintenanceText(node), title }));
  }
  if (node.power_fault) {
    out.push(el("span", { className: "flag flag-fault", text: "power fault", title: node.power_fault_reason || "Repeated BMC failures" }));
  }
  return out.length ? out : [el("span", { className: "muted", text: "–" })];
}

// --- start -------------------------------------------------------------------------

boot((who) => {
  identity = who;
  wireFilters();
  poller = poll(refresh, Number(document.body.dataset.refreshMs));
  startAgeTicker();
});
