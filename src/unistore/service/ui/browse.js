// The folder listing: pages fetched with the cursor as they are needed, sorting, multi-select
// and keyboard navigation (arrow keys move between rows, Enter opens). The table is virtual:
// only the rows in view (and a few around them) are in the document, so a folder of tens of
// thousands of entries sorts and scrolls without freezing the page.
import * as api from "./api.js";
import { el } from "./dialogs.js";
import { baseName, formatCount, formatDate, formatSize } from "./format.js";

export const PAGE_SIZE = 1000;
export const ROW_HEIGHT = 36; // px, as .files tbody tr in app.css
const OVERSCAN = 10;
// Sorting by size or date first loads the rest of the folder, up to this many entries, so the
// order is the folder's and not only that of the pages seen so far.
export const SORT_LOAD_LIMIT = 100_000;
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
    this.activeIndex = 0;
    this.activeColumn = "button.name";
    this.range = [0, 0];
    this.build(container);
  }

  build(container) {
    this.selectAll = el("input", { type: "checkbox", "aria-label": "Select all", onchange: () => this.toggleAll() });
    this.sortButtons = {};
    this.headers = {};
    const headerCells = [];
    if (this.canSelect) headerCells.push(el("th", { class: "col-select", scope: "col" }, this.selectAll));
    for (const [field, label] of Object.entries(SORTS)) {
      const button = el("button", { type: "button", class: "sort", onclick: () => this.sortBy(field) },
        label, el("span", { class: "arrow", "aria-hidden": "true" }));
      this.sortButtons[field] = button;
      this.headers[field] = el("th", { scope: "col", class: `col-${field}` }, button);
    }
    headerCells.push(this.headers.name, this.headers.size, el("th", { scope: "col", class: "col-type", text: "Type" }), this.headers.date);
    this.columns = headerCells.length;
    this.head = el("thead", {}, el("tr", { "aria-rowindex": "1" }, headerCells));
    this.body = el("tbody", { onfocusin: (event) => this.onFocus(event.target) });
    this.table = el("table", { class: "files" }, this.head, this.body);
    this.topSpacer = this.spacer();
    this.bottomSpacer = this.spacer();
    this.scroller = el("div", {
      class: "scroller", tabindex: "-1", role: "region", "aria-label": "Files",
      onscroll: () => this.scheduleRender(),
      onkeydown: (event) => this.onKey(event),
    }, this.table);
    this.empty = el("p", { class: "empty", hidden: true });
    this.moreButton = el("button", { type: "button", text: "Load more", hidden: true, onclick: () => this.askMore() });
    this.count = el("span", { class: "count", "aria-live": "polite" });
    this.footer = el("div", { class: "more" }, this.count, this.moreButton);
    container.replaceChildren(this.scroller, this.empty, this.footer);
    window.addEventListener("resize", () => this.scheduleRender());
    this.showSort();
  }

  spacer() {
    const cell = el("td", { colspan: "6" });
    const row = el("tr", { class: "spacer", "aria-hidden": "true" }, cell);
    row.cell = cell;
    return row;
  }

  /** Show the folder `prefix`, its entries whose names start with `filter`. */
  async open(prefix, filter = "") {
    this.prefix = prefix;
    this.filter = filter;
    this.generation += 1;
    this.entries = [];
    this.cursor = null;
    this.stalled = false;
    this.selected.clear();
    this.selectAll.checked = false;
    this.activeIndex = 0;
    this.scroller.scrollTop = 0;
    this.body.replaceChildren();
    this.table.setAttribute("aria-label", `Contents of ${prefix || "the top folder"}`);
    await this.fetchPage(this.generation);
  }

  refresh() { return this.open(this.prefix, this.filter); }

  async loadMore() {
    if (this.cursor && !this.loading) await this.fetchPage(this.generation);
  }

  /** Load more because the reader asked (the button): also after a failed page. */
  async askMore() {
    this.stalled = false;
    await this.loadMore();
  }

  async fetchPage(generation) {
    this.loading = true;
    this.moreButton.disabled = true;
    this.count.textContent = this.entries.length ? `${formatCount(this.entries.length)} loaded, loading more…` : "Loading…";
    try {
      const page = await api.listPage(this.prefix + this.filter, { cursor: this.cursor, limit: PAGE_SIZE });
      if (generation !== this.generation) return; // another folder was opened meanwhile
      for (const prefix of page.prefixes || []) {
        this.entries.push({ folder: true, key: prefix, name: baseName(prefix) });
      }
      for (const object of page.objects) {
        if (!isMarker(object.key)) this.entries.push({ folder: false, name: baseName(object.key), ...object });
      }
      this.cursor = page.next_cursor;
      this.reorder();
    } catch (err) {
      if (generation === this.generation) {
        this.stalled = true; // no more automatic pages until asked (Load more, Refresh)
        this.count.textContent = "";
        this.options.onError(err);
      }
    } finally {
      if (generation === this.generation) {
        this.loading = false;
        this.moreButton.disabled = false;
        this.moreButton.hidden = !this.cursor;
        this.scheduleRender(); // still at the end of what is loaded: the next page follows
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
      type: "button", tabindex: "-1", class: entry.folder ? "name folder" : "name file",
      onclick: () => (entry.folder ? this.options.onNavigate(entry.key) : this.options.onOpen(entry)),
    }, el("span", { class: "icon", "aria-hidden": "true" }), entry.name);
    cells.push(
      el("td", { class: "col-name" }, name),
      el("td", { class: "col-size", text: entry.folder ? "" : formatSize(entry.size) }),
      el("td", { class: "col-type", text: entry.folder ? "folder" : entry.content_type || "" }),
      el("td", { class: "col-date" }, entry.folder ? "" : el("time", {
        datetime: entry.last_modified, title: entry.last_modified, text: formatDate(entry.last_modified),
      })),
    );
    entry.row = el("tr", { "data-key": entry.key, class: this.selected.has(entry.key) ? "selected" : null }, cells);
    entry.row.entry = entry;
    return entry.row;
  }

  /** Sort the loaded entries and show them (after a page arrives, a sort or a removal). */
  reorder() {
    const activeKey = this.entries[this.activeIndex] && this.entries[this.activeIndex].key;
    this.entries.sort(compare(this.sort.field, this.sort.dir));
    this.entries.forEach((entry, i) => { entry.index = i; });
    const found = activeKey ? this.entries.findIndex((entry) => entry.key === activeKey) : -1;
    this.activeIndex = found >= 0 ? found : Math.min(this.activeIndex, Math.max(this.entries.length - 1, 0));
    this.range = null; // force a new window
    this.render();
    const n = this.entries.length;
    this.table.setAttribute("aria-rowcount", String(n + 1));
    this.empty.hidden = n > 0;
    this.empty.textContent = this.filter ? `Nothing here starts with “${this.filter}”.` : "This folder is empty.";
    this.count.textContent = this.cursor
      ? `${formatCount(n)} loaded, more available` + (this.sort.field !== "name" ? (this.loading ? " (loading the rest to sort)" : " (sorted among those loaded)") : "")
      : `${formatCount(n)} ${n === 1 ? "item" : "items"}`;
    this.options.onChange();
  }

  scheduleRender() {
    if (this.frame) return;
    this.frame = requestAnimationFrame(() => { this.frame = 0; this.render(); });
  }

  /** Put the rows in view (plus a margin) in the table, spacers standing in for the rest. */
  render() {
    const n = this.entries.length;
    const headHeight = this.head.offsetHeight;
    const view = Math.max(this.scroller.clientHeight, window.innerHeight);
    const first = Math.max(0, Math.floor((this.scroller.scrollTop - headHeight) / ROW_HEIGHT) - OVERSCAN);
    const last = Math.min(n, first + Math.ceil(view / ROW_HEIGHT) + 2 * OVERSCAN);
    // Infinite scroll: the next page loads as the end of what is loaded comes into view.
    if (this.cursor && !this.loading && !this.stalled && last >= n - OVERSCAN) queueMicrotask(() => this.loadMore());
    if (this.range && this.range[0] === first && this.range[1] === last) return;
    this.range = [first, last];
    const focused = document.activeElement;
    const hadFocus = this.body.contains(focused);
    const rows = [];
    for (let i = first; i < last; i++) {
      const row = this.row(this.entries[i]);
      row.setAttribute("aria-rowindex", String(i + 2));
      const open = this.entries[i].key === this.openKey;
      row.classList.toggle("open", open);
      if (open) row.setAttribute("aria-current", "true"); else row.removeAttribute("aria-current");
      const active = i === this.activeIndex;
      for (const control of row.querySelectorAll("button, input")) control.tabIndex = active && control.matches(this.activeColumn) ? 0 : -1;
      rows.push(row);
    }
    this.topSpacer.cell.style.height = `${first * ROW_HEIGHT}px`;
    this.bottomSpacer.cell.style.height = `${(n - last) * ROW_HEIGHT}px`;
    this.body.replaceChildren(...(first > 0 ? [this.topSpacer] : []), ...rows, ...(last < n ? [this.bottomSpacer] : []));
    this.scroller.tabIndex = n > 0 && !(this.activeIndex >= first && this.activeIndex < last) ? 0 : -1;
    if (hadFocus) { // a row that stays in view keeps the focus; one scrolled away hands it to the list
      (this.body.contains(focused) ? focused : this.scroller).focus({ preventScroll: true });
    }
  }

  /** Mark the row whose details are shown (`null`: none). */
  markOpen(key) {
    this.openKey = key;
    this.range = null;
    this.render();
  }

  sortBy(field) {
    this.sort = { field, dir: this.sort.field === field ? -this.sort.dir : 1 };
    this.showSort();
    this.reorder();
    if (field !== "name") this.loadAll();
  }

  /** Fetch the remaining pages (up to SORT_LOAD_LIMIT entries): a sort by size or date then covers the folder. */
  async loadAll() {
    const generation = this.generation;
    while (this.cursor && !this.stalled && generation === this.generation && this.entries.length < SORT_LOAD_LIMIT) {
      if (this.loading) await new Promise((resolve) => setTimeout(resolve, 50)); // a page already on its way
      else await this.fetchPage(generation);
    }
    if (generation === this.generation && !this.loading) this.reorder(); // the count says where it stopped
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
    if (entry.row) {
      entry.row.classList.toggle("selected", on);
      const box = entry.row.querySelector("input[type=checkbox]");
      if (box) box.checked = on;
    }
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
  onFocus(target) {
    const row = target.closest("tr");
    if (!row || !row.entry) return;
    this.activeIndex = row.entry.index;
    this.activeColumn = target.matches("input") ? "input" : "button.name";
    for (const control of this.body.querySelectorAll("[tabindex='0']")) if (control !== target) control.tabIndex = -1;
    target.tabIndex = 0;
    this.scroller.tabIndex = -1;
  }

  /** Focus row `index` (scrolling it into view), in the current column. */
  focusIndex(index) {
    const n = this.entries.length;
    if (!n) return;
    index = Math.max(0, Math.min(n - 1, index));
    this.activeIndex = index;
    const top = this.head.offsetHeight + index * ROW_HEIGHT;
    const scroller = this.scroller;
    if (top < scroller.scrollTop + this.head.offsetHeight) scroller.scrollTop = top - this.head.offsetHeight;
    else if (top + ROW_HEIGHT > scroller.scrollTop + scroller.clientHeight) scroller.scrollTop = top + ROW_HEIGHT - scroller.clientHeight;
    this.render();
    const row = this.entries[index].row;
    const target = row.querySelector(this.activeColumn) || row.querySelector("button.name");
    target.focus({ preventScroll: true });
    if (row.getBoundingClientRect().bottom > window.innerHeight || row.getBoundingClientRect().top < 0) {
      row.scrollIntoView({ block: "nearest" });
    }
    if (index >= n - 1 && this.cursor) this.loadMore();
  }

  onKey(event) {
    if (event.target.closest("thead")) return;
    const row = event.target.closest("tr");
    const index = row && row.entry ? row.entry.index : this.activeIndex;
    const page = Math.max(1, Math.floor(this.scroller.clientHeight / ROW_HEIGHT) - 1);
    let next = null;
    switch (event.key) {
      case "ArrowDown": next = row ? index + 1 : index; break;
      case "ArrowUp": next = row ? index - 1 : index; break;
      case "Home": next = 0; break;
      case "End": next = this.entries.length - 1; break;
      case "PageDown": next = index + page; break;
      case "PageUp": next = index - page; break;
      case "ArrowLeft": case "ArrowRight": {
        if (!row) return;
        const other = row.querySelector(event.target.matches("input") ? "button.name" : "input");
        if (other) { event.preventDefault(); other.focus(); }
        return;
      }
      case "Delete":
        if (this.canSelect && row) {
          event.preventDefault();
          this.options.onDelete(this.selected.size ? this.selectedEntries() : [row.entry]);
        }
        return;
      default: return;
    }
    event.preventDefault();
    this.focusIndex(next);
  }

  /** Forget entries that are gone (after a delete or a move) without listing again. */
  drop(keys) {
    const gone = new Set(keys);
    this.entries = this.entries.filter((entry) => !gone.has(entry.key));
    for (const key of keys) this.selected.delete(key);
    this.selectAll.checked = false;
    this.reorder();
  }
}
