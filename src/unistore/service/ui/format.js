// Small formatting helpers: binary sizes, dates, names.

const UNITS = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];

/** A byte count in binary units: 512 B, 1.5 KiB, 20 MiB. */
export function formatSize(bytes) {
  if (bytes == null) return "";
  if (bytes < 1024) return `${bytes} B`;
  let value = bytes / 1024, unit = 0;
  while (value >= 1024 && unit < UNITS.length - 1) { value /= 1024; unit += 1; }
  return `${value < 10 ? value.toFixed(1) : Math.round(value)} ${UNITS[unit]}`;
}

const DATE = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "short" });

/** An ISO timestamp in the reader's locale and time zone. */
export function formatDate(iso) {
  if (!iso) return "";
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? iso : DATE.format(date);
}

/** A whole number with the locale's digit grouping (2,500). */
export function formatCount(n) { return n.toLocaleString(); }

/** A duration in seconds as "45 s", "20 min", "8 h", "7 days". */
export function formatDuration(seconds) {
  if (seconds < 60) return `${seconds} s`;
  const minutes = Math.round(seconds / 60);
  if (minutes < 59) return `${minutes} min`;
  const hours = Math.round(seconds / 3600);
  if (hours < 48) return `${hours} h`;
  return `${Math.round(seconds / 86400)} days`;
}

/** The last segment of a key or folder prefix ("a/b/c.txt" → "c.txt", "a/b/" → "b/"). */
export function baseName(key) {
  const trimmed = key.endsWith("/") ? key.slice(0, -1) : key;
  const name = trimmed.slice(trimmed.lastIndexOf("/") + 1);
  return key.endsWith("/") ? name + "/" : name;
}

/** The folder a key is in ("a/b/c.txt" → "a/b/", "c.txt" → ""). */
export function parentOf(key) {
  const trimmed = key.endsWith("/") ? key.slice(0, -1) : key;
  return trimmed.slice(0, trimmed.lastIndexOf("/") + 1);
}
