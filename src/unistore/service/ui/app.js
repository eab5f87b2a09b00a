// The web UI's entry point: sign-in, then the folder browser.
import { adoptTokenFromLocation, clearToken, getToken, json, setToken, ApiError } from "./api.js";
import { mountUploads } from "./upload.js";

const $ = (id) => document.getElementById(id);

async function start() {
  adoptTokenFromLocation();
  let me;
  try {
    me = await json("/v1/whoami");
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) return showSignIn(getToken() ? "That token is not valid or has expired." : "");
    $("status").textContent = err.message;
    $("app").hidden = false;
    return;
  }
  showApp(me);
}

function showSignIn(message) {
  clearToken();
  $("app").hidden = true;
  $("sign-out").hidden = true;
  $("sign-in").hidden = false;
  $("sign-in-error").textContent = message;
  $("token-input").focus();
}

function showApp(me) {
  $("sign-in").hidden = true;
  $("app").hidden = false;
  $("sign-out").hidden = !me.auth;
  $("who").textContent = me.auth ? `${me.subject} · ${me.actions.join(", ")}` : "auth off";
  mountUploads($("uploads"), { me });
}

$("sign-in-form").addEventListener("submit", (event) => {
  event.preventDefault();
  setToken($("token-input").value.trim());
  $("token-input").value = "";
  start();
});
$("sign-out").addEventListener("click", () => showSignIn(""));
start();
