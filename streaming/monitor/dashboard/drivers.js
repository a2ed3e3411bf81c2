// Driver terms per brand (/api/drivers, docs/drivers.md): the terms whose share among a brand's negative or
// positive posts rose most against the window before; a click lists the posts that carry the term.
// Uses el(), getJSON() and $() from app.js.
"use strict";

const DRIVER_REFRESH_MS = 15000;
const DRIVER_FETCHES = 4;          // requests at once
const DRIVER_LABELS = ["negative", "positive"];
const CARRIERS_MAX = 8;            // posts listed under a clicked term
const WINDOW_NAMES = { 60: "1 h", 1440: "24 h", 10080: "7 d" };
const drivers = { minutes: 60, data: {}, open: null, running: false, again: false };

function driverChip(brand, label, t, against) {
  const chip = el("button", { class: `driver word ${t.side === "image" ? "image" : "text"}`, type: "button",
                              "data-term": t.term, "data-label": label,
                              title: `z = ${t.z} · ${t.count} posts (${t.baseline_count} in the baseline) · vs ${against}` },
                  t.term);
  chip.addEventListener("click", () => {
    drivers.open = { brand, label, term: t.term };
    const card = document.querySelector(`.brand[data-brand="${CSS.escape(brand)}"]`);
    if (card) { card.querySelector(".carriers")?.remove(); card.append(carriers(brand)); }
  });
  return chip;
}

// the drivers row of a brand card, and the open term's posts when that term belongs to this brand
function driverRow(brand) {
  const d = drivers.data[brand];
  const row = el("div", { class: "drivers", "data-brand": brand, "data-minutes": d ? d.minutes : "" });
  if (!d) { row.append(el("span", { class: "empty" }, "drivers …")); scheduleDrivers(); return [row]; }
  for (const label of DRIVER_LABELS) {
    const info = d.labels[label];
    if (!info || !info.drivers.length) continue;
    row.append(el("span", { class: "dlabel " + label }, (label === "negative" ? "▼ " : "▲ ") + label),
               ...info.drivers.map(t => driverChip(brand, label, t, info.against)));
  }
  if (!row.querySelector(".driver")) row.append(el("span", { class: "empty" }, `no drivers in ${WINDOW_NAMES[d.minutes]}`));
  const open = drivers.open;
  return open && open.brand === brand ? [row, carriers(brand)] : [row];
}

// the posts carrying the open term: the newest the API found, then any in the live feed
function carriers(brand) {
  const { label, term } = drivers.open;
  const info = (drivers.data[brand] || { labels: {} }).labels[label] || { drivers: [] };
  const t = info.drivers.find(x => x.term === term) || { examples: [] };
  const list = el("ol", { class: "carriers", "data-term": term, "data-label": label });
  const seen = new Set();
  for (const e of t.examples) {
    seen.add(e.id);
    list.append(el("li", { "data-id": e.id }, el("span", { class: "pill " + labelClass(e.label) }, e.label), " ",
                   el("span", { class: "id" }, e.id), wordChips(e.words || [])));
  }
  for (const post of document.querySelectorAll("#feed .post")) {
    if (seen.has(post.dataset.id)) continue;
    const rows = [...post.querySelectorAll(`.target[data-brand="${CSS.escape(brand)}"][data-label="${label}"]`)];
    const words = rows.length ? rows.flatMap(r => [...r.querySelectorAll(".word")]) :
      (post.querySelector(".brands").textContent.split(", ").includes(brand) && post.dataset.label === label
        ? [...post.querySelectorAll(":scope > .words .word")] : []);
    if (list.children.length >= CARRIERS_MAX) break;
    if (words.some(w => w.textContent.toLowerCase().replace(/^#/, "") === term)) {
      seen.add(post.dataset.id);
      list.append(el("li", { "data-id": post.dataset.id, class: "live" },
                     el("span", { class: "pill " + labelClass(label) }, label), " ",
                     el("span", { class: "id" }, post.dataset.id),
                     el("div", { class: "words" }, ...words.map(w => w.cloneNode(true)))));
    }
  }
  if (!list.children.length) list.append(el("li", { class: "empty" }, `no recent post with "${term}"`));
  return list;
}

function showDrivers(brand) {
  const card = document.querySelector(`.brand[data-brand="${CSS.escape(brand)}"]`);
  if (!card) return;
  card.querySelectorAll(".drivers, .carriers").forEach(n => n.remove());
  card.append(...driverRow(brand));
}

async function refreshDrivers() {
  if (drivers.running) { drivers.again = true; return; }
  drivers.running = true;
  try {
    const minutes = drivers.minutes;
    const names = [...document.querySelectorAll("#brands .brand")].map(c => c.dataset.brand);
    const fetchOne = async brand => {
      try {
        const d = await getJSON(`/api/drivers?brand=${encodeURIComponent(brand)}&minutes=${minutes}`);
        if (minutes === drivers.minutes) { drivers.data[brand] = d; showDrivers(brand); }
      } catch (e) { console.warn(e); }
    };
    for (let i = 0; i < names.length; i += DRIVER_FETCHES) await Promise.all(names.slice(i, i + DRIVER_FETCHES).map(fetchOne));
  } finally {
    drivers.running = false;
    if (drivers.again) { drivers.again = false; refreshDrivers(); }
  }
}

let driversTimer = null;
function scheduleDrivers() {  // a card without drivers yet asks for them once, soon
  if (!driversTimer) driversTimer = setTimeout(() => { driversTimer = null; refreshDrivers(); }, 300);
}

function chooseWindow(minutes) {
  drivers.minutes = minutes;
  drivers.data = {};
  drivers.open = null;
  for (const b of document.querySelectorAll("#driver-window button")) b.classList.toggle("on", +b.dataset.minutes === minutes);
  for (const card of document.querySelectorAll("#brands .brand")) showDrivers(card.dataset.brand);
  refreshDrivers();
}

for (const b of document.querySelectorAll("#driver-window button")) b.addEventListener("click", () => chooseWindow(+b.dataset.minutes));
setInterval(refreshDrivers, DRIVER_REFRESH_MS);
