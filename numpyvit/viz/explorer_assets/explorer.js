// The explorer page's script: draws the recorded step (the JSON in #explorer-data) with canvases
// and KaTeX. No libraries besides KaTeX, no network. numpyvit/viz/explorer_page.py writes the data.
"use strict";
const DATA = JSON.parse(document.getElementById("explorer-data").textContent);
const TOLERANCE = 1e-6;                     // an op's gradient check passes below this
const state = { op: -1, block: DATA.blocks[0], head: DATA.heads[0], log: false };   // op -1: the overview
const [GH, GW] = DATA.grid;
const el = (tag, attrs = {}, ...children) => {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v; else if (k === "text") node.textContent = v; else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c);
  return node;
};
const fmt = (x) => (x === 0 ? "0" : Math.abs(x) >= 1e-3 && Math.abs(x) < 1e4 ? x.toPrecision(4) : x.toExponential(2));

// ----- numbers ---------------------------------------------------------------------------------
function decode(t) {                         // base64 little-endian float32 -> Float32Array
  const bytes = Uint8Array.from(atob(t.data), (c) => c.charCodeAt(0));
  return new Float32Array(bytes.buffer);
}
const shape = (s) => "(" + s.join(", ") + ")";
function cropNote(t) {
  return t.shape.join() === t.full_shape.join() ? "" : ` (showing ${shape(t.shape)} of ${shape(t.full_shape)})`;
}
function tokenName(i, hasCls) {             // row i of a token matrix
  if (hasCls && i === 0) return "[CLS]";
  const p = hasCls ? i - 1 : i;
  return `patch ${p} (row ${Math.floor(p / GW)}, col ${p % GW})`;
}

// ----- colours ---------------------------------------------------------------------------------
const DECADES = 4;                           // the log colour scale spans scale / 10^4 to scale
function strength(v, scale) {                // 0 (white) to 1 (full colour), linear or logarithmic
  const a = Math.min(1, Math.abs(v) / scale);
  return state.log ? Math.max(0, 1 + Math.log10(a || 1e-30) / DECADES) : a;
}
function diverging(v, scale) {               // blue < 0 < red, white at 0
  const a = strength(v, scale);
  return v >= 0 ? [255, 255 - 200 * a, 255 - 210 * a] : [255 - 210 * a, 255 - 170 * a, 255];
}
function sequential(v, scale) {              // white -> deep blue, for probabilities
  const a = strength(v, scale);
  return [255 - 230 * a, 255 - 200 * a, 255 - 110 * a];
}
function gray(v, scale, low) {               // the image: its lowest value black, scale white
  const a = Math.max(0, Math.min(1, (v - low) / (scale - low || 1)));
  return [255 * a, 255 * a, 255 * a];
}

// ----- the tooltip -----------------------------------------------------------------------------
const tooltip = document.getElementById("tooltip");
function showTip(event, text) {
  tooltip.textContent = text;
  tooltip.style.display = "block";
  tooltip.style.left = event.clientX + 14 + "px";
  tooltip.style.top = event.clientY + 12 + "px";
}
const hideTip = () => { tooltip.style.display = "none"; };

// ----- drawing ---------------------------------------------------------------------------------
// The colour scale of a heatmap: its 99th percentile of |value| (a few larger values saturate, so
// one big entry cannot wash out the rest), or its largest |value| when that is 0.
function colourScale(values) {
  const sorted = Float32Array.from(values, Math.abs).sort();
  const high = sorted[Math.floor(0.99 * (sorted.length - 1))];
  return { scale: high > 0 ? high : sorted[sorted.length - 1], max: sorted[sorted.length - 1] };
}

// A heatmap of values (rows x cols, row-major). opts: caption, color ("diverging"/"sequential"),
// rowName(i), colName(j), onRow(i) on hover, maxWidth, maxHeight. Returns {node, mark(i)}.
function heatmap(values, rows, cols, opts) {
  const { scale, max } = colourScale(values);
  const figure = el("figure", {}, el("figcaption", { text: opts.caption }));
  if (scale === 0) {                         // nothing to draw: say so instead of a blank canvas
    figure.append(el("div", { class: "zero", text: "all zeros" }));
    return { node: figure, mark: () => {} };
  }
  const cell = Math.max(1, Math.min(16, Math.floor((opts.maxWidth || 560) / cols),
                                    Math.floor((opts.maxHeight || 420) / rows)));
  const canvas = el("canvas", { width: cols * cell, height: rows * cell, role: "img",
                                "aria-label": opts.caption });
  const ctx = canvas.getContext("2d");
  const low = Math.min(...values);
  const color = opts.color === "sequential" ? sequential : opts.color === "gray" ? (v, s) => gray(v, max, low) : diverging;
  const image = ctx.createImageData(cols, rows);
  for (let i = 0; i < rows * cols; i++) {
    const [r, g, b] = color(values[i], scale);
    image.data.set([r, g, b, 255], 4 * i);
  }
  const small = el("canvas", { width: cols, height: rows });
  small.getContext("2d").putImageData(image, 0, 0);
  const paint = (row) => {
    ctx.imageSmoothingEnabled = false;
    ctx.drawImage(small, 0, 0, cols * cell, rows * cell);
    if (row !== undefined && row >= 0) {
      ctx.strokeStyle = "#111";
      ctx.strokeRect(0.5, row * cell + 0.5, cols * cell - 1, Math.max(1, cell - 1));
    }
  };
  paint();
  canvas.addEventListener("mousemove", (event) => {
    const box = canvas.getBoundingClientRect();
    const i = Math.min(rows - 1, Math.floor((event.clientY - box.top) / cell));
    const j = Math.min(cols - 1, Math.floor((event.clientX - box.left) / cell));
    const name = opts.rowName ? opts.rowName(i) : `row ${i}`;
    const col = opts.colName ? opts.colName(j) : `channel ${j}`;
    showTip(event, `${name}, ${col}\n${fmt(values[i * cols + j])}`);
    if (opts.onRow) opts.onRow(i);
  });
  canvas.addEventListener("mouseleave", hideTip);
  figure.append(canvas, el("div", { class: "note", text: scale < max ? `colour saturates at |value| ${fmt(scale)} ` +
    `(99th percentile); largest ${fmt(max)}` : `largest |value| ${fmt(max)}` + (state.log ? `; log colours, ${DECADES} decades` : "") }));
  return { node: figure, mark: paint };
}

// The image (its first channel) as a gray canvas of its own size, to draw under grid maps.
let imageCanvas = null;
function imageUnderlay() {
  if (imageCanvas) return imageCanvas;
  const t = DATA.ops[0].out;                  // the image op: (C, H, W)
  const [, H, W] = t.shape;
  const values = decode(t).subarray(0, H * W);
  const low = Math.min(...values), high = Math.max(...values);
  imageCanvas = el("canvas", { width: W, height: H });
  const ctx = imageCanvas.getContext("2d");
  const image = ctx.createImageData(W, H);
  values.forEach((v, i) => { const [r, g, b] = gray(v, high, low); image.data.set([r, g, b, 255], 4 * i); });
  ctx.putImageData(image, 0, 0);
  return imageCanvas;
}

// One value per token on the patch grid (the [CLS] cell on its own, left); with overImage the
// cells are translucent over the image, so one sees which part of the image a token is.
function gridMap(perToken, hasCls, caption, color = "sequential", overImage = false) {
  let scale = 0;
  for (const v of perToken) scale = Math.max(scale, Math.abs(v));
  const cell = Math.max(4, Math.floor(168 / Math.max(GH, GW)));
  const offset = hasCls ? cell + 8 : 0;
  const canvas = el("canvas", { width: offset + GW * cell, height: GH * cell, role: "img", "aria-label": caption });
  const ctx = canvas.getContext("2d");
  const paint = (marked) => {
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    ctx.imageSmoothingEnabled = false;
    if (overImage) ctx.drawImage(imageUnderlay(), offset, 0, GW * cell, GH * cell);
    const pick = color === "sequential" ? sequential : diverging;
    perToken.forEach((v, t) => {
      const [r, g, b] = scale ? pick(v, scale) : [255, 255, 255];
      ctx.fillStyle = `rgba(${r},${g},${b},${overImage && t > 0 ? 0.7 : 1})`;
      const p = hasCls ? t - 1 : t;
      const [x, y] = p < 0 ? [0, 0] : [offset + (p % GW) * cell, Math.floor(p / GW) * cell];
      ctx.fillRect(x, y, cell, cell);
      if (t === marked) { ctx.strokeStyle = "#111"; ctx.lineWidth = 2; ctx.strokeRect(x + 1, y + 1, cell - 2, cell - 2); }
    });
    ctx.strokeStyle = "#c5cad6"; ctx.lineWidth = 1;
    ctx.strokeRect(offset + 0.5, 0.5, GW * cell - 1, GH * cell - 1);
  };
  paint(-1);
  canvas.addEventListener("mousemove", (event) => {
    const box = canvas.getBoundingClientRect();
    const x = event.clientX - box.left, y = event.clientY - box.top;
    let t = -1;
    if (hasCls && x < cell && y < cell) t = 0;
    else if (x >= offset) t = Math.floor(y / cell) * GW + Math.floor((x - offset) / cell) + (hasCls ? 1 : 0);
    if (t >= 0 && t < perToken.length) showTip(event, `${tokenName(t, hasCls)}\n${fmt(perToken[t])}`);
  });
  canvas.addEventListener("mouseleave", hideTip);
  return { node: el("figure", {}, el("figcaption", { text: caption }), canvas), mark: paint };
}

function rowNorms(values, rows, cols) {
  const norms = new Float32Array(rows);
  for (let i = 0; i < rows; i++) {
    let s = 0;
    for (let j = 0; j < cols; j++) s += values[i * cols + j] ** 2;
    norms[i] = Math.sqrt(s);
  }
  return norms;
}

// ----- one tensor, drawn by the op's layout ----------------------------------------------------
// positive: the values are never negative (probabilities, pixels): a one-sided colour scale.
function drawTensor(t, layout, label, positive) {
  const values = decode(t);
  const caption = `${label}: ${shape(t.full_shape)}, norm ${fmt(t.norm)}${cropNote(t)}`;
  if (layout === "image") {
    const [C, H, W] = t.shape;
    return heatmap(values.subarray(0, H * W), H, W, { caption: caption + (C > 1 ? " (channel 0)" : ""),
      color: positive ? "gray" : "diverging",
      rowName: (i) => `pixel row ${i}`, colName: (j) => `column ${j}`, maxWidth: 280, maxHeight: 280 }).node;
  }
  if (layout === "attention") {
    const [, T, K] = t.shape;                 // the heads shown, T query rows (maybe cropped), K keys
    const h = DATA.heads.indexOf(state.head);
    const head = values.subarray(h * T * K, (h + 1) * T * K);
    const row = (i) => head.subarray(i * K, (i + 1) * K);
    const colour = positive ? "sequential" : "diverging";
    const grid = gridMap(row(0), true, `head ${state.head}: row of [CLS] over the image`, colour, true);
    const map = heatmap(head, T, K, { caption: `${label}, head ${state.head}: ${shape(t.full_shape)}, norm ${fmt(t.norm)}${cropNote(t)}`,
      color: positive ? "sequential" : "diverging", rowName: (i) => "query " + tokenName(i, true),
      colName: (j) => "key " + tokenName(j, true),
      onRow: (i) => { grid.node.querySelector("figcaption").textContent = `head ${state.head}: row of ${tokenName(i, true)} over the image`;
                      grid.node.replaceChild(gridMap(row(i), true, "", colour, true).node.querySelector("canvas"),
                                             grid.node.querySelector("canvas")); } });
    return el("div", { class: "row" }, map.node, grid.node);
  }
  if (layout === "heads") {
    const [, T, Dh] = t.shape;
    const h = DATA.heads.indexOf(state.head);
    return heatmap(values.subarray(h * T * Dh, (h + 1) * T * Dh), T, Dh,
      { caption: `${label}, head ${state.head}: ${shape(t.full_shape)}, norm ${fmt(t.norm)}${cropNote(t)}`,
        rowName: (i) => tokenName(i, true) }).node;
  }
  if (layout === "vector") return vectorBars(values, caption, t.shape[0]);
  if (layout === "scalar") return el("p", { text: `${label}: ${fmt(values[0])}` });
  // tokens (with [CLS]) or patches (without): rows are tokens
  const rows = t.shape.length > 1 ? t.shape[0] : 1;
  const cols = values.length / rows;
  const hasCls = layout === "tokens";
  const grid = gridMap(rowNorms(values, rows, cols), hasCls, "norm of each token");
  const map = heatmap(values, rows, cols, { caption, rowName: (i) => tokenName(i, hasCls),
                                            onRow: (i) => { grid.mark(i); map.mark(i); } });
  return el("div", { class: "row" }, map.node, grid.node);
}

function vectorBars(values, caption, n, scale) {  // scale: the full bar (default: the largest |value|)
  if (n > 24) return heatmap(values, 1, n, { caption, rowName: () => "", maxHeight: 16 }).node;
  const classes = n === DATA.classes.length;
  scale = scale || Math.max(...Array.from(values, Math.abs)) || 1;
  const bars = el("div", { class: "bars" });
  values.forEach((v, k) => bars.append(el("span", { text: classes ? DATA.classes[k] : `${k}` }),
    el("div", { class: "bar" + (v < 0 ? " other" : ""), style: `width:${(100 * Math.abs(v)) / scale}%` }),
    el("span", { text: fmt(v) })));
  return el("figure", {}, el("figcaption", { text: caption }), bars);
}

// ----- the views -------------------------------------------------------------------------------
// A grid of [label, TeX] rows, the TeX rendered by KaTeX.
function formulaBox(rows) {
  const box = el("div", { class: "formulas" });
  for (const [side, tex] of rows) {
    const cell = el("div", { class: "tex" });
    katex.render(tex, cell, { displayMode: true, throwOnError: false });
    box.append(el("div", { class: "side", text: side }), cell);
  }
  return box;
}

function formulas(kind) {
  const box = formulaBox([["forward", kind.forward], ["backward", kind.backward]]
    .filter(([, list]) => list.length).map(([side, list]) => [side, list.join(", \\qquad ")]));
  const where = `docs/math.md, section ${kind.section}`;
  box.append(el("div", { class: "side", text: "derived in" }),
             DATA.math_md ? el("a", { href: DATA.math_md, text: where }) : el("span", { text: where }));
  return box;
}

function checkTable(op) {
  const table = el("table", {}, el("tr", {}, el("th", { text: "gradient of" }), el("th", { text: "relative error" }), el("th")));
  for (const c of op.check) {
    const ok = c.error < TOLERANCE;
    table.append(el("tr", {}, el("td", { text: c.tensor }), el("td", { class: "num", text: c.error.toExponential(1) }),
                            el("td", { class: ok ? "pass" : "fail", text: ok ? "pass" : "FAIL" })));
  }
  return table;
}

function paramsView(op) {
  const box = el("div");
  for (const p of op.params) {
    const v = p.grad;
    const rows = v.shape.length > 1 ? v.shape[v.shape.length - 2] : 1;
    const layout = p.name.startsWith("pos_embed") ? "tokens" : "matrix";
    box.append(el("h3", { text: `${p.name} ${shape(v.full_shape)}: |θ| ${fmt(p.value.norm)}, |dθ| ${fmt(v.norm)}, ` +
                               `one AdamW step moves it by |Δθ| ${fmt(p.step)}` +
                               (p.value.norm > 0 ? `, ${fmt(p.step / p.value.norm)} of its size` : "") }));
    box.append(layout === "tokens" ? drawTensor(v, "tokens", `d ${p.name}`)
      : heatmap(decode(v), rows, decode(v).length / rows, { caption: `d ${p.name}${cropNote(v)}`,
          rowName: (i) => (rows > 1 ? `row ${i}` : ""), colName: (j) => `column ${j}` }).node);
  }
  return box;
}

function codeView(kind) {
  const box = el("details", {}, el("summary", { text: "the code: " + kind.code.join(", ") + "; fast layer " + kind.fast.name }));
  for (const name of kind.code) {
    const c = DATA.code[name];
    box.append(el("p", { class: "note" }, el("a", { href: c.url, text: c.where })), el("pre", { text: c.code }));
  }
  box.append(el("p", { class: "note" }, "fast layer: ", el("a", { href: kind.fast.url, text: `${kind.fast.name}, ${kind.fast.where}` }),
                " (pinned to these functions by tests/test_reference.py)"));
  return box;
}

function opView(op) {
  const kind = DATA.kinds[op.kind];
  const view = el("section", { "data-op": op.key });
  view.append(el("h2", { text: `${op.group}: ${kind.title}` }), el("p", { class: "about", text: kind.about }));
  view.append(formulas(kind));
  if (op.summary) {
    view.append(el("p", { class: "note", text: `Not detailed in this page (${DATA.left_out.join("; ")}). ` +
      `Output ${shape(op.out.full_shape)}, norm ${fmt(op.out.norm)}; gradient norm ${fmt(op.dout.norm)}.` }));
    return view;
  }
  const positive = op.kind === "softmax" || op.kind === "image";   // probabilities, pixels
  view.append(el("h3", { text: op.kind === "image" ? "the input" : "forward: the output" }),
              drawTensor(op.out, kind.layout, op.kind === "image" ? "image" : "output", positive));
  view.append(el("h3", { text: "backward: the gradient of the loss arriving at the output" }),
              drawTensor(op.dout, kind.layout, "gradient", false));
  if (op.check.length) view.append(el("h3", { text: "gradient check on this image" }), checkTable(op));
  if (op.params.length) view.append(el("h3", { text: "its weights' gradients" }), paramsView(op));
  if (kind.code.length) view.append(codeView(kind));
  return view;
}

function overview() {
  const view = el("section", { "data-op": "overview" });
  const predicted = DATA.probs.indexOf(Math.max(...DATA.probs));
  view.append(el("h2", { text: "Overview: one training step" }),
    el("p", { class: "about", text: `Loss ${fmt(DATA.loss)} for target ${DATA.classes[DATA.label]}; the model predicts ` +
      `${DATA.classes[predicted]} (${(100 * DATA.probs[predicted]).toFixed(1)}%). ` +
      (DATA.left_out.length ? "Left out of this page: " + DATA.left_out.join("; ") + "." : "") }));
  view.append(el("div", { class: "row" },
    el("div", {}, el("h3", { text: "prediction: the softmax of the logits" }),
                  vectorBars(Float32Array.from(DATA.probs), "p", DATA.probs.length, 1)),
    el("div", {}, el("h3", { text: "norms along the step: where does the signal fade or grow?" }), opNormChart())));
  view.append(el("h3", { text: "each weight tensor: |dθ| / |θ| and the AdamW step |Δθ| / |θ|" }),
    el("p", { class: "note", text: adamwNote() }), parameterBars());
  view.append(formulaBox(DATA.adamw.map((tex, i) => [i === 0 ? "AdamW" : "", tex])));
  return view;
}

function adamwNote() {
  const s = DATA.settings;
  const clip = s.clip_norm ? ` The gradients' global norm is ${fmt(s.grad_norm)}; as in training they are clipped to ` +
    `${s.clip_norm} first${s.grad_norm > s.clip_norm ? " (so scaled down)" : " (no change)"}.` : "";
  return `The loss uses label smoothing ${s.label_smoothing}. One AdamW step from zero moments, lr ${s.lr}, ` +
    `weight decay ${s.weight_decay}: a first step moves each element by about lr, whatever its gradient's size.` + clip;
}

function logBar(value, low, high) {           // a bar's width (%) on a log scale from low to high
  return (100 * (Math.log10(value) - Math.log10(low))) / (Math.log10(high) - Math.log10(low) || 1);
}

// The norms along the step, one point per op (log scale): the gradient arriving at each op (the
// backward runs right to left) and each op's output (forward). Blocks are shaded; hover names the
// op, a click opens it.
function opNormChart() {
  const series = [["gradient arriving", "#d3592f", DATA.ops.map((op) => op.dout.norm)],
                  ["output (forward)", "#2f5bd3", DATA.ops.map((op) => op.out.norm)]];
  const all = series.flatMap(([, , v]) => v).filter((v) => v > 0);
  const low = Math.floor(Math.log10(Math.min(...all))), high = Math.ceil(Math.log10(Math.max(...all)));
  const [W, H, left, top, bottom] = [900, 240, 52, 18, 22];
  const canvas = el("canvas", { width: W, height: H, role: "img",
                                "aria-label": "norm of each op's output and of the gradient arriving at it" });
  const ctx = canvas.getContext("2d");
  const n = DATA.ops.length;
  const x = (i) => left + ((W - left - 10) * (i + 0.5)) / n;
  const y = (v) => top + ((H - top - bottom) * (high - Math.log10(v))) / (high - low || 1);
  ctx.font = "11px system-ui, sans-serif";
  DATA.ops.forEach((op, i) => {                 // shade every other block, name each
    const b = op.group.startsWith("block ") ? Number(op.group.slice(6)) : -1;
    if (b >= 0 && (i === 0 || DATA.ops[i - 1].group !== op.group)) {
      const end = DATA.ops.findLastIndex((o) => o.group === op.group);
      ctx.fillStyle = b % 2 ? "#f1f3f8" : "#e6eaf3";
      ctx.fillRect(x(i) - (x(1) - x(0)) / 2, top, x(end) - x(i) + (x(1) - x(0)), H - top - bottom);
      ctx.fillStyle = "#5b6475";
      ctx.fillText(`block ${b}`, x(i) - 4, top - 5);
    }
  });
  ctx.fillStyle = "#5b6475";
  for (let d = low; d <= high; d++) {           // one grid line a decade
    ctx.fillText(`1e${d}`, 4, y(10 ** d) + 4);
    ctx.fillRect(left, y(10 ** d), W - left - 10, 0.5);
  }
  ctx.fillText("image", left, H - 6);
  ctx.fillText("loss", W - 36, H - 6);
  for (const [, colour, values] of series) {
    ctx.strokeStyle = colour; ctx.fillStyle = colour; ctx.lineWidth = 1.5;
    ctx.beginPath();
    values.forEach((v, i) => { if (v > 0) ctx.lineTo(x(i), y(v)); });
    ctx.stroke();
    values.forEach((v, i) => { if (v > 0) ctx.fillRect(x(i) - 2, y(v) - 2, 4, 4); });
  }
  const nearest = (event) => {
    const box = canvas.getBoundingClientRect();
    const i = Math.round(((event.clientX - box.left) * (W / box.width) - left) / ((W - left - 10) / n) - 0.5);
    return Math.max(0, Math.min(n - 1, i));
  };
  canvas.addEventListener("mousemove", (event) => {
    const op = DATA.ops[nearest(event)];
    showTip(event, `${op.group}: ${DATA.kinds[op.kind].title}\noutput ${fmt(op.out.norm)}, gradient ${fmt(op.dout.norm)}`);
  });
  canvas.addEventListener("mouseleave", hideTip);
  canvas.addEventListener("click", (event) => select(nearest(event)));
  canvas.style.cursor = "pointer";
  const legend = el("div", { class: "note" });
  for (const [name, colour] of series) legend.append(el("span", { style: `color:${colour}`, text: "\u25A0 " }), `${name}   `);
  return el("figure", {}, canvas, legend);
}

function parameterBars() {                  // relative sizes; a tensor that is 0 (a fresh bias) has none
  const values = DATA.parameters.filter((p) => p.norm > 0).flatMap((p) => [p.grad / p.norm, p.step / p.norm]).filter((v) => v > 0);
  const low = Math.min(...values) / 2, high = Math.max(...values);
  const bars = el("div", { class: "bars" });
  for (const p of DATA.parameters) {
    const hit = p.name.startsWith(`blocks.${state.block}.`);
    const [g, u] = p.norm > 0 ? [p.grad / p.norm, p.step / p.norm] : [0, 0];
    bars.append(el("span", { text: p.name }),
      el("div", {}, el("div", { class: "bar" + (hit ? " hit" : ""), style: `width:${g > 0 ? logBar(g, low, high) : 0}%`, title: "|dθ| / |θ|" }),
                    el("div", { class: "bar other", style: `width:${u > 0 ? logBar(u, low, high) : 0}%`, title: "|Δθ| / |θ|" })),
      el("span", { text: p.norm > 0 ? `${fmt(g)} / ${fmt(u)}` : `θ = 0: |dθ| ${fmt(p.grad)}, |Δθ| ${fmt(p.step)}` }));
  }
  return bars;
}

// ----- navigation ------------------------------------------------------------------------------
function visibleOps() {                       // the overview (-1), the embedding, the chosen block, the head
  return [-1, ...DATA.ops.map((op, i) => [op, i]).filter(([op]) => !op.group.startsWith("block ") ||
          op.group === `block ${state.block}`).map(([, i]) => i)];
}

function buildNav() {
  const list = document.getElementById("op-list");
  list.textContent = "";
  let group = null;
  for (const i of visibleOps()) {
    const op = DATA.ops[i];
    const name = op ? op.group : "overview";
    if (op && name !== group) { list.append(el("li", { class: "group", text: name })); group = name; }
    const button = el("button", { type: "button", "data-index": i },
      op ? DATA.kinds[op.kind].title : "overview", el("span", { class: "norm", text: op ? fmt(op.dout.norm) : "" }));
    if (op) button.title = `|gradient| = ${fmt(op.dout.norm)}`;
    button.addEventListener("click", () => select(i));
    list.append(el("li", {}, button));
  }
}

function select(index) {
  const op = DATA.ops[index];
  if (op && op.group.startsWith("block ")) state.block = Number(op.group.slice(6));
  state.op = index;
  document.getElementById("block-select").value = state.block;
  buildNav();
  for (const b of document.querySelectorAll("#op-list button")) {
    b.setAttribute("aria-current", String(Number(b.dataset.index) === index));
  }
  const view = document.getElementById("view");
  view.textContent = "";
  hideTip();
  view.append(index < 0 ? overview() : opView(op));
  const current = document.querySelector('#op-list button[aria-current="true"]');
  if (current) current.scrollIntoView({ block: "nearest" });
}

function move(step) {                         // to the next (+1) or previous (-1) op of the list
  const list = visibleOps();
  const at = list.indexOf(state.op);
  select(list[Math.max(0, Math.min(list.length - 1, at + step))]);
}

function chooseBlock(block) {                 // the same op in another block
  const current = DATA.ops[state.op];
  state.block = block;
  if (current && current.group.startsWith("block ")) {
    const suffix = current.key.split(".").slice(2).join(".");
    select(DATA.ops.findIndex((op) => op.key === `blocks.${block}.${suffix}`));
  } else select(state.op);
}

function setup() {
  const blocks = document.getElementById("block-select");
  for (let b = 0; b < DATA.config.depth; b++) {
    blocks.append(el("option", { value: b, text: DATA.blocks.includes(b) ? `${b}` : `${b} (norms only)` }));
  }
  blocks.addEventListener("change", () => chooseBlock(Number(blocks.value)));
  const heads = document.getElementById("head-select");
  for (const h of DATA.heads) heads.append(el("option", { value: h, text: `${h}` }));
  heads.addEventListener("change", () => { state.head = Number(heads.value); select(state.op); });
  const log = document.getElementById("log-colours");
  log.addEventListener("change", () => { state.log = log.checked; select(state.op); });
  document.addEventListener("keydown", (event) => {
    if (event.target.tagName === "SELECT" || event.ctrlKey || event.metaKey || event.altKey) return;
    const depth = DATA.config.depth;
    const keys = {
      j: () => move(1), ArrowDown: () => move(1), k: () => move(-1), ArrowUp: () => move(-1), o: () => select(-1),
      b: () => chooseBlock((state.block + 1) % depth), B: () => chooseBlock((state.block + depth - 1) % depth),
      c: () => { state.log = !state.log; document.getElementById("log-colours").checked = state.log; select(state.op); },
      h: () => { state.head = DATA.heads[(DATA.heads.indexOf(state.head) + 1) % DATA.heads.length];
                 heads.value = state.head; select(state.op); },
    };
    if (keys[event.key]) { event.preventDefault(); keys[event.key](); }
  });
  const c = DATA.config;
  document.getElementById("summary").textContent =
    `A ViT of depth ${c.depth}, width ${c.embed_dim}, ${c.num_heads} heads, on a ${GH}x${GW} grid of ` +
    `${c.patch_size}-pixel patches; target ${DATA.classes[DATA.label]}, loss ${fmt(DATA.loss)}. ` +
    `Every op's backward checked on this image: largest relative error ` +
    `${Math.max(...DATA.ops.flatMap((op) => (op.check || []).map((x) => x.error))).toExponential(1)}.`;
  select(-1);
  document.documentElement.dataset.ready = "1";
  window.explorerReadyMs = performance.now();
}

setup();
