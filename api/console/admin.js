// The desk console's Administration page (see console.js for Desk): users and roles. Every
// change is confirmed with a reason; the API checks the caller and writes the audit entry.
"use strict";

(() => {
const { CONTEXT, api, el, table, when } = Desk;

function roles() {
  return [...document.querySelectorAll("#new-role option")].map((o) => o.value);
}

async function loadUsers() {
  const page = await api("/users?limit=500");
  const note = page.total > page.items.length
    ? [el("p", { class: "muted small" }, `The first ${page.items.length} of ${page.total} ` +
                                          "users, by username.")] : [];
  document.getElementById("users-table").replaceChildren(table([
    ["Username", (u) => u.username], ["Role", (u) => u.role],
    ["Status", (u) => el("span", { class: u.disabled ? "status rejected" : "" },
                         u.disabled ? "disabled" : "active"), false, (u) => u.disabled],
    ["Created", (u) => when(u.created_at), false, (u) => u.created_at],
    ["Created by", (u) => u.created_by],
    ["Change", changeControls, false, (u) => u.username],
  ], page.items, "No users."), ...note);
}

// A role picker and Disable / Enable for another user (the API refuses one's own changes).
function changeControls(user) {
  if (user.username === CONTEXT.user) return el("span", { class: "muted" }, "you");
  const picker = el("select", { "aria-label": `New role of ${user.username}`,
                                "data-role-of": user.username },
                    ...roles().map((r) => el("option", { value: r }, r)));
  picker.value = user.role;
  const change = el("button", { type: "button", "data-change-role": user.username },
                    "Change role…");
  change.addEventListener("click", () => {
    if (picker.value === user.role) {
      Desk.showError("Change role", new Error(`${user.username} is already ${user.role}: ` +
                                              "pick another role first"));
      return;
    }
    confirmChange({
      title: `Change the role of ${user.username} to ${picker.value}?`,
      effect: `From ${user.role} to ${picker.value}: what they may do changes with their ` +
              "next call (see the roles table below).",
      confirm: "Change role",
      run: (reason) => api(`/users/${encodeURIComponent(user.username)}`, {
        method: "PATCH", body: { role: picker.value, reason } }),
    });
  });
  const disable = !user.disabled;
  const toggle = el("button", { type: "button", "data-toggle-user": user.username },
                    disable ? "Disable…" : "Enable…");
  toggle.addEventListener("click", () => confirmChange({
    title: `${disable ? "Disable" : "Enable"} ${user.username}?`,
    effect: disable ? "They are signed out and can no longer sign in or call the API."
                    : "They can sign in again with their password.",
    confirm: disable ? "Disable user" : "Enable user", danger: disable,
    run: (reason) => api(`/users/${encodeURIComponent(user.username)}`, {
      method: "PATCH", body: { disabled: disable, reason } }),
  }));
  return el("span", { class: "row-controls" }, picker, change, toggle);
}

// ------------------------------------------------------------------ confirmation

let pending = null;

function confirmChange(change) {
  pending = change;
  document.getElementById("user-dialog-title").textContent = change.title;
  document.getElementById("user-dialog-effect").textContent = change.effect;
  const button = document.getElementById("user-confirm");
  button.textContent = change.confirm;
  button.className = change.danger ? "danger" : "primary";
  document.getElementById("user-reason").value = "";
  document.getElementById("user-error").hidden = true;
  document.getElementById("user-dialog").showModal();
}

async function confirmed(event) {
  event.preventDefault();
  if (!await Desk.callWithReason("user-reason", "user-error", pending.run)) return;
  document.getElementById("user-dialog").close();
  if (pending.done) pending.done();
  await loadUsers();
}

function createUser(event) {
  event.preventDefault();
  const username = document.getElementById("new-username").value.trim();
  const role = document.getElementById("new-role").value;
  const password = document.getElementById("new-password").value;
  confirmChange({
    title: `Create the user ${username || "(no username)"} with the role ${role}?`,
    effect: `They sign in with the initial password you typed and may do what the role ` +
            `${role} may (see the roles table below).`,
    confirm: "Create user",
    run: (reason) => api("/users", { method: "POST",
                                     body: { username, role, password, reason } }),
    done: () => document.getElementById("create-user").reset(),
  });
}

function wire() {
  document.getElementById("create-user").addEventListener("submit", createUser);
  document.getElementById("user-form").addEventListener("submit", confirmed);
  document.getElementById("user-cancel").addEventListener(
    "click", () => document.getElementById("user-dialog").close());
}

document.addEventListener("DOMContentLoaded", wire);
Desk.page({ loads: [loadUsers] });
})();
