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
