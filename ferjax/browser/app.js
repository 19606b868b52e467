// ferjax in-browser page: camera, photo or video -> YuNet + the expression classifier on ONNX
// Runtime Web (wasm) in this tab -> boxes, labels and probability bars on a canvas. Nothing is
// sent anywhere: onnxruntime-web and the models load from this folder (./ort/, ./models/).
// Query options: ?autostart=1 starts the camera once the models are loaded; ?threads=N sets the
// wasm thread count (more than one needs the page cross-origin isolated: COOP/COEP headers).
const params = new URLSearchParams(location.search);
const MAX_VIDEO_SIDE = 1280;     // larger video frames are scaled down before analysis
const MAX_PHOTO_SIDE = 2048;     // as the server's photo mode
const COLOURS = {angry: "#f33", disgust: "#0a0", fear: "#a0a", happy: "#fd0", sad: "#36f",
                 surprise: "#0dd", neutral: "#ccc"};
const $ = (id) => document.getElementById(id);
const view = $("view"), ctx = view.getContext("2d");
const grab = document.createElement("canvas"), gctx = grab.getContext("2d", {willReadFrequently: true});
const video = $("video");

// Read by tests and tools/page_fps.py: frames analysed, distinct frames (by content) with faces,
// the last faces, frames per second (last 2 s), the wasm thread count, per-stage milliseconds
// (mean of the last 30 frames, and sums over all frames).
const state = window.ferjaxLocal = {
  ready: false, error: null, errors: 0, frames: 0, framesWithFaces: 0, distinctFrames: 0, fps: 0,
  threads: 0, crossOriginIsolated: self.crossOriginIsolated === true, backend: "", model: null,
  source: null, lastFaces: [], timings: null, stageMs: {detect: 0, preprocess: 0, predict: 0, total: 0},
  sumMs: {detect: 0, preprocess: 0, predict: 0, total: 0},  // over all frames (means over any window)
};
let pipeline = null, labels = [], stream = null, loopId = 0;
const seen = new Set(), doneTimes = [], recent = [];

function status(text, error = false) {
  $("status").textContent = text;
  $("status").className = error ? "error" : "";
  if (error) state.error = text;
}

function wasmThreads() {
  const asked = parseInt(params.get("threads") || "", 10);
  if (asked > 0) return Math.min(asked, 16);
  // Half the cores, at most 4 (ONNX Runtime Web's own default): the browser's own threads (camera,
  // video decoding, compositing, this page's drawing) need the rest. On the 2-core VM, 2 threads
  // gave 11-13 FPS and 1 thread 18-22 FPS (tools/page_fps.py). More than one thread needs the page
  // cross-origin isolated (SharedArrayBuffer).
  const cores = navigator.hardwareConcurrency || 1;
  return self.crossOriginIsolated ? Math.max(1, Math.min(4, Math.ceil(cores / 2))) : 1;
}

async function fetchJson(url) {
  const resp = await fetch(url);
  const text = await resp.text();
  if (!resp.ok) throw new Error(`${url}: HTTP ${resp.status}: ${text.trim().slice(0, 300)}`);
  return JSON.parse(text);
}

async function init() {
  status("loading ONNX Runtime Web");
  let ort;
  try {
    ort = await import("./ort/ort.wasm.min.mjs");
  } catch (e) {
    throw new Error(`./ort/ort.wasm.min.mjs could not be loaded (${e.message}); the page folder needs ` +
                    "onnxruntime-web's files in ort/ (ferjax export-web copies them)");
  }
  let createPipeline;
  try {
    ({createPipeline} = await import("./src/pipeline.js"));
  } catch (e) {
    throw new Error(`./src/pipeline.js could not be loaded (${e.message})`);
  }
  const threads = wasmThreads();
  ort.env.wasm.numThreads = threads;
  ort.env.wasm.wasmPaths = new URL("./ort/", import.meta.url).href;
  const config = await fetchJson("./models/config.json");
  if (!Array.isArray(config.labels) || !config.labels.length) {
    throw new Error("./models/config.json: expected a non-empty list of labels");
  }
  labels = config.labels;
  state.threads = threads;
  state.model = config.model;
  const version = (ort.env.versions && ort.env.versions.web) || (config.onnxruntime_web || {}).version || "?";
  state.backend = `ONNX Runtime Web ${version} · wasm · ${threads} thread${threads > 1 ? "s" : ""}`;
  const cores = navigator.hardwareConcurrency || "?";
  $("backend").textContent = state.backend + ` of ${cores} cores` + (self.crossOriginIsolated
    ? " (cross-origin isolated; ?threads=N sets the count)"
    : " (not cross-origin isolated: the server sends no COOP/COEP headers, so wasm runs on one thread)");
  const card = (config.classifier || {}).card || {};
  $("model").textContent = `model ${config.model}` +
    (card.source_accuracy ? ` (FER2013 test accuracy ${(card.source_accuracy * 100).toFixed(1)}%)` : "") +
    ` · detector YuNet · ferjax ${config.ferjax_version || ""}`;
  status("loading models");
  const here = (path) => new URL(path, import.meta.url).href;
  pipeline = await createPipeline({ort, yunetModel: here("./models/yunet.onnx"),
                                   classifierModel: here("./models/classifier.onnx"), labels});
  const blank = {data: new Uint8ClampedArray(320 * 240 * 4).fill(128), width: 320, height: 240};
  await pipeline.analyze(blank, {video: true});  // compiles the wasm kernels before the first real frame
  state.ready = true;
  for (const id of ["start", "file"]) $(id).disabled = false;
  status("ready");
}

function checksum(data) {  // FNV-1a over a sparse sample: tells distinct frames apart cheaply
  let h = 2166136261;
  for (let i = 0; i < data.length; i += 4099) h = Math.imul(h ^ data[i], 16777619);
  return h >>> 0;
}

function plain(face) {  // typed arrays -> arrays (JSON for tests)
  return {box: Array.from(face.box, Number), score: Number(face.score), label: face.label,
          landmarks: face.landmarks ? Array.from(face.landmarks, (p) => Array.from(p, Number)) : [],
          probabilities: Array.from(face.probabilities, Number)};
}

function draw(faces, w, h) {
  view.width = w; view.height = h;
  ctx.drawImage(grab, 0, 0, w, h);
  ctx.lineWidth = Math.max(2, w / 320);
  for (const f of faces) {
    const [x1, y1, x2, y2] = f.box, colour = COLOURS[f.label] || "#0f0";
    const p = f.probabilities[labels.indexOf(f.label)] || 0;
    ctx.strokeStyle = colour; ctx.fillStyle = colour;
    ctx.strokeRect(x1, y1, x2 - x1, y2 - y1);
    ctx.font = `${Math.max(12, Math.round(w / 45))}px system-ui, sans-serif`;
    ctx.fillText(`${f.label} ${(p * 100).toFixed(0)}%`, x1, Math.max(14, y1 - 6));
    // One bar per class in a panel inside the box's lower part (below it when the box is small).
    const n = labels.length;
    const rowH = Math.min(14, Math.max(6, Math.floor((y2 - y1) * 0.45 / n)));
    const panelW = Math.max(60, Math.min(170, x2 - x1 - 4)), labelW = Math.round(panelW * 0.45);
    const top = rowH >= 8 ? y2 - 2 - n * rowH : Math.min(h - n * rowH, y2 + 2);
    ctx.fillStyle = "rgba(0,0,0,0.55)"; ctx.fillRect(x1 + 2, top, panelW, n * rowH);
    ctx.font = `${rowH - 1}px system-ui, sans-serif`;
    labels.forEach((name, i) => {
      const y = top + i * rowH;
      ctx.fillStyle = "#eee"; ctx.fillText(name, x1 + 4, y + rowH - 2);
      ctx.fillStyle = COLOURS[name] || "#0f0";
      ctx.fillRect(x1 + 2 + labelW, y + 1, (panelW - labelW - 2) * f.probabilities[i], rowH - 2);
    });
  }
}

function record(faces, data, totalMs) {
  const now = performance.now();
  state.frames += 1;
  state.lastFaces = faces.map(plain);
  state.timings = {...pipeline.timings, total: totalMs};
  if (faces.length) {
    state.framesWithFaces += 1;
    const sum = checksum(data);
    if (!seen.has(sum) && seen.size < 100000) { seen.add(sum); state.distinctFrames += 1; }
  }
  doneTimes.push(now);
  while (doneTimes.length && now - doneTimes[0] > 2000) doneTimes.shift();
  state.fps = doneTimes.length > 1 ? (doneTimes.length - 1) * 1000 / (now - doneTimes[0]) : 0;
  for (const k of Object.keys(state.sumMs)) state.sumMs[k] += Number(state.timings[k]) || 0;
  recent.push(state.timings);
  if (recent.length > 30) recent.shift();
  for (const k of Object.keys(state.stageMs)) {
    state.stageMs[k] = recent.reduce((s, t) => s + (Number(t[k]) || 0), 0) / recent.length;
  }
  $("fps").textContent = state.fps.toFixed(1);
  for (const k of ["detect", "preprocess", "predict"]) $(k).textContent = state.stageMs[k].toFixed(1);
  $("frames").textContent = state.frames;
  $("faces").textContent = faces.length;
}

async function analyze(source, w, h, isVideo, maxSide) {
  const scale = Math.min(1, maxSide / Math.max(w, h));
  const W = Math.max(1, Math.round(w * scale)), H = Math.max(1, Math.round(h * scale));
  if (grab.width !== W || grab.height !== H) { grab.width = W; grab.height = H; }
  gctx.drawImage(source, 0, 0, W, H);
  const image = gctx.getImageData(0, 0, W, H);
  const t0 = performance.now();
  const faces = await pipeline.analyze(image, {video: isVideo});
  record(faces, image.data, performance.now() - t0);
  draw(faces, W, H);
  return faces;
}

// Video (camera or file): one frame analysed at a time; frames arriving meanwhile are skipped, and
// the newest frame is taken as soon as the previous analysis ends.
async function runVideo(name) {
  const id = ++loopId;
  let presented = 0, lastPresented = -1, lastTime = -1, wake = null;
  const hasCallback = "requestVideoFrameCallback" in HTMLVideoElement.prototype;
  if (hasCallback) {
    const onFrame = (_now, meta) => {
      presented = meta.presentedFrames;
      if (wake) { wake(); wake = null; }
      if (id === loopId) video.requestVideoFrameCallback(onFrame);
    };
    video.requestVideoFrameCallback(onFrame);
  }
  const nextFrame = () => new Promise((resolve) => {
    wake = resolve;
    setTimeout(() => { if (wake === resolve) { wake = null; resolve(); } }, hasCallback ? 200 : 16);
  });
  state.source = name;
  status(`running: ${name}`);
  while (id === loopId) {
    const fresh = hasCallback ? presented !== lastPresented : video.currentTime !== lastTime;
    if (!fresh || !video.videoWidth || video.readyState < 2) { await nextFrame(); continue; }
    lastPresented = presented; lastTime = video.currentTime;
    try {
      await analyze(video, video.videoWidth, video.videoHeight, true, MAX_VIDEO_SIDE);
    } catch (e) {
      state.errors += 1;
      status(`analysis failed: ${e.message || e}`, true);
      await nextFrame();
    }
  }
}

async function startCamera() {
  stop();
  try {
    stream = await navigator.mediaDevices.getUserMedia({video: {width: {ideal: 640}, height: {ideal: 480}},
                                                         audio: false});
  } catch (e) { status(`camera unavailable: ${e.name}: ${e.message}`, true); return; }
  video.srcObject = stream;
  await video.play();
  $("start").disabled = true; $("stop").disabled = false;
  runVideo("camera");
}

function stop() {
  loopId += 1;
  if (stream) stream.getTracks().forEach((t) => t.stop());
  stream = null;
  video.pause();
  if (video.src) { URL.revokeObjectURL(video.src); video.removeAttribute("src"); }
  video.srcObject = null;
  $("start").disabled = !state.ready; $("stop").disabled = true;
  if (state.ready) status("stopped");
}

async function openFile(file) {
  if (!state.ready) return;
  stop();
  if (file.type.startsWith("video/")) {
    video.src = URL.createObjectURL(file);
    video.loop = true;
    try { await video.play(); } catch (e) { status(`${file.name}: the browser cannot play it (${e.name})`, true); return; }
    $("stop").disabled = false;
    runVideo(file.name);
    return;
  }
  const img = await createImageBitmap(file).catch(() => null);
  if (!img) { status(`${file.name}: not an image or video the browser can read`, true); return; }
  try {
    state.source = file.name;
    const faces = await analyze(img, img.width, img.height, false, MAX_PHOTO_SIDE);
    status(`${file.name}: ${faces.length} face(s)`);
  } catch (e) { state.errors += 1; status(`${file.name}: analysis failed: ${e.message || e}`, true); }
}

$("start").onclick = startCamera;
$("stop").onclick = stop;
$("file").onchange = (e) => { if (e.target.files.length) openFile(e.target.files[0]); };
const stage = $("stage");
stage.ondragover = (e) => { e.preventDefault(); stage.classList.add("drag"); };
stage.ondragleave = () => stage.classList.remove("drag");
stage.ondrop = (e) => {
  e.preventDefault(); stage.classList.remove("drag");
  if (e.dataTransfer.files.length) openFile(e.dataTransfer.files[0]);
};

init().then(() => { if (params.has("autostart")) startCamera(); },
            (e) => status(`could not start: ${e.message || e}`, true));
