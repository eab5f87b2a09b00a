// The web UI's entry point: sign-in, then the folder browser with its toolbar and details panel.
import * as api from "./api.js";
import { Browser } from "./browse.js";
import { askText, confirmAction, el, shareDialog } from "./dialogs.js";
import { baseName, formatCount, formatDuration, parentOf } from "./format.js";
import { renderMetadata, renderPreview } from "./preview.js";
import { mountUploads } from "./upload.js";

const $ = (id) => document.getElementById(id);
const DELETE_CONCURRENCY = 4;

let me = null;          // the token's whoami answer
let can = new Set();    // the actions it allows
let home = "";          // the folder it starts in (its prefix)
let browser = null;
let closePreview = null;
let shown = null;       // the entry in the details panel

// ---- sign-in -------------------------------------------------------------------------------

async function start() {
  api.adoptTokenFromLocation();
  try {
    me = await api.whoami();
  } catch (err) {
    if (err instanceof api.ApiError && err.status === 401) {
      return showSignIn(api.getToken() ? "That token is not valid or has expired." : "");
    }
    $("sign-in").hidden = true;
    $("app").hidden = false;
    return showStatus(err.message, { error: true, retry: start });
  }
  showApp();
}

function showSignIn(message) {
  api.clearToken();
  closeDetails();
  $("app").hidden = true;
  $("sign-out").hidden = true;
  $("who").textContent = "";
  $("sign-in").hidden = false;
  $("sign-in-error").textContent = message;
  $("token-input").focus();
}

function showApp() {
  can = new Set(me.actions);
  home = me.prefix || "";
  $("sign-in").hidden = true;
  $("app").hidden = false;
  $("sign-out").hidden = !me.auth;
  const expiry = me.expires_in != null ? ` · expires in ${formatDuration(me.expires_in)}` : "";
  $("who").textContent = me.auth ? `${me.subject} · ${me.actions.join(", ")}${expiry}` : "auth off";
  buildToolbar();
  browser = new Browser($("listing"), {
    can,
    onOpen: openDetails,
    onNavigate: (prefix) => go(prefix, { fromListing: true }),
    onDelete: deleteEntries,
    onChange: updateSelection,
    onError: handleError,
  });
  const uploads = $("uploads");
  uploads.replaceChildren();
  uploads.hidden = !can.has("write");
  if (can.has("write")) {
    mountUploads(uploads, { me, api, getPrefix: () => browser.prefix, onUploaded: refreshSoon });
  }
  route();
}

let refreshTimer = 0;

/** List the folder again shortly (uploads finish one by one; one listing follows a burst of them). */
function refreshSoon() {
  clearTimeout(refreshTimer);
  refreshTimer = setTimeout(() => { if (browser) browser.refresh(); }, 300);
}

// ---- navigation ----------------------------------------------------------------------------

/** The folder named by the page's fragment (#p=...), kept inside the token's prefix. */
function currentPrefix() {
  const prefix = new URLSearchParams(location.hash.slice(1)).get("p") || home;
  return prefix.startsWith(home) ? prefix : home;
}

function hashFor(prefix) { return "#" + new URLSearchParams({ p: prefix }); }

let focusListing = false; // after opening a folder from the listing, keep the focus in it

function go(prefix, { fromListing = false } = {}) {
  focusListing = fromListing;
  if (location.hash !== hashFor(prefix)) location.hash = hashFor(prefix);
  else route();
}

function route() {
  if (!browser) return;
  const prefix = currentPrefix();
  closeDetails();
  $("filter").value = "";
  showStatus("");
  renderCrumbs(prefix);
  document.title = `${prefix || "/"} · unistore`;
  const refocus = focusListing;
  focusListing = false;
  browser.open(prefix).then(() => {
    const first = $("listing").querySelector("button.name[tabindex='0']");
    if (first && refocus) first.focus({ preventScroll: true });
  });
}

function renderCrumbs(prefix) {
  const items = [];
  const homeLabel = home ? home.replace(/\/$/, "") : "Home";
  const parts = prefix.slice(home.length).split("/").filter(Boolean);
  const link = (label, target, current) => el("li", {}, el("a", {
    href: hashFor(target), text: label, "aria-current": current ? "page" : null,
  }));
  items.push(link(homeLabel, home, parts.length === 0));
  let path = home;
  parts.forEach((part, i) => {
    path += part + "/";
    items.push(link(part, path, i === parts.length - 1));
  });
  $("crumbs").replaceChildren(el("ol", {}, items));
}

// ---- toolbar -------------------------------------------------------------------------------

let filterTimer = 0;

function buildToolbar() {
  const filter = el("input", {
    id: "filter", type: "search", placeholder: "Filter by name", "aria-label": "Filter by name", autocomplete: "off",
    oninput: () => {
      clearTimeout(filterTimer);
      filterTimer = setTimeout(() => browser.open(browser.prefix, filter.value), 250);
    },
  });
  const buttons = [el("button", { type: "button", text: "Refresh", onclick: () => browser.refresh() })];
  if (can.has("write")) buttons.unshift(el("button", { type: "button", text: "New folder", onclick: newFolder }));
  if (can.has("delete")) {
    buttons.push(el("button", {
      id: "delete-selected", type: "button", class: "danger", text: "Delete selected", disabled: true,
      onclick: () => deleteEntries(browser.selectedEntries()),
    }));
  }
  $("toolbar").replaceChildren(filter, ...buttons);
}

function updateSelection() {
  const button = $("delete-selected");
  if (!button) return;
  const n = browser.selected.size;
  button.disabled = n === 0;
  button.textContent = n ? `Delete selected (${formatCount(n)})` : "Delete selected";
}

// ---- status, errors, offline ---------------------------------------------------------------

function showStatus(message, { error = false, retry = null } = {}) {
  const status = $("status");
  status.classList.toggle("error", error);
  status.replaceChildren(...(message ? [el("span", { text: message })] : []));
  if (retry) status.append(" ", el("button", { type: "button", text: "Retry", onclick: retry }));
}

function handleError(err) {
  if (err instanceof api.ApiError && err.status === 401) return showSignIn("Your token is no longer valid: sign in again.");
  if (err instanceof api.ApiError && err.status === 403) return showStatus(`Not allowed: ${err.message}`, { error: true });
  showStatus(err.message, { error: true, retry: browser ? () => { showStatus(""); browser.refresh(); } : start });
}

function showConnection(event) {
  $("offline").hidden = navigator.onLine;
  if (navigator.onLine && browser && !$("app").hidden && event && event.type === "online") {
    showStatus("");
    browser.refresh();
  }
}

// ---- details panel -------------------------------------------------------------------------

function openDetails(entry) {
  closeDetails();
  shown = entry;
  const panel = $("details");
  const actions = [];
  if (can.has("read")) {
    actions.push(
      el("button", { type: "button", text: "Download", onclick: () => download(entry) }),
      el("button", { type: "button", text: "Share", onclick: () => shareDialog(entry.name, (s) => api.signedUrl(entry.key, { expiresIn: s })) }),
    );
  }
  if (can.has("write") && can.has("delete")) actions.push(el("button", { type: "button", text: "Rename or move", onclick: () => rename(entry) }));
  if (can.has("delete")) actions.push(el("button", { type: "button", class: "danger", text: "Delete", onclick: () => deleteEntries([entry]) }));
  const preview = el("div", { class: "preview" });
  const closeButton = el("button", { type: "button", class: "close", "aria-label": "Close details", text: "×", onclick: () => closeDetails(true) });
  panel.replaceChildren(
    el("div", { class: "details-head" }, el("h2", { id: "details-title", text: entry.name }), closeButton),
    el("div", { class: "details-actions" }, actions),
    preview,
    el("h3", { text: "Details" }),
    renderMetadata(entry),
  );
  panel.hidden = false;
  document.body.classList.add("has-details");
  closePreview = renderPreview(preview, entry, entry.name);
  browser.markOpen(entry.key);
  closeButton.focus();
}

function closeDetails(refocus = false) {
  if (closePreview) closePreview();
  closePreview = null;
  const key = shown && shown.key;
  shown = null;
  $("details").hidden = true;
  $("details").replaceChildren();
  document.body.classList.remove("has-details");
  if (browser && key) browser.markOpen(null);
  if (refocus && key) {
    const row = [...$("listing").querySelectorAll("tr")].find((tr) => tr.dataset.key === key);
    if (row) row.querySelector("button.name").focus();
  }
}

// ---- actions -------------------------------------------------------------------------------

async function download(entry) {
  try {
    const { url } = await api.signedUrl(entry.key, { expiresIn: 300, download: true });
    const a = el("a", { href: url, download: entry.name, rel: "noopener", hidden: true });
    document.body.append(a);
    a.click();
    a.remove();
  } catch (err) {
    handleError(err);
  }
}

async function newFolder() {
  const name = await askText("New folder", "Folder name", {
    action: "Create",
    check: (text) => (text.split("/").some((part) => part === "." || part === "..") ? "A name cannot be . or .." : ""),
  });
  if (!name) return;
  const prefix = browser.prefix + name.replace(/^\/+|\/+$/g, "") + "/";
  try {
    await api.createFolder(prefix);
    showStatus(`Created the folder ${baseName(prefix)}`);
    await browser.refresh();
  } catch (err) {
    handleError(err);
  }
}

async function rename(entry) {
  const start = entry.key.lastIndexOf("/") + 1;
  const dot = entry.key.lastIndexOf(".");
  const dest = await askText(`Rename or move ${entry.name}`, "New name or path", {
    value: entry.key,
    select: [start, dot > start ? dot : entry.key.length], // the name, without its folder or extension
    action: "Rename",
    check: (text) => (text.endsWith("/") ? "End the path with a file name." : text === entry.key ? "That is its current name." : ""),
  });
  if (!dest) return;
  try {
    await api.copy(entry.key, dest, { etag: entry.etag, mode: "create", deleteSource: true });
    closeDetails();
    showStatus(parentOf(dest) === browser.prefix ? `Renamed to ${baseName(dest)}` : `Moved to ${dest}`);
    await browser.refresh();
  } catch (err) {
    if (err instanceof api.ApiError && err.status === 412) {
      showStatus(`Not renamed: ${err.message}. An object named ${dest} may already exist, or the file changed since it was listed.`, { error: true });
    } else {
      handleError(err);
    }
  }
}

async function deleteEntries(entries) {
  if (!entries.length || !can.has("delete")) return;
  const folders = entries.filter((entry) => entry.folder).length;
  const what = entries.length === 1 ? `“${entries[0].name}”` : `${formatCount(entries.length)} items`;
  const inside = folders ? ` and everything inside ${folders === 1 ? "the folder" : `${folders} folders`}` : "";
  if (!(await confirmAction("Delete", `Delete ${what}${inside}? This cannot be undone.`, "Delete"))) return;
  showStatus(`Deleting ${what}…`);
  const jobs = [];
  const failures = [];
  for (const entry of entries) {
    if (entry.folder) {
      try {
        for (const key of await api.allKeys(entry.key)) jobs.push([key, null]);
      } catch (err) {
        failures.push(`${entry.key}: ${err.message}`);
      }
    } else {
      jobs.push([entry.key, entry.etag]); // only the version that was listed
    }
  }
  let next = 0, done = 0;
  const worker = async () => {
    while (next < jobs.length) {
      const [key, etag] = jobs[next++];
      try { await api.remove(key, etag); } catch (err) { failures.push(`${key}: ${err.message}`); }
      done += 1;
      if (jobs.length > 1) showStatus(`Deleting… ${formatCount(done)} of ${formatCount(jobs.length)} objects`);
    }
  };
  await Promise.all(Array.from({ length: DELETE_CONCURRENCY }, worker));
  if (shown && entries.some((entry) => entry.key === shown.key)) closeDetails();
  if (failures.length) {
    showStatus(`${failures.length} not deleted: ${failures.slice(0, 3).join("; ")}`, { error: true });
    await browser.refresh();
  } else {
    showStatus(`Deleted ${what}.`);
    browser.drop(entries.map((entry) => entry.key));
  }
}

// ---- wiring --------------------------------------------------------------------------------

$("sign-in-form").addEventListener("submit", (event) => {
  event.preventDefault();
  api.setToken($("token-input").value.trim());
  $("token-input").value = "";
  start();
});
$("sign-out").addEventListener("click", () => { browser = null; showSignIn(""); });
window.addEventListener("hashchange", route);
window.addEventListener("online", showConnection);
window.addEventListener("offline", showConnection);
document.addEventListener("keydown", (event) => {
  const typing = event.target.closest && event.target.closest("input, textarea, select, dialog");
  if (typing || !browser || $("app").hidden) return;
  if (event.key === "Escape" && shown) { closeDetails(true); return; }
  if ((event.key === "Backspace" || (event.altKey && event.key === "ArrowUp")) && browser.prefix !== home) {
    event.preventDefault();
    go(parentOf(browser.prefix), { fromListing: true });
  }
});
showConnection();
start();
