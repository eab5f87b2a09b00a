// The folder listing: pages fetched with the cursor and rendered as they arrive, sorting,
// multi-select and keyboard navigation (arrow keys move between rows, Enter opens).
import * as api from "./api.js";
import { el } from "./dialogs.js";
import { baseName, formatCount, formatDate, formatSize } from "./format.js";

export const PAGE_SIZE = 1000;
const SORTS = { name: "Name", size: "Size", date: "Modified" };

/** Whether a listed key is a folder marker, which the listing hides. */
export function isMarker(key) { return key === ".keep" || key.endsWith("/.keep"); }

function compare(field, dir) {
  const byName = (a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0);
  return (a, b) => {
    if (a.folder !== b.folder) return a.folder ? -1 : 1; // folders first, whatever the order
    let order = 0;
    if (field === "size" && !a.folder) order = a.size - b.size;
    else if (field === "date" && !a.folder) order = a.last_modified < b.last_modified ? -1 : a.last_modified > b.last_modified ? 1 : 0;
    return (order || byName(a, b)) * dir;
  };
}

export class Browser {
  /**
   * `container` receives the table; `options`: `can` (the token's actions as a Set), `onOpen(entry)`
   * for a file, `onNavigate(prefix)` for a folder, `onDelete(entries)`, `onChange()` when the
   * selection or the loaded set changes, `onError(err)`.
   */
  constructor(container, options) {
    this.options = options;
    this.prefix = "";
    this.filter = "";
    this.entries = [];
    this.cursor = null;
    this.loading = false;
    this.generation = 0;
    this.sort = { field: "name", dir: 1 };
    this.selected = new Set();
    this.canSelect = options.can.has("delete");
    this.build(container);
  }

  build(container) {
    this.selectAll = el("input", { type: "checkbox", "aria-label": "Select all", onchange: () => this.toggleAll() });
    this.sortButtons = {};
    this.headers = {};
    const headerCells = [];
    if (this.canSelect) headerCells.push(el("th", { class: "col-select", scope: "col" }, this.selectAll));
    for (const [field, label] of Object.entries(SORTS)) {
      const button = el("button", { type: "button", class: "sort", text: label, onclick: () => this.sortBy(field) });
      this.sortButtons[field] = button;
      this.headers[field] = el("th", { scope: "col", class: `col-${field}` }, button);
    }
    headerCells.push(this.headers.name, this.headers.size, el("th", { scope: "col", class: "col-type", text: "Type" }), this.headers.date);
    this.body = el("tbody", { onkeydown: (event) => this.onKey(event), onfocusin: (event) => this.setActive(event.target) });
    this.table = el("table", { class: "files" }, el("thead", {}, el("tr", {}, headerCells)), this.body);
    this.empty = el("p", { class: "empty", hidden: true });
    this.moreButton = el("button", { type: "button", text: "Load more", hidden: true, onclick: () => this.loadMore() });
    this.count = el("span", { class: "count", "aria-live": "polite" });
    this.footer = el("div", { class: "more" }, this.count, this.moreButton);
    container.replaceChildren(this.table, this.empty, this.footer);
    // Infinite scroll: the next page loads when the footer scrolls into view.
    this.observer = new IntersectionObserver((seen) => {
      if (seen.some((entry) => entry.isIntersecting) && this.cursor && !this.loading) this.loadMore();
    }, { rootMargin: "200px" });
    this.observer.observe(this.footer);
    this.showSort();
  }

  /** Show the folder `prefix`, its entries whose names start with `filter`. */
  async open(prefix, filter = "") {
    this.prefix = prefix;
    this.filter = filter;
    this.generation += 1;
    this.entries = [];
    this.cursor = null;
    this.selected.clear();
    this.active = null;
    this.body.replaceChildren();
    this.table.setAttribute("aria-label", `Contents of ${prefix || "the top folder"}`);
    await this.fetchPage(this.generation);
  }

  refresh() { return this.open(this.prefix, this.filter); }

  async loadMore() {
    if (this.cursor && !this.loading) await this.fetchPage(this.generation);
  }

  async fetchPage(generation) {
    this.loading = true;
    this.moreButton.disabled = true;
    this.count.textContent = this.entries.length ? `${formatCount(this.entries.length)} loaded, loading more…` : "Loading…";
    try {
      const page = await api.listPage(this.prefix + this.filter, { cursor: this.cursor, limit: PAGE_SIZE });
      if (generation !== this.generation) return; // another folder was opened meanwhile
      const added = [];
      for (const prefix of page.prefixes || []) {
        added.push({ folder: true, key: prefix, name: baseName(prefix) });
      }
      for (const object of page.objects) {
        if (!isMarker(object.key)) added.push({ folder: false, name: baseName(object.key), ...object });
      }
      this.entries.push(...added);
      this.cursor = page.next_cursor;
      this.render();
    } catch (err) {
      if (generation === this.generation) {
        this.count.textContent = "";
        this.options.onError(err);
      }
    } finally {
      if (generation === this.generation) {
        this.loading = false;
        this.moreButton.disabled = false;
        this.moreButton.hidden = !this.cursor;
      }
    }
  }

  row(entry) {
    if (entry.row) return entry.row;
    const cells = [];
    if (this.canSelect) {
      cells.push(el("td", { class: "col-select" }, el("input", {
        type: "checkbox", tabindex: "-1", "aria-label": `Select ${entry.name}`, checked: this.selected.has(entry.key),
        onchange: (event) => this.select(entry, event.target.checked),
      })));
    }
    const name = el("button", {
      type: "button", tabindex: "-1", class: entry.folder ? "name folder" : "name file", text: entry.name,
      onclick: () => (entry.folder ? this.options.onNavigate(entry.key) : this.options.onOpen(entry)),
    });
    cells.push(
      el("td", { class: "col-name" }, name),
      el("td", { class: "col-size", text: entry.folder ? "" : formatSize(entry.size) }),
      el("td", { class: "col-type", text: entry.folder ? "folder" : entry.content_type || "" }),
      el("td", { class: "col-date" }, entry.folder ? "" : el("time", {
        datetime: entry.last_modified, title: entry.last_modified, text: formatDate(entry.last_modified),
      })),
    );
    entry.row = el("tr", { "data-key": entry.key }, cells);
    entry.row.entry = entry;
    return entry.row;
  }

  /** Lay out the loaded entries in the current order (rows are made once and then only moved). */
  render() {
    const focused = document.activeElement;
    this.entries.sort(compare(this.sort.field, this.sort.dir));
    this.body.replaceChildren(...this.entries.map((entry) => this.row(entry)));
    if (focused && this.body.contains(focused)) focused.focus();
    if (!this.active || !this.body.contains(this.active)) {
      const first = this.body.querySelector("button.name");
      if (first) this.setActive(first);
    }
    const n = this.entries.length;
    this.empty.hidden = n > 0;
    this.empty.textContent = this.filter ? `Nothing here starts with “${this.filter}”.` : "This folder is empty.";
    this.count.textContent = this.cursor
      ? `${formatCount(n)} loaded, more available` + (this.sort.field !== "name" ? " (sorted among those loaded)" : "")
      : `${formatCount(n)} ${n === 1 ? "item" : "items"}`;
    this.options.onChange();
  }

  sortBy(field) {
    this.sort = { field, dir: this.sort.field === field ? -this.sort.dir : 1 };
    this.showSort();
    this.render();
  }

  showSort() {
    for (const [field, header] of Object.entries(this.headers)) {
      const on = field === this.sort.field;
      header.setAttribute("aria-sort", on ? (this.sort.dir > 0 ? "ascending" : "descending") : "none");
      this.sortButtons[field].classList.toggle("asc", on && this.sort.dir > 0);
      this.sortButtons[field].classList.toggle("desc", on && this.sort.dir < 0);
    }
  }

  select(entry, on) {
    if (on) this.selected.add(entry.key); else this.selected.delete(entry.key);
    entry.row.classList.toggle("selected", on);
    const box = entry.row.querySelector("input[type=checkbox]");
    if (box) box.checked = on;
    this.selectAll.checked = this.selected.size > 0 && this.selected.size === this.entries.length;
    this.options.onChange();
  }

  toggleAll() {
    const on = this.selectAll.checked;
    for (const entry of this.entries) {
      if (on) this.selected.add(entry.key); else this.selected.delete(entry.key);
      if (entry.row) {
        entry.row.classList.toggle("selected", on);
        entry.row.querySelector("input[type=checkbox]").checked = on;
      }
    }
    this.options.onChange();
  }

  selectedEntries() { return this.entries.filter((entry) => this.selected.has(entry.key)); }

  /** Roving focus: one control in the listing is in the Tab order, the one last focused. */
  setActive(target) {
    if (!(target instanceof HTMLElement) || !target.closest("tr")) return;
    if (this.active && this.active !== target) this.active.tabIndex = -1;
    this.active = target;
    target.tabIndex = 0;
  }

  onKey(event) {
    const row = event.target.closest("tr");
    if (!row) return;
    const column = event.target.matches("input") ? "input" : "button.name";
    let next = null;
    switch (event.key) {
      case "ArrowDown": next = row.nextElementSibling; break;
      case "ArrowUp": next = row.previousElementSibling; break;
      case "Home": next = this.body.firstElementChild; break;
      case "End": next = this.body.lastElementChild; break;
      case "PageDown": next = this.body.children[Math.min(row.sectionRowIndex + 10, this.body.children.length - 1)]; break;
      case "PageUp": next = this.body.children[Math.max(row.sectionRowIndex - 10, 0)]; break;
      case "ArrowLeft": case "ArrowRight": {
        const other = row.querySelector(column === "input" ? "button.name" : "input");
        if (other) { event.preventDefault(); other.focus(); }
        return;
      }
      case "Delete":
        if (this.canSelect) {
          event.preventDefault();
          this.options.onDelete(this.selected.size ? this.selectedEntries() : [row.entry]);
        }
        return;
      default: return;
    }
    event.preventDefault();
    if (next) {
      const target = next.querySelector(column) || next.querySelector("button.name");
      target.focus();
      target.scrollIntoView({ block: "nearest" });
      if (event.key === "End" && this.cursor) this.loadMore();
    }
  }

  /** Forget entries that are gone (after a delete or a move) without listing again. */
  drop(keys) {
    const gone = new Set(keys);
    this.entries = this.entries.filter((entry) => !gone.has(entry.key));
    for (const key of keys) this.selected.delete(key);
    this.render();
  }
}
