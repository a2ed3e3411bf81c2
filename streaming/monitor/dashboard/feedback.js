// affectstream dashboard, corrections and the candidate model: a "correct" button on every post of the feed,
// the correction form (POST /api/feedback), the newest corrections (/api/feedback) and the shadow panel
// (/api/shadow). Uses el() and labelClass() from app.js.
"use strict";

const FIX_POLL_MS = 5000;
const fix = { post: null };

function analystName() { return ($("#analyst").value || "").trim(); }

async function sendCorrection(body) {
  const r = await fetch("/api/feedback", { method: "POST", cache: "no-store", body: JSON.stringify(body),
                                           headers: { "Content-Type": "application/json" } });
  const reply = await r.json().catch(() => ({}));
  return { ok: r.status === 202, status: r.status, reply };
}

// --- the form -------------------------------------------------------------------------------------

function wordsOf(result, target) {
  if (!target) return result.rationale || [];
  const t = (result.targets || []).find(x => x && x.brand === target);
  return t && Array.isArray(t.rationale) ? t.rationale : [];
}

function labelOf(result, target) {
  if (!target) return result.label;
  const t = (result.targets || []).find(x => x && x.brand === target);
  return t ? t.label : result.label;
}

function fillWords() {
  const box = $("#correct-words");
  box.replaceChildren(el("legend", {}, "rationale words that are wrong"));
  for (const w of wordsOf(fix.post, $("#correct-target").value)) {
    const input = el("input", { type: "checkbox", value: w.text });
    box.append(el("label", { class: "word " + (w.source === "image" ? "image" : "text") }, input, " " + w.text));
  }
  const current = labelOf(fix.post, $("#correct-target").value);
  for (const option of $("#correct-label").options) option.disabled = option.value === current;
  if ($("#correct-label").value === current) {
    const other = [...$("#correct-label").options].find(o => !o.disabled);
    if (other) $("#correct-label").value = other.value;
  }
}

async function openCorrection(postId) {
  const data = await getJSON("/api/post?id=" + encodeURIComponent(postId));
  fix.post = data.result;
  $("#correct-id").textContent = postId;
  $("#correct-text").textContent = `model ${fix.post.model}: ${fix.post.label}` +
    (data.feedback.length ? ` · ${data.feedback.length} correction(s) so far` : "");
  const targets = [["", "the post"], ...(fix.post.targets || []).filter(t => t && t.brand).map(t => [t.brand, t.brand])];
  $("#correct-target").replaceChildren(...targets.map(([v, text]) => el("option", { value: v }, text)));
  const labels = Object.keys(fix.post.scores || {});
  $("#correct-label").replaceChildren(...labels.map(l => el("option", { value: l }, l)));
  $("#correct-note").value = "";
  $("#correct-status").textContent = analystName() ? "" : "enter your name as analyst first";
  fillWords();
  $("#correct").showModal();
}

async function submitCorrection(ev) {
  if (ev.submitter && ev.submitter.value !== "send") return;
  ev.preventDefault();
  const target = $("#correct-target").value;
  const body = { post_id: fix.post.id, target: target || null, label: $("#correct-label").value,
                 analyst: analystName(), note: $("#correct-note").value,
                 wrong_words: [...document.querySelectorAll("#correct-words input:checked")].map(i => i.value) };
  const { ok, status, reply } = await sendCorrection(body);
  if (!ok) { $("#correct-status").textContent = `refused (${status}): ${reply.error || ""} ${reply.message || ""}`; return; }
  $("#correct").close();
  refreshCorrections();
}

// a "correct" button on each post of the feed (app.js builds the items; we only add to them)
function addFixButton(item) {
  if (!item.matches || !item.matches("li.post") || item.querySelector(".fix")) return;
  const button = el("button", { class: "fix", type: "button", title: "correct this label" }, "correct");
  button.addEventListener("click", () => openCorrection(item.dataset.id).catch(e => console.warn(e)));
  item.querySelector(".meta").append(button);
}

// --- lists ----------------------------------------------------------------------------------------

function correctionItem(c) {
  const when = new Date(c.ts).toISOString().slice(11, 19);
  const item = el("li", { "data-id": c.post_id, "data-target": c.target || "" },
    el("span", { class: "id" }, c.post_id + (c.target ? " → " + c.target : "")),
    el("span", { class: "pill " + labelClass(c.old_label) }, c.old_label), "→",
    el("span", { class: "pill " + labelClass(c.label) }, c.label),
    el("span", { class: "who" }, `${c.analyst} · ${when} UTC · model ${c.model}`));
  if ((c.wrong_words || []).length) item.append(el("span", { class: "flag" }, "wrong: " + c.wrong_words.join(", ")));
  if (c.note) item.append(el("span", { class: "who" }, "“" + c.note + "”"));
  return item;
}

async function refreshCorrections() {
  try {
    const list = await getJSON("/api/feedback?limit=50");
    const box = $("#corrections");
    box.replaceChildren(...(list.length ? list.map(correctionItem) : [el("li", { class: "empty" }, "no corrections yet")]));
  } catch (e) { console.warn(e); }
}

function pct(rate) { return rate == null ? "–" : Math.round(rate * 100) + "%"; }

function agreementRows(table, what) {
  return Object.entries(table).map(([name, v]) =>
    el("tr", { "data-row": what + ":" + name }, el("td", {}, name), el("td", {}, v.n), el("td", {}, pct(v.rate)),
       el("td", {}, Object.entries(v.to).map(([l, n]) => `${l} ${n}`).join(" · "))));
}

function renderShadow(data) {
  const box = $("#shadow");
  $("#shadow-version").textContent = data.version
    ? `${data.version}` + (data.rollout ? ` · ${data.rollout.mode} ${Math.round(100 * data.rollout.share)}%` : "")
    : "no candidate";
  if (!data.version || !data.deployed || !data.deployed.n) {
    box.replaceChildren(el("p", { class: "empty" }, data.version ? "no shadow results yet" : "no candidate under test"));
    return;
  }
  const d = data.deployed, a = data.analysts;
  const head = () => el("tr", {}, el("th", {}, "deployed said"), el("th", {}, "posts"), el("th", {}, "agree"),
                          el("th", {}, "candidate said"));
  box.replaceChildren(
    el("p", {}, el("span", { class: "big", id: "shadow-agree" }, pct(d.rate)), ` agreement with the deployed model over ${d.n} posts`),
    el("p", { id: "shadow-analysts" }, a && a.n
      ? `with analysts' corrections (${a.n}): candidate ${pct(a.candidate_rate)} · deployed ${pct(a.deployed_rate)}`
      : "no corrected post has a shadow result yet"),
    el("table", {}, el("thead", {}, head()), el("tbody", {}, ...agreementRows(d.labels, "label"))),
    el("table", {}, el("thead", {}, el("tr", {}, el("th", {}, "brand"), el("th", {}, "posts"), el("th", {}, "agree"),
                                       el("th", {}, "candidate said"))),
       el("tbody", {}, ...agreementRows(d.brands, "brand").slice(0, 20))));
}

async function refreshShadow() {
  try { renderShadow(await getJSON("/api/shadow")); } catch (e) { console.warn(e); }
}

// --- start ----------------------------------------------------------------------------------------

(function startFeedback() {
  $("#analyst").value = localStorage.getItem("affectstream.analyst") || "";
  $("#analyst").addEventListener("change", () => localStorage.setItem("affectstream.analyst", analystName()));
  $("#correct-target").addEventListener("change", fillWords);
  $("#correct-form").addEventListener("submit", ev => submitCorrection(ev).catch(e => {
    $("#correct-status").textContent = String(e);
  }));
  new MutationObserver(changes => changes.forEach(c => c.addedNodes.forEach(addFixButton)))
    .observe($("#feed"), { childList: true });
  document.querySelectorAll("#feed li.post").forEach(addFixButton);
  refreshCorrections();
  refreshShadow();
  setInterval(() => { refreshCorrections(); refreshShadow(); }, FIX_POLL_MS);
})();
