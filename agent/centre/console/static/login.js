"use strict";
// The login page: posts the name and password as JSON (the cookie is HttpOnly, so the page
// never sees the session); then the console.
document.getElementById("lang-slot").append(languagePicker());
translatePage();
document.getElementById("login-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const error = document.getElementById("login-error");
  error.textContent = "";
  const response = await fetch("/api/login", {
    method: "POST", headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ user: document.getElementById("user").value,
                           password: document.getElementById("password").value })
  });
  if (response.ok) {
    location.href = "/";
  } else {
    error.textContent = (await response.json()).error || response.statusText;
  }
});
