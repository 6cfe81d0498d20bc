// The review console's only script: keyboard shortcuts, live updates, ticking ages.
// It never builds HTML from strings: refreshed parts of a page come from the server's own (escaped) page,
// parsed by DOMParser (scripts in it never run) and swapped in by id.
"use strict";

(function () {
  const body = document.body;
  const page = body.dataset.page;
  // The server's clock minus ours, so ages agree with the server whatever this machine's clock says.
  const skew = Number(body.dataset.now || Date.now()) - Date.now();

  function ageText(seconds) {
    const whole = Math.max(0, Math.floor(seconds));
    const pad = (n) => String(n).padStart(2, "0");
    if (whole < 60) return whole + "s";
    const minutes = Math.floor(whole / 60);
    if (minutes < 60) return minutes + "m " + pad(whole % 60) + "s";
    const hours = Math.floor(minutes / 60);
    if (hours < 24) return hours + "h " + pad(minutes % 60) + "m";
    return Math.floor(hours / 24) + "d " + pad(hours % 24) + "h";
  }

  function tick() {
    const now = Date.now() + skew;
    for (const el of document.querySelectorAll("time[data-since]")) {
      const since = Number(el.dataset.since);
      if (since) el.textContent = ageText((now - since) / 1000);
    }
  }
  setInterval(tick, 1000);

  // ---------------------------------------------------------------- queue selection
  let selectedKey = null;

  function rows() {
    return Array.from(document.querySelectorAll("#queue-items tr[data-href]"));
  }

  function showSelection(scroll) {
    for (const row of rows()) {
      const on = row.dataset.key === selectedKey;
      row.classList.toggle("selected", on);
      row.setAttribute("aria-selected", on ? "true" : "false");
      if (on && scroll) row.scrollIntoView({ block: "nearest" });
    }
  }

  function move(step) {
    const all = rows();
    if (!all.length) return true;
    let index = all.findIndex((row) => row.dataset.key === selectedKey);
    index = index < 0 ? (step > 0 ? 0 : all.length - 1) : Math.min(all.length - 1, Math.max(0, index + step));
    selectedKey = all[index].dataset.key;
    showSelection(true);
    return true;
  }

  function openSelected() {
    const row = rows().find((r) => r.dataset.key === selectedKey);
    if (!row) return false;
    location.assign(row.dataset.href);
    return true;
  }

  if (page === "queue") {
    document.addEventListener("click", (event) => {
      const row = event.target.closest && event.target.closest("#queue-items tr[data-href]");
      if (row && !event.target.closest("a")) location.assign(row.dataset.href);
    });
  }

  // ---------------------------------------------------------------- keyboard
  function typing(target) {
    return target && (target.isContentEditable || ["INPUT", "TEXTAREA", "SELECT"].includes(target.tagName));
  }

  function follow(rel) {
    const link = document.querySelector('a[rel="' + rel + '"]');
    if (!link) return false;
    location.assign(link.href);
    return true;
  }

  function press(shortcut) {
    const button = document.querySelector('button[data-shortcut="' + shortcut + '"]');
    if (!button || button.disabled) return false;
    button.click();
    return true;
  }

  function chooseReason(digit) {
    const select = document.getElementById("decision-reason");
    if (!select || digit >= select.options.length) return false;
    select.selectedIndex = digit;
    return true;
  }

  function focus(selector) {
    const el = document.querySelector(selector);
    if (!el) return false;
    el.focus();
    return true;
  }

  function itemKey(key) {
    switch (key) {
      case "j": case "n": return follow("next");
      case "k": case "p": return follow("prev");
      case "q": return follow("up");
      case "a": case "r": case "e": case "u": return press(key);
      case "c": return focus("#decision-note");
      default: return /^[1-9]$/.test(key) ? chooseReason(Number(key)) : false;
    }
  }

  function queueKey(key) {
    switch (key) {
      case "j": case "n": return move(1);
      case "k": case "p": return move(-1);
      case "Enter": case "o": return openSelected();
      case "/": return focus("#filter-form select, #filter-form input");
      default: return false;
    }
  }

  const help = document.getElementById("help");

  document.addEventListener("keydown", (event) => {
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    if (event.key === "Escape") {
      if (help && !help.hidden) help.hidden = true;
      else if (typing(event.target)) event.target.blur();
      return;
    }
    if (typing(event.target)) return;
    if (event.key === "?" && help) {
      help.hidden = !help.hidden;
      event.preventDefault();
      return;
    }
    if (help && !help.hidden) return;
    const handled = page === "queue" ? queueKey(event.key) : page === "item" ? itemKey(event.key) : false;
    if (handled) event.preventDefault();
  });

  // ---------------------------------------------------------------- live updates
  let pending = null;

  async function refresh() {
    pending = null;
    try {
      const response = await fetch(location.href, {
        headers: { "X-Live-Refresh": "1" },
        credentials: "same-origin",
        cache: "no-store",
        redirect: "manual",
      });
      if (!response.ok) return;
      const fresh = new DOMParser().parseFromString(await response.text(), "text/html");
      for (const el of document.querySelectorAll("[data-live][id]")) {
        const replacement = fresh.getElementById(el.id);
        if (replacement) el.replaceWith(document.importNode(replacement, true));
      }
      showSelection(false);
      tick();
      body.dataset.refreshed = String(Number(body.dataset.refreshed || 0) + 1);
    } catch (error) {
      // the next change tries again
    }
  }

  const eventsUrl = body.dataset.liveEvents;
  if (eventsUrl && window.EventSource) {
    const source = new EventSource(eventsUrl);
    source.addEventListener("change", () => {
      if (pending === null) pending = setTimeout(refresh, 200);
    });
    window.addEventListener("pagehide", () => source.close());
  }
})();
