// Uploads: file/folder pickers and a drop zone, bounded parallel transfers with progress, cancel,
// multipart upload sessions with per-part SHA-256 (Web Crypto), resume after a reload or a network drop.
import * as defaultApi from "./api.js";

const MiB = 1024 * 1024;
const SMALL_LIMIT = 8 * MiB;      // below this a file is one PUT; from it on, an upload session
const FILES_AT_ONCE = 4;          // files transferring at once
const PARTS_AT_ONCE = 4;          // parts of one large file in flight at once
const RECORD_PREFIX = "unistore.upload.";
const RETRY_LIMIT = 8;            // attempts of one request before the file is marked failed (resumable)

class Cancelled extends Error {
  constructor() { super("cancelled"); this.name = "Cancelled"; }
}

class HttpFailure extends Error {
  constructor(status, message, retryable) {
    super(message);
    this.status = status;
    this.retryable = retryable;
  }
}

/** Base64 of an ArrayBuffer (a 32-byte digest here). */
function base64(buffer) {
  let text = "";
  for (const byte of new Uint8Array(buffer)) text += String.fromCharCode(byte);
  return btoa(text);
}

/** The base64 SHA-256 of a Blob slice: one part at a time, so memory stays bounded by the part size. */
async function sha256(blob) {
  return base64(await crypto.subtle.digest("SHA-256", await blob.arrayBuffer()));
}

/** Sizes in binary units: 1.5 MiB, 12 KiB, 7 B. */
export function formatBytes(n) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i === 0 ? String(n) : n.toFixed(n < 10 ? 1 : 0)) + " " + units[i];
}

function formatDuration(seconds) {
  if (!isFinite(seconds) || seconds < 0) return "";
  seconds = Math.round(seconds);
  if (seconds < 60) return seconds + " s";
  if (seconds < 3600) return Math.floor(seconds / 60) + " min " + (seconds % 60) + " s";
  return Math.floor(seconds / 3600) + " h " + Math.floor((seconds % 3600) / 60) + " min";
}

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(props)) {
    if (name === "class") node.className = value;
    else if (name === "text") node.textContent = value;
    else if (name.startsWith("aria-") || name === "role") node.setAttribute(name, value);
    else node[name] = value;
  }
  node.append(...children);
  return node;
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** Resolve once the browser is online again (at once if it is). */
function whenOnline() {
  if (navigator.onLine) return Promise.resolve();
  return new Promise((resolve) => window.addEventListener("online", () => resolve(), { once: true }));
}

/** Every file under a dropped item, with its path relative to the drop (folders walked recursively). */
async function filesOfEntry(entry, out) {
  if (entry.isFile) {
    const file = await new Promise((resolve, reject) => entry.file(resolve, reject));
    out.push({ file, path: entry.fullPath.replace(/^\/+/, "") });
  } else if (entry.isDirectory) {
    const reader = entry.createReader();
    for (;;) {  // readEntries answers in batches (100 in Chromium) until an empty one
      const batch = await new Promise((resolve, reject) => reader.readEntries(resolve, reject));
      if (!batch.length) break;
      for (const child of batch) await filesOfEntry(child, out);
    }
  }
}

/** The files of a drop: folders through webkitGetAsEntry, plain files as they are. */
export async function filesOfDrop(dataTransfer) {
  const out = [];
  const entries = [];
  for (const item of Array.from(dataTransfer.items || [])) {
    if (item.kind !== "file") continue;
    const entry = item.webkitGetAsEntry ? item.webkitGetAsEntry() : null;
    if (entry) entries.push(entry);
    else { const file = item.getAsFile(); if (file) out.push({ file, path: file.name }); }
  }
  if (!entries.length && !out.length) {
    for (const file of Array.from(dataTransfer.files || [])) out.push({ file, path: file.name });
  }
  for (const entry of entries) await filesOfEntry(entry, out);  // entries must be taken before any await
  return out;
}

/** Where the resume state of one (key, file) lives in localStorage. */
function recordKey(key, file) {
  return RECORD_PREFIX + JSON.stringify([key, file.name, file.size, file.lastModified]);
}

function readRecord(name) {
  try { return JSON.parse(localStorage.getItem(name)); } catch (_) { return null; }
}

/** The upload sessions this browser left unfinished (and not yet expired): `[{name, record}]`. */
export function pendingUploads() {
  const out = [];
  const now = Date.now() / 1000;
  for (let i = 0; i < localStorage.length; i++) {
    const name = localStorage.key(i);
    if (!name || !name.startsWith(RECORD_PREFIX)) continue;
    const record = readRecord(name);
    if (!record || !record.upload_id || (record.expires && record.expires <= now)) continue;
    out.push({ name, record });
  }
  return out;
}

/**
 * One request whose upload progress is reported (fetch cannot report it): `{status, body}`.
 * `job.requests` holds it so a cancel aborts it.
 */
function transfer(job, { method, url, body, headers, onProgress }) {
  return new Promise((resolve, reject) => {
    if (job.cancelled) return reject(new Cancelled());
    const xhr = new XMLHttpRequest();
    xhr.open(method, url);
    for (const [name, value] of Object.entries(headers || {})) xhr.setRequestHeader(name, value);
    if (onProgress) xhr.upload.onprogress = (event) => onProgress(event.loaded);
    const done = () => job.requests.delete(xhr);
    xhr.onload = () => { done(); resolve({ status: xhr.status, body: xhr.responseText }); };
    xhr.onerror = () => { done(); resolve({ status: 0, body: "" }); };
    xhr.ontimeout = xhr.onerror;
    // Aborted because the browser went offline: a failed attempt (retried once online), not a cancel.
    xhr.onabort = () => { done(); if (xhr.offline) resolve({ status: 0, body: "" }); else reject(new Cancelled()); };
    job.requests.add(xhr);
    xhr.send(body);
  });
}

function failureOf(response) {
  let message = `HTTP ${response.status}`;
  try {
    const parsed = JSON.parse(response.body);
    if (parsed && parsed.error) message = parsed.error.message;
  } catch (_) { /* the store's XML or nothing */ }
  const status = response.status;
  const retryable = status === 0 || status === 408 || status === 429 || status >= 500;
  return new HttpFailure(status, status === 0 ? "The network is unreachable." : message, retryable);
}

let dropTarget = null;     // the mounted panel that takes drops (none for a read-only token)
let listening = false;

function carriesFiles(event) {
  return Boolean(event.dataTransfer) && Array.from(event.dataTransfer.types || []).includes("Files");
}

/** One set of page-wide drag-and-drop listeners, whatever the number of mounts. */
function listenForDrops() {
  if (listening) return;
  listening = true;
  const over = (event) => {
    if (!carriesFiles(event)) return;
    event.preventDefault();  // also keeps the browser from opening a file dropped beside the panel
    event.dataTransfer.dropEffect = dropTarget ? "copy" : "none";
    if (dropTarget) dropTarget.over();
  };
  document.addEventListener("dragenter", over);
  document.addEventListener("dragover", over);
  document.addEventListener("dragleave", (event) => {
    if (dropTarget && !event.relatedTarget) dropTarget.leave();  // the pointer left the window
  });
  document.addEventListener("drop", (event) => {
    if (!carriesFiles(event)) return;
    event.preventDefault();
    if (dropTarget) dropTarget.drop(event.dataTransfer);
  });
}

/**
 * The upload panel inside `container`: pickers, a drop zone, one row per file and an overall bar.
 * Options: `me` (GET /v1/whoami), `api` (api.js), `getPrefix()` (the folder files land in),
 * `onUploaded()` (objects were stored: called once a burst of finished files settles).
 * Returns `{add(items), jobs}`; `add` takes `[{file, path}]` or Files.
 */
export function mountUploads(container, options = {}) {
  const me = options.me || {};
  const api = options.api || defaultApi;
  const getPrefix = options.getPrefix || (() => me.prefix || "");
  const onUploaded = options.onUploaded || (() => {});
  const filesAtOnce = options.filesAtOnce || FILES_AT_ONCE;
  const partsAtOnce = options.partsAtOnce || PARTS_AT_ONCE;
  const partSize = options.partSize || null;
  const direct = options.direct !== undefined ? options.direct : Boolean(me.direct_uploads);

  container.replaceChildren();
  dropTarget = null;
  const canWrite = !me.actions || me.actions.includes("write") || me.actions.includes("admin");
  if (!canWrite) {
    container.hidden = true;
    return { add() { throw new Error("this token may not upload"); }, jobs: [] };
  }
  container.hidden = false;

  // --- the controls ---------------------------------------------------------------------------
  const fileInput = el("input", { type: "file", multiple: true, hidden: true, "aria-label": "Files to upload" });
  const folderInput = el("input", { type: "file", multiple: true, hidden: true, "aria-label": "Folder to upload" });
  folderInput.webkitdirectory = true;
  const filesButton = el("button", { type: "button", class: "upload-pick", text: "Upload files" });
  const folderButton = el("button", { type: "button", class: "upload-pick", text: "Upload folder" });
  filesButton.addEventListener("click", () => fileInput.click());
  folderButton.addEventListener("click", () => folderInput.click());
  const pickedFrom = (input, relative) => () => {
    const picked = Array.from(input.files || []).map((file) => ({
      file, path: (relative && file.webkitRelativePath) || file.name,
    }));
    input.value = "";
    add(picked);
  };
  fileInput.addEventListener("change", pickedFrom(fileInput, false));
  folderInput.addEventListener("change", pickedFrom(folderInput, true));

  const dropZone = el("div", {
    class: "upload-drop", tabIndex: 0, role: "button",
    "aria-label": "Drop files or folders here to upload, or press Enter to pick files",
  }, el("span", { text: "Drop files or folders here" }));
  dropZone.addEventListener("keydown", (event) => {
    if (event.key === "Enter" || event.key === " ") { event.preventDefault(); fileInput.click(); }
  });
  // Files dropped anywhere on the page are uploaded (never opened by the browser in place of the app).
  dropTarget = {
    over() { dropZone.classList.add("upload-drop-over"); },
    leave() { dropZone.classList.remove("upload-drop-over"); },
    async drop(dataTransfer) {
      dropZone.classList.remove("upload-drop-over");
      try {
        add(await filesOfDrop(dataTransfer));
      } catch (err) {
        summary.textContent = "Could not read the dropped items: " + err.message;
      }
    },
  };
  listenForDrops();

  const overall = el("progress", { class: "upload-overall", max: 1, value: 0, "aria-label": "All uploads" });
  const summary = el("p", { class: "upload-summary", role: "status", "aria-live": "polite" });
  const list = el("ul", { class: "upload-list", "aria-label": "Upload queue" });
  const pendingList = el("ul", { class: "upload-pending", "aria-label": "Interrupted uploads" });
  overall.hidden = true;

  container.append(
    el("h2", { class: "upload-title", text: "Upload" }),
    el("div", { class: "upload-actions" }, filesButton, folderButton, fileInput, folderInput),
    dropZone, overall, summary, pendingList, list,
  );

  // --- interrupted uploads from an earlier visit ----------------------------------------------
  function showPending() {
    pendingList.replaceChildren();
    const active = new Set(jobs.filter((j) => !j.finished).map((j) => j.record));
    for (const { name, record } of pendingUploads()) {
      if (active.has(name)) continue;
      const discard = el("button", { type: "button", text: "Discard", "aria-label": `Discard interrupted upload of ${record.key}` });
      discard.addEventListener("click", async () => {
        localStorage.removeItem(name);
        try { await api.request(`/v1/uploads/${record.upload_id}`, { method: "DELETE" }); } catch (_) { /* gone */ }
        showPending();
      });
      pendingList.append(el("li", { class: "upload-pending-row" },
        el("span", { text: `${record.key} (${formatBytes(record.size)}) was interrupted: pick or drop the same file here to resume. ` }),
        discard));
    }
  }

  // --- the queue ------------------------------------------------------------------------------
  const jobs = [];
  let running = 0;
  let renderQueued = false;

  function add(items) {
    const prefix = getPrefix() || "";
    let added = 0, doubles = 0;
    for (const item of items) {
      const file = item instanceof Blob ? item : item.file;
      const path = item instanceof Blob ? item.name : item.path;
      const job = newJob(file, prefix + path);
      if (jobs.some((j) => !j.finished && j.record === job.record)) { doubles++; continue; }
      jobs.push(job);
      list.append(job.row);
      added++;
    }
    if (added) overall.hidden = false;
    pump();
    render();
    if (doubles) summary.textContent += ` · ${doubles} already uploading, not added again`;
  }

  function newJob(file, key) {
    const job = {
      file, key, record: recordKey(key, file), size: file.size,
      state: "queued", message: "", finished: false, cancelled: false,
      sent: 0, inflight: new Map(), skipped: 0, samples: [], rate: 0, session: null,
      requests: new Set(), started: 0,
    };
    const progress = el("progress", { max: Math.max(file.size, 1), value: 0, "aria-label": `Upload progress of ${key}` });
    const info = el("span", { class: "upload-info" });
    const cancel = el("button", { type: "button", class: "upload-cancel", text: "Cancel", "aria-label": `Cancel upload of ${key}` });
    cancel.addEventListener("click", () => cancelJob(job));
    job.row = el("li", { class: "upload-row" },
      el("span", { class: "upload-name", text: key, title: key }), progress, info, cancel);
    job.view = { progress, info, cancel };
    return job;
  }

  function pump() {
    while (running < filesAtOnce) {
      const job = jobs.find((j) => j.state === "queued");
      if (!job) break;
      running++;
      job.state = "running";
      job.started = performance.now();
      job.promise = run(job).finally(() => { running--; pump(); render(); });
    }
  }

  // The listing is refreshed once a burst of finished files settles, not once per file.
  let refreshTimer = null;
  function uploaded() {
    clearTimeout(refreshTimer);
    refreshTimer = setTimeout(() => {
      try { onUploaded(); } catch (_) { /* the listing shows its own error */ }
    }, running > 1 ? 500 : 50);
  }

  async function run(job) {
    try {
      if (job.size < SMALL_LIMIT) await putSmall(job);
      else await putLarge(job);
      job.state = "done";
      job.message = "Uploaded";
      uploaded();
    } catch (err) {
      if (err instanceof Cancelled || job.cancelled) {
        job.state = "cancelled";
        job.message = "Cancelled";
      } else {
        job.state = "failed";
        job.message = "Failed: " + err.message + (job.session ? " (pick the file again to resume)" : "");
      }
    } finally {
      job.ended = performance.now();
      job.finished = true;
      job.inflight.clear();
      showPending();
    }
  }

  /** Send one request, retrying network errors and 5xx/429 with backoff; offline pauses until online. */
  async function withRetry(job, attempt) {
    for (let tries = 1; ; tries++) {
      if (job.cancelled) throw new Cancelled();
      await waitOnline(job);
      let response;
      try {
        response = await attempt();
      } catch (err) {
        if (err instanceof Cancelled) throw err;
        response = { status: err.status || 0, body: JSON.stringify({ error: { message: err.message } }) };
      }
      if (response.status >= 200 && response.status < 300) {
        if (job.message.startsWith("Retrying")) job.message = "";
        return response;
      }
      const failure = failureOf(response);
      if (!failure.retryable || tries >= RETRY_LIMIT) throw failure;
      if (!navigator.onLine) { tries--; continue; }  // paused above until online; not counted as a try
      job.message = `Retrying (${failure.message})`;
      render();
      await sleep(Math.min(30_000, 500 * 2 ** (tries - 1)) * (0.75 + Math.random() / 2));
    }
  }

  async function waitOnline(job) {
    if (navigator.onLine) return;
    const before = job.message;
    job.message = "Paused: offline";
    render();
    await whenOnline();
    if (job.cancelled) throw new Cancelled();
    job.message = before === "Paused: offline" ? "" : before;
    render();
  }

  function authHeaders(extra = {}) {
    const token = api.getToken ? api.getToken() : defaultApi.getToken();
    return token ? { ...extra, Authorization: "Bearer " + token } : extra;
  }

  async function control(path, init = {}) {
    const response = await withRetry({ cancelled: false, message: "" }, async () => {
      try {
        const r = await api.request(path, init);
        return { status: r.status, body: await r.text() };
      } catch (err) {
        if (err instanceof Error && "status" in err) {
          return { status: err.status, body: JSON.stringify({ error: { message: err.message } }) };
        }
        throw err;
      }
    });
    return response.body ? JSON.parse(response.body) : null;
  }

  async function putSmall(job) {
    const headers = authHeaders({ "Content-Type": job.file.type || "application/octet-stream" });
    headers["Repr-Digest"] = `sha-256=:${await sha256(job.file)}:`;
    await withRetry(job, () => transfer(job, {
      method: "PUT", url: api.objectPath(job.key), body: job.file, headers,
      onProgress: (loaded) => { job.inflight.set(0, loaded); schedule(); },
    }));
    job.inflight.clear();
    job.sent = job.size;
  }

  async function openSession(job) {
    const saved = readRecord(job.record);
    if (saved && saved.upload_id) {
      try {
        const listed = await control(`/v1/uploads/${saved.upload_id}/parts`);
        return { ...listed, parts: listed.parts || [], resumed: true };
      } catch (err) {
        if (err.status !== 404) throw err;  // kept for the next try: only a gone session starts afresh
        localStorage.removeItem(job.record);  // expired, finished or aborted elsewhere
      }
    }
    const body = { key: job.key, content_type: job.file.type || "application/octet-stream", direct };
    if (partSize) body.part_size = partSize;
    const created = await control("/v1/uploads", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
    });
    localStorage.setItem(job.record, JSON.stringify({
      upload_id: created.upload_id, key: job.key, size: job.size, expires: created.expires,
      part_size: created.part_size, direct: created.direct,
    }));
    return { ...created, parts: [], resumed: false };
  }

  async function putLarge(job) {
    const session = await openSession(job);
    job.session = session;
    const size = session.part_size;
    const count = Math.max(1, Math.ceil(job.size / size));
    const have = new Map(session.parts.map((p) => [p.number, p]));
    if (session.resumed) job.message = `Resuming: ${have.size} of ${count} parts were stored before`;
    const checksums = new Map();
    let next = 1;

    const sendPart = async (number) => {
      const start = (number - 1) * size;
      const blob = job.file.slice(start, Math.min(job.size, start + size));
      const checksum = session.checksum === "sha256" ? await sha256(blob) : null;
      const stored = have.get(number);
      if (stored && stored.size === blob.size && (session.checksum !== "sha256" || stored.sha256 === checksum)) {
        checksums.set(number, checksum);  // already at the service from an earlier try: not sent again
        job.skipped += blob.size;
        job.sent += blob.size;
        schedule();
        return;
      }
      const onProgress = (loaded) => { job.inflight.set(number, loaded); schedule(); };
      const send = async () => {
        if (!session.direct) {
          const headers = authHeaders({ "Content-Type": "application/octet-stream", "Repr-Digest": `sha-256=:${checksum}:` });
          return transfer(job, {
            method: "PUT", url: `/v1/uploads/${session.upload_id}/parts/${number}`, body: blob, headers, onProgress,
          });
        }
        const want = { number };
        if (checksum) want.checksum = checksum;
        const signed = await control(`/v1/uploads/${session.upload_id}/part-urls`, {
          method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ parts: [want] }),
        });
        const spec = signed.parts[0];
        return transfer(job, { method: spec.method, url: spec.url, body: blob, headers: spec.headers, onProgress });
      };
      let lost = false;  // the last attempt's answer never came: the part may have arrived all the same
      await withRetry(job, async () => {
        if (lost && checksum) {
          const listed = await control(`/v1/uploads/${session.upload_id}/parts`);
          const found = listed.parts.find((p) => p.number === number);
          if (found && found.size === blob.size && found.sha256 === checksum) return { status: 200, body: "" };
        }
        job.inflight.set(number, 0);
        const response = await send();
        lost = response.status === 0;
        return response;
      });
      checksums.set(number, checksum);
      job.inflight.delete(number);
      job.sent += blob.size;
      schedule();
    };

    let failure = null;
    const worker = async () => {
      try {
        while (next <= count && !job.cancelled && !failure) await sendPart(next++);
      } catch (err) {
        failure = failure || err;
        for (const xhr of job.requests) xhr.abort();  // the other parts stop too; the session stays resumable
      }
    };
    // Every worker settles before this returns, so no part request outlives a cancel or a failure.
    await Promise.all(Array.from({ length: Math.min(partsAtOnce, count) }, worker));
    if (job.cancelled) throw new Cancelled();
    if (failure) throw failure;

    let manifest;
    if (session.checksum === "sha256") {
      manifest = Array.from({ length: count }, (_, i) => ({ number: i + 1, sha256: checksums.get(i + 1) }));
    } else {  // an MD5 session (direct to a store that keeps part MD5s): the store's own part list
      const listed = await control(`/v1/uploads/${session.upload_id}/parts`);
      manifest = listed.parts.map((p) => (p.md5 ? { number: p.number, md5: p.md5 } : { number: p.number, etag: p.etag }));
    }
    job.message = "Finishing…";
    render();
    await control(`/v1/uploads/${session.upload_id}/complete`, {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ parts: manifest }),
    });
    localStorage.removeItem(job.record);
  }

  async function cancelJob(job) {
    if (job.finished) {  // a finished row: the button clears it
      job.row.remove();
      jobs.splice(jobs.indexOf(job), 1);
      render();
      return;
    }
    job.cancelled = true;
    for (const xhr of job.requests) xhr.abort();
    if (job.state === "queued") { job.state = "cancelled"; job.finished = true; job.message = "Cancelled"; }
    const saved = readRecord(job.record);
    localStorage.removeItem(job.record);
    if (job.promise) await job.promise;  // every part request has settled: none lands after the abort
    const uploadId = (job.session && job.session.upload_id) || (saved && saved.upload_id);
    if (uploadId) {
      try { await api.request(`/v1/uploads/${uploadId}`, { method: "DELETE" }); } catch (_) { /* already gone */ }
    }
    render();
  }

  // --- progress -------------------------------------------------------------------------------
  function schedule() {
    if (renderQueued) return;
    renderQueued = true;
    setTimeout(() => { renderQueued = false; render(); }, 100);
  }

  function bytesOf(job) {
    let inflight = 0;
    for (const loaded of job.inflight.values()) inflight += loaded;
    return Math.min(job.size, job.sent + inflight);
  }

  function rateOf(job, now, bytes) {
    const moved = bytes - job.skipped;
    job.samples.push([now, moved]);
    while (job.samples.length > 2 && now - job.samples[0][0] > 5000) job.samples.shift();
    const [t0, b0] = job.samples[0];
    return now - t0 > 250 ? ((moved - b0) * 1000) / (now - t0) : job.rate;
  }

  function render() {
    const now = performance.now();
    let total = 0, done = 0, active = 0, failed = 0, finished = 0;
    for (const job of jobs) {
      const bytes = job.state === "done" ? job.size : bytesOf(job);
      if (job.state !== "cancelled") { total += job.size; done += bytes; }
      if (job.finished) { finished++; if (job.state === "failed") failed++; }
      if (job.state === "running") active++;
      if (job.shown === job.state && job.state !== "running") continue;  // a settled row is drawn once
      job.shown = job.state;
      const { progress, info, cancel } = job.view;
      progress.value = job.state === "done" ? progress.max : bytes;
      if (job.state === "running") {
        job.rate = rateOf(job, now, bytes);
        const parts = [`${formatBytes(bytes)} of ${formatBytes(job.size)}`];
        if (job.rate > 0) parts.push(`${formatBytes(job.rate)}/s`, formatDuration((job.size - bytes) / job.rate) + " left");
        if (job.message) parts.push(job.message);
        info.textContent = parts.join(" · ");
      } else if (job.state === "queued") {
        info.textContent = `${formatBytes(job.size)} · waiting`;
      } else {
        const elapsed = ((job.ended || now) - job.started) / 1000;
        info.textContent = job.state === "done"
          ? `${formatBytes(job.size)} · ${job.message}` + (elapsed > 1 ? ` in ${formatDuration(elapsed)}` : "")
          : job.message;
        cancel.textContent = "Clear";
        cancel.setAttribute("aria-label", `Clear ${job.key} from the list`);
      }
      job.row.dataset.state = job.state;
    }
    overall.max = Math.max(total, 1);
    overall.value = done;
    summary.textContent = jobs.length
      ? `${finished} of ${jobs.length} files finished` + (failed ? `, ${failed} failed` : "") +
        ` · ${formatBytes(done)} of ${formatBytes(total)}` + (active ? ` · ${active} uploading` : "")
      : "";
  }

  window.addEventListener("online", () => render());
  window.addEventListener("offline", () => {
    // A request in flight may stall rather than fail: stop it now, and send it again once online.
    for (const job of jobs) {
      for (const xhr of job.requests) { xhr.offline = true; xhr.abort(); }
    }
    render();
  });
  showPending();
  return { add, jobs };
}
