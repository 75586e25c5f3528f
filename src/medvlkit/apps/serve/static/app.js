// The medvlkit page: upload an image -> POST /zeroshot (with similar cases when an index is loaded);
// a text box -> POST /search. Thumbnails come from GET /image/{id}. A bearer token, when the server asks for one,
// is kept for this tab only (sessionStorage) and sent with every request.
"use strict";
const $ = (id) => document.getElementById(id);
let info = null;

function headers() {
  const token = sessionStorage.getItem("medvlkit-token");
  return token ? { Authorization: "Bearer " + token } : {};
}

async function api(path, options = {}) {
  const response = await fetch(path, { ...options, headers: { ...headers(), ...(options.headers || {}) } });
  if (response.status === 401) {
    $("token-box").hidden = false;
    throw new Error("this server needs a token: enter it at the top right and try again");
  }
  if (!response.ok) {
    let message = response.status + " " + response.statusText;
    try { message = (await response.json()).error || message; } catch (e) { /* not JSON */ }
    throw new Error(message);
  }
  return response;
}

function showError(err) { $("error").textContent = String(err.message || err); $("error").hidden = false; }
function clearError() { $("error").hidden = true; }
function pct(p) { return (100 * p).toFixed(1) + "%"; }

async function loadInfo() {
  try {
    info = await (await api("/info")).json();
  } catch (err) { showError(err); return; }
  $("model").textContent = `${info.model} · ${info.device}` + (info.index ? ` · index of ${info.index.size} images` : "");
  const select = $("prompt-set");
  select.innerHTML = "";
  for (const [name, set] of Object.entries(info.prompt_sets)) {
    const option = document.createElement("option");
    option.value = name;
    option.textContent = `${name} (${set.classes.length} classes, ${set.mode})`;
    select.appendChild(option);
  }
  select.value = info.default_prompt_set;
  $("search-panel").hidden = !info.index;
}

async function thumbnail(hit) {
  const box = document.createElement("figure");
  box.className = "case";
  const img = document.createElement("img");
  img.alt = "indexed image " + hit.id;
  box.appendChild(img);
  const caption = document.createElement("figcaption");
  // what a person recognises a case by: its file name in the indexed folder, its label, its caption
  caption.textContent = `${hit.name || "#" + hit.id} · ${hit.score.toFixed(3)}` + (hit.label ? ` · ${hit.label}` : "")
    + (hit.caption ? ` · ${hit.caption.length > 90 ? hit.caption.slice(0, 90) + "…" : hit.caption}` : "");
  if (hit.caption) caption.title = hit.caption;
  box.appendChild(caption);
  api("/image/" + hit.id).then((r) => r.blob()).then((b) => { img.src = URL.createObjectURL(b); })
    .catch(() => { img.alt = "thumbnail unavailable"; });
  return box;
}

async function showHits(container, hits) {
  container.innerHTML = "";
  for (const hit of hits) container.appendChild(await thumbnail(hit));
}

function showResult(data, fileName) {
  const r = data.results[0];
  $("file-name").textContent = fileName;
  const gate = $("gate");
  const g = r.gate;
  if (g.medical === null) {
    gate.className = "gate unknown";
    gate.textContent = `P(medical image) ${pct(g.p_medical)} (no validated threshold for this model)`;
  } else {
    gate.className = "gate " + (g.medical ? "medical" : "non-medical");
    gate.textContent = (g.medical ? "Medical image" : "Not a medical image: the probabilities below mean little")
      + ` · P(medical) ${pct(g.p_medical)} (threshold ${pct(g.threshold)})`;
  }
  const d = r.domain, domainBox = $("domain");
  domainBox.hidden = !(d && !d.in_domain);
  if (d && !d.in_domain) {  // flagged, not hidden: the probabilities are shown, with this warning above them
    domainBox.className = "gate out-of-domain";
    domainBox.textContent = `Not a ${d.domain} image, by the model's own reading: P(${d.domain}) ${pct(d.p_domain)}`
      + (d.threshold === null ? " (not its most likely modality)" : ` (threshold ${pct(d.threshold)})`)
      + `. “${data.prompts.name}” describes ${d.domain} images: its probabilities below mean little here.`;
  }
  $("scope").hidden = !(info && info.scope);
  if (info && info.scope) $("scope").textContent = "Model scope: " + info.scope;
  $("set-name").textContent = `prompt set “${data.prompts.name}”, ${data.prompts.mode}`;
  const bars = $("bars");
  bars.innerHTML = "";
  const entries = Object.entries(r.probabilities).sort((a, b) => b[1] - a[1]);
  entries.forEach(([name, p], i) => {
    const row = document.createElement("div");
    row.className = "row" + (i === 0 ? " top" : "");
    row.dataset.cls = name;
    row.innerHTML = `<span class="name"></span><span class="track"><span class="fill"></span></span><span class="value"></span>`;
    row.querySelector(".name").textContent = name;
    row.querySelector(".fill").style.width = pct(p);
    row.querySelector(".value").textContent = pct(p);
    bars.appendChild(row);
  });
  $("mode-note").textContent = data.prompts.mode === "softmax"
    ? "Softmax over the classes: the bars sum to 100%."
    : "Each class on its own: its positive prompt against its negative one (bars do not sum to 100%).";
  const heat = r.heatmap;
  $("heatmap-box").hidden = !(heat && heat.png_base64);
  if (heat && heat.png_base64) {
    $("heatmap").src = "data:image/png;base64," + heat.png_base64;
    $("heatmap-caption").textContent = `Where the model sees “${heat.class}” (${heat.method}, the model's ${
      info ? info.preprocess.image_size : ""} px view); red = most weight. A heatmap shows what the score rests on, `
      + "not a diagnosis.";
  }
  $("similar-title").hidden = !r.similar;
  showHits($("similar"), r.similar || []);
  $("result").hidden = false;
}

async function readImage(file) {
  clearError();
  $("result").hidden = true;
  const isDicom = /\.(dcm|dicom)$/i.test(file.name) || file.type === "application/dicom";
  $("preview-box").hidden = isDicom;
  if (!isDicom) $("preview").src = URL.createObjectURL(file);
  const form = new FormData();
  form.append("files", file, file.name);
  form.append("prompts", $("prompt-set").value);
  if (info && info.index) form.append("k", "6");
  form.append("explain", "true");
  try {
    showResult(await (await api("/zeroshot", { method: "POST", body: form })).json(), file.name);
  } catch (err) { showError(err); }
}

async function searchText(event) {
  event.preventDefault();
  clearError();
  const form = new FormData();
  form.append("text", $("query").value);
  form.append("k", "12");
  try {
    const data = await (await api("/search", { method: "POST", body: form })).json();
    await showHits($("search-results"), data.results);
  } catch (err) { showError(err); }
}

$("file").addEventListener("change", (e) => { if (e.target.files.length) readImage(e.target.files[0]); });
const drop = $("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  drop.classList.remove("over");
  if (e.dataTransfer.files.length) readImage(e.dataTransfer.files[0]);
});
$("prompt-set").addEventListener("change", () => { const f = $("file").files[0]; if (f) readImage(f); });
$("search-form").addEventListener("submit", searchText);
$("token").addEventListener("change", (e) => { sessionStorage.setItem("medvlkit-token", e.target.value); loadInfo(); });
loadInfo();
