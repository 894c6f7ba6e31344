// diffsketch page: plain JavaScript, no libraries. Photos go to POST /api/sketch two at a time.
"use strict";
const $ = (id) => document.getElementById(id);
const state = { items: [], styles: [], running: 0, queue: [], done: 0, total: 0 };
const PARALLEL = 2;

// The line controls as query parameters (diffsketch.extractor.lines); the server draws a kept sketch with them.
function lineParams() {
  const params = new URLSearchParams();
  const mode = $("mode").value;
  if (mode === "binary") params.set("threshold", $("threshold").value);
  if (mode === "clean") params.set("binarize", `${$("threshold").value},${Math.max(Number($("threshold").value), Number($("weak").value))}`);
  if (Number($("line-width").value) !== 1) params.set("line_width", $("line-width").value);
  if (Number($("min-speck").value) > 0) params.set("min_speck", $("min-speck").value);
  if ($("line-color").value !== "#000000") params.set("line_color", $("line-color").value);
  if ($("transparent").checked) params.set("background", "transparent");
  else if ($("paper").value !== "#ffffff") params.set("background", $("paper").value);
  return params;
}

function settings() {
  const params = new URLSearchParams({ style: $("style").value });
  if ($("size").value) params.set("size", $("size").value);
  for (const [key, value] of lineParams()) params.set(key, value);
  return params;
}

function resultUrl(result, kind) {
  const query = lineParams().toString();
  return `/api/result/${result.id}.${kind}` + (query ? `?${query}` : "");
}

// Live preview: every finished sketch is drawn again (by the server, without the network) with the controls' values.
function showLines(item) {
  if (!item.result) return;
  if (item.img) {
    item.img.src = resultUrl(item.result, "png");
    item.img.classList.toggle("see-through", $("transparent").checked);
  }
  const links = item.element.querySelector(".links");
  links.querySelector(".png").href = resultUrl(item.result, "png");
  links.querySelector(".svg").href = resultUrl(item.result, "svg");
}

let previewTimer = null;
function previewLines() {
  clearTimeout(previewTimer);
  previewTimer = setTimeout(() => state.items.forEach(showLines), 120);
}

async function loadStyles() {
  const response = await fetch("/api/styles");
  const info = await response.json();
  state.styles = info.styles;
  const select = $("style");
  select.innerHTML = "";
  for (const style of info.styles) {
    const option = document.createElement("option");
    option.value = style.name;
    option.textContent = style.name;
    select.appendChild(option);
  }
  if (!info.styles.length) {
    $("status").textContent = `No styles found in ${info.folder}: give --styles a style folder, or a folder of them; write one with \`diffsketch export --style styles/NAME\`.`;
  }
  for (const size of info.sizes) {
    const option = document.createElement("option");
    option.value = size;
    option.textContent = `long side ≤ ${size} px`;
    $("size").appendChild(option);
  }
  $("limits").textContent = `PNG, JPEG, WebP, BMP or TIFF · up to ${info.max_upload_mb} MB and ${Math.round(info.max_pixels / 1e6)} megapixels each`;
  showStyle();
}

function showStyle() {
  const style = state.styles.find((s) => s.name === $("style").value);
  const box = $("style-preview");
  box.innerHTML = "";
  if (!style) return;
  for (const key of ["example", "example_sketch"]) {
    if (style[key]) {
      const img = document.createElement("img");
      img.src = style[key];
      img.alt = `${style.name} ${key.replace("_", " ")}`;
      box.appendChild(img);
    }
  }
  box.title = [style.licence && `licence: ${style.licence}`, style.teacher && `teacher: ${style.teacher}`].filter(Boolean).join(" · ");
}

function card(file) {
  const element = document.createElement("article");
  element.className = "card";
  element.innerHTML = `<h2></h2><div class="pair"><figure class="photo"><img alt="photo"></figure>
    <figure class="sketch"><span class="pending">waiting…</span></figure></div><div class="links"></div>`;
  element.querySelector("h2").textContent = file.name;
  const photo = element.querySelector(".photo img");
  photo.onerror = () => { photo.replaceWith(Object.assign(document.createElement("span"), { className: "pending", textContent: "no preview" })); };
  photo.src = URL.createObjectURL(file);
  $("results").prepend(element);
  return element;
}

function updateProgress() {
  const box = $("progress-box");
  box.hidden = state.total === 0;
  $("progress-bar").style.width = state.total ? `${(100 * state.done) / state.total}%` : "0";
  const ok = state.items.filter((i) => i.result).length;
  $("status").textContent = state.total ? `${state.done} of ${state.total} done` + (state.done === state.total ? ` · ${ok} ${ok === 1 ? "sketch" : "sketches"} ready` : "") : "";
  $("zip").hidden = ok === 0;
  $("redraw").disabled = state.items.length === 0 || state.done < state.total;
}

function enqueue(item) {
  item.result = null;
  item.img = null;
  item.element.classList.remove("failed");
  item.element.querySelector(".sketch").innerHTML = '<span class="pending">waiting…</span>';
  item.element.querySelector(".links").innerHTML = "";
  const old = item.element.querySelector(".error");
  if (old) old.remove();
  state.total += 1;
  state.queue.push(item);
  pump();
}

function pump() {
  while (state.running < PARALLEL && state.queue.length) {
    const item = state.queue.shift();
    state.running += 1;
    run(item).finally(() => {
      state.running -= 1;
      state.done += 1;
      updateProgress();
      pump();
    });
  }
  updateProgress();
}

async function run(item) {
  const sketchBox = item.element.querySelector(".sketch");
  sketchBox.innerHTML = '<span class="pending">drawing…</span>';
  const params = settings();
  params.set("name", item.file.name);
  let answer;
  try {
    const response = await fetch(`/api/sketch?${params}`, { method: "POST", body: item.file, headers: { "Content-Type": "application/octet-stream" } });
    answer = await response.json();
  } catch (err) {
    answer = { error: `the server did not answer (${err})` };
  }
  if (answer.error) {
    item.element.classList.add("failed");
    sketchBox.innerHTML = '<span class="pending">no sketch</span>';
    const message = document.createElement("p");
    message.className = "error";
    message.setAttribute("role", "alert");
    message.textContent = answer.error;
    item.element.appendChild(message);
    return;
  }
  item.result = answer;
  const img = document.createElement("img");
  img.alt = `sketch of ${item.file.name}`;
  img.className = "sketch-image";
  img.classList.toggle("see-through", $("transparent").checked);
  item.img = img;
  const loaded = await new Promise((resolve) => { img.onload = () => resolve(true); img.onerror = () => resolve(false); img.src = answer.png; });
  sketchBox.innerHTML = "";
  sketchBox.appendChild(loaded ? img : Object.assign(document.createElement("span"), { className: "pending", textContent: "the sketch could not be shown; try the PNG link" }));
  const links = item.element.querySelector(".links");
  links.innerHTML = `<a class="png" download>PNG</a><a class="svg" download>SVG</a><span class="meta"></span>`;
  links.querySelector(".png").href = answer.png;
  links.querySelector(".png").download = `${answer.name}_sketch.png`;
  links.querySelector(".svg").href = answer.svg;
  links.querySelector(".svg").download = `${answer.name}_sketch.svg`;
  links.querySelector(".meta").textContent = `${answer.width} × ${answer.height} px`;
}

function addFiles(files) {
  if (state.running === 0 && state.queue.length === 0) { state.done = 0; state.total = 0; }  // a new batch: fresh progress
  for (const file of files) {
    const item = { file, element: card(file), result: null };
    state.items.push(item);
    enqueue(item);
  }
}

async function downloadZip(event) {
  event.preventDefault();
  const ids = state.items.filter((i) => i.result).map((i) => i.result.id);
  const lines = Object.fromEntries(lineParams());
  const response = await fetch("/api/zip", { method: "POST", body: JSON.stringify({ ids, lines }), headers: { "Content-Type": "application/json" } });
  if (!response.ok) {
    $("status").textContent = (await response.json()).error;
    return;
  }
  const url = URL.createObjectURL(await response.blob());
  const link = document.createElement("a");
  link.href = url;
  link.download = "sketches.zip";
  document.body.appendChild(link);
  link.click();
  link.remove();
}

function setup() {
  const drop = $("drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => { e.preventDefault(); drop.classList.remove("over"); addFiles(e.dataTransfer.files); });
  $("files").addEventListener("change", (e) => { addFiles(e.target.files); e.target.value = ""; });
  $("style").addEventListener("change", showStyle);
  const shown = {
    threshold: (v) => Number(v).toFixed(2), weak: (v) => Number(v).toFixed(2),
    "line-width": (v) => `${Number(v).toFixed(2)}×`, "min-speck": (v) => `${v} px`,
  };
  for (const [id, format] of Object.entries(shown)) {
    $(id).addEventListener("input", () => { $(`${id}-value`).textContent = format($(id).value); previewLines(); });
  }
  for (const id of ["line-color", "paper", "transparent"]) $(id).addEventListener("input", previewLines);
  const toggle = () => {
    const mode = $("mode").value;
    $("threshold-field").style.opacity = mode === "grey" ? 0.45 : 1;
    $("weak-field").style.opacity = mode === "clean" ? 1 : 0.45;
    $("paper").disabled = $("transparent").checked;
  };
  $("mode").addEventListener("change", () => { toggle(); previewLines(); });
  $("transparent").addEventListener("change", toggle);
  toggle();
  $("redraw").addEventListener("click", () => { state.done = 0; state.total = 0; state.items.forEach(enqueue); });
  $("zip").addEventListener("click", downloadZip);
  loadStyles();
}

setup();
