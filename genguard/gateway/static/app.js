// GenGuard reviewer page: plain JavaScript, no build step, no third-party code, this origin only.
// Calls the gateway's own API: GET /v1/models (what is served) and POST /v1/detect (multipart `file` fields),
// with `Authorization: Bearer <key>` when the gateway needs a key (kept in sessionStorage for this tab).
"use strict";

const KEY_STORE = "genguard.apiKey";
const LEVELS = ["neutral", "low", "medium", "high"];
const FILES_PER_REQUEST = 8;            // the gateway's default limit is 64 images and 64 MiB per request
const BYTES_PER_REQUEST = 16 << 20;

const state = {
  models: null,        // GET /v1/models
  items: [],           // {id, name, file, url, size, type, doc, error, label, revealed}
  selected: null,      // id of the item in the detail view
  sort: {key: null, dir: 1},
  pending: [],         // files waiting for a key
  busy: false,
};

const $ = (id) => document.getElementById(id);

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k.startsWith("data-")) node.setAttribute(k, v);
    else if (k in node) node[k] = v;
    else node.setAttribute(k, v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

// A served threshold as a person would type it: at most 3 decimals, no trailing zeros
// (0.8677880859545739 -> "0.868", 0.5 -> "0.5"). The exact value stays what decides (blurThreshold).
function typed(value) {
  return typeof value === "number" && Number.isFinite(value) ? String(Number(value.toFixed(3))) : "?";
}

// A probability as shown (4 decimals); the exact number the API sent is in data-value.
function num(value, cls) {
  if (typeof value !== "number") return el("span", {class: "num " + (cls || ""), text: "—"});
  return el("span", {class: "num " + (cls || ""), "data-value": String(value), text: value.toFixed(4)});
}

// ---- API key --------------------------------------------------------------------------------------

function apiKey() { return sessionStorage.getItem(KEY_STORE) || ""; }

function headers() {
  const key = apiKey();
  return key ? {"Authorization": "Bearer " + key} : {};
}

function askKey(message) {
  const dialog = $("key-dialog");
  $("key-error").hidden = !message;
  $("key-error").textContent = message || "";
  $("key-input").value = "";
  if (!dialog.open) dialog.showModal();
  $("key-input").focus();
}

async function errorOf(response) {
  try {
    const body = await response.json();
    if (body && body.error) return body.error;
  } catch (e) { /* not JSON */ }
  return {code: "http_" + response.status, message: "the gateway answered HTTP " + response.status};
}

// ---- what is served -------------------------------------------------------------------------------

async function loadModels() {
  let response;
  try {
    response = await fetch("/v1/models", {headers: headers(), cache: "no-store"});
  } catch (e) {
    $("served").textContent = "The gateway cannot be reached.";
    return true;  // uploads go ahead and each image says so
  }
  if (response.status === 401) {
    const err = await errorOf(response);
    $("served").textContent = "Waiting for an API key.";
    askKey(apiKey() ? err.message : "");
    return false;
  }
  if (!response.ok) {
    const err = await errorOf(response);
    $("served").textContent = `The gateway is not ready: ${err.message} (${err.code})`;
    return true;  // the key (if any) was accepted
  }
  state.models = await response.json();
  showModels();
  return true;
}

function showModels() {
  const m = state.models;
  const names = Object.keys(m.detectors || {});
  const f = m.fusion || {};
  $("served").textContent = `${m.ensemble} ${m.ready ? "ready" : "not ready"} · detectors: ${names.join(", ")}`
    + ` · ${f.rule || "?"} threshold ${typed(f.threshold)}`;
  const random = Object.entries(m.weights || {}).filter(([, w]) => w === "random").map(([d]) => d);
  $("random-banner").hidden = random.length === 0;
  $("random-banner").textContent = random.length
    ? `RANDOM WEIGHTS (${random.join(", ")}): these answers are meaningless — a test build, not a detector.` : "";
  if (!$("blur-level").dataset.touched) {
    const input = $("blur-threshold"), exact = f.nsfw_threshold ?? 0.5;
    $("blur-level").value = f.nsfw_level || "medium";
    input.value = typed(exact);
    input.dataset.exact = String(exact);   // blurs as the server decides is_nsfw until the reviewer types
    input.dataset.shown = input.value;
    input.title = `served: at_least[${f.nsfw_level || "medium"}] >= ${exact}`;
  }
  $("key-button").textContent = apiKey() ? "API key ✓" : "API key";
}

// ---- adding files ---------------------------------------------------------------------------------

function isImageFile(file) {
  return !file.name.startsWith(".");
}

async function filesFromEntry(entry, out) {
  if (entry.isFile) {
    await new Promise((resolve) => entry.file((f) => { out.push(f); resolve(); }, () => resolve()));
  } else if (entry.isDirectory) {
    const reader = entry.createReader();
    for (;;) {
      const batch = await new Promise((resolve) => reader.readEntries(resolve, () => resolve([])));
      if (!batch.length) break;
      for (const child of batch) await filesFromEntry(child, out);
    }
  }
}

async function filesFromDrop(dataTransfer) {
  const entries = [...(dataTransfer.items || [])].map((i) => i.webkitGetAsEntry && i.webkitGetAsEntry()).filter(Boolean);
  if (!entries.length) return [...dataTransfer.files];
  const out = [];
  for (const entry of entries) await filesFromEntry(entry, out);
  return out;
}

function addFiles(files) {
  files = files.filter(isImageFile);
  if (!files.length) return;
  state.pending.push(...files);
  pump();
}

let nextId = 1;

async function pump() {
  if (state.busy || !state.pending.length) return;
  if (state.models === null && !(await loadModels())) return;  // waits for a key; resumed by the key form
  state.busy = true;
  const files = state.pending.splice(0);
  const items = files.map((file) => ({
    id: nextId++, name: file.webkitRelativePath || file.name, file, url: URL.createObjectURL(file),
    size: file.size, type: file.type, doc: null, error: null, label: null, revealed: false,
  }));
  state.items.push(...items);
  render();
  const chunks = [];
  let chunk = [], bytes = 0;
  for (const item of items) {
    if (chunk.length && (chunk.length >= FILES_PER_REQUEST || bytes + item.size > BYTES_PER_REQUEST)) {
      chunks.push(chunk); chunk = []; bytes = 0;
    }
    chunk.push(item); bytes += item.size;
  }
  if (chunk.length) chunks.push(chunk);
  let done = 0;
  progress(done, items.length);
  for (let i = 0; i < chunks.length; i++) {
    const outcome = await detect(chunks[i]);
    if (outcome === "key") {  // the key was refused: the rest waits for a new one
      const waiting = chunks.slice(i).flat();
      state.items = state.items.filter((it) => !waiting.includes(it));
      state.pending.unshift(...waiting.map((it) => it.file));
      break;
    }
    done += chunks[i].length;
    progress(done, items.length);
    render();
  }
  state.busy = false;
  $("progress-box").hidden = true;
  render();
  if (state.pending.length && !$("key-dialog").open) pump();
}

function progress(done, total) {
  $("progress-box").hidden = false;
  $("progress").max = total;
  $("progress").value = done;
  $("progress-text").textContent = done < total ? `Analysing… ${done} of ${total} images answered` : `${total} images answered`;
}

async function detect(chunk) {
  const form = new FormData();
  for (const item of chunk) form.append("file", item.file, item.name);
  let response;
  try {
    const explain = $("explain") && $("explain").checked ? "?explain=true" : "";
    response = await fetch("/v1/detect" + explain, {method: "POST", body: form, headers: headers()});
  } catch (e) {
    for (const item of chunk) item.error = {code: "unreachable", message: "the gateway cannot be reached"};
    return "error";
  }
  if (response.status === 401) {
    const err = await errorOf(response);
    askKey(err.message);
    return "key";
  }
  if (!response.ok) {
    const err = await errorOf(response);
    for (const item of chunk) item.error = err;
    return "error";
  }
  const body = await response.json();
  body.data.forEach((doc, i) => { if (chunk[i]) chunk[i].doc = doc; });
  return "ok";
}

// ---- the grid -------------------------------------------------------------------------------------

function statusOf(item) {
  if (item.doc) return item.doc.status;
  if (item.error) return "FAILURE";
  return "PENDING";
}

function reasonOf(item) {
  if (item.doc && item.doc.error) return item.doc.error;
  if (item.error) return {reason: item.error.code, message: item.error.message};
  return null;
}

function nsfwLevel(item) { return item.doc && item.doc.nsfw ? item.doc.nsfw.level : null; }

// The served threshold exactly while the input still shows it rounded; what the reviewer typed otherwise.
function blurThreshold() {
  const input = $("blur-threshold");
  if (input.dataset.exact !== undefined && input.value === input.dataset.shown) return Number(input.dataset.exact);
  const value = parseFloat(input.value);
  return Number.isFinite(value) ? value : 0.5;
}

function blurred(item) {
  if (item.revealed) return false;
  const level = $("blur-level").value;
  if (!level) return false;
  const threshold = blurThreshold();
  const nsfw = item.doc && item.doc.nsfw;
  if (!nsfw || !nsfw.at_least) return false;
  const score = level === "neutral" ? 1 : nsfw.at_least[level];
  return typeof score === "number" && score >= threshold;
}

const SORTS = {
  name: (i) => i.name.toLowerCase(),
  verdict: (i) => (i.doc && i.doc.verdict) || "~",
  p: (i) => (i.doc && typeof i.doc.is_ai_generated === "number" ? i.doc.is_ai_generated : -1),
  source: (i) => (i.doc && i.doc.source) || "~",
  nsfw: (i) => LEVELS.indexOf(nsfwLevel(i)),
  status: (i) => statusOf(i),
  label: (i) => i.label || "~",
};

function visibleItems() {
  const verdict = $("f-verdict").value, status = $("f-status").value, nsfw = $("f-nsfw").value;
  const label = $("f-label").value, name = $("f-name").value.trim().toLowerCase();
  const source = $("f-source").value, pMin = parseFloat($("f-p").value);
  let items = state.items.filter((i) =>
    (!verdict || (i.doc && i.doc.verdict === verdict))
    && (!source || (i.doc && i.doc.source === source))
    && (!Number.isFinite(pMin) || (i.doc && typeof i.doc.is_ai_generated === "number" && i.doc.is_ai_generated >= pMin))
    && (!status || statusOf(i) === status)
    && (!nsfw || nsfwLevel(i) === nsfw)
    && (!label || (label === "none" ? !i.label : i.label === label))
    && (!name || i.name.toLowerCase().includes(name)));
  if (state.sort.key) {
    const key = SORTS[state.sort.key], dir = state.sort.dir;
    items = items.map((it, n) => [it, n]).sort(([a, na], [b, nb]) => {
      const ka = key(a), kb = key(b);
      return ka < kb ? -dir : ka > kb ? dir : na - nb;
    }).map(([it]) => it);
  }
  return items;
}

// A clip (answered by genguard_video, or a video file the browser plays) shows as a <video>: its first frame
// is the poster. Animated GIF/WebP/PNG are clips to the server but images to the browser.
function isVideo(item) { return Boolean(item.doc && item.doc.kind === "video") || (item.type || "").startsWith("video/"); }

function thumb(item, big) {
  if ((item.type || "").startsWith("video/")) {
    const video = el("video", {class: (big ? "large" : "thumb") + (blurred(item) ? " blurred" : ""), src: item.url,
      preload: "metadata", muted: true, playsInline: true, controls: Boolean(big), "aria-label": item.name});
    return video;
  }
  const img = el("img", {class: big ? "large" : "thumb", alt: item.name, src: item.url});
  img.addEventListener("error", () => img.classList.add("broken"), {once: true});
  if (blurred(item)) img.classList.add("blurred");
  return img;
}

// The source filter offers the sources the answers named so far.
function sourceOptions() {
  const select = $("f-source");
  const have = new Set([...select.options].map((o) => o.value));
  const names = [...new Set(state.items.map((i) => i.doc && i.doc.source).filter(Boolean))].sort();
  for (const name of names) if (!have.has(name)) select.append(el("option", {value: name, text: name}));
}

function render() {
  sourceOptions();
  const rows = $("rows");
  rows.replaceChildren();
  for (const item of visibleItems()) {
    const d = item.doc;
    const reason = reasonOf(item);
    const isBlurred = blurred(item);
    const thumbButton = el("button", {type: "button", class: "thumb-button", "data-action": "reveal",
      "aria-label": isBlurred ? `Reveal ${item.name} (blurred: NSFW)` : `Show ${item.name}`}, thumb(item, false));
    const statusText = statusOf(item) === "FAILURE" && reason ? `FAILURE: ${reason.reason}` : statusOf(item);
    const tr = el("tr", {tabindex: 0, "data-id": String(item.id), "data-name": item.name,
        class: [item.id === state.selected ? "selected" : "", isBlurred ? "is-blurred" : ""].join(" ").trim()},
      el("td", {}, thumbButton),
      el("td", {class: "name"}, item.name, timelineStrip(item)),
      el("td", {class: "verdict " + ((d && d.verdict) || ""), text: (d && d.verdict) || "—"}),
      el("td", {class: "p"}, d ? num(d.is_ai_generated) : "—"),
      el("td", {class: "source", text: (d && d.source) || "—"}),
      el("td", {class: "nsfw", text: nsfwLevel(item) || "—"}),
      el("td", {class: "status " + statusOf(item).toLowerCase(), title: reason ? reason.message : "", text: statusText}),
      el("td", {class: "label", text: item.label || ""}));
    rows.append(tr);
  }
  const failed = state.items.filter((i) => statusOf(i) === "FAILURE");
  $("failures").hidden = failed.length === 0;
  $("failure-list").replaceChildren(...failed.map((i) => {
    const r = reasonOf(i);
    return el("li", {"data-name": i.name}, el("strong", {text: i.name}), ": ",
      el("code", {class: "reason", text: r.reason}), " — ", r.message);
  }));
  const labelled = state.items.filter((i) => i.label).length;
  if (state.items.length) {
    $("summary").textContent = `${state.items.length} images, ${failed.length} failed, ${labelled} labelled. `
      + "Keys: j/k move, a AI-generated, r real, u unsure, 0 clear, v reveal, Esc close.";
  }
  for (const b of document.querySelectorAll("th button[data-sort]")) {
    const on = b.dataset.sort === state.sort.key;
    b.setAttribute("aria-sort", on ? (state.sort.dir > 0 ? "ascending" : "descending") : "none");
    b.classList.toggle("sorted", on);
  }
  renderDetail();
}

// A clip's timeline strip: one bar per sampled frame, its height P(AI), its colour the frame's NSFW level;
// clicking a bar shows that frame in the detail view.
function timelineStrip(item) {
  const line = item.doc && item.doc.kind === "video" && item.doc.timeline;
  if (!line || !line.length) return null;
  return el("span", {class: "strip", "data-frames": String(line.length)}, line.map((entry, i) => {
    const bar = el("button", {type: "button", class: "frame nsfw-" + (entry.nsfw_level || "none")
        + (item.frame === i ? " current" : ""), "data-action": "frame", "data-frame": String(i),
      title: `${entry.t.toFixed(2)} s: P(AI) ${typeof entry.is_ai_generated === "number" ? entry.is_ai_generated.toFixed(4) : "—"}`
        + `, ${entry.source || "—"}, NSFW ${entry.nsfw_level || "—"}`,
      "aria-label": `frame at ${entry.t.toFixed(2)} s`});
    bar.style.setProperty("--p", String(typeof entry.is_ai_generated === "number" ? entry.is_ai_generated : 0));
    return bar;
  }));
}

// ---- the detail view ------------------------------------------------------------------------------

function bars(title, values, id, order) {
  const keys = order || Object.keys(values).sort((a, b) => values[b] - values[a]);
  return el("section", {class: "bars", "data-block": id},
    el("h3", {text: title}),
    el("dl", {}, keys.filter((k) => k in values).map((k) => {
      const bar = el("span", {class: "bar"});
      bar.style.width = `${Math.max(0, Math.min(1, values[k])) * 100}%`;
      return el("div", {class: "bar-row", "data-key": k},
        el("dt", {text: k}), el("dd", {}, el("span", {class: "track"}, bar), num(values[k])));
    })));
}

function facts(pairs, id) {
  return el("dl", {class: "facts", "data-block": id}, pairs.filter(([, v]) => v !== undefined && v !== null && v !== "")
    .map(([k, v]) => el("div", {"data-key": k}, el("dt", {text: k}), el("dd", {}, v instanceof Node ? v : String(v)))));
}

function renderDetail() {
  const aside = $("detail");
  const item = state.items.find((i) => i.id === state.selected);
  aside.hidden = !item;
  document.body.classList.toggle("with-detail", Boolean(item));
  if (!item) return;
  const d = item.doc;
  $("d-name").textContent = item.name;
  const img = $("d-image");
  const poster = $("d-video");
  const playable = (item.type || "").startsWith("video/");
  img.hidden = playable;
  poster.hidden = !playable;
  if (playable) {
    if (poster.dataset.id !== String(item.id)) { poster.src = item.url; poster.dataset.id = String(item.id); }
    poster.className = "large" + (blurred(item) ? " blurred" : "");
  } else {
    img.src = item.url;
    img.alt = item.name;
    img.className = "large" + (blurred(item) ? " blurred" : "");
  }
  $("d-image-button").setAttribute("aria-label", blurred(item) ? "Reveal the image (blurred: NSFW)" : "The image");
  for (const b of $("d-labels").querySelectorAll("button")) b.setAttribute("aria-pressed", String(b.dataset.label === item.label));

  const warnings = $("d-warnings");
  warnings.replaceChildren();
  const random = d && d.weights ? Object.entries(d.weights).filter(([, w]) => w === "random").map(([k]) => k) : [];
  if (random.length) {
    warnings.append(el("p", {class: "banner", role: "alert", "data-block": "random-weights",
      text: `RANDOM WEIGHTS (${random.join(", ")}): this answer is meaningless.`}));
  }
  for (const w of (d && d.warnings) || []) warnings.append(el("p", {class: "warning", text: w}));

  const body = $("d-body");
  body.replaceChildren();
  const reason = reasonOf(item);
  if (reason) {
    body.append(el("p", {class: "error", "data-block": "failure"}, el("strong", {text: `FAILURE: ${reason.reason}`}),
      " — ", reason.message));
  }
  const fileFacts = [["file", item.name], ["bytes", item.size], ["type", item.type || "unknown"]];
  if (!d || d.status !== "SUCCESS") {
    body.append(el("h3", {text: "File"}), facts(fileFacts, "file"));
    if (d && d.provenance) body.append(provenance(d.provenance));
    return;
  }
  if (d.kind === "video") body.append(...clipDetail(item, poster));
  const f = d.fusion || {};
  body.append(el("section", {class: "verdict-block", "data-block": "verdict"},
    el("p", {class: "big verdict " + (d.verdict || "")}, d.verdict || "—"),
    facts([["P(AI-generated)", num(d.is_ai_generated)], ["threshold", num(f.threshold)], ["margin", num(f.margin)],
      ["rule", f.rule], ["fusion id", f.id], ["source", d.source || "—"], ["decided by", d.decided_by || "the detectors"]],
    "fusion")));
  if (d.possible_sources) body.append(bars("Possible sources (Hive's distribution)", d.possible_sources, "possible_sources"));
  if (d.sources_given_ai) body.append(bars("Generator, given AI-generated", d.sources_given_ai, "sources_given_ai"));
  if (d.nsfw) {
    body.append(bars(`NSFW: ${d.nsfw.level}${d.nsfw.is_nsfw ? " (NSFW)" : ""}`, d.nsfw.scores, "nsfw_scores", LEVELS));
    body.append(bars("NSFW at least (cumulative)", d.nsfw.at_least, "nsfw_at_least", LEVELS));
    body.append(el("p", {class: "muted", text: `is_nsfw: ${d.nsfw.is_nsfw} (${d.nsfw.rule})`}));
  }
  const det = el("section", {"data-block": "detectors"}, el("h3", {text: "Detectors"}));
  for (const [name, heads] of Object.entries(d.detectors || {})) {
    for (const [head, probs] of Object.entries(heads)) {
      const t = el("table", {class: "probs", "data-detector": name, "data-head": head},
        el("caption", {text: `${name} · ${head}`}),
        el("tbody", {}, Object.entries(probs).map(([label, p]) =>
          el("tr", {"data-key": label}, el("th", {scope: "row", text: label}), el("td", {}, num(p))))));
      det.append(t);
    }
  }
  body.append(det);
  const image = d.image || {};
  if (d.kind !== "video") {
    body.append(el("h3", {text: "Image"}), facts([...fileFacts, ["format", image.format], ["width", image.width],
      ["height", image.height]], "image"));
  }
  if (d.provenance) body.append(provenance(d.provenance));
  body.append(el("h3", {text: "Weights"}), facts(Object.entries(d.weights || {}).map(([k, w]) =>
    [k, w + ((d.revisions || {})[k] ? ` @ ${d.revisions[k]}` : "")]), "weights"));
  explanations(item, d.explanations);
}

// A clip's own blocks: its container facts, its timeline strip, and the chosen frame's answer (the first by
// default; clicking a bar of either strip chooses another and seeks the player there).
function clipDetail(item, poster) {
  const d = item.doc, v = d.video || {}, line = d.timeline || [];
  const i = Math.min(item.frame || 0, Math.max(0, line.length - 1));
  const entry = line[i];
  if (entry && !poster.hidden && Math.abs((poster.currentTime || 0) - entry.t) > 0.01) {
    try { poster.currentTime = entry.t; } catch (e) { /* not seekable yet: stays on the poster */ }
  }
  const blocks = [el("h3", {text: "Video"}), facts([["file", item.name], ["bytes", item.size], ["container", v.container],
    ["codec", v.codec], ["width", v.width], ["height", v.height], ["duration_s", v.duration_s], ["fps", v.fps],
    ["frames_decoded", v.frames_decoded], ["frames_sampled", v.frames_sampled],
    ["NSFW peak at", d.nsfw && d.nsfw.timestamps ? d.nsfw.timestamps.map((t) => `${t} s`).join(", ") : null]], "video")];
  const strip = timelineStrip(item);
  if (strip) blocks.push(el("div", {class: "strip-large", "data-block": "timeline"}, strip));
  if (!entry) return blocks;
  const frame = el("section", {"data-block": "frame", "data-frame": String(i)},
    el("h3", {text: `Frame at ${entry.t} s (${i + 1} of ${line.length})`}),
    facts([["t", entry.t], ["status", entry.status], ["P(AI-generated)", num(entry.is_ai_generated)],
      ["verdict", entry.verdict || "—"], ["source", entry.source || "—"], ["NSFW level", entry.nsfw_level || "—"]],
    "frame-facts"));
  for (const [name, heads] of Object.entries(entry.detectors || {})) {
    for (const [head, probs] of Object.entries(heads)) frame.append(bars(`${name} · ${head}`, probs, `frame-${name}-${head}`));
  }
  blocks.push(frame);
  return blocks;
}

// Explanations: the served map (native grid, [0, 1]) upsampled like cv2 INTER_LINEAR onto the region the model
// saw (geometry.crop_box), coloured with OpenCV's JET and blended 0.5/0.5 like pytorch-grad-cam's
// show_cam_on_image; the same arithmetic as genguard.client.explain (tested against cv2 there).
let JET = null;
function jet() {
  if (JET) return JET;
  const f = Math.fround, step = f(f(1) / f(255)), x = [], lut = [];
  for (let i = 0; i < 256; i++) x.push(f(i * step));
  for (let j = 0; j < 256; j++) {
    const lo = Math.max(j - 1, 0), hi = Math.max(j, 1), rgb = [];
    for (const c of [3, 2, 1]) {
      const y = (k) => f(Math.min(1, Math.max(0, 1.5 - Math.abs(4 * k / 255 - c))));
      const v = f(y(lo) + f(f(f(x[j] - x[lo]) * f(y(hi) - y(lo))) / f(x[hi] - x[lo])));
      const w = f(v * 255), r = Math.round(w);  // OpenCV rounds half to even
      rgb.push(Math.abs(w - Math.trunc(w)) === 0.5 ? 2 * Math.round(w / 2) : r);
    }
    lut.push(rgb);
  }
  return (JET = lut);
}

function upsample(grid, h, w) {
  const gh = grid.length, gw = grid[0].length, out = new Float32Array(h * w);
  const taps = (src, dst) => Array.from({length: dst}, (_, i) => {
    const x = (i + 0.5) * (src / dst) - 0.5, x0 = Math.floor(x);
    return [Math.min(Math.max(x0, 0), src - 1), Math.min(Math.max(x0 + 1, 0), src - 1), x < 0 ? 0 : x - x0];
  });
  const ty = taps(gh, h), tx = taps(gw, w);
  let min = Infinity, max = -Infinity;
  for (let i = 0; i < h; i++) {
    const [y0, y1, fy] = ty[i];
    for (let j = 0; j < w; j++) {
      const [x0, x1, fx] = tx[j];
      const top = grid[y0][x0] * (1 - fx) + grid[y0][x1] * fx, bottom = grid[y1][x0] * (1 - fx) + grid[y1][x1] * fx;
      const v = top * (1 - fy) + bottom * fy;
      out[i * w + j] = v; min = Math.min(min, v); max = Math.max(max, v);
    }
  }
  for (let k = 0; k < out.length; k++) out[k] = (out[k] - min) / (1e-7 + (max - min));
  return out;
}

function drawOverlay(canvas, img, entry) {
  const scale = Math.min(1, 480 / Math.max(img.naturalWidth, img.naturalHeight));
  const W = Math.max(1, Math.round(img.naturalWidth * scale)), H = Math.max(1, Math.round(img.naturalHeight * scale));
  canvas.width = W; canvas.height = H;
  const ctx = canvas.getContext("2d");
  ctx.drawImage(img, 0, 0, W, H);
  const g = entry.geometry || {}, size = g.image_size || [img.naturalWidth, img.naturalHeight];
  const box = g.crop_box || [0, 0, size[0], size[1]];
  const x0 = Math.max(0, Math.round(box[0] * W / size[0])), y0 = Math.max(0, Math.round(box[1] * H / size[1]));
  const x1 = Math.min(W, Math.round(box[2] * W / size[0])), y1 = Math.min(H, Math.round(box[3] * H / size[1]));
  if (x1 <= x0 || y1 <= y0) return;
  const region = ctx.getImageData(x0, y0, x1 - x0, y1 - y0), mask = upsample(entry.map, y1 - y0, x1 - x0), lut = jet();
  let peak = 0;
  const blend = new Float32Array(mask.length * 3);
  for (let k = 0; k < mask.length; k++) {
    const c = lut[Math.min(255, Math.max(0, Math.trunc(255 * mask[k])))];
    for (let ch = 0; ch < 3; ch++) {
      const v = 0.5 * c[ch] / 255 + 0.5 * region.data[4 * k + ch] / 255;
      blend[3 * k + ch] = v; peak = Math.max(peak, v);
    }
  }
  for (let k = 0; k < mask.length; k++) {
    for (let ch = 0; ch < 3; ch++) region.data[4 * k + ch] = Math.trunc(255 * blend[3 * k + ch] / peak);
  }
  ctx.putImageData(region, x0, y0);
}

function explanations(item, ex) {
  const box = $("d-explanations");
  box.replaceChildren();
  const entries = [];
  for (const [detector, list] of Object.entries(ex || {})) {
    if (Array.isArray(list)) for (const e of list) if (e.map) entries.push([detector, e]);
  }
  if (!entries.length) { box.hidden = true; return; }
  box.hidden = false;
  const predicted = (e) => e.target === "predicted" ? e.target_label : e.predicted_label;
  const select = el("select", {id: "d-explain-select", "aria-label": "detector head to explain"},
    entries.map(([det, e], i) => el("option", {value: String(i), text: `${det} · ${e.head} → ${e.target_label} (${e.method})`})));
  // The label picker: the head's labels (the predicted one first answered); another label's map is asked for
  // with ?explain_label=<detector>.<head>=<label> for this image and kept on the item.
  const labels = el("select", {id: "d-explain-label", "aria-label": "label whose evidence the heatmap shows"});
  const canvas = el("canvas", {id: "d-explain-canvas", class: "explain", "data-block": "explanation"});
  const note = el("p", {class: "muted"});
  const img = new Image();
  const fillLabels = () => {
    const e = entries[Number(select.value)][1];
    labels.replaceChildren(...(e.labels || [e.target_label]).map((l) =>
      el("option", {value: l, text: l === predicted(e) ? `${l} (predicted)` : l})));
    labels.value = e.target_label;
  };
  const show = () => {
    const [det, served] = entries[Number(select.value)], label = labels.value, key = `${det}.${served.head}=${label}`;
    const e = label === served.target_label ? served : (item.labelMaps || {})[key];
    canvas.dataset.detector = det; canvas.dataset.head = served.head;
    if (!e) {
      canvas.dataset.label = "";
      note.textContent = `computing the map for ${label}…`;
      labelMap(item, det, served.head, label).then(
        () => { if (labels.value === label && entries[Number(select.value)][0] === det) show(); },
        (err) => { if (labels.value === label) note.textContent = `${err.code || "error"}: ${err.message}`; });
      return;
    }
    canvas.dataset.label = e.target_label;
    note.textContent = `evidence for ${e.target_label}${e.target_label === predicted(served) ? " (predicted)" : ""}: ` +
      `${e.method}${e.target_layer ? " at " + e.target_layer : ""}, grid ${e.grid.join("×")}, ` +
      `${(e.geometry || {}).resize === "squash" ? "whole image (squash)" : "center crop (the rest was not seen)"}`;
    if (img.complete && img.naturalWidth) drawOverlay(canvas, img, e);
  };
  img.onload = show;
  img.src = item.url;
  fillLabels();
  select.addEventListener("change", () => { fillLabels(); show(); });
  labels.addEventListener("change", show);
  box.append(el("h3", {text: "Why: heatmap"}), select, labels, canvas, note);
}

async function labelMap(item, detector, head, label) {
  const key = `${detector}.${head}=${label}`;
  const form = new FormData();
  form.append("file", item.file, item.name);
  let response;
  try {
    response = await fetch("/v1/detect?explain_label=" + encodeURIComponent(key),
      {method: "POST", body: form, headers: headers()});
  } catch (e) {
    throw {code: "unreachable", message: "the gateway cannot be reached"};
  }
  if (!response.ok) throw await errorOf(response);
  const doc = (await response.json()).data[0];
  const found = ((doc.explanations || {})[detector] || []).find((x) => x.head === head && x.map);
  if (!found) throw {code: "no_map", message: (doc.error && doc.error.message) || `no map for ${key}`};
  (item.labelMaps = item.labelMaps || {})[key] = found;
  return found;
}

function provenance(p) {
  const c2pa = p.c2pa || {};
  const section = el("section", {"data-block": "provenance"}, el("h3", {text: "Provenance"}),
    facts([["declares AI", String(Boolean(p.declares_ai))], ["generator", p.generator], ["effect", p.effect],
      ["policy", p.policy], ["C2PA", !p.c2pa ? "not looked for" : c2pa.present ? (c2pa.state || "present") + ((c2pa.failures || []).length ? ` (${c2pa.failures.join(", ")})` : "") : "none"],
      ["signer", c2pa.signer ? (c2pa.signer.common_name || c2pa.signer.issuer || JSON.stringify(c2pa.signer)) : null],
      ["decided by", p.decided_by],
      ["looked for", (p.looked_for || []).join(", ") || "nothing"]], "provenance-facts"));
  const signals = p.signals || [];
  section.append(el("ul", {class: "signals"}, signals.length ? signals.map((s) => el("li", {class: "signal"},
    el("code", {text: s.source}), " ", el("strong", {text: s.kind}), s.generator ? ` · ${s.generator}` : "",
    s.detail ? ` · ${signalDetail(s.detail)}` : "")) : el("li", {text: "no signals"})));
  return section;
}

// A signal's detail as one line: its scalar fields (a prompt excerpt cut to 160 characters), lists joined.
function signalDetail(detail) {
  if (typeof detail !== "object") return String(detail);
  return Object.entries(detail).filter(([, v]) => v !== null && v !== undefined && v !== "").map(([k, v]) => {
    let text = Array.isArray(v) ? v.join(", ") : typeof v === "object" ? JSON.stringify(v) : String(v);
    if (text.length > 160) text = text.slice(0, 159) + "…";
    return `${k}: ${text}`;
  }).join("; ");
}

// ---- labels and export ----------------------------------------------------------------------------

function setLabel(item, label) {
  if (!item) return;
  item.label = label;
  render();
}

function exportRows() {
  return state.items.filter((i) => i.label);
}

function download(name, text, type) {
  const url = URL.createObjectURL(new Blob([text], {type}));
  const a = el("a", {href: url, download: name});
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
}

// JSONL: one object per labelled image, `path` (the file name), `label` (ai / real / unsure: `genguard
// evaluate`/`calibrate` skip unsure), and the gateway's answer.
function exportJsonl() {
  const lines = exportRows().map((i) => JSON.stringify({path: i.name, label: i.label, answer: i.doc || {error: reasonOf(i)}}));
  download("genguard-labels.jsonl", lines.join("\n") + (lines.length ? "\n" : ""), "application/x-ndjson");
}

function csvCell(v) {
  const s = v === null || v === undefined ? "" : String(v);
  return /[",\n\r]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s;
}

// CSV: path,label,generator first (the labelled-set columns), then the answer's main fields.
function exportCsv() {
  const head = ["path", "label", "generator", "verdict", "is_ai_generated", "source", "served_nsfw_level", "status", "reason"];
  const lines = [head.join(",")].concat(exportRows().map((i) => {
    const d = i.doc || {}, r = reasonOf(i);
    return [i.name, i.label, "", d.verdict, d.is_ai_generated, d.source, nsfwLevel(i), statusOf(i), r ? r.reason : ""]
      .map(csvCell).join(",");
  }));
  download("genguard-labels.csv", lines.join("\n") + "\n", "text/csv");
}

// ---- events ---------------------------------------------------------------------------------------

function select(id, focus) {
  state.selected = id;
  render();
  if (focus) {
    const row = document.querySelector(`#rows tr[data-id="${id}"]`);
    if (row) row.focus();
  }
}

function move(step) {
  const items = visibleItems();
  if (!items.length) return;
  const at = items.findIndex((i) => i.id === state.selected);
  const next = items[Math.max(0, Math.min(items.length - 1, at < 0 ? 0 : at + step))];
  select(next.id, true);
}

function reveal(item) {
  if (!item) return;
  item.revealed = true;
  render();
}

function init() {
  $("origin").textContent = location.origin;
  $("drop").addEventListener("dragover", (e) => { e.preventDefault(); $("drop").classList.add("over"); });
  $("drop").addEventListener("dragleave", () => $("drop").classList.remove("over"));
  $("drop").addEventListener("drop", async (e) => {
    e.preventDefault();
    $("drop").classList.remove("over");
    addFiles(await filesFromDrop(e.dataTransfer));
  });
  document.addEventListener("paste", (e) => {
    const files = [...((e.clipboardData && e.clipboardData.files) || [])];
    if (files.length) { e.preventDefault(); addFiles(files); }
  });
  for (const id of ["pick-files", "pick-folder"]) {
    $(id).addEventListener("change", (e) => { addFiles([...e.target.files]); e.target.value = ""; });
  }
  for (const id of ["f-verdict", "f-p", "f-source", "f-status", "f-nsfw", "f-label", "f-name"]) $(id).addEventListener("input", render);
  for (const id of ["blur-level", "blur-threshold"]) {
    $(id).addEventListener("input", () => { $("blur-level").dataset.touched = "1"; render(); });
  }
  for (const b of document.querySelectorAll("th button[data-sort]")) {
    b.addEventListener("click", () => {
      const key = b.dataset.sort;
      state.sort = {key, dir: state.sort.key === key ? -state.sort.dir : 1};
      render();
    });
  }
  $("rows").addEventListener("click", (e) => {
    const row = e.target.closest("tr[data-id]");
    if (!row) return;
    const item = state.items.find((i) => i.id === Number(row.dataset.id));
    if (e.target.closest("[data-action=reveal]") && blurred(item)) reveal(item);
    const bar = e.target.closest("[data-action=frame]");
    if (bar) item.frame = Number(bar.dataset.frame);
    select(item.id, false);
  });
  $("d-body").addEventListener("click", (e) => {  // the detail view's strip: another frame of the same clip
    const bar = e.target.closest("[data-action=frame]");
    const item = state.items.find((i) => i.id === state.selected);
    if (!bar || !item) return;
    item.frame = Number(bar.dataset.frame);
    render();
  });
  $("rows").addEventListener("keydown", (e) => {
    const row = e.target.closest("tr[data-id]");
    if (row && e.key === "Enter" && e.target === row) select(Number(row.dataset.id), true);
  });
  $("d-image-button").addEventListener("click", () => reveal(state.items.find((i) => i.id === state.selected)));
  $("d-close").addEventListener("click", () => select(null, false));
  for (const b of $("d-labels").querySelectorAll("button")) {
    b.addEventListener("click", () => {
      const item = state.items.find((i) => i.id === state.selected);
      setLabel(item, item && item.label === b.dataset.label ? null : b.dataset.label);
    });
  }
  $("export-jsonl").addEventListener("click", exportJsonl);
  $("export-csv").addEventListener("click", exportCsv);
  $("key-button").addEventListener("click", () => askKey(""));
  $("key-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const key = $("key-input").value.trim();
    if (!key) return;
    sessionStorage.setItem(KEY_STORE, key);
    $("key-dialog").close();
    state.models = null;
    if (await loadModels()) pump();
  });
  document.addEventListener("keydown", (e) => {
    if (e.ctrlKey || e.metaKey || e.altKey || $("key-dialog").open) return;
    if (e.target.closest && e.target.closest("input, select, textarea")) return;
    const item = state.items.find((i) => i.id === state.selected);
    const keys = {a: "ai", r: "real", u: "unsure"};
    if (e.key in keys) setLabel(item, keys[e.key]);
    else if (e.key === "0") setLabel(item, null);
    else if (e.key === "j" || e.key === "ArrowDown") move(1);
    else if (e.key === "k" || e.key === "ArrowUp") move(-1);
    else if (e.key === "v") reveal(item);
    else if (e.key === "Escape" && item) select(null, false);
    else return;
    e.preventDefault();
    if (item && state.selected === item.id && e.key in keys) {
      const row = document.querySelector(`#rows tr[data-id="${item.id}"]`);
      if (row) row.focus();
    }
  });
  loadModels();
}

document.addEventListener("DOMContentLoaded", init);
