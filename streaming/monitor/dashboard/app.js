// affectstream dashboard: plain JS, no build step, no network beyond this worker.
// Data: /api/brands (Redis minute buckets), /api/recent, /api/alerts, /api/stats; live: /events (SSE).
// Each brand card also shows its driver terms (drivers.js, /api/drivers).
"use strict";

const FEED_MAX = 50;
const MINUTES = 60;
const KNOWN = ["positive", "neutral", "negative"];
const SVG = "http://www.w3.org/2000/svg";
const state = { alerting: new Set(), brandsTimer: null, lastBrandsFetch: 0 };

function $(sel) { return document.querySelector(sel); }

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v; else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}

function svg(tag, attrs) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  return node;
}

async function getJSON(path) {
  const r = await fetch(path, { cache: "no-store" });
  if (!r.ok) throw new Error(path + ": " + r.status);
  return r.json();
}

function labelClass(label) { return KNOWN.includes(label) ? label : "other"; }

function hhmm(minute) { return minute.slice(8, 10) + ":" + minute.slice(10, 12); }

// --- per-brand charts ---------------------------------------------------------------------------

function chart(counts, labels, minutes) {
  const W = 600, H = 64, PAD = 12;
  const max = Math.max(1, ...counts.map(c => Object.values(c).reduce((a, b) => a + b, 0)));
  const bw = W / counts.length;
  const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: "none", role: "img" });
  root.append(svg("line", { x1: 0, y1: H - PAD, x2: W, y2: H - PAD }));
  counts.forEach((c, i) => {
    let y = H - PAD;
    for (const label of labels) {
      const n = c[label] || 0;
      if (!n) continue;
      const h = (H - PAD - 2) * n / max;
      y -= h;
      const r = svg("rect", { x: (i * bw + 0.5).toFixed(1), y: y.toFixed(1), width: Math.max(bw - 1, 1).toFixed(1),
                              height: h.toFixed(1), class: labelClass(label) });
      const t = svg("title", {});
      t.textContent = `${hhmm(minutes[i])} ${label}: ${n}`;
      r.append(t);
      root.append(r);
    }
  });
  for (const i of [0, Math.floor(counts.length / 2), counts.length - 1]) {
    const t = svg("text", { x: Math.min(i * bw, W - 28).toFixed(1), y: H - 1, class: "axis" });
    t.textContent = hhmm(minutes[i]);
    root.append(t);
  }
  return root;
}

function renderBrands(data) {
  const box = $("#brands");
  const names = Object.keys(data.brands);
  $("#window").textContent = `${hhmm(data.minutes[0])}–${hhmm(data.end)} UTC`;
  if (!names.length) { box.replaceChildren(el("p", { class: "empty" }, "waiting for results…")); return; }
  const cards = names.map(name => {
    const b = data.brands[name];
    const total = Object.values(b.total).reduce((a, n) => a + n, 0);
    const neg = b.total.negative || 0;
    const totals = el("span", { class: "totals" });
    data.labels.forEach((label, i) => {
      if (i) totals.append(" · ");
      totals.append(el("b", {}, b.total[label] || 0), " " + label);
    });
    totals.append(` · ${total ? Math.round(100 * neg / total) : 0}% negative`);
    const card = el("div", { class: "brand" + (state.alerting.has(name) ? " alerting" : ""),
                             "data-brand": name, "data-total": total },
                    el("div", { class: "head" }, el("span", { class: "name" }, name), totals));
    card.append(chart(b.counts, data.labels, data.minutes));
    if (typeof driverRow === "function") card.append(...driverRow(name));
    return card;
  });
  box.replaceChildren(...cards);
}

async function refreshBrands() {
  state.lastBrandsFetch = Date.now();
  try { renderBrands(await getJSON(`/api/brands?minutes=${MINUTES}`)); } catch (e) { console.warn(e); }
}

function scheduleBrands() {  // at most one fetch per second while results stream in
  if (state.brandsTimer) return;
  const wait = Math.max(0, 1000 - (Date.now() - state.lastBrandsFetch));
  state.brandsTimer = setTimeout(() => { state.brandsTimer = null; refreshBrands(); }, wait);
}

// --- feed ---------------------------------------------------------------------------------------

function highlighted(caption, words) {
  // the image-description words the model selected, marked inside the description
  const picks = words.filter(w => w.source === "image").map(w => w.text.toLowerCase());
  const out = el("div", { class: "caption" }, "image: ");
  for (const part of caption.split(/(\s+)/)) {
    const bare = part.toLowerCase().replace(/[^\p{L}\p{N}'-]/gu, "");
    out.append(bare && picks.includes(bare) ? el("mark", {}, part) : document.createTextNode(part));
  }
  return out;
}

function percent(scores, label) {
  return scores && scores[label] != null ? `${Math.round(scores[label] * 100)}%` : "";
}

function wordChips(words) {
  const box = el("div", { class: "words" });
  for (const w of words) {
    const chip = el("span", { class: "word " + (w.source === "image" ? "image" : "text"),
                              title: `${w.source} · score ${(+w.score).toFixed(2)}` }, w.text);
    chip.style.opacity = (0.55 + 0.45 * Math.min(1, Math.max(0, +w.score))).toFixed(2);
    box.append(chip);
  }
  return box;
}

// one row per brand the post is about: the brand, the label toward it, and the rationale words behind that label
function targetRow(t) {
  const label = t.label || "?";
  const mentions = Array.isArray(t.mentions) ? t.mentions : [];
  const named = mentions.find(m => m && m.name);
  const where = [...new Set(mentions.map(m => m && m.source).filter(Boolean))];
  const how = where.length ? "mentioned in the " + where.map(w => w === "image" ? "image" : "text").join(" and ")
                           : "listed by the producer";
  return el("div", { class: "target", "data-brand": t.brand, "data-label": label },
    el("div", { class: "thead" },
      el("span", { class: "tname", title: `${t.brand} · ${how}` }, named ? named.name : t.brand),
      el("span", { class: "pill " + labelClass(label) }, label),
      el("span", { class: "conf" }, percent(t.scores, label))),
    wordChips(Array.isArray(t.rationale) ? t.rationale : []));
}

function postItem(r, fresh) {
  const label = r.label || "?";
  const targets = Array.isArray(r.targets) ? r.targets.filter(t => t && t.brand) : [];
  const meta = el("div", { class: "meta" },
    el("span", { class: "pill " + labelClass(label), title: "the post as a whole" }, label),
    el("span", { class: "conf" }, percent(r.scores, label)),
    el("span", { class: "brands" }, (r.brands || []).join(", ")),
    el("span", { class: "id" }, r.id));
  if (r.targets_overflow > 0) meta.append(el("span", { class: "flag" }, `+${r.targets_overflow} brands not classified`));
  if (r.image_error) meta.append(el("span", { class: "flag" }, "image: " + r.image_error));
  const item = el("li", { class: "post" + (fresh ? " fresh" : ""), "data-id": r.id, "data-label": label }, meta);
  // each rationale word sits under the brand whose label it explains (one row per brand); a post about one
  // brand that agrees with the post as a whole shows the post's words, as a post without brands does
  const rows = targets.length > 1 || (targets.length === 1 && targets[0].label !== label);
  if (rows) item.append(el("div", { class: "targets" }, ...targets.map(targetRow)));
  else item.append(wordChips(r.rationale || []));
  const shown = rows ? targets.flatMap(t => Array.isArray(t.rationale) ? t.rationale : []) : r.rationale || [];
  if (r.caption) item.append(highlighted(r.caption, shown));
  return item;
}

function addPost(r, fresh) {
  const feed = $("#feed");
  const old = feed.querySelector(`li[data-id="${CSS.escape(r.id)}"]`);
  if (old) old.remove();
  feed.prepend(postItem(r, fresh));
  while (feed.children.length > FEED_MAX) feed.lastChild.remove();
  if (r.model) $("#model").textContent = r.model;
}

// --- alerts and stats ---------------------------------------------------------------------------

function addAlert(a) {
  if (document.querySelector(`.alert[data-id="${CSS.escape(a.id)}"]`)) return;
  state.alerting.add(a.brand);
  const card = document.querySelector(`.brand[data-brand="${CSS.escape(a.brand)}"]`);
  if (card) card.classList.add("alerting");
  const box = el("div", { class: "alert", "data-id": a.id, "data-brand": a.brand },
    el("b", {}, `▲ ${a.brand}: ${a.label} share ${Math.round(100 * a.share)}%`),
    ` in ${hhmm(a.minute)} UTC (${a.hits}/${a.n} posts) vs ${Math.round(100 * a.baseline_share)}% over the previous `
      + `${a.rule.baseline_minutes} min (${a.baseline_hits}/${a.baseline_n}) `,
    el("span", { class: "rule" }, `z = ${a.z} ≥ ${a.rule.z_threshold}`));
  if (Array.isArray(a.drivers) && a.drivers.length) {
    box.append(el("span", { class: "why" }, " — " + a.drivers.map(d => d.side === "image" ? `${d.term} (image)` : d.term).join(", ")));
  }
  $("#alerts").prepend(box);
  while ($("#alerts").children.length > 5) $("#alerts").lastChild.remove();
}

function renderStats(s) {
  $("#rate").textContent = s.results_per_s.toFixed(1);
  if (s.model) $("#model").textContent = s.model;
  const w = s.worker;
  const reasons = Object.entries(w.dlq_by_reason).map(([k, v]) => `${k}: ${v}`).join("\n");
  $("#dlq").textContent = `${w.dlq} (${(100 * w.dlq_share).toFixed(1)}%, ${w.dlq_per_s.toFixed(1)}/s)`;
  $("#dlq").title = reasons || "no dead letters";
}

// --- start --------------------------------------------------------------------------------------

function connect() {
  const source = new EventSource("/events");
  source.onopen = () => { $("#conn").classList.remove("off"); refreshBrands(); };
  source.onerror = () => $("#conn").classList.add("off");
  source.addEventListener("result", ev => { addPost(JSON.parse(ev.data), true); scheduleBrands(); });
  source.addEventListener("alert", ev => addAlert(JSON.parse(ev.data)));
  source.addEventListener("stats", ev => renderStats(JSON.parse(ev.data)));
}

async function start() {
  const [recent, alerts, stats] = await Promise.all(
    [getJSON("/api/recent?limit=" + FEED_MAX), getJSON("/api/alerts"), getJSON("/api/stats")]);
  for (const r of recent.slice().reverse()) addPost(r, false);
  for (const a of alerts.slice().reverse()) addAlert(a);
  renderStats(stats);
  await refreshBrands();
  connect();
}

start().catch(e => { console.error(e); connect(); });
