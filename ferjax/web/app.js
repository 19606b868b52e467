// ferjax live page: camera -> JPEG frame -> WebSocket /v1/ws -> boxes, labels and bars on a canvas.
// One frame is in flight at a time: frames captured while waiting are dropped, never queued.
"use strict";

const MAX_WIDTH = 640;          // frames are scaled down to this width before sending
const JPEG_QUALITY = 0.8;
const COLOURS = {angry: "#f33", disgust: "#0a0", fear: "#a0a", happy: "#fd0", sad: "#36f",
                 surprise: "#0dd", neutral: "#ccc"};
const key = new URLSearchParams(location.search).get("key");
const $ = (id) => document.getElementById(id);
const view = $("view"), ctx = view.getContext("2d");
const grab = document.createElement("canvas"), gctx = grab.getContext("2d");
const video = $("camera");

// Exposed for automated tests: counts of frames sent, answered and drawn with faces.
window.ferjaxStats = {sent: 0, answered: 0, withFaces: 0, distinctDrawn: 0, errors: 0, lastLabels: [],
                      rttMs: [], fps: 0};

let socket = null, stream = null, inFlight = false, sentAt = 0, running = false, frameId = 0;
let lastDrawnId = -1, lastSentTime = -1;
const answeredTimes = [];

function status(text) { $("status").textContent = text; }

function drawResult(source, result, id) {
  const w = result.width || source.width, h = result.height || source.height;
  view.width = w; view.height = h;
  ctx.drawImage(source, 0, 0, w, h);
  const faces = result.faces || [];
  ctx.lineWidth = Math.max(2, w / 320);
  ctx.font = `${Math.max(12, Math.round(w / 45))}px system-ui, sans-serif`;
  for (const f of faces) {
    const [x1, y1, x2, y2] = f.box, colour = COLOURS[f.label] || "#0f0";
    ctx.strokeStyle = colour; ctx.fillStyle = colour;
    ctx.strokeRect(x1, y1, x2 - x1, y2 - y1);
    ctx.fillText(`${f.label} ${(f.probs[f.label] * 100).toFixed(0)}%`, x1, Math.max(14, y1 - 6));
    // One bar per class in a panel inside the box's lower part (below it when the box is small).
    const entries = Object.entries(f.probs);
    const rowH = Math.min(14, Math.max(6, Math.floor((y2 - y1) * 0.45 / entries.length)));
    const panelW = Math.max(60, Math.min(170, x2 - x1 - 4)), labelW = Math.round(panelW * 0.45);
    const top = rowH >= 8 ? y2 - 2 - entries.length * rowH : Math.min(h - entries.length * rowH, y2 + 2);
    ctx.fillStyle = "rgba(0,0,0,0.55)"; ctx.fillRect(x1 + 2, top, panelW, entries.length * rowH);
    ctx.font = `${rowH - 1}px system-ui, sans-serif`;
    entries.forEach(([name, p], i) => {
      const y = top + i * rowH;
      ctx.fillStyle = "#eee"; ctx.fillText(name, x1 + 4, y + rowH - 2);
      ctx.fillStyle = COLOURS[name] || "#0f0";
      ctx.fillRect(x1 + 2 + labelW, y + 1, (panelW - labelW - 2) * p, rowH - 2);
    });
  }
  const s = window.ferjaxStats;
  s.lastLabels = faces.map((f) => f.label);
  if (faces.length) s.withFaces += 1;
  if (faces.length && id !== lastDrawnId) s.distinctDrawn += 1;
  lastDrawnId = id;
}

function updateStats(rtt) {
  const now = performance.now(), s = window.ferjaxStats;
  answeredTimes.push(now);
  while (answeredTimes.length && now - answeredTimes[0] > 2000) answeredTimes.shift();
  s.fps = answeredTimes.length > 1 ? (answeredTimes.length - 1) * 1000 / (now - answeredTimes[0]) : 0;
  s.rttMs.push(rtt); if (s.rttMs.length > 200) s.rttMs.shift();
  $("fps").textContent = s.fps.toFixed(1);
  $("rtt").textContent = rtt.toFixed(0);
  $("frames").textContent = s.answered;
}

function sendFrame() {
  if (!running || inFlight || !socket || socket.readyState !== WebSocket.OPEN || !video.videoWidth) return;
  if (video.currentTime === lastSentTime) return;  // the camera has not produced a new frame yet
  lastSentTime = video.currentTime;
  const scale = Math.min(1, MAX_WIDTH / video.videoWidth);
  grab.width = Math.round(video.videoWidth * scale); grab.height = Math.round(video.videoHeight * scale);
  gctx.drawImage(video, 0, 0, grab.width, grab.height);
  inFlight = true;
  const id = ++frameId;
  grab.toBlob((blob) => {
    if (!blob || !socket || socket.readyState !== WebSocket.OPEN) { inFlight = false; return; }
    sentAt = performance.now();
    socket.currentId = id;
    socket.send(blob);
    window.ferjaxStats.sent += 1;
  }, "image/jpeg", JPEG_QUALITY);
}

function snapshot() {  // the frame that was sent, kept for drawing its own result
  const c = document.createElement("canvas");
  c.width = grab.width; c.height = grab.height;
  c.getContext("2d").drawImage(grab, 0, 0);
  return c;
}

function connect() {
  const url = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/v1/ws${key ? `?key=${encodeURIComponent(key)}` : ""}`;
  socket = new WebSocket(url);
  socket.binaryType = "arraybuffer";
  let pending = null;
  socket.onopen = () => { status("connected"); };
  socket.onmessage = (ev) => {
    const rtt = performance.now() - sentAt, s = window.ferjaxStats;
    inFlight = false;
    s.answered += 1;
    let result;
    try { result = JSON.parse(ev.data); } catch (e) { s.errors += 1; return; }
    if (result.error) { s.errors += 1; status(`server: ${result.error}`); }
    else { drawResult(pending || grab, result, socket.currentId); updateStats(rtt); }
    pending = null;
  };
  socket.onclose = (ev) => {
    inFlight = false;
    status(ev.reason ? `disconnected: ${ev.reason}` : "disconnected");
    if (running) setTimeout(connect, 1000);  // the server restarted or the network dropped
  };
  socket.onerror = () => { status("connection error"); };
  socket.snapshot = () => { pending = snapshot(); };
}

function loop() {
  if (!running) return;
  if (!inFlight) {
    sendFrame();
    if (inFlight && socket && socket.snapshot) socket.snapshot();
  }
  requestAnimationFrame(loop);
}

async function start() {
  try {
    stream = await navigator.mediaDevices.getUserMedia({video: {width: 640, height: 360}, audio: false});
  } catch (e) { status(`camera unavailable: ${e.name}`); return; }
  video.srcObject = stream;
  await video.play();
  running = true;
  $("start").disabled = true; $("stop").disabled = false;
  if (!socket || socket.readyState > WebSocket.OPEN) connect();
  loop();
}

function stop() {
  running = false;
  if (stream) stream.getTracks().forEach((t) => t.stop());
  if (socket) socket.close();
  socket = null; stream = null;
  $("start").disabled = false; $("stop").disabled = true;
  status("stopped");
}

async function analyzePhoto(file) {
  const img = await createImageBitmap(file).catch(() => null);
  if (!img) { status(`${file.name}: not an image the browser can read`); return; }
  const headers = {"Content-Type": file.type || "application/octet-stream"};
  if (key) headers["X-API-Key"] = key;
  const t = performance.now();
  const resp = await fetch("/v1/analyze", {method: "POST", body: file, headers});
  const result = await resp.json();
  if (!resp.ok) { status(`${file.name}: ${result.error}`); return; }
  drawResult(img, result, -2);
  updateStats(performance.now() - t);
  status(`${file.name}: ${result.faces.length} face(s)`);
}

$("start").onclick = start;
$("stop").onclick = stop;
const stage = $("stage");
stage.ondragover = (e) => { e.preventDefault(); stage.classList.add("drag"); };
stage.ondragleave = () => stage.classList.remove("drag");
stage.ondrop = (e) => {
  e.preventDefault(); stage.classList.remove("drag");
  if (e.dataTransfer.files.length) analyzePhoto(e.dataTransfer.files[0]);
};
if (new URLSearchParams(location.search).has("autostart")) start();
