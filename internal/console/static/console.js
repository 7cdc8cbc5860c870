// meshtrust console: live updates over server-sent events. Each change
// is shown in the live strip and the page's content is fetched again and
// swapped in place, so tables follow the mesh without a reload. Text is
// only ever set as textContent: nothing from meshd becomes markup here.
"use strict";
(function () {
  if (document.body.dataset.live !== "on" || !window.EventSource) {
    return;
  }
  var state = document.getElementById("live-state");
  var strip = document.getElementById("live-events");
  var live = document.getElementById("live");
  var keep = 8;
  var pending = null;
  var refreshing = false;
  var again = false;

  function setState(text, down) {
    state.textContent = text;
    live.classList.toggle("down", !!down);
  }

  function show(ev) {
    var li = document.createElement("li");
    li.className = "event";
    li.dataset.kind = ev.kind || "";
    li.dataset.subject = ev.subject || "";
    var kind = document.createElement("span");
    kind.className = "kind";
    kind.textContent = ev.kind || "change";
    li.appendChild(kind);
    li.appendChild(document.createTextNode(" " + (ev.subject || "") + (ev.detail ? " (" + ev.detail + ")" : "")));
    if (ev.at) {
      li.title = ev.at;
    }
    strip.insertBefore(li, strip.firstChild);
    while (strip.children.length > keep) {
      strip.removeChild(strip.lastChild);
    }
  }

  // A form being filled in is not replaced under the operator's hands.
  function editing() {
    var a = document.activeElement;
    return a && (a.tagName === "INPUT" || a.tagName === "SELECT" || a.tagName === "TEXTAREA");
  }

  function refresh() {
    if (refreshing) {
      again = true;
      return;
    }
    if (document.getElementById("confirm") || document.getElementById("action-result")) {
      return;
    }
    if (editing()) {
      setTimeout(schedule, 2000); // once the operator leaves the field
      return;
    }
    refreshing = true;
    fetch(window.location.href, { credentials: "same-origin", headers: { "Accept": "text/html", "X-Console-Refresh": "1" } })
      .then(function (resp) {
        if (resp.status === 401) {
          setState("session ended: run meshctl console again", true);
          source.close();
          return null;
        }
        return resp.ok ? resp.text() : null;
      })
      .then(function (html) {
        if (!html) {
          return;
        }
        var doc = new DOMParser().parseFromString(html, "text/html");
        var next = doc.getElementById("content");
        var cur = document.getElementById("content");
        if (!next || !cur) {
          return;
        }
        var seen = {};
        cur.querySelectorAll("tr[data-agent-id], tr[data-serial]").forEach(function (tr) {
          seen[tr.dataset.agentId || tr.dataset.serial] = true;
        });
        next.querySelectorAll("tr[data-agent-id], tr[data-serial]").forEach(function (tr) {
          if (!seen[tr.dataset.agentId || tr.dataset.serial]) {
            tr.classList.add("fresh");
          }
        });
        cur.replaceWith(document.importNode(next, true));
      })
      .catch(function () {})
      .then(function () {
        refreshing = false;
        if (again) {
          again = false;
          schedule();
        }
      });
  }

  function schedule() {
    if (pending) {
      return;
    }
    pending = setTimeout(function () {
      pending = null;
      refresh();
    }, 400); // a burst of events (a node revoked) costs one fetch
  }

  var source = new EventSource("/console/events");
  var dropped = false;
  source.addEventListener("open", function () {
    setState("live");
    // Events may have been lost while the stream was down (meshd drops
    // a slow reader's stream): fetch the page once to catch up.
    if (dropped) {
      dropped = false;
      schedule();
    }
  });
  source.addEventListener("change", function (msg) {
    var ev;
    try {
      ev = JSON.parse(msg.data);
    } catch (e) {
      return;
    }
    show(ev);
    schedule();
  });
  source.addEventListener("expired", function () {
    setState("session ended: run meshctl console again", true);
    source.close();
  });
  source.addEventListener("error", function () {
    dropped = true;
    if (source.readyState === EventSource.CLOSED) {
      setState("live updates stopped: reload the page", true);
    } else {
      setState("live updates: reconnecting…", true);
    }
  });
})();
