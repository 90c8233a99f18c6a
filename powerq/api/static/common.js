// Shared by every page: the token, API calls, sign-in, messages, the
// confirmation dialog, roles and the formatting of states, times and durations.
// The buttons that change things are in actions.js.
//
// Every value from the API is put into the page with textContent (never as
// HTML), so a BMC error message cannot inject markup.

const TOKEN_KEY = "powerq.token";
const CALL_TIMEOUT_MS = 15000;
const MAX_MESSAGES = 6;
const SUCCESS_MESSAGE_MS = 10000;

export const ACTION_LABEL = {
  on: "Power on",
  off: "Power off",
  soft_off: "Soft off",
  cycle: "Power cycle",
  reset: "Reset",
  query: "Query",
  validate: "Validate",
};

// --- token (sessionStorage only; never in a URL, never in localStorage) -----

export const tokenStore = {
  get() {
    return sessionStorage.getItem(TOKEN_KEY);
  },
  set(token) {
    sessionStorage.setItem(TOKEN_KEY, token);
  },
  clear() {
    sessionStorage.removeItem(TOKEN_KEY);
  },
};

// --- API calls ---------------------------------------------------------------

export class NetworkError extends Error {}

/** An API answer that was not what the caller needed (status + problem document). */
export class AnswerError extends Error {
  constructor(answer) {
    super(problemText(answer));
    this.answer = answer;
  }
}

/**
 * Call the JSON API with the stored token.
 * Resolves to {status, ok, data} for every HTTP answer (data: the parsed JSON
 * or problem document, or null); rejects with NetworkError when there is none.
 */
export async function api(path, { method = "GET", body, token = tokenStore.get() } = {}) {
  const headers = { Accept: "application/json, application/problem+json" };
  if (token) headers.Authorization = `Bearer ${token}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const abort = new AbortController();
  const timer = setTimeout(() => abort.abort(), CALL_TIMEOUT_MS);
  let response;
  try {
    response = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      signal: abort.signal,
      cache: "no-store",
      credentials: "omit",
      redirect: "error",
    });
  } catch (error) {
    const why = error.name === "AbortError"
      ? `no answer within ${CALL_TIMEOUT_MS / 1000} s`
      : "the server could not be reached";
    throw new NetworkError(why);
  } finally {
    clearTimeout(timer);
  }
  let data = null;
  if ((response.headers.get("Content-Type") || "").includes("json")) {
    try {
      data = await response.json();
    } catch {
      data = null;
    }
  }
  if (response.status === 401 && token && token === tokenStore.get()) {
    signedOut("Your token was not accepted any more (revoked?). Sign in again.");
  }
  return { status: response.status, ok: response.ok, data };
}

/** A one-line reason for a non-2xx answer, from its problem document. */
export function problemText(answer) {
  const problem = answer.data || {};
  const text = problem.detail || problem.title || "";
  return text ? `${text} (HTTP ${answer.status})` : `HTTP ${answer.status}`;
}

// --- small DOM helpers -------------------------------------------------------

/** Create an element: el("a", {href, text, className, title, dataset}, [children]). */
export function el(tag, props = {}, children = []) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "text") node.textContent = value;
    else if (key === "className") node.className = value;
    else if (key === "dataset") Object.assign(node.dataset, value);
    else if (key === "hidden") node.hidden = Boolean(value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of [].concat(children)) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export const $ = (selector, root = document) => root.querySelector(selector);

export function nodeHref(name) {
  return `/nodes/${encodeURIComponent(name)}`;
}

// --- messages ----------------------------------------------------------------

/** Show a message; success/info fade after a while, warnings and errors stay until closed. */
export function notify(kind, title, detail = "") {
  const box = $("#messages");
  const close = el("button", { type: "button", className: "message-close", "aria-label": "Dismiss", text: "×" });
  const message = el(
    "div",
    { className: `message message-${kind}`, role: kind === "error" ? "alert" : "status", dataset: { kind } },
    [el("div", { className: "message-body" }, [
      el("strong", { className: "message-title", text: title }),
      detail ? el("span", { className: "message-detail", text: detail }) : null,
    ]), close],
  );
  close.addEventListener("click", () => message.remove());
  box.prepend(message);
  while (box.children.length > MAX_MESSAGES) box.lastElementChild.remove();
  if (kind === "success" || kind === "info") setTimeout(() => message.remove(), SUCCESS_MESSAGE_MS);
  return message;
}

// --- formatting --------------------------------------------------------------

const timeOfDay = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false });
const dayAndTime = new Intl.DateTimeFormat(undefined, {
  month: "short", day: "numeric", hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false,
});

/** "14:02:03" today, "May 3, 14:02:03" otherwise. */
export function clock(iso) {
  if (!iso) return "–";
  const when = new Date(iso);
  const today = new Date().toDateString() === when.toDateString();
  return (today ? timeOfDay : dayAndTime).format(when);
}

/** "just now", "12 s ago", "4 min ago", "3 h ago", "2 d ago". */
export function ago(iso, now = Date.now()) {
  if (!iso) return "never";
  const seconds = Math.max(0, Math.round((now - new Date(iso).getTime()) / 1000));
  if (seconds < 3) return "just now";
  if (seconds < 90) return `${seconds} s ago`;
  const minutes = Math.round(seconds / 60);
  if (minutes < 90) return `${minutes} min ago`;
  const hours = Math.round(minutes / 60);
  if (hours < 36) return `${hours} h ago`;
  return `${Math.round(hours / 24)} d ago`;
}

/** "0.8 s", "12 s", "3 min 4 s", "2 h 5 min". */
export function duration(ms) {
  if (ms === null || ms === undefined || Number.isNaN(ms)) return "–";
  const s = Math.max(0, ms) / 1000;
  if (s < 10) return `${s.toFixed(1)} s`;
  if (s < 90) return `${Math.round(s)} s`;
  const m = Math.floor(s / 60);
  if (m < 90) return `${m} min ${Math.round(s - m * 60)} s`;
  return `${Math.floor(m / 60)} h ${m % 60} min`;
}

export function between(fromIso, toIso) {
  if (!fromIso || !toIso) return null;
  return new Date(toIso).getTime() - new Date(fromIso).getTime();
}

/** An element showing how long ago `iso` was, kept current by the age ticker. */
export function since(iso, prefix = "") {
  const span = el("span", { className: "age", title: iso ? `${clock(iso)} (${iso})` : undefined });
  if (iso) span.dataset.since = iso;
  span.dataset.prefix = prefix;
  span.textContent = prefix + ago(iso);
  return span;
}

export function startAgeTicker() {
  setInterval(() => {
    const now = Date.now();
    for (const span of document.querySelectorAll("[data-since]")) {
      span.textContent = span.dataset.prefix + ago(span.dataset.since, now);
    }
  }, 1000);
}

// --- states ------------------------------------------------------------------

export function stateBadge(state, { desired = false } = {}) {
  if (!state) {
    return el("span", { className: "badge desired state-none", text: "none", title: "Nobody has asked for a power state", dataset: { state: "none" } });
  }
  const title = desired ? `Desired: ${state} (set by the last power request)` : `Observed: ${state} (as last read from the BMC)`;
  return el("span", { className: `badge state-${state}${desired ? " desired" : ""}`, text: state, title, dataset: { state } });
}

export function statusBadge(status) {
  return el("span", { className: `badge status-${status}`, text: status, dataset: { status } });
}

/** Whether observed matches desired; null when there is nothing to compare
 * (no desired state, or observed unknown). Same rule as the API's `in_sync`. */
export function inSync(node) {
  if (!node.desired_power_state || node.power_state === "unknown") return null;
  return node.power_state === node.desired_power_state;
}

/** "busy" (a request is outstanding), "drift" (out of sync, nothing outstanding), or "". */
export function condition(node) {
  if (node.outstanding_request) return "busy";
  if (inSync(node) === false) return "drift";
  return "";
}

/** "off · running (check) · attempt 2" as elements. */
export function requestSummary(request) {
  if (!request) return el("span", { className: "muted", text: "–" });
  const parts = [
    el("span", { className: "req-action", text: request.action.replace("_", " ") }),
    statusBadge(request.status),
  ];
  if (request.status === "running") parts.push(el("span", { className: "muted", text: request.next_step }));
  if (request.attempt > 0) parts.push(el("span", { className: "muted", text: `attempt ${request.attempt}` }));
  return el("span", { className: "req", title: `${request.id}\nrequested by ${request.requested_by}` }, parts);
}

// --- sign-in -----------------------------------------------------------------

let onSignedOut = null;

function signedOut(reason) {
  tokenStore.clear();
  if (onSignedOut) onSignedOut(reason);
}

function showLogin(reason) {
  $("#app").hidden = true;
  $("#identity").hidden = true;
  $("#login").hidden = false;
  const error = $("#login-error");
  error.hidden = !reason;
  error.textContent = reason || "";
  $("#token").focus();
}

function showIdentity(identity) {
  $("#actor").textContent = identity.actor;
  const role = $("#role");
  role.textContent = identity.role;
  role.dataset.role = identity.role;
  $("#identity").hidden = false;
  $("#login").hidden = true;
  $("#app").hidden = false;
  const canAct = allowed(identity, "operator");
  for (const node of document.querySelectorAll("[data-operator-only]")) node.hidden = !canAct;
}

async function whoami(token) {
  const answer = await api("/v1/whoami", { token });
  if (answer.ok) return { identity: answer.data };
  if (answer.status === 401) return { reason: "That token is not valid (unknown or revoked)." };
  return { reason: `Could not sign in: ${problemText(answer)}` };
}

/**
 * Sign in (stored token, or the form), then call start(identity) once.
 * identity is {actor, role} from GET /v1/whoami.
 */
export function boot(start) {
  let started = false;
  const enter = (identity) => {
    showIdentity(identity);
    if (!started) {
      started = true;
      start({ ...identity, canAct: allowed(identity, "operator"), canAdmin: allowed(identity, "admin") });
    }
  };
  onSignedOut = (reason) => {
    if (started) {
      // Start from a clean page so nothing of the previous session stays visible.
      sessionStorage.setItem("powerq.signout-reason", reason || "");
      location.reload();
    } else {
      showLogin(reason);
    }
  };
  $("#signout").addEventListener("click", () => signedOut(""));
  $("#login-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const input = $("#token");
    const token = input.value.trim();
    if (!token) return showLogin("Paste a token first.");
    const button = $("#login-submit");
    button.disabled = true;
    try {
      const { identity, reason } = await whoami(token);
      if (!identity) return showLogin(reason);
      tokenStore.set(token);
      input.value = "";
      enter(identity);
    } catch (error) {
      showLogin(`Could not reach powerq: ${error.message}.`);
    } finally {
      button.disabled = false;
    }
  });
  const reason = sessionStorage.getItem("powerq.signout-reason");
  sessionStorage.removeItem("powerq.signout-reason");
  resume(enter, reason);
}

async function resume(enter, reason) {
  const token = tokenStore.get();
  if (!token) return showLogin(reason);
  try {
    const { identity, reason: why } = await whoami(token);
    if (identity) return enter(identity);
    tokenStore.clear();
    showLogin(why);
  } catch (error) {
    showLogin(`Could not reach powerq: ${error.message}. Sign in to try again.`);
  }
}

// --- refreshing --------------------------------------------------------------

/**
 * Call refresh() now and then every intervalMs (one at a time; paused while
 * the tab is hidden). Returns {now()} to refresh at once (e.g. after an action).
 */
export function poll(refresh, intervalMs) {
  let timer = null;
  let running = false;
  let again = false;
  const state = $("#refresh-state");
  const text = $("#refresh-text");
  async function tick() {
    clearTimeout(timer);
    if (document.hidden) return schedule();
    running = true;
    try {
      await refresh();
      state.dataset.state = "ok";
      text.textContent = `Updated ${clock(new Date().toISOString())}`;
    } catch (error) {
      state.dataset.state = "error";
      const why = error instanceof NetworkError ? `Cannot reach powerq: ${error.message}` : error.message;
      text.textContent = `${why}. Retrying…`;
    } finally {
      running = false;
      if (again) {
        again = false;
        tick();
      } else {
        schedule();
      }
    }
  }
  function schedule() {
    clearTimeout(timer);
    timer = setTimeout(tick, intervalMs);
  }
  document.addEventListener("visibilitychange", () => {
    if (!document.hidden && !running) tick();
  });
  tick();
  return {
    now() {
      if (running) again = true;
      else tick();
    },
  };
}

// --- confirmation ------------------------------------------------------------

/** Ask in the page's <dialog> (never window.confirm); resolves true for OK. */
export function confirmDialog({ title, text, ok }) {
  const dialog = $("#confirm");
  $("#confirm-title").textContent = title;
  $("#confirm-text").textContent = text;
  $("#confirm-ok").textContent = ok;
  return new Promise((resolve) => {
    const answer = (event) => {
      const button = event.target.closest("button[data-answer]");
      if (!button) return;
      dialog.close(button.dataset.answer);
    };
    dialog.addEventListener("click", answer);
    dialog.addEventListener("close", () => {
      dialog.removeEventListener("click", answer);
      resolve(dialog.returnValue === "ok");
    }, { once: true });
    dialog.returnValue = "cancel";
    dialog.showModal();
    $("#confirm-ok").focus();
  });
}

// --- roles -------------------------------------------------------------------

const RANK = { reader: 0, operator: 1, admin: 2 };

/** Whether `identity` (from GET /v1/whoami) holds at least `role`. */
export function allowed(identity, role) {
  return (RANK[identity.role] ?? -1) >= RANK[role];
}
