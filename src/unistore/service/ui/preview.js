// The details panel: a sandboxed preview of one object and its metadata.
//
// Nothing stored ever runs in the app's origin: text (HTML and SVG included) is shown with
// textContent, images are drawn by <img> from a blob: URL, PDF, audio and video play from a
// signed URL that the store serves with nosniff (and a sandbox policy for any active type).
import * as api from "./api.js";
import { el } from "./dialogs.js";
import { formatDate, formatSize } from "./format.js";

export const TEXT_PREVIEW_BYTES = 64 * 1024;
const IMAGE_PREVIEW_LIMIT = 20 * 1024 * 1024;
const IMAGE_TYPES = new Set([
  "image/png", "image/apng", "image/jpeg", "image/gif", "image/webp", "image/avif", "image/bmp", "image/x-icon",
]);
const TEXT_TYPES = new Set([
  "application/json", "application/xml", "application/javascript", "application/x-ndjson", "application/yaml",
  "application/x-yaml", "application/toml", "application/sql", "image/svg+xml",
]);
const TEXT_EXTENSIONS = /\.(txt|md|csv|tsv|json|ndjson|jsonl|xml|html?|svg|css|js|mjs|ts|py|rs|go|java|c|h|cpp|sh|ya?ml|toml|ini|cfg|conf|log|sql)$/i;

/** What kind of preview an object gets: "image", "text", "pdf", "video", "audio" or "none". */
export function previewKind(info) {
  const type = (info.content_type || "").split(";")[0].trim().toLowerCase();
  if (IMAGE_TYPES.has(type)) return "image";
  if (type.startsWith("text/") || TEXT_TYPES.has(type) || type.endsWith("+json") || type.endsWith("+xml")) return "text";
  if (type === "application/pdf") return "pdf";
  if (type.startsWith("video/")) return "video";
  if (type.startsWith("audio/")) return "audio";
  if ((!type || type === "application/octet-stream") && TEXT_EXTENSIONS.test(info.key)) return "text";
  return "none";
}

/** The text of the first bytes of an object (UTF-8, bad bytes replaced), pretty-printed if it is whole JSON. */
function asText(buffer, info) {
  let text = new TextDecoder("utf-8", { fatal: false }).decode(buffer);
  const whole = buffer.byteLength >= info.size;
  if (whole && /json/.test(info.content_type || "")) {
    try { text = JSON.stringify(JSON.parse(text), null, 2); } catch (_) { /* shown as it is */ }
  }
  return text;
}

/**
 * Fill `target` with a preview of `info`; returns a function that releases what the preview holds
 * (blob: URLs, pending requests, playing media).
 */
export function renderPreview(target, info, name) {
  const abort = new AbortController();
  const urls = [];
  const kind = previewKind(info);
  const status = el("p", { class: "note", text: "Loading the preview…" });
  target.replaceChildren(status);
  const fail = (err) => { if (!abort.signal.aborted) status.textContent = `No preview: ${err.message}`; };
  if (kind === "text") {
    if (info.size === 0) {
      status.textContent = "This file is empty.";
    } else {
      api.readStart(info.key, TEXT_PREVIEW_BYTES, { signal: abort.signal }).then((buffer) => {
        const pre = el("pre", { class: "text-preview", tabindex: "0", role: "region", "aria-label": `Contents of ${name}` });
        pre.textContent = asText(buffer, info);
        const parts = [pre];
        status.textContent = info.size > TEXT_PREVIEW_BYTES
          ? `Showing the first ${formatSize(TEXT_PREVIEW_BYTES)} of ${formatSize(info.size)}.` : "";
        target.replaceChildren(...(status.textContent ? [status] : []), ...parts);
      }, fail);
    }
  } else if (kind === "image") {
    if (info.size > IMAGE_PREVIEW_LIMIT) {
      status.textContent = `This image is ${formatSize(info.size)}: download it to view it.`;
    } else {
      api.readBlob(info.key, { signal: abort.signal }).then((blob) => {
        const url = URL.createObjectURL(blob);
        urls.push(url);
        const img = el("img", { class: "image-preview", src: url, alt: `Preview of ${name}` });
        target.replaceChildren(img);
      }, fail);
    }
  } else if (kind === "pdf" || kind === "video" || kind === "audio") {
    api.signedUrl(info.key, { expiresIn: 3600 }).then(({ url }) => {
      if (abort.signal.aborted) return;
      let node;
      if (kind === "pdf") {
        node = el("iframe", { class: "pdf-preview", src: url, title: `Preview of ${name}`, referrerpolicy: "no-referrer" });
      } else {
        node = el(kind, { class: `${kind}-preview`, src: url, controls: true, preload: "metadata", "aria-label": `Preview of ${name}` });
      }
      target.replaceChildren(node);
    }, fail);
  } else {
    status.textContent = "No preview for this type of file.";
  }
  return () => {
    abort.abort();
    for (const media of target.querySelectorAll("video, audio")) media.pause();
    for (const url of urls) URL.revokeObjectURL(url);
    target.replaceChildren();
  };
}

/** The metadata list: key, size, type, etag, date, and the stored metadata (schema version, key id first). */
export function renderMetadata(info) {
  const rows = [
    ["Key", info.key],
    ["Size", `${formatSize(info.size)} (${info.size.toLocaleString()} bytes)`],
    ["Type", info.content_type || "unknown"],
    ["ETag", info.etag],
    ["Last modified", formatDate(info.last_modified)],
  ];
  const metadata = { ...(info.metadata || {}) };
  if ("schema_version" in metadata) { rows.push(["Schema version", metadata.schema_version]); delete metadata.schema_version; }
  if ("x-storage-key-id" in metadata) { rows.push(["Encryption key id", metadata["x-storage-key-id"]]); delete metadata["x-storage-key-id"]; }
  for (const name of Object.keys(metadata).sort()) rows.push([name, metadata[name]]);
  return el("dl", { class: "meta" }, rows.map(([term, value]) => [el("dt", { text: term }), el("dd", { text: String(value) })]));
}
