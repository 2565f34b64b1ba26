// The dashboard page: draws the state /events pushes (dashboard/collector.py) as plain SVG
// and a table. No library, no build step.
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const NODE_W = 130, NODE_H = 44, COL_GAP = 110, ROW_GAP = 40, MARGIN = 30;

// Kiali's thresholds on failed requests (5xx, resets): any is degraded, over 10 % failing.
function health(edge) {
  if (edge.success === null) return "idle";
  const failed = 1 - edge.success;
  if (failed > 0.10) return "failing";
  if (failed > 0) return "degraded";
  return "healthy";
}

function fmt(value, digits) {
  return value === null || value === undefined ? "–" : value.toFixed(digits);
}

function el(name, attrs, parent) {
  const node = document.createElementNS(SVG, name);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
  parent.appendChild(node);
  return node;
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
    names.sort().forEach((s, row) => at.set(s, {
      x: MARGIN + d * (NODE_W + COL_GAP), y: MARGIN + row * (NODE_H + ROW_GAP)}));
  }
  return at;
}

function drawTopology(state) {
  const svg = document.getElementById("topology");
  svg.replaceChildren();
  const edges = state.edges || [];
  const counts = new Map((state.services || []).map((s) => [s.service, s]));
  const names = new Set(counts.keys());
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
    const a = at.get(e.source), b = at.get(e.destination), cls = health(e);
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
    const g = el("g", {class: "node", id: `node-${s}`,
      transform: `translate(${p.x},${p.y})`}, svg);
    el("rect", {width: NODE_W, height: NODE_H}, g);
    el("text", {x: NODE_W / 2, y: info ? 16 : NODE_H / 2}, g).textContent = s;
    if (info) {
      el("text", {x: NODE_W / 2, y: 33, class: "count"}, g).textContent =
        `${info.healthy}/${info.instances} healthy`;
    }
  }
}

function drawTable(state) {
  const body = document.querySelector("#edges tbody");
  body.replaceChildren();
  for (const e of state.edges || []) {
    const row = body.insertRow();
    row.id = `row-${e.source}-${e.destination}`;
    const cells = [`${e.source} → ${e.destination}`,
      e.success === null ? "–" : `${(e.success * 100).toFixed(2)} %`,
      fmt(e.rps, 2), fmt(e.p50_ms, 1), fmt(e.p95_ms, 1), fmt(e.p99_ms, 1)];
    for (const text of cells) row.insertCell().textContent = text;
    row.cells[1].className = health(e);
  }
  document.getElementById("window").textContent = `(last ${state.window_s} s)`;
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

function draw(state) {
  drawStatus(state);
  drawTopology(state);
  drawTable(state);
}

const events = new EventSource("/events");
events.addEventListener("state", (event) => draw(JSON.parse(event.data)));
events.onerror = () => {
  document.getElementById("status").textContent = "disconnected: retrying…";
};
