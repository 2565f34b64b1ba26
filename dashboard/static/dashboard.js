// The dashboard page: draws the state /events pushes (dashboard/collector.py) as plain SVG
// and tables. No library, no build step.
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const NODE_W = 130, NODE_H = 44, COL_GAP = 110, ROW_GAP = 40, MARGIN = 30;
// What the page looks at; the event stream is opened again whenever it changes. The page's
// address may set it: /?window=60&service=orders&top=1.
const asked = new URLSearchParams(location.search);
const view = {window: asked.get("window") || "15", service: asked.get("service") || "",
  top: asked.get("top") === "1"};

// Kiali's thresholds on failed requests (5xx, resets): any is degraded, over 10 % failing.
function health(failed, share) {
  if (share === null || share === undefined) return "idle";
  if (1 - share > 0.10) return "failing";
  if (failed > 0) return "degraded";
  return "healthy";
}

// An edge is as healthy as its attempts: a failure a retry hid from the caller is still the
// callee failing (Kiali draws what the destination answered).
function edgeHealth(edge) {
  const shares = [edge.success, edge.attempt_success].filter((v) => v !== null && v !== undefined);
  return health(Math.max(edge.failed || 0, edge.attempts_failed || 0),
    shares.length ? Math.min(...shares) : null);
}

function fmt(value, digits) {
  return value === null || value === undefined ? "–" : value.toFixed(digits);
}

function percent(value) {
  return value === null || value === undefined ? "–" : `${(value * 100).toFixed(2)} %`;
}

function el(name, attrs, parent) {
  const node = document.createElementNS(SVG, name);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
  parent.appendChild(node);
  return node;
}

// One table row of plain text cells; `classes` names a class per cell (or undefined).
function row(body, id, cells, classes = []) {
  const tr = body.insertRow();
  if (id) tr.id = id;
  cells.forEach((text, i) => {
    const td = tr.insertCell();
    td.textContent = text;
    if (classes[i]) td.className = classes[i];
  });
  return tr;
}

function windowed(state) {
  return (state.golden || {})[view.window] || {edges: [], services: []};
}

// Layers: a service's column is the longest chain of callers before it.
function layout(services, edges) {
  const depth = new Map(services.map((s) => [s, 0]));
  for (let i = 0; i < services.length; i++) {
    for (const e of edges) {
      if (e.source !== e.destination && depth.get(e.destination) <= depth.get(e.source)) {
        depth.set(e.destination, depth.get(e.source) + 1);
      }
    }
  }
  const columns = new Map();
  for (const s of services) {
    const d = Math.min(depth.get(s), services.length);
    if (!columns.has(d)) columns.set(d, []);
    columns.get(d).push(s);
  }
  const at = new Map();
  for (const [d, names] of columns) {
    names.sort().forEach((s, i) => at.set(s, {
      x: MARGIN + d * (NODE_W + COL_GAP), y: MARGIN + i * (NODE_H + ROW_GAP)}));
  }
  return at;
}

function drawTopology(state) {
  const svg = document.getElementById("topology");
  svg.replaceChildren();
  const edges = windowed(state).edges;
  const counts = new Map((state.services || []).map((s) => [s.service, s]));
  const proxyless = new Set(state.proxyless || []);
  const names = new Set([...counts.keys(), ...proxyless]);
  for (const e of edges) { names.add(e.source); names.add(e.destination); }
  const services = [...names].sort();
  const at = layout(services, edges);
  let width = 0, height = 0;
  for (const p of at.values()) {
    width = Math.max(width, p.x + NODE_W + MARGIN);
    height = Math.max(height, p.y + NODE_H + MARGIN);
  }
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.style.maxWidth = `${width}px`;
  const defs = el("defs", {}, svg);
  for (const cls of ["healthy", "degraded", "failing", "idle"]) {
    const marker = el("marker", {id: `arrow-${cls}`, viewBox: "0 0 10 10", refX: 10, refY: 5,
      markerWidth: 7, markerHeight: 7, orient: "auto-start-reverse"}, defs);
    el("path", {d: "M 0 0 L 10 5 L 0 10 z", class: cls, fill: "currentColor"}, marker);
  }
  for (const e of edges) {
    const a = at.get(e.source), b = at.get(e.destination), cls = edgeHealth(e);
    const g = el("g", {class: "edge", id: `edge-${e.source}-${e.destination}`,
      "data-rps": e.rps, "data-success": e.success ?? ""}, svg);
    const x1 = a.x + NODE_W, y1 = a.y + NODE_H / 2, x2 = b.x, y2 = b.y + NODE_H / 2;
    const mx = (x1 + x2) / 2;
    el("path", {d: `M ${x1} ${y1} C ${mx} ${y1}, ${mx} ${y2}, ${x2} ${y2}`, class: cls,
      "marker-end": `url(#arrow-${cls})`}, g);
    const label = el("text", {x: mx, y: (y1 + y2) / 2 - 6, "text-anchor": "middle",
      class: "label"}, g);
    label.textContent = `${fmt(e.rps, 1)} rps · p99 ${fmt(e.p99_ms, 0)} ms`;
  }
  for (const s of services) {
    const p = at.get(s), info = counts.get(s);
    const classes = ["node", proxyless.has(s) ? "proxyless" : "",
      s === view.service ? "selected" : ""].join(" ").trim();
    const g = el("g", {class: classes, id: `node-${s}`,
      transform: `translate(${p.x},${p.y})`}, svg);
    g.addEventListener("click", () => choose({service: s}));
    el("rect", {width: NODE_W, height: NODE_H}, g);
    el("text", {x: NODE_W / 2, y: info || proxyless.has(s) ? 16 : NODE_H / 2}, g).textContent = s;
    const note = proxyless.has(s) ? "proxyless gRPC"
      : info ? `${info.healthy}/${info.instances} healthy` : "";
    if (note) el("text", {x: NODE_W / 2, y: 33, class: "count"}, g).textContent = note;
  }
}

function drawTables(state) {
  const meshed = new Map((state.services || []).map((s) => [s.service, s]));
  const services = document.querySelector("#services tbody");
  services.replaceChildren();
  for (const s of windowed(state).services) {
    const m = meshed.get(s.service);
    row(services, `svc-${s.service}`, [s.service, m ? `${m.healthy}/${m.instances}` : "–",
      percent(s.success), fmt(s.rps, 2), fmt(s.p50_ms, 1), fmt(s.p95_ms, 1),
      fmt(s.p99_ms, 1), `${s.connections ?? "–"}`, percent(s.mtls)],
    [undefined, undefined, health(s.failed, s.success)]);
  }
  const edges = document.querySelector("#edges tbody");
  edges.replaceChildren();
  for (const e of windowed(state).edges) {
    row(edges, `row-${e.source}-${e.destination}`, [`${e.source} → ${e.destination}`,
      percent(e.success), percent(e.attempt_success), fmt(e.rps, 2), fmt(e.p50_ms, 1),
      fmt(e.p95_ms, 1), fmt(e.p99_ms, 1), `${e.connections ?? "–"}`, percent(e.mtls)],
    [undefined, health(e.failed, e.success),
      health(e.attempts_failed, e.attempt_success)]);
  }
  const label = {"15": "15 s", "60": "1 min", "300": "5 min"}[view.window];
  for (const small of document.querySelectorAll("small.window")) {
    small.textContent = `(last ${label}, from ${state.source || "–"})`;
  }
}

// The limits a circuit breaker holds, as "requests 3/1024 · pending 0/1024 …".
function occupancy(breaker) {
  return Object.entries(breaker || {})
    .map(([limit, use]) => `${limit.replace("max_", "")} ${use.active}/${use.max}`)
    .join(" · ");
}

function budget(b) {
  if (!b) return "no retry budget";
  if (b.kind === "rate") return `retry budget: ${b.balance} retries allowed now`;
  return `retry budget: ${b.active_retries} retries of ${b.limit} allowed in flight`;
}

function drawClusters(state) {
  const select = document.getElementById("service-select");
  const names = [...new Set((state.services || []).map((s) => s.service))].sort();
  const known = [...select.options].map((o) => o.value).slice(1);
  if (known.join() !== names.join()) {
    select.replaceChildren(new Option("(choose a service)", ""),
      ...names.map((n) => new Option(n, n)));
  }
  select.value = view.service;
  const box = document.getElementById("clusters");
  box.replaceChildren();
  const inside = (state.clusters || {})[view.service] || {sidecars: 0, shown: []};
  if (inside.sidecars > inside.shown.length) {
    const note = document.createElement("p");
    note.className = "hint";
    note.textContent = `${inside.shown.length} of its ${inside.sidecars} sidecars shown`;
    box.appendChild(note);
  }
  for (const sidecar of inside.shown) {
    if (sidecar.error) {
      const p = document.createElement("p");
      p.className = "nack";
      p.textContent = `${sidecar.instance}: ${sidecar.error}`;
      box.appendChild(p);
      continue;
    }
    for (const [name, cluster] of Object.entries(sidecar.clusters).sort()) {
      const title = document.createElement("div");
      title.className = "cluster";
      title.textContent = `${sidecar.instance} → ${name} `;
      const small = document.createElement("small");
      small.textContent = `${cluster.lb_policy || cluster.balancer} · circuit breaker ` +
        `${occupancy(cluster.circuit_breaker)} · ${budget(cluster.retry_budget)}`;
      title.appendChild(small);
      box.appendChild(title);
      const table = document.createElement("table");
      table.id = `cluster-${sidecar.instance}-${name}`;
      const unit = cluster.cost_unit ? ` (${cluster.cost_unit})` : "";
      row(table.createTHead(), undefined, ["endpoint", "healthy", "in flight", `cost${unit}`,
        "ejected", "connections"]);
      const body = table.createTBody();
      for (const ep of cluster.endpoints) {
        const j = ep.ejection;
        const tr = row(body, `ep-${sidecar.instance}-${name}-${ep.address}`, [ep.address,
          ep.healthy ? "yes" : "no", `${ep.active_requests}`, fmt(ep.cost, 3),
          j ? `${j.reason}, back in ${j.remaining_s.toFixed(1)} s (ejection ${j.times})`
            : (ep.ejected ? "yes" : "no"),
          `${ep.connections}`]);
        tr.dataset.ejected = ep.ejected ? "1" : "0";
        if (ep.ejected) tr.className = "ejected";
      }
      box.appendChild(table);
    }
  }
}

function drawPolicy(state) {
  const policy = state.policy;
  if (!policy) return;
  document.getElementById("policy-version").textContent = `${policy.version}`;
  document.getElementById("policy-error").textContent = policy.error || "";
  const body = document.querySelector("#rollout tbody");
  body.replaceChildren();
  for (const s of policy.streams) {
    const at = s.policy_version;
    const cls = s.nack ? "nack" : at === policy.version ? "current" : "rolling";
    const tr = row(body, `stream-${s.node}`, [s.node, s.service, s.protocol,
      at === null || at === undefined ? "–" : `${at}`,
      s.nack ? `v${s.nack.policy_version} ${s.nack.type}: ${s.nack.message}` : ""],
    [undefined, "text", "text", cls, "text nack"]);
    tr.dataset.policyVersion = at ?? "";
  }
  const history = document.getElementById("history");
  const open = new Set([...history.querySelectorAll("details[open]")].map((d) => d.id));
  history.replaceChildren();
  for (const v of [...policy.history].reverse()) {
    const details = document.createElement("details");
    details.id = `version-${v.version}`;
    // The version in force opens with its diff, unless it is the first known (all of it).
    details.open = open.has(details.id) ||
      (v.version === policy.version && v !== policy.history[0]);
    const summary = document.createElement("summary");
    const when = v.applied_at ? new Date(v.applied_at * 1000).toLocaleTimeString() : "–";
    summary.textContent = `version ${v.version} · from ${v.source || "?"} · ${when}`;
    const pre = document.createElement("pre");
    pre.className = "diff";
    pre.textContent = v.diff || "(no change in the text)";
    details.append(summary, pre);
    history.appendChild(details);
  }
}

function drawTop(state) {
  const body = document.querySelector("#top tbody");
  body.replaceChildren();
  for (const r of (view.top && state.top) || []) {
    const status = typeof r.status === "number" ? `${r.status}` : r.status;
    row(body, undefined, [new Date(r.at * 1000).toLocaleTimeString(), r.instance, r.cluster,
      `${r.method} ${r.authority}${r.path}`, status, fmt(r.latency_ms, 1), `${r.retries}`,
      `${r.hedges}`],
      [undefined, "text", "text", "text",
        typeof r.status === "number" && r.status < 500 ? "healthy" : "failing"]);
  }
}

function drawStatus(state) {
  const cp = state.control_plane;
  const problems = [...(state.errors || []),
    ...(state.sidecars || []).filter((s) => s.error).map((s) => `${s.instance}: ${s.error}`)];
  document.getElementById("errors").textContent = problems.join("\n");
  if (!cp) return;
  const inSync = cp.streams.filter((s) => s.in_sync).length;
  document.getElementById("status").textContent =
    `policy version ${cp.policy_version} · ${cp.replicas.length} control-plane replica(s) · ` +
    `${inSync}/${cp.streams.length} discovery streams in sync · updated ` +
    new Date().toLocaleTimeString();
}

// How far behind the mesh each drawing is: the state's round started at `state.at`; the
// drawing is on screen by the next frame. Kept for anyone measuring (bench/dashboard_page.py).
const drawn = [];
window.asyncmeshDrawn = drawn;

function draw(state) {
  drawStatus(state);
  drawTopology(state);
  drawTables(state);
  drawClusters(state);
  drawPolicy(state);
  drawTop(state);
  requestAnimationFrame(() => setTimeout(() => {
    drawn.push({at: state.at, shown: Date.now(), edges: windowed(state).edges.length});
    if (drawn.length > 1000) drawn.shift();
  }));
}

let events = null;
let last = null;

function listen() {
  if (events) events.close();
  const query = new URLSearchParams({window: view.window, top: view.top ? "1" : "0"});
  if (view.service) query.set("service", view.service);
  events = new EventSource(`/events?${query}`);
  events.addEventListener("state", (event) => { last = JSON.parse(event.data); draw(last); });
  events.onerror = () => {
    document.getElementById("status").textContent = "disconnected: retrying…";
  };
}

// Look at something else: draw what is known at once, and ask the server for the rest.
function choose(change) {
  Object.assign(view, change);
  if (last) draw(last);
  listen();
}

document.getElementById("window-select").addEventListener(
  "change", (e) => choose({window: e.target.value}));
document.getElementById("service-select").addEventListener(
  "change", (e) => choose({service: e.target.value}));
document.getElementById("top-toggle").addEventListener(
  "change", (e) => choose({top: e.target.checked}));
document.getElementById("window-select").value = view.window;
document.getElementById("top-toggle").checked = view.top;
listen();
