// The fleet page: every node matching the filters, from GET /v1/nodes (paged),
// refreshed every few seconds. Counts are over the nodes the server filters
// (tag, observed, desired, fault, maintenance, name) select; "drift only" and
// "requests in progress" narrow the table in the browser.

import {
  $, AnswerError, api, boot, condition, el, inSync, nodeHref, poll, powerButtons,
  requestSummary, since, startAgeTicker, stateBadge,
} from "./common.js";

const PAGE_SIZE = 500; // the API's largest page
const MAX_NODES = 5000; // hang guard: beyond this, narrow the filters
const FILTER_KEYS = ["tag", "state", "desired", "show", "name"];
const INPUT_FOR = { tag: "#f-tag", state: "#f-state", desired: "#f-desired", show: "#f-show", name: "#f-name" };

let identity = null;
let poller = null;
const knownTags = new Set();

// --- filters (kept in the page URL so a view can be shared; never the token) ---

function readFilters() {
  const params = new URLSearchParams(location.search);
  const filters = {};
  for (const key of FILTER_KEYS) filters[key] = (params.get(key) || "").trim();
  return filters;
}

function writeFilters(filters) {
  const params = new URLSearchParams();
  for (const key of FILTER_KEYS) if (filters[key]) params.set(key, filters[key]);
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

/** Query parameters of GET /v1/nodes for these filters. */
function apiQuery(filters) {
  const query = new URLSearchParams();
  if (filters.tag) query.set("tag", filters.tag);
  if (filters.state) query.set("power_state", filters.state);
  if (filters.desired) query.set("desired_power_state", filters.desired);
  if (filters.show === "fault") query.set("power_fault", "true");
  if (filters.show === "maintenance") query.set("maintenance", "true");
  if (filters.name) query.set("name_prefix", filters.name);
  return query;
}

function serverFiltered(filters) {
  return apiQuery(filters).toString() !== "";
}

function applyFilters(changes) {
  const filters = { ...filtersFromInputs(), ...changes };
  showFilters(filters);
  writeFilters(filters);
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
  for (const button of document.querySelectorAll("#counts .count")) {
    button.addEventListener("click", () => applyFilters(countFilter(button.dataset.count)));
  }
}

/** Clicking a count shows those nodes (clicking the active one again clears it). */
function countFilter(count) {
  const current = filtersFromInputs();
  if (count === "total") return { state: "", show: "" };
  if (["on", "off", "unknown"].includes(count)) return { state: current.state === count ? "" : count };
  return { show: current.show === count ? "" : count };
}

// --- loading -------------------------------------------------------------------

async function loadNodes(filters) {
  const byName = new Map();
  let total = 0;
  for (let offset = 0; offset < MAX_NODES; offset += PAGE_SIZE) {
    const query = apiQuery(filters);
    query.set("limit", String(PAGE_SIZE));
    query.set("offset", String(offset));
    const answer = await api(`/v1/nodes?${query}`);
    if (!answer.ok) throw new AnswerError(answer);
    for (const node of answer.data.items) byName.set(node.name, node);
    total = answer.data.total;
    if (offset + PAGE_SIZE >= total || answer.data.items.length === 0) break;
  }
  return { nodes: [...byName.values()], total };
}

async function fleetSize() {
  const answer = await api("/v1/nodes?limit=1");
  if (!answer.ok) throw new AnswerError(answer);
  return answer.data.total;
}

async function refresh() {
  const filters = readFilters();
  const [{ nodes, total }, fleet] = await Promise.all([
    loadNodes(filters),
    serverFiltered(filters) ? fleetSize() : Promise.resolve(null),
  ]);
  renderCounts(nodes, filters);
  const shown = nodes.filter((node) => {
    if (filters.show === "drift") return condition(node) === "drift";
    if (filters.show === "busy") return condition(node) === "busy";
    return true;
  });
  renderSummary(shown.length, total, fleet);
  renderRows(shown);
  $("#empty").hidden = shown.length > 0;
  const truncated = $("#truncated");
  truncated.hidden = nodes.length >= total;
  truncated.textContent = `Showing the first ${nodes.length} of ${total} matching nodes: narrow the filters to see the rest.`;
  for (const node of nodes) for (const tag of node.tags) knownTags.add(tag);
  renderTagList();
}

// --- rendering -------------------------------------------------------------------

function renderSummary(shown, total, fleet) {
  const noun = (n) => (n === 1 ? "node" : "nodes");
  let text = `${shown} ${noun(shown)}`;
  if (fleet !== null) text = `${shown} of ${fleet} ${noun(fleet)} match the filters`;
  else if (shown !== total) text = `${shown} of ${total} ${noun(total)} shown`;
  $("#summary").textContent = text;
}

function renderCounts(nodes, filters) {
  const counts = { total: nodes.length, on: 0, off: 0, unknown: 0, drift: 0, busy: 0, fault: 0, maintenance: 0 };
  for (const node of nodes) {
    counts[node.power_state] += 1;
    const state = condition(node);
    if (state) counts[state] += 1;
    if (node.power_fault) counts.fault += 1;
    if (node.maintenance) counts.maintenance += 1;
  }
  for (const button of document.querySelectorAll("#counts .count")) {
    const key = button.dataset.count;
    button.querySelector(".count-n").textContent = String(counts[key]);
    button.classList.toggle("is-zero", counts[key] === 0 && key !== "total");
    const active = key === filters.state || key === filters.show;
    button.setAttribute("aria-pressed", active ? "true" : "false");
  }
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
    node.power_fault, node.power_fault_reason, node.last_error, node.tags,
    r && [r.id, r.status, r.attempt, r.next_step],
  ]);
}

function renderRows(nodes) {
  const tbody = $("#nodes tbody");
  const existing = new Map([...tbody.children].map((tr) => [tr.dataset.node, tr]));
  const rows = nodes.map((node) => {
    const sig = signature(node);
    const old = existing.get(node.name);
    return old && old.dataset.sig === sig ? old : row(node, sig);
  });
  // Reorder/replace in place, leaving unchanged rows (and their buttons) alone.
  rows.forEach((tr, index) => {
    if (tbody.children[index] !== tr) tbody.insertBefore(tr, tbody.children[index] || null);
  });
  while (tbody.children.length > rows.length) tbody.lastElementChild.remove();
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
  if (identity.canAct) {
    tr.append(el("td", { className: "c-actions" }, [powerButtons(node.name, node.outstanding_request, () => poller.now())]));
  }
  return tr;
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
  if (node.maintenance) out.push(el("span", { className: "flag flag-maintenance", text: "maintenance", title: "The sweeper never corrects this node" }));
  if (node.power_fault) {
    out.push(el("span", { className: "flag flag-fault", text: "power fault", title: node.power_fault_reason || "Repeated BMC failures" }));
  }
  return out.length ? out : [el("span", { className: "muted", text: "–" })];
}

// --- start -------------------------------------------------------------------------

boot((who) => {
  identity = who;
  poller = poll(refresh, Number(document.body.dataset.refreshMs));
  wireFilters();
  startAgeTicker();
});
