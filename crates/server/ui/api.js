// The dashboard's calls to the REST API under /api/v1, made with the session cookie. Requests
// that change something carry the X-Drover-CSRF header the server requires of cookie sessions.

/** An error answer from the API: its HTTP status, error code and message. */
export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

/** Called when the session has ended (401): the app shows the login page. */
let onUnauthorized = () => {};
export function setUnauthorizedHandler(handler) {
  onUnauthorized = handler;
}

async function request(method, path, body) {
  const headers = { Accept: "application/json" };
  if (method !== "GET") headers["X-Drover-CSRF"] = "1";
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      credentials: "same-origin",
    });
  } catch (e) {
    throw new ApiError(0, "network", `cannot reach the server (${e.message})`);
  }
  if (response.status === 204) return null;
  const text = await response.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  if (!response.ok) {
    const error = data && data.error ? data.error : {};
    const message = error.message || data?.message || `${response.status} ${response.statusText}`;
    const err = new ApiError(response.status, error.code || "error", message);
    err.details = error;
    if (response.status === 401 && !path.startsWith("/ui/login")) onUnauthorized(err);
    throw err;
  }
  return data;
}

/** GET `/api/v1` + `path`, with query parameters (empty ones left out). */
export function get(path, params = {}) {
  const query = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) {
    if (value !== undefined && value !== null && value !== "") query.set(key, value);
  }
  const qs = query.toString();
  return request("GET", `/api/v1${path}${qs ? `?${qs}` : ""}`);
}

/** POST to `/api/v1` + `path`. */
export function post(path, body) {
  return request("POST", `/api/v1${path}`, body);
}

/** Trades an operator token for a session cookie; resolves to whoami. */
export function login(token) {
  return request("POST", "/ui/login", { token });
}

/** Ends the session. */
export function logout() {
  return request("POST", "/ui/logout");
}

/** Who the session belongs to, or null when there is no session. */
export async function whoami() {
  try {
    return await request("GET", "/api/v1/whoami");
  } catch (e) {
    if (e.status === 401) return null;
    throw e;
  }
}
