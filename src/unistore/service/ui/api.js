// The service's public HTTP API, with the signed-in token sent as a header (never a cookie).
const TOKEN_KEY = "unistore.token";

export class ApiError extends Error {
  constructor(status, type, message) {
    super(message);
    this.status = status;
    this.type = type;
  }
}

/** Take a token from the page's #token= fragment (a login link) into sessionStorage, then drop it from the URL. */
export function adoptTokenFromLocation() {
  const params = new URLSearchParams(location.hash.slice(1));
  const token = params.get("token");
  if (token) {
    sessionStorage.setItem(TOKEN_KEY, token);
    params.delete("token");
    const rest = params.toString();
    history.replaceState(null, "", location.pathname + location.search + (rest ? "#" + rest : ""));
  }
}

export function getToken() { return sessionStorage.getItem(TOKEN_KEY); }
export function setToken(token) { sessionStorage.setItem(TOKEN_KEY, token); }
export function clearToken() { sessionStorage.removeItem(TOKEN_KEY); }

/** fetch() against the service with the token; a non-2xx answer raises ApiError with the service's message. */
export async function request(path, init = {}) {
  const headers = new Headers(init.headers || {});
  const token = getToken();
  if (token) headers.set("Authorization", "Bearer " + token);
  let response;
  try {
    response = await fetch(path, { ...init, headers, credentials: "omit" });
  } catch (err) {
    if (err && err.name === "AbortError") throw err;
    throw new ApiError(0, "NetworkError", navigator.onLine ? "The service cannot be reached." : "You are offline.");
  }
  if (!response.ok && response.status !== 304) {
    let type = "HTTPError", message = response.statusText || "request failed";
    try {
      const body = await response.json();
      if (body && body.error) { type = body.error.type; message = body.error.message; }
    } catch (_) { /* not JSON */ }
    throw new ApiError(response.status, type, message);
  }
  return response;
}

export async function json(path, init = {}) {
  return (await request(path, init)).json();
}

/** The path of one object's route, each segment percent-encoded. */
export function objectPath(key) {
  return "/v1/objects/" + key.split("/").map(encodeURIComponent).join("/");
}

/** What the signed-in token may do: `{auth, subject, actions, prefix, expires, expires_in, ...}`. */
export function whoami() { return json("/v1/whoami"); }

/** One page of a folder: `{objects, prefixes, next_cursor}` (one level, `/` as the delimiter). */
export function listPage(prefix, { cursor = null, limit = 1000, delimiter = "/", signal } = {}) {
  const query = new URLSearchParams({ prefix, limit: String(limit) });
  if (delimiter) query.set("delimiter", delimiter);
  if (cursor) query.set("cursor", cursor);
  return json("/v1/objects?" + query, { signal });
}

/** Every key under `prefix` at any depth (for deleting a folder). */
export async function allKeys(prefix) {
  const keys = [];
  let cursor = null;
  do {
    const page = await listPage(prefix, { cursor, delimiter: null });
    for (const object of page.objects) keys.push(object.key);
    cursor = page.next_cursor;
  } while (cursor);
  return keys;
}

/** Delete one object; with `etag`, only if it is still that version (412 otherwise). */
export function remove(key, etag = null) {
  const headers = etag ? { "If-Match": `"${etag}"` } : {};
  return json(objectPath(key), { method: "DELETE", headers });
}

/** Copy (or, with `deleteSource`, move) an object; conditional on the source's `etag` when given. */
export function copy(source, dest, { etag = null, mode = "create", deleteSource = false } = {}) {
  const body = { source, dest, mode, delete_source: deleteSource };
  if (etag) body.if_match = etag;
  return json("/v1/copy", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
}

/** Make a folder: the zero-byte marker object `PREFIX.keep`. */
export function createFolder(prefix) {
  return json(objectPath(prefix + ".keep"), {
    method: "PUT", headers: { "Content-Type": "application/octet-stream" }, body: new Uint8Array(0),
  });
}

/** A signed URL to the object (no token needed to open it): `{url, expires_in}`. */
export function signedUrl(key, { expiresIn = 3600, download = false } = {}) {
  const query = new URLSearchParams({ expires_in: String(expiresIn), download: String(download) });
  return json("/v1/urls/" + key.split("/").map(encodeURIComponent).join("/") + "?" + query);
}

/** The first `bytes` bytes of an object (a Range request) and whether that is all of it. */
export async function readStart(key, bytes, { signal } = {}) {
  const response = await request(objectPath(key), { headers: { Range: `bytes=0-${bytes - 1}` }, signal });
  const buffer = await response.arrayBuffer();
  return buffer.byteLength > bytes ? buffer.slice(0, bytes) : buffer;
}

/** The whole object as a Blob. */
export async function readBlob(key, { signal } = {}) {
  return (await request(objectPath(key), { signal })).blob();
}
