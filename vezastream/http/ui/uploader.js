// vezastream's browser uploader: the native chunk API (/v1/uploads) with parallel numbered chunks.
//
// Each file is created once (POST, with its SHA-256 when it is small enough to hash in memory),
// then its missing chunks are PUT, a few at a time over all files, and the upload is completed.
// The upload id of an unfinished file is kept in localStorage under the file's name, size and
// modification time: after a reload, picking the same file again asks the server which chunks
// it holds (GET /v1/uploads/{id}) and sends only the others.
"use strict";

const API = "/v1/uploads";
const STORE = "vezastream.uploads"; // localStorage: unfinished uploads, by file key
const TOKEN = "vezastream.token"; // sessionStorage: the bearer token, if any
const config = JSON.parse(document.querySelector('meta[name="vezastream-ui"]').content);
const MAX_ATTEMPTS = 8; // tries of one request on transient failures; then the file stops (Resume tries again)
// The type the browser gives a file, when it knows one ("" otherwise: the server's default applies).
const MEDIA_TYPE = /^[\w.+-]+\/[\w.+-]+$/;
// The server takes names without control characters (Linux allows a newline in one): each as U+FFFD.
const serverName = (name) => name.replace(/[\u0000-\u001f\u007f-\u009f]/g, "\ufffd");
const RETRIED = new Set([0, 408, 422, 429, 500, 502, 503, 504, 507]); // 0: the network failed
// A chunk's problems that pass: another connection still holds the chunk (S3 direct mode: an
// earlier sending of it that went silent mid-body, until the server cuts it) or lost it mid-body.
const CHUNK_RETRIED = new Set(["conflict"]);
const RATE_WINDOW = 5000; // ms of samples behind the rate shown

const items = [];

// -- small helpers -------------------------------------------------------------------------
const fileKey = (f) => JSON.stringify([f.name, f.size, f.lastModified]);

function loadStore() {
  try {
    return JSON.parse(localStorage.getItem(STORE)) || {};
  } catch {
    return {};
  }
}

function remember(item) {
  const all = loadStore();
  all[item.key] = { id: item.id, name: item.name, size: item.size };
  localStorage.setItem(STORE, JSON.stringify(all));
}

function forget(item) {
  const all = loadStore();
  delete all[item.key];
  localStorage.setItem(STORE, JSON.stringify(all));
}

function bytes(n) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024;
    i++;
  }
  return `${i ? n.toFixed(1) : n} ${units[i]}`;
}

function duration(s) {
  if (!isFinite(s)) return "";
  if (s < 60) return `${Math.ceil(s)} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${Math.ceil(s % 60)} s`;
  return `${Math.floor(s / 3600)} h ${Math.ceil((s % 3600) / 60)} min`;
}

const hex = (buf) => Array.from(new Uint8Array(buf), (b) => b.toString(16).padStart(2, "0")).join("");
const sha256 = async (blob) => hex(await crypto.subtle.digest("SHA-256", await blob.arrayBuffer()));
const canHash = () => Boolean(window.crypto && crypto.subtle);
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function authHeaders() {
  const token = sessionStorage.getItem(TOKEN);
  return token ? { Authorization: `Bearer ${token}` } : {};
}

// Milliseconds to wait before attempt `attempt` (1, 2, ...): the server's Retry-After when it
// gave one, else an exponential backoff with jitter.
function backoff(attempt, retryAfter) {
  const seconds = Number(retryAfter);
  if (retryAfter !== null && retryAfter !== "" && Number.isFinite(seconds)) return seconds * 1000 + Math.random() * 250;
  return Math.min(15000, 500 * 2 ** (attempt - 1)) * (0.5 + Math.random() / 2);
}

// A JSON request, retried on transient failures (while `item`, if given, is not stopped);
// resolves to {status, body}.
async function request(method, url, body, item = null, attempts = MAX_ATTEMPTS) {
  for (let attempt = 1; ; attempt++) {
    let status = 0;
    let retryAfter = null;
    let answer = null;
    try {
      const resp = await fetch(url, {
        method,
        headers: { ...authHeaders(), ...(body ? { "Content-Type": "application/json" } : {}) },
        body: body ? JSON.stringify(body) : undefined,
      });
      status = resp.status;
      retryAfter = resp.headers.get("Retry-After");
      const text = await resp.text();
      answer = text ? JSON.parse(text) : null;
    } catch {
      status = status || 0;
    }
    if (!RETRIED.has(status) || status === 422 || attempt >= attempts || (item && item.stopped())) {
      return { status, body: answer };
    }
    const wait = backoff(attempt, retryAfter);
    if (item) item.note(`${problemText(status, answer)}; retrying in ${duration(wait / 1000)}`);
    await sleep(wait);
  }
}

// The code of a problem answer's type (".../problems/<code>"); "" for another answer.
const problemCode = (body) => (body && typeof body.type === "string" ? body.type.split("/").pop() : "");

function problemText(status, body) {
  if (body && (body.detail || body.title)) return body.detail || body.title;
  if (!status) return "network error";
  // The server answers every refusal with problem+json: one without came from something in front of it.
  if (status === 413) {
    return "HTTP 413 from a proxy in front of the server: it takes smaller bodies than a chunk " +
      "(its limit must be raised, e.g. nginx's client_max_body_size)";
  }
  return `HTTP ${status} from a proxy in front of the server`;
}

// -- one file ------------------------------------------------------------------------------
class Item {
  constructor(file, saved) {
    this.file = file; // null until the user gives the file of an upload restored from storage
    this.key = file ? fileKey(file) : saved.key;
    this.name = file ? file.name : saved.name;
    this.size = file ? file.size : saved.size;
    this.id = saved ? saved.id : null;
    this.chunkSize = 0;
    this.totalChunks = 0;
    this.received = new Set();
    this.todo = []; // chunk numbers to send
    this.inflight = new Map(); // chunk number -> {xhr, loaded}
    this.out = 0; // chunks taken from `todo` and not yet stored or put back (in flight or waiting to retry)
    this.attempts = new Map();
    this.samples = [];
    this.message = "";
    this.ready = false; // chunk size and chunks received known (from the server)
    this.row = this.render();
    this.setState(file ? "queued" : "waiting");
  }

  render() {
    const li = document.createElement("li");
    li.className = "item";
    li.dataset.name = this.name;
    const top = li.appendChild(document.createElement("div"));
    top.className = "top";
    const name = top.appendChild(document.createElement("span"));
    name.className = "name";
    name.textContent = this.name;
    name.title = this.name;
    this.stateEl = top.appendChild(document.createElement("span"));
    this.stateEl.className = "state";
    this.bar = li.appendChild(document.createElement("progress"));
    this.bar.max = Math.max(this.size, 1);
    this.bar.value = 0;
    const bottom = li.appendChild(document.createElement("div"));
    bottom.className = "bottom";
    this.detail = bottom.appendChild(document.createElement("span"));
    this.detail.className = "detail";
    const actions = bottom.appendChild(document.createElement("span"));
    actions.className = "actions";
    this.pauseBtn = actions.appendChild(document.createElement("button"));
    this.pauseBtn.type = "button";
    this.pauseBtn.className = "pause";
    this.pauseBtn.addEventListener("click", () => (this.state === "uploading" ? this.pause() : this.resume()));
    this.cancelBtn = actions.appendChild(document.createElement("button"));
    this.cancelBtn.type = "button";
    this.cancelBtn.className = "cancel";
    this.cancelBtn.textContent = "Cancel";
    this.cancelBtn.addEventListener("click", () => this.cancel());
    this.link = actions.appendChild(document.createElement("a"));
    this.link.className = "download";
    this.link.textContent = "Download";
    this.link.hidden = true;
    document.getElementById("uploads").append(li);
    return li;
  }

  setState(state, message = "") {
    this.state = state;
    this.message = message;
    this.row.dataset.state = state;
    if (this.id) this.row.dataset.uploadId = this.id;
    const labels = {
      waiting: "interrupted", queued: "queued", hashing: "hashing", creating: "starting", uploading: "uploading",
      paused: "paused", completing: "completing", done: "done", failed: "failed", cancelled: "cancelled",
    };
    this.stateEl.textContent = labels[state];
    const active = ["hashing", "creating", "uploading", "completing"].includes(state);
    this.pauseBtn.hidden = !(state === "uploading" || state === "paused" || state === "failed");
    this.pauseBtn.textContent = state === "uploading" ? "Pause" : state === "failed" ? "Retry" : "Resume";
    this.cancelBtn.hidden = state === "done" || state === "cancelled" || state === "completing";
    this.cancelBtn.textContent = state === "waiting" ? "Discard" : "Cancel";
    this.row.classList.toggle("active", active);
    this.update();
  }

  note(message) {
    this.message = message;
    this.update();
  }

  stopped() {
    return ["paused", "cancelled", "failed"].includes(this.state);
  }

  chunkBytes(n) {
    return n < this.totalChunks ? this.chunkSize : this.size - (this.totalChunks - 1) * this.chunkSize;
  }

  sent() {
    let total = 0;
    for (const n of this.received) total += this.chunkBytes(n);
    for (const slot of this.inflight.values()) total += slot.loaded;
    return total;
  }

  update() {
    const done = this.state === "done" ? this.size : this.sent();
    this.bar.value = done;
    const now = performance.now();
    this.samples.push([now, done]);
    while (this.samples.length > 2 && now - this.samples[0][0] > RATE_WINDOW) this.samples.shift();
    const [t0, b0] = this.samples[0];
    const rate = now > t0 ? ((done - b0) * 1000) / (now - t0) : 0;
    let text = `${bytes(done)} of ${bytes(this.size)}`;
    if (this.state === "uploading" && rate > 0) {
      text += ` · ${bytes(rate)}/s · ${duration((this.size - done) / rate)} left`;
    }
    if (this.state === "waiting") text += " on the server · drop or choose this file again to resume";
    if (this.message) text += ` · ${this.message}`;
    this.detail.textContent = text;
  }

  // Create the upload (or find it again after a reload), then send what the server lacks.
  async start() {
    try {
      if (this.id) {
        this.setState("creating");
        const { status, body } = await request("GET", `${API}/${this.id}`, null, this);
        if (this.state === "cancelled") return;
        if (status === 200 && body.status === "completed") return this.finish(body.result);
        if (status === 200 && body.status === "pending") {
          this.adopt(body);
        } else if (status === 404) {
          forget(this); // expired or deleted: start over
          this.id = null;
        } else {
          return this.fail(problemText(status, body));
        }
      }
      if (!this.id) {
        let digest;
        if (this.size > 0 && this.size <= config.sha256_max_size && canHash()) {
          this.setState("hashing");
          digest = await sha256(this.file);
          if (this.state === "cancelled") return;
        }
        this.setState("creating");
        const spec = { filename: serverName(this.name), total_size: this.size,
                       ...(digest ? { sha256: digest } : {}),
                       ...(this.file && MEDIA_TYPE.test(this.file.type) ? { content_type: this.file.type } : {}) };
        const { status, body } = await request("POST", API, spec, this);
        if (status === 201) this.id = body.upload_id;
        if (this.state === "cancelled") return this.discard(); // cancelled while it was being created
        if (status !== 201) return this.fail(problemText(status, body));
        remember(this);
        this.adopt(body);
      }
      this.setState("uploading");
      pump();
    } catch (err) {
      this.fail(String(err && err.message ? err.message : err));
    }
  }

  adopt(state) {
    this.ready = true;
    this.chunkSize = state.chunk_size;
    this.totalChunks = state.total_chunks;
    this.received = new Set(state.chunks_received);
    this.todo = [];
    // (not those still on their way: a chunk being hashed when the pause came goes on once resumed)
    for (let n = 1; n <= this.totalChunks; n++) if (!this.received.has(n) && !this.inflight.has(n)) this.todo.push(n);
    this.samples = [];
  }

  async send(n) {
    const slot = { xhr: null, loaded: 0 };
    this.inflight.set(n, slot);
    this.out++;
    const start = (n - 1) * this.chunkSize;
    const blob = this.file.slice(start, start + this.chunkBytes(n));
    let digest = null;
    try {
      if (canHash()) digest = await sha256(blob);
    } catch {
      digest = null; // the chunk is still checked by size, and the file by its SHA-256 when declared
    }
    if (this.state !== "uploading") return this.putBack(n);
    const xhr = new XMLHttpRequest();
    slot.xhr = xhr;
    xhr.open("PUT", `${API}/${this.id}/chunks/${n}`);
    for (const [name, value] of Object.entries(authHeaders())) xhr.setRequestHeader(name, value);
    xhr.setRequestHeader("Content-Type", "application/octet-stream");
    if (digest) xhr.setRequestHeader("X-Chunk-Sha256", digest);
    xhr.upload.onprogress = (e) => {
      slot.loaded = e.loaded;
      schedule(this);
    };
    xhr.onload = () => this.answered(n, xhr.status, xhr.responseText, xhr.getResponseHeader("Retry-After"));
    xhr.onerror = () => this.answered(n, 0, "", null);
    xhr.ontimeout = () => this.answered(n, 0, "", null);
    xhr.onabort = () => this.putBack(n);
    xhr.send(blob);
  }

  putBack(n) {
    if (!this.inflight.has(n)) return;
    this.inflight.delete(n);
    this.out--;
    this.todo.unshift(n);
    this.update();
    pump();
  }

  answered(n, status, text, retryAfter) {
    this.inflight.delete(n);
    if (status === 200 || status === 201) {
      this.out--;
      this.received.add(n);
      this.attempts.delete(n);
      if (this.message) this.message = "";
      this.update();
      return pump();
    }
    let body = null;
    try {
      body = text ? JSON.parse(text) : null;
    } catch {
      body = null;
    }
    const attempt = (this.attempts.get(n) || 0) + 1;
    this.attempts.set(n, attempt);
    const passing = RETRIED.has(status) || (status === 409 && CHUNK_RETRIED.has(problemCode(body)));
    if (!passing || attempt >= MAX_ATTEMPTS) {
      this.out--;
      this.todo.unshift(n);
      if (status === 404) forget(this); // expired or deleted on the server: nothing to resume
      return this.fail(`chunk ${n}: ${problemText(status, body)}`);
    }
    const wait = backoff(attempt, retryAfter);
    this.note(`chunk ${n}: ${problemText(status, body)}; retrying in ${duration(wait / 1000)}`);
    setTimeout(() => {
      this.out--;
      // (unless a resume has queued it meanwhile, or it is on its way again)
      if (!this.received.has(n) && !this.todo.includes(n) && !this.inflight.has(n)) this.todo.unshift(n);
      pump();
    }, wait);
  }

  async complete() {
    this.setState("completing");
    const { status, body } = await request("POST", `${API}/${this.id}/complete`, null, this);
    if (this.state !== "completing") return;
    if (status === 200) return this.finish(body);
    if (status === 409 && body && Array.isArray(body.missing_chunks)) {
      for (const n of body.missing_chunks) {
        this.received.delete(n);
        if (!this.todo.includes(n)) this.todo.push(n);
      }
      this.setState("uploading");
      return pump();
    }
    this.fail(problemText(status, body));
  }

  finish(result) {
    forget(this);
    this.setState("done", result && result.sha256 ? `sha256 ${result.sha256.slice(0, 16)}…` : "");
    this.link.href = `${API}/${this.id}/content`;
    this.link.hidden = false;
  }

  fail(message) {
    this.setState("failed", message); // first: aborted chunks must not be sent again
    this.abortAll();
  }

  abortAll() {
    for (const slot of [...this.inflight.values()]) if (slot.xhr) slot.xhr.abort();
  }

  pause() {
    this.setState("paused");
    this.abortAll(); // aborted chunks go back to the queue; what arrived whole is kept by the server
  }

  // Ask the server which chunks it holds first (start): a chunk aborted at the pause or the failure
  // may have arrived whole, and is then not sent again.
  resume() {
    this.attempts.clear();
    this.samples = [];
    return this.start();
  }

  async cancel() {
    const waiting = this.state === "waiting";
    this.setState("cancelled");
    this.abortAll();
    forget(this);
    await this.discard();
    if (waiting) this.row.remove();
  }

  // Delete the upload on the server (its chunks go with it).
  async discard() {
    if (!this.id) return;
    const { status, body } = await request("DELETE", `${API}/${this.id}`);
    if (status !== 204 && status !== 404) this.note(`not deleted: ${problemText(status, body)}`);
  }
}

// -- scheduling ------------------------------------------------------------------------------
// Fill the free slots (ui.parallel_chunks over all files) with chunks, oldest file first.
function pump() {
  let free = config.parallel_chunks;
  for (const item of items) free -= item.inflight.size;
  for (const item of items) {
    if (item.state !== "uploading") continue;
    while (free > 0 && item.todo.length) {
      item.send(item.todo.shift());
      free--;
    }
    if (!item.todo.length && item.out === 0) item.complete();
  }
}

const dirty = new Set();
function schedule(item) {
  if (!dirty.size) requestAnimationFrame(() => {
    for (const it of dirty) it.update();
    dirty.clear();
  });
  dirty.add(item);
}

function addFiles(files) {
  for (const file of files) {
    const key = fileKey(file);
    const same = items.find((it) => it.key === key && !["done", "cancelled", "failed"].includes(it.state));
    if (same && same.state !== "waiting") continue; // already being sent
    if (same) {
      same.file = file;
      same.start();
      continue;
    }
    const item = new Item(file, null);
    items.push(item);
    item.start();
  }
}

// Uploads a previous visit left unfinished: shown until their file is given again, or discarded.
async function restore() {
  for (const [key, saved] of Object.entries(loadStore())) {
    if (!saved || typeof saved.id !== "string") continue;
    const item = new Item(null, { ...saved, key });
    items.push(item);
    await recheck(item);
  }
}

// What the server holds of an upload a previous visit left (its row shows it). Without the token
// (a new tab: it lives in the tab's sessionStorage) the row asks for it, and typing it asks again.
async function recheck(item) {
  const { status, body } = await request("GET", `${API}/${item.id}`, null, null, 1);
  if (item.state !== "waiting") return;
  if (status === 200 && body.status === "pending") {
    item.message = "";
    item.adopt(body);
    item.update();
  } else if (status === 404 || (status === 200 && body.status !== "pending")) {
    forget(item); // gone, or finished meanwhile
    items.splice(items.indexOf(item), 1);
    item.row.remove();
  } else if (status === 401) {
    item.message = "type the access token above to see what the server holds";
    item.update();
  }
}

function setup() {
  const picker = document.getElementById("picker");
  picker.addEventListener("change", () => {
    addFiles(picker.files);
    picker.value = ""; // the same file may be chosen again
  });
  const drop = document.getElementById("drop");
  for (const type of ["dragenter", "dragover"]) {
    drop.addEventListener(type, (e) => {
      e.preventDefault();
      drop.classList.add("over");
    });
  }
  for (const type of ["dragleave", "drop"]) drop.addEventListener(type, () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    addFiles(e.dataTransfer.files);
  });
  // A file dropped beside the zone is not opened by the browser in place of the page.
  window.addEventListener("dragover", (e) => e.preventDefault());
  window.addEventListener("drop", (e) => e.preventDefault());

  const token = document.getElementById("token");
  token.value = sessionStorage.getItem(TOKEN) || "";
  token.addEventListener("input", () => {
    if (token.value) sessionStorage.setItem(TOKEN, token.value.trim());
    else sessionStorage.removeItem(TOKEN);
  });
  token.addEventListener("change", () => {
    for (const item of items.filter((i) => i.state === "waiting")) recheck(item);
  });
  document.getElementById("auth").open = config.token && !token.value;
  restore();
}

setup();
