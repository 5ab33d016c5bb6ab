// plural's page: ask a person which of two items they prefer, learn them online, and show what the
// model now thinks (recommendations, how sure it is, where they sit among the stored users).
// Plain JavaScript, no build step, nothing from the network but this server's /v1 API.
// See apps/web/README.md for what each panel calls.

const API = "/v1";
const ID_KEY = "plural.userId";        // localStorage: the person's id, kept across visits
const TOKEN_KEY = "plural.apiToken";   // sessionStorage: the bearer token, for this tab only
const N_RECS = 8;
const MAP_LIMIT = 500;
const BAR_MAX = 1.5;                   // the uncertainty bar's full length, in spreads between users
const MAP_W = 560, MAP_H = 300, MAP_PAD = 24;
const SVG_NS = "http://www.w3.org/2000/svg";

const el = (id) => document.getElementById(id);

const state = {
  userId: null,
  known: false,        // the server has this user (GET /v1/users/{id} is a 200)
  question: null,      // the pair on screen (GET /v1/users/{id}/next)
  busy: false,
  pending: null,       // an answer being sent: {comparison, key, create}; kept for "Try again"
  retry: null,         // what "Try again" does
  firstSd: null,       // total sd when this page first showed it (for "down from ...")
  sdHistory: [],       // total sd after each refresh that changed it, on this page
  spread: null,        // how far apart stored users are (from the map)
  trail: [],           // the user's map positions after each answer on this page
  lastRecIds: null,
  info: null,
  generation: 0,
};

// ------------------------------------------------------------------ talking to the server
class ApiError extends Error {
  constructor(status, statusText, detail, where) {
    super(`${where}: ${status} ${detailText(detail)}`);
    this.status = status;
    this.statusText = statusText;
    this.detail = detail;
    this.where = where;
  }
}

const REASONS = {400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 409: "Conflict", 413: "Payload Too Large",
                 422: "Unprocessable Content", 429: "Too Many Requests", 500: "Internal Server Error",
                 502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Timeout"};

function detailText(detail) {
  if (detail === null || detail === undefined || detail === "") return "";
  if (typeof detail === "string") return detail;
  try { return JSON.stringify(detail); } catch { return String(detail); }
}

async function api(method, path, body, { idempotencyKey } = {}) {
  const headers = { Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token && method !== "GET") headers.Authorization = `Bearer ${token}`;
  if (idempotencyKey) headers["Idempotency-Key"] = idempotencyKey;
  const where = `${method} ${API}${path.split("?")[0]}`;
  let response;
  try {
    response = await fetch(API + path, { method, headers, cache: "no-store",
                                         body: body === undefined ? undefined : JSON.stringify(body) });
  } catch (err) {
    throw new ApiError(0, "", `could not reach the server (${err.message})`, where);
  }
  const text = await response.text();
  let data = text;
  try { data = text ? JSON.parse(text) : null; } catch { /* not JSON: keep the text */ }
  if (!response.ok) {
    const detail = data && typeof data === "object" && "detail" in data ? data.detail : data;
    throw new ApiError(response.status, response.statusText || REASONS[response.status] || "", detail, where);
  }
  return data;
}

const userPath = () => `/users/${encodeURIComponent(state.userId)}`;

function randomHex(bytes) {
  const a = new Uint8Array(bytes);
  crypto.getRandomValues(a);  // works on plain http too (randomUUID needs a secure context)
  return Array.from(a, (b) => b.toString(16).padStart(2, "0")).join("");
}

// ------------------------------------------------------------------ messages
function setStatus(text) { el("status").textContent = text; }

function showError(err, retry) {
  const box = el("error");
  let title, text = detailText(err.detail ?? err.message);
  if (err instanceof ApiError && err.status === 0) {
    title = "Could not reach the server";
  } else if (err instanceof ApiError) {
    title = `The server answered ${err.status}${err.statusText ? " " + err.statusText : ""} (${err.where})`;
  } else {
    title = "Something went wrong on this page";
  }
  if (err.status === 401) {
    text = `${text.replace(/[\s.]*$/, "")}. Enter the API token under Settings, then your answer is sent again.`;
    showSettings(true);
    el("token-hint").textContent = "(this server needs one for answers)";
  }
  el("error-title").textContent = title;
  el("error-text").textContent = text || "(no details)";
  state.retry = retry || null;
  el("error-retry").hidden = !retry;
  box.hidden = false;
  if (err.status === 401) el("token-input").focus();
}

function showSettings(open) {
  el("settings").hidden = !open;
  el("settings-toggle").setAttribute("aria-expanded", open ? "true" : "false");
}

function hideError() {
  el("error").hidden = true;
  state.retry = null;
}

// ------------------------------------------------------------------ the question
function setChoicesEnabled(on) {
  for (const id of ["choose-a", "choose-b", "choose-tie"]) {
    const b = el(id);
    b.disabled = false;  // never disabled: a focused button keeps its focus while an answer is sent
    b.setAttribute("aria-disabled", on ? "false" : "true");
  }
  el("choices").setAttribute("aria-busy", on ? "false" : "true");
}

function itemLabel(item) { return item.text ?? item.item_id; }

function renderQuestion(q) {
  state.question = q;
  for (const side of ["a", "b"]) {
    const item = q[`item_${side}`];
    el(`text-${side}`).textContent = itemLabel(item);
    el(`text-${side}`).title = itemLabel(item);
    el(`id-${side}`).textContent = item.text ? `item ${item.item_id}` : "";
    el(`choose-${side}`).dataset.itemId = item.item_id;
    el(`choose-${side}`).setAttribute("aria-label", `Prefer the ${side === "a" ? "left" : "right"} one: ${itemLabel(item)}`);
  }
  const why = { eig: "Picked to tell the model the most about you.",
                targeted: "Picked to separate the items you might like most.",
                entropy: "Picked where the model is least sure which you prefer.",
                random: "Picked at random." }[q.strategy] || "";
  el("question-why").textContent = why;
  setChoicesEnabled(true);
}

function noQuestion(message) {
  state.question = null;
  el("question-why").textContent = message;
  el("text-a").textContent = el("text-b").textContent = "—";
  el("id-a").textContent = el("id-b").textContent = "";
  setChoicesEnabled(false);
}

async function answer(label) {
  if (state.busy || !state.question) return;
  const q = state.question;
  const comparison = { item_a: q.item_a.item_id, item_b: q.item_b.item_id, label };
  // the key makes a retry of this very answer count once, even if the first try reached the server
  state.pending = { comparison, key: `web-${randomHex(12)}`, create: !state.known,
                    said: label === 1 ? `you preferred “${itemLabel(q.item_a)}”`
                        : label === 0 ? `you preferred “${itemLabel(q.item_b)}”` : "no preference" };
  await submit();
}

async function submit() {
  const p = state.pending;
  if (!p || state.busy) return;
  state.busy = true;
  setChoicesEnabled(false);
  hideError();
  setStatus("Saving your answer…");
  try {
    if (p.create) {
      try {  // a new user is created with their first answer
        await api("POST", "/users", { user_id: state.userId, comparisons: [p.comparison] }, { idempotencyKey: p.key });
      } catch (err) {
        if (!(err instanceof ApiError && err.status === 409)) throw err;
        // someone (another tab) created them meanwhile: add the answer instead
        await api("POST", `${userPath()}/comparisons`, { comparisons: [p.comparison] },
                  { idempotencyKey: `${p.key}-add` });
      }
    } else {
      await api("POST", `${userPath()}/comparisons`, { comparisons: [p.comparison] }, { idempotencyKey: p.key });
    }
    state.pending = null;
    state.known = true;
  } catch (err) {
    state.busy = false;
    setStatus("Your answer was not saved.");
    setChoicesEnabled(!!state.question);
    showError(err, submit);
    return;
  }
  state.busy = false;
  await refresh(`Saved: ${p.said}.`);
}

// ------------------------------------------------------------------ what the model thinks
async function refresh(done) {
  const generation = ++state.generation;  // a later refresh (another user id) wins
  state.busy = true;
  setChoicesEnabled(false);
  const errors = [];
  let user = null;
  try {
    user = await api("GET", userPath());
    if (generation === state.generation) state.known = true;
  } catch (err) {
    if (!(err instanceof ApiError && err.status === 404)) errors.push(err);
    else if (generation === state.generation) state.known = false;  // new: asked from the population
  }
  const mapQuery = new URLSearchParams({ limit: String(MAP_LIMIT) });
  if (state.known) mapQuery.set("user_id", state.userId);
  const [q, recs, map] = await Promise.allSettled([
    api("GET", `${userPath()}/next`),
    api("POST", "/recommend", { user_id: state.known ? state.userId : null, n: N_RECS, exclude_judged: true }),
    api("GET", `/map?${mapQuery}`),
  ]);
  if (generation !== state.generation) return;
  state.busy = false;
  renderCount(user, q.status === "fulfilled" ? q.value : null);
  if (q.status === "fulfilled") renderQuestion(q.value);
  else { errors.push(q.reason); noQuestion("No question could be loaded."); }
  if (recs.status === "fulfilled") renderRecs(recs.value);
  else errors.push(recs.reason);
  if (map.status === "fulfilled") state.spread = spreadOf(map.value);
  renderSure(user);
  if (map.status === "fulfilled") renderMap(map.value, user);
  else errors.push(map.reason);
  if (errors.length) {
    showError(errors[0], () => { hideError(); return refresh(); });
    setStatus(done ? `${done} Some of the page could not be updated.` : "");
  } else {
    setStatus(done ? `${done} Recommendations, certainty and map updated.` : "");
  }
  document.body.dataset.updates = String(Number(document.body.dataset.updates || 0) + 1);
}

function renderCount(user, q) {
  const n = user ? user.n_comparisons : q ? q.n_comparisons : 0;
  el("answer-count").textContent = `${n} ${n === 1 ? "answer" : "answers"}`;
  el("answer-count").dataset.n = String(n);
}

function renderRecs(out) {
  const list = el("recs");
  const ids = out.items.map((i) => i.item_id);
  const before = state.lastRecIds ? new Set(state.lastRecIds) : null;
  list.replaceChildren();
  for (const item of out.items) {
    const li = document.createElement("li");
    li.dataset.itemId = item.item_id;
    li.dataset.score = String(item.score);
    const text = document.createElement("span");
    text.className = "rec-text";
    text.textContent = itemLabel(item);
    text.title = itemLabel(item);
    const meta = document.createElement("span");
    meta.className = "rec-meta";
    meta.textContent = `score ${item.score.toFixed(3)}`;
    li.append(text, meta);
    if (before && !before.has(item.item_id)) {
      const tag = document.createElement("span");
      tag.className = "tag";
      tag.textContent = "new";
      li.append(tag);
    }
    list.append(li);
  }
  if (!out.items.length) {
    const li = document.createElement("li");
    li.className = "empty";
    li.textContent = "Nothing left to recommend: you have judged every item.";
    list.append(li);
  }
  state.lastRecIds = ids;
  el("recs-title").textContent = out.user_id ? "Top picks for you" : "Popular with everyone";
  el("recs-note").textContent = out.user_id
    ? "Best first, leaving out what you have already judged; “new” marks a pick that just arrived."
    : "Until you answer, these are the population's favourites.";
}

function spreadOf(map) {
  // the standard deviation of the stored users' positions (all directions: the two drawn ones
  // carry `explained` of the variance): how far apart users are, to compare the user's sd with
  const pts = map.points;
  if (!pts || pts.length < 2) return null;
  const n = pts.length;
  let mx = 0, my = 0;
  for (const [x, y] of pts) { mx += x / n; my += y / n; }
  let v = 0;
  for (const [x, y] of pts) v += ((x - mx) ** 2 + (y - my) ** 2) / (n - 1);
  const explained = (map.explained_variance_ratio || []).reduce((a, b) => a + b, 0);
  const total = explained > 0 ? v / explained : v;
  return total > 0 ? Math.sqrt(total) : null;
}

function sureWords(ratio) {
  if (ratio >= 0.9) return "Not sure yet: it cannot tell you apart from most users.";
  if (ratio >= 0.6) return "Getting an idea: it can place you roughly.";
  if (ratio >= 0.35) return "Fairly sure where you stand.";
  return "Quite sure where you stand.";
}

function renderSure(user) {
  const bar = el("sure-bar"), fill = el("sure-fill");
  const sd = user ? user.total_sd : null;
  if (sd === null || sd === undefined) {
    el("sure-words").textContent = state.known ? "This model keeps no uncertainty for users."
                                               : "Nothing known about you yet.";
    el("sure-number").textContent = state.known ? "" : "Answer a question to start.";
    fill.style.width = "100%";
    fill.classList.add("unknown");
    bar.setAttribute("aria-valuenow", String(BAR_MAX * 100));
    bar.setAttribute("aria-valuetext", "unknown");
    delete bar.dataset.totalSd;
    el("sure-history").textContent = "";
    return;
  }
  if (state.firstSd === null) state.firstSd = sd;
  if (state.sdHistory[state.sdHistory.length - 1] !== sd) state.sdHistory.push(sd);
  const spread = state.spread;
  const ratio = spread ? sd / spread : sd / state.firstSd;
  const words = spread ? sureWords(ratio) : (ratio < 0.999 ? "Less unsure than before." : "As unsure as when you started.");
  const shown = Math.min(ratio, BAR_MAX);
  fill.classList.remove("unknown");
  fill.style.width = `${(100 * shown) / BAR_MAX}%`;
  bar.dataset.totalSd = String(sd);
  bar.setAttribute("aria-valuenow", String(Math.round(shown * 100)));
  const pct = Math.round(ratio * 100);
  bar.setAttribute("aria-valuetext", `${words} Uncertainty ${sd.toFixed(3)}` +
                   (spread ? `, ${pct}% of how far apart users are.` : "."));
  el("sure-words").textContent = words;
  let number = `Uncertainty ${sd.toFixed(3)}: how far off its guess of where you stand may be (one standard deviation).`;
  if (spread) number += ` Users differ from the average user by about ${spread.toFixed(3)}, so this is ${pct}% of that.`;
  if (sd < state.firstSd - 5e-4) number += ` Down from ${state.firstSd.toFixed(3)}, the first value shown here.`;
  el("sure-number").textContent = number;
  const hist = state.sdHistory.slice(-8).map((v) => v.toFixed(3));
  el("sure-history").textContent = hist.length > 1
    ? `After each answer here: ${state.sdHistory.length > 8 ? "… → " : ""}${hist.join(" → ")}` : "";
}

// ------------------------------------------------------------------ the map (inline SVG)
function svg(name, attrs, text) {
  const node = document.createElementNS(SVG_NS, name);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  if (text !== undefined) node.textContent = text;
  return node;
}

function renderMap(m, user) {
  const root = el("map");
  const pts = m.points || [];
  const you = m.user;
  if (you) {
    const last = state.trail[state.trail.length - 1];
    if (!last || last.x !== you.x || last.y !== you.y) state.trail.push({ x: you.x, y: you.y });
  }
  const xs = pts.map((p) => p[0]).concat(state.trail.map((p) => p.x));
  const ys = pts.map((p) => p[1]).concat(state.trail.map((p) => p.y));
  const desc = svg("desc", { id: "map-desc" });
  const nodes = [desc];
  if (!xs.length) {
    desc.textContent = "No stored users to draw yet.";
    nodes.push(svg("text", { x: MAP_W / 2, y: MAP_H / 2, "text-anchor": "middle", class: "map-empty" },
                   "No stored users yet."));
    root.replaceChildren(...nodes);
    delete root.dataset.userX;
    return;
  }
  // one scale for both axes: distances on the map are distances between users
  const x0 = Math.min(...xs), x1 = Math.max(...xs), y0 = Math.min(...ys), y1 = Math.max(...ys);
  const span = Math.max(x1 - x0, y1 - y0, 1e-9);
  const s = Math.min((MAP_W - 2 * MAP_PAD) / Math.max(x1 - x0, span * 1e-3),
                     (MAP_H - 2 * MAP_PAD) / Math.max(y1 - y0, span * 1e-3));
  const cx = (x0 + x1) / 2, cy = (y0 + y1) / 2;
  const X = (x) => MAP_W / 2 + (x - cx) * s;
  const Y = (y) => MAP_H / 2 - (y - cy) * s;
  const ev = m.explained_variance_ratio || [];
  const pct = (i) => (ev[i] !== undefined ? ` (${Math.round(ev[i] * 100)}% of the differences)` : "");

  nodes.push(svg("rect", { x: 0.5, y: 0.5, width: MAP_W - 1, height: MAP_H - 1, class: "map-frame" }));
  nodes.push(svg("line", { x1: MAP_PAD / 2, y1: Y(0), x2: MAP_W - MAP_PAD / 2, y2: Y(0), class: "map-axis" }));
  nodes.push(svg("line", { x1: X(0), y1: MAP_PAD / 2, x2: X(0), y2: MAP_H - MAP_PAD / 2, class: "map-axis" }));
  nodes.push(svg("text", { x: MAP_W - 6, y: MAP_H - 6, "text-anchor": "end", class: "map-label" },
                 `first direction${pct(0)} →`));
  nodes.push(svg("text", { x: 8, y: 14, class: "map-label" }, `↑ second direction${pct(1)}`));
  const others = svg("g", { class: "map-users" });
  for (const [x, y] of pts) others.append(svg("circle", { cx: X(x).toFixed(1), cy: Y(y).toFixed(1), r: 3.5 }));
  nodes.push(others);

  if (you) {
    const ux = X(you.x), uy = Y(you.y);
    const sd = user && user.total_sd;
    if (sd) {  // the projected sd is at most the total sd: a circle of that radius is a safe bound
      nodes.push(svg("circle", { cx: ux.toFixed(1), cy: uy.toFixed(1), r: (sd * s).toFixed(1), class: "map-sd" }));
    }
    if (state.trail.length > 1) {
      nodes.push(svg("polyline", { class: "map-trail",
                                   points: state.trail.map((p) => `${X(p.x).toFixed(1)},${Y(p.y).toFixed(1)}`).join(" ") }));
    }
    const me = svg("g", { class: "map-you", id: "map-you" });
    me.append(svg("circle", { cx: ux.toFixed(1), cy: uy.toFixed(1), r: 7 }));
    const right = ux < MAP_W - 60;
    me.append(svg("text", { x: (right ? ux + 11 : ux - 11).toFixed(1), y: (uy + 4).toFixed(1),
                            "text-anchor": right ? "start" : "end" }, "You"));
    nodes.push(me);
    root.dataset.userX = String(you.x);
    root.dataset.userY = String(you.y);
    desc.textContent = `${m.n_users} stored users (${pts.length} drawn). Your point is at ` +
      `(${you.x.toFixed(3)}, ${you.y.toFixed(3)}) after ${state.trail.length} position` +
      `${state.trail.length === 1 ? "" : "s"} on this page.`;
  } else {
    delete root.dataset.userX;
    delete root.dataset.userY;
    desc.textContent = `${m.n_users} stored users (${pts.length} drawn). You are not on the map yet: answer a question.`;
  }
  root.replaceChildren(...nodes);
}

// ------------------------------------------------------------------ set-up
function setUser(id) {
  state.userId = id;
  localStorage.setItem(ID_KEY, id);
  state.known = false;
  state.firstSd = null;
  state.sdHistory = [];
  state.trail = [];
  state.lastRecIds = null;
  state.pending = null;
  el("user-id").textContent = id;
  el("user-input").value = id;
}

async function waitReady() {
  for (let tries = 0; ; tries++) {
    let body = {};
    try {
      const r = await fetch(`${API}/ready`, { cache: "no-store" });
      body = await r.json().catch(() => ({}));
      if (r.ok) return;
      if (body.error) throw new ApiError(r.status, r.statusText, `the server failed to load: ${body.error}`, "GET /v1/ready");
      setStatus(`The server is starting (${body.status || "loading"})…`);
    } catch (err) {
      if (err instanceof ApiError) throw err;
      setStatus("Waiting for the server…");
    }
    await new Promise((ok) => setTimeout(ok, Math.min(500 + 250 * tries, 3000)));
  }
}

function wire() {
  el("choose-a").addEventListener("click", () => answer(1));
  el("choose-b").addEventListener("click", () => answer(0));
  el("choose-tie").addEventListener("click", () => answer(0.5));
  document.addEventListener("keydown", (e) => {
    if (e.altKey || e.ctrlKey || e.metaKey || e.shiftKey) return;
    const t = e.target;
    if (t && (t.closest("input, textarea, select, [contenteditable]"))) return;
    const label = { ArrowLeft: 1, ArrowRight: 0, ArrowDown: 0.5 }[e.key];
    if (label === undefined || !state.question) return;
    e.preventDefault();
    answer(label);
  });
  el("settings-toggle").addEventListener("click", () => showSettings(el("settings").hidden));
  el("error-close").addEventListener("click", hideError);
  el("error-retry").addEventListener("click", () => { const again = state.retry; hideError(); if (again) again(); });
  el("token-input").value = sessionStorage.getItem(TOKEN_KEY) || "";
  el("token-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const token = el("token-input").value.trim();
    if (token) sessionStorage.setItem(TOKEN_KEY, token); else sessionStorage.removeItem(TOKEN_KEY);
    setStatus(token ? "Token saved for this tab." : "Token removed.");
    if (state.pending) {  // the answer that was refused: send it again, then back to the question
      hideError();
      submit().then(() => {
        if (!state.pending) { showSettings(false); el("choose-a").focus(); }
      });
    }
  });
  el("user-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const id = el("user-input").value.trim();
    if (!id) { showError(new Error("A user id cannot be empty.")); return; }
    hideError();
    setUser(id);
    refresh(`Now answering as ${id}.`);
  });
  el("new-user").addEventListener("click", () => {
    hideError();
    setUser(`web-${randomHex(8)}`);
    refresh("Started over with a new id.");
  });
}

async function start() {
  try {
    await waitReady();
    const info = await api("GET", "/info");
    state.info = info;
    el("server-info").textContent = `Model ${info.model} · ${info.n_items} items · ${info.n_users} users`;
    if (info.auth_required_for_writes) {
      el("token-hint").textContent = "(this server needs one for answers)";
      if (!sessionStorage.getItem(TOKEN_KEY)) showSettings(true);
    }
  } catch (err) {
    showError(err, start);
    return;
  }
  await refresh();
  document.body.dataset.ready = "true";
}

wire();
setUser(localStorage.getItem(ID_KEY) || `web-${randomHex(8)}`);
start();
