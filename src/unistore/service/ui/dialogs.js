// Modal dialogs (the native <dialog>): confirm, ask for a name, and the share dialog.
import { formatDuration } from "./format.js";

/** An element with attributes and children (text children are set as text, never parsed as HTML). */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value == null || value === false) continue;
    if (name === "class") node.className = value;
    else if (name === "text") node.textContent = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else if (name in node && typeof value !== "string") node[name] = value;
    else node.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children.flat(Infinity)) {
    if (child != null) node.append(child);
  }
  return node;
}

let counter = 0;

/** Show a modal built by `build(close)`, resolving with whatever `close(value)` is given (Escape: null). */
function modal(title, build) {
  return new Promise((resolve) => {
    const id = `dialog-title-${++counter}`;
    const dialog = el("dialog", { class: "dialog", "aria-labelledby": id });
    const close = (value) => { dialog.close(); dialog.remove(); resolve(value); };
    dialog.addEventListener("cancel", (event) => { event.preventDefault(); close(null); });
    dialog.append(el("h2", { id, text: title }), ...build(close));
    document.body.append(dialog);
    dialog.showModal();
  });
}

/** Ask to confirm a destructive action; resolves true or false. */
export async function confirmAction(title, message, action) {
  const answer = await modal(title, (close) => [
    el("p", { text: message }),
    el("div", { class: "buttons" },
      el("button", { type: "button", text: "Cancel", onclick: () => close(false) }),
      el("button", { type: "button", class: "danger", text: action, onclick: () => close(true), autofocus: true })),
  ]);
  return Boolean(answer);
}

/**
 * Ask for a line of text (a name or a path); resolves the trimmed text or null. `check` returns an
 * error or ""; `select` is the [start, end] of the text selected at first (all of it by default).
 */
export function askText(title, label, { value = "", action = "OK", check = () => "", select = null } = {}) {
  return modal(title, (close) => {
    const input = el("input", { type: "text", value, required: true, autocomplete: "off", spellcheck: "false" });
    const error = el("p", { class: "error", role: "alert" });
    const form = el("form", {
      onsubmit: (event) => {
        event.preventDefault();
        const text = input.value.trim();
        const problem = text ? check(text) : "Enter a name.";
        if (problem) { error.textContent = problem; input.focus(); return; }
        close(text);
      },
    },
    el("label", {}, el("span", { text: label }), input),
    error,
    el("div", { class: "buttons" },
      el("button", { type: "button", text: "Cancel", onclick: () => close(null) }),
      el("button", { type: "submit", text: action })));
    queueMicrotask(() => {
      input.focus();
      if (select) input.setSelectionRange(...select); else input.select();
    });
    return [form];
  });
}

const EXPIRIES = [[900, "15 minutes"], [3600, "1 hour"], [86400, "1 day"], [7 * 86400, "7 days"]];

/** The share dialog: pick an expiry, get a signed URL, copy it. `sign(expiresIn)` → `{url, expires_in}`. */
export function shareDialog(name, sign) {
  return modal(`Share ${name}`, (close) => {
    const select = el("select", {}, EXPIRIES.map(([seconds, text]) =>
      el("option", { value: String(seconds), text, selected: seconds === 3600 })));
    const link = el("input", { type: "text", readonly: true, "aria-label": "Share link", placeholder: "No link yet" });
    const note = el("p", { class: "note", role: "status" });
    const copyButton = el("button", { type: "button", text: "Copy link", disabled: true });
    const make = async () => {
      note.textContent = "Creating the link…";
      try {
        const wanted = Number(select.value);
        const signed = await sign(wanted);
        link.value = signed.url;
        copyButton.disabled = false;
        const capped = signed.expires_in < wanted - 60 ? " (no longer than your own sign-in lasts)" : "";
        note.textContent = `Anyone with this link can download the file for ${formatDuration(signed.expires_in)}${capped}.`;
      } catch (err) {
        note.textContent = err.message;
      }
    };
    copyButton.addEventListener("click", async () => {
      try {
        await navigator.clipboard.writeText(link.value);
      } catch (_) { // no clipboard permission: select the text so the reader can copy it themselves
        link.select();
        document.execCommand("copy");
      }
      note.textContent = "Link copied.";
    });
    select.addEventListener("change", make);
    make();
    return [
      el("label", {}, el("span", { text: "Link expires after" }), select),
      link,
      note,
      el("div", { class: "buttons" },
        el("button", { type: "button", text: "Close", onclick: () => close(null) }),
        copyButton),
    ];
  });
}
