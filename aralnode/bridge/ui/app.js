// The live mesh page: everything it shows comes from the node's REST API and its
// WebSocket door, called with the credential the user typed in (kept in
// sessionStorage, sent as Authorization). Data from the mesh is only ever set as
// textContent: peer names and capability ids come from outsiders.

const CREDENTIAL_KEY = "aralnode.credential";
const POLL_MS = 1000; // status and peers: the channel rates are their differences
const MAX_DECISIONS = 50;
const MAX_RECONNECT_MS = 10000;
// The page's own reads, every second: their decisions would bury the others, so
// those that passed are left out (a refused one is shown).
const OWN_READS = new Set([
  "aral.v1.AgentNode/GetStatus", "aral.v1.AgentNode/ListPeers", "aral.v1.AgentNode/ListCapabilities",
]);

const $ = (id) => document.getElementById(id);
const state = {
  status: null, peers: [], counts: new Map(), socket: null, retryMs: 500, selected: null, polling: false, generation: 0, refreshTimer: 0,
};

function el(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (className) node.className = className;
  return node;
}

function row(cells) {
  const tr = document.createElement("tr");
  for (const cell of cells) tr.append(cell instanceof Node ? cell : el("td", cell));
  return tr;
}

function credential() {
  return sessionStorage.getItem(CREDENTIAL_KEY) || "";
}

function authHeaders() {
  const value = credential();
  return value ? { Authorization: `Bearer ${value}` } : {};
}

// What went wrong, by source ("api", "live", "capabilities"): each clears its own.
const problems = new Map();

function showProblem(source, text) {
  if (text) problems.set(source, text);
  else problems.delete(source);
  const p = $("problem");
  p.textContent = [...problems.values()].join(" · ");
  p.hidden = problems.size === 0;
}

class ApiError extends Error {
  constructor(status, body) {
    const e = (body && body.error) || {};
    super(`${status} ${e.code || ""} ${e.reason || ""}: ${e.message || "request failed"}`);
    this.status = status;
    this.body = body;
  }
}

async function api(path, init = {}) {
  const headers = { Accept: "application/json", ...authHeaders(), ...(init.headers || {}) };
  const response = await fetch(path, { ...init, headers, cache: "no-store", credentials: "omit" });
  const text = await response.text();
  let body = null;
  try { body = text ? JSON.parse(text) : null; } catch { body = { error: { message: text } }; }
  if (!response.ok) throw new ApiError(response.status, body);
  return body;
}

function shortId(id) {
  return id && id.length > 16 ? `${id.slice(0, 16)}…` : id || "";
}

function stateCell(value) {
  return el("td", value || "", value ? `state-${value}` : "");
}

function renderNodes() {
  const body = $("nodes").tBodies[0];
  const rows = [];
  const s = state.status;
  if (s) {
    const grpc = (s.endpoints || []).find((e) => e.protocol === "grpc");
    const me = row([el("td", `${s.name} (this node)`), el("td", shortId(s.nodeId), "id"),
      el("td", grpc ? grpc.address : ""), stateCell(s.state), el("td", ""), el("td", "")]);
    me.dataset.nodeId = s.nodeId;
    me.dataset.self = "true";
    rows.push(me);
  }
  for (const p of state.peers) {
    const tr = row([el("td", p.name), el("td", shortId(p.nodeId), "id"), el("td", p.address),
      stateCell(p.state), stateCell(p.health), el("td", p.breakerState)]);
    tr.dataset.nodeId = p.nodeId;
    rows.push(tr);
  }
  body.replaceChildren(...rows);
}

function rate(value) {
  return Number.isFinite(value) ? value.toFixed(1) : "–";
}

function renderChannels() {
  const rows = [];
  for (const p of state.peers) {
    const c = state.counts.get(p.nodeId);
    // A channel is a verified peer's: one only discovered has none yet.
    if (!c || (p.state !== "PEER_STATE_CONNECTED" && !c.sent && !c.received)) continue;
    const tr = row([el("td", p.name), el("td", c.sent, "num sent"), el("td", c.received, "num received"),
      el("td", rate(c.sentRate), "num sent-rate"), el("td", rate(c.receivedRate), "num received-rate")]);
    tr.dataset.nodeId = p.nodeId;
    rows.push(tr);
  }
  $("channels").tBodies[0].replaceChildren(...rows);
}

function updateCounts(peers, now) {
  for (const p of peers) {
    const sent = Number(p.channelSentSeq || 0);
    const received = Number(p.channelReceivedSeq || 0);
    const before = state.counts.get(p.nodeId);
    const seconds = before ? (now - before.at) / 1000 : 0;
    state.counts.set(p.nodeId, {
      sent, received, at: now,
      sentRate: seconds > 0 ? Math.max(0, sent - before.sent) / seconds : NaN,
      receivedRate: seconds > 0 ? Math.max(0, received - before.received) / seconds : NaN,
    });
  }
}

async function poll() {
  if (state.polling) return; // one at a time: a slow node is not asked twice
  state.polling = true;
  const generation = state.generation;
  try {
    const [status, peers] = await Promise.all([api("/v1/status"), api("/v1/peers")]);
    if (generation !== state.generation) return; // asked with a credential since replaced
    state.status = status;
    state.peers = peers.peers || [];
    updateCounts(state.peers, performance.now());
    $("node-title").textContent = `— ${status.name}`;
    renderNodes();
    renderChannels();
    showProblem("api", "");
  } catch (err) {
    if (generation !== state.generation) return;
    state.status = null;
    state.peers = [];
    renderNodes();
    renderChannels();
    showProblem("api", err.message);
  } finally {
    state.polling = false;
  }
}

function schemaSkeleton(schema) {
  if (!schema || typeof schema !== "object") return {};
  if ("default" in schema) return schema.default;
  switch (schema.type) {
    case "string": return "";
    case "integer": case "number": return 0;
    case "boolean": return false;
    case "array": return [];
    case "object": {
      const out = {};
      for (const [name, sub] of Object.entries(schema.properties || {})) out[name] = schemaSkeleton(sub);
      return out;
    }
    default: return schema.properties ? schemaSkeleton({ ...schema, type: "object" }) : null;
  }
}

function selectCapability(cap) {
  state.selected = cap;
  $("invoke-capability").textContent = cap.to ? `${cap.id} on ${cap.toName}` : cap.id;
  $("invoke-description").textContent = cap.description || "";
  $("invoke-params").value = JSON.stringify(schemaSkeleton(cap.inputSchema) || {}, null, 2);
  const out = $("invoke-output");
  out.textContent = "";
  out.dataset.state = "";
  $("invoke-form").hidden = false;
}

function capabilityItem(cap) {
  const li = el("li");
  const button = el("button", cap.id);
  button.type = "button";
  button.dataset.capability = cap.id;
  if (cap.to) button.dataset.to = cap.to;
  button.addEventListener("click", () => selectCapability(cap));
  li.append(button);
  if (cap.to) li.append(el("span", ` on ${cap.toName}`, "muted"));
  if (cap.description) li.append(el("span", ` — ${cap.description}`, "muted"));
  return li;
}

async function loadCapabilities() {
  const generation = state.generation;
  try {
    const own = await api("/v1/capabilities");
    if (generation !== state.generation) return;
    const caps = (own.capabilities || []).map((c) => ({ ...c }));
    for (const p of state.peers) {
      if (p.state !== "PEER_STATE_CONNECTED") continue;
      for (const id of p.capabilityIds || []) caps.push({ id, to: p.nodeId, toName: p.name });
    }
    $("capabilities").replaceChildren(...caps.map(capabilityItem));
    showProblem("capabilities", "");
  } catch (err) {
    if (generation !== state.generation) return;
    $("capabilities").replaceChildren();
    showProblem("capabilities", err.message);
  }
}

async function invoke(event) {
  event.preventDefault();
  const cap = state.selected;
  const out = $("invoke-output");
  if (!cap) return;
  let parameters;
  try {
    parameters = JSON.parse($("invoke-params").value || "{}");
  } catch (err) {
    out.dataset.state = "error";
    out.textContent = `parameters are not JSON: ${err.message}`;
    return;
  }
  const call = { capability: cap.id, parameters };
  if (cap.to) call.to = cap.to;
  out.dataset.state = "running";
  out.textContent = "…";
  try {
    const answer = await api("/v1/invoke", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ call }),
    });
    out.dataset.state = "ok";
    out.textContent = JSON.stringify(answer.result ? answer.result.result : answer, null, 2);
  } catch (err) {
    out.dataset.state = "error";
    out.textContent = err.body ? JSON.stringify(err.body, null, 2) : err.message;
  }
}

function addDecision(ev) {
  const d = ev.data || {};
  if (d.decision === "ok" && d.door === "rest" && OWN_READS.has(d.action)) return;
  const li = el("li", `${ev.timestamp} ${d.decision} ${d.action} (${d.direction}) by ${d.caller || "anonymous"} via ${d.door}`,
    `decision-${d.decision}`);
  if (d.reasons && d.reasons.length) li.append(el("span", ` — ${d.reasons.join("; ")}`, "muted"));
  const list = $("decisions");
  list.prepend(li);
  while (list.children.length > MAX_DECISIONS) list.lastElementChild.remove();
}

// Peers and capabilities change in bursts (a mesh starting): one refresh per burst,
// at most one every REFRESH_MS, so the page never floods the node with requests.
const REFRESH_MS = 300;

function scheduleRefresh() {
  if (state.refreshTimer) return;
  state.refreshTimer = setTimeout(() => {
    state.refreshTimer = 0;
    poll().then(loadCapabilities);
  }, REFRESH_MS);
}

function base64url(text) {
  const bytes = new TextEncoder().encode(text);
  let binary = "";
  for (const b of bytes) binary += String.fromCharCode(b);
  return btoa(binary).replaceAll("+", "-").replaceAll("/", "_").replace(/=+$/, "");
}

function setConnection(text, value) {
  $("connection").textContent = text;
  document.body.dataset.socket = value;
}

function connect() {
  const protocols = ["aral.v1"];
  const value = credential();
  // A browser cannot set Authorization on a WebSocket: the door reads it from here.
  if (value) protocols.push(`aral.bearer.${base64url(value)}`);
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const socket = new WebSocket(`${scheme}//${location.host}/ws`, protocols);
  state.socket = socket;
  setConnection("connecting…", "connecting");
  socket.addEventListener("open", () => {
    state.retryMs = 500;
    showProblem("live", "");
    setConnection("live", "open");
    socket.send(JSON.stringify({ type: "subscribe", agent_id: "*", channels: ["peers", "capabilities", "decisions", "status"] }));
  });
  socket.addEventListener("message", (message) => {
    let msg;
    try { msg = JSON.parse(message.data); } catch { return; }
    if (msg.type === "error") {
      showProblem("live", `live events: ${(msg.error && msg.error.message) || "refused"}`);
    } else if (msg.type === "event" && msg.channel === "decisions") {
      addDecision(msg);
    } else if (msg.type === "event" && (msg.channel === "peers" || msg.channel === "capabilities")) {
      scheduleRefresh();
    }
  });
  socket.addEventListener("close", () => {
    if (state.socket !== socket) return; // replaced by a new credential's
    setConnection("live events disconnected: retrying", "closed");
    const wait = state.retryMs;
    state.retryMs = Math.min(state.retryMs * 2, MAX_RECONNECT_MS);
    setTimeout(() => { if (state.socket === socket) connect(); }, wait);
  });
}

function restart() {
  const old = state.socket;
  state.socket = null;
  if (old) old.close();
  // Nothing seen with the old credential stays on the page.
  $("decisions").replaceChildren();
  $("capabilities").replaceChildren();
  $("invoke-form").hidden = true;
  $("invoke-output").textContent = "";
  state.selected = null;
  problems.clear();
  state.generation += 1; // answers to the old credential's requests are dropped
  state.polling = false;
  state.counts.clear();
  poll().then(loadCapabilities);
  connect();
}

function start() {
  $("credential-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const value = $("credential").value.trim();
    if (value) sessionStorage.setItem(CREDENTIAL_KEY, value);
    else sessionStorage.removeItem(CREDENTIAL_KEY);
    $("credential").value = "";
    restart();
  });
  $("forget").addEventListener("click", () => {
    sessionStorage.removeItem(CREDENTIAL_KEY);
    restart();
  });
  $("invoke-form").addEventListener("submit", invoke);
  poll().then(loadCapabilities);
  connect();
  setInterval(poll, POLL_MS);
}

start();
