/*
 * SendGuard for Gmail, content script: stops Gmail's Send (button or Ctrl/Cmd+Enter), hands the
 * compose window's content to the extension's service worker (which talks to the SendGuard helper on
 * loopback), and either lets Gmail send after applying what the user removed in the SendGuard window,
 * or leaves the message unsent with the reason shown in the compose window.
 *
 *   intercept (capture phase, before Gmail) -> read compose DOM -> check (service worker) ->
 *   apply removals -> verify -> click Send for real | show why not
 *
 * Fail closed: anything unexpected (unreadable compose window, helper unreachable, an error) leaves
 * the message unsent and says so.
 */
(function () {
  "use strict";

  var dom = window.SendGuardGmail;
  var passing = false; // true only while we press Send ourselves after an approval
  var busy = new WeakSet(); // compose windows with a check in flight

  // A message in the browser's language (extension/gmail/_locales), with one detail filled in.
  function t(key, detail) {
    return chrome.i18n.getMessage(key, detail === undefined ? undefined : [String(detail)]) || key;
  }

  function lower(s) { return String(s || "").trim().toLowerCase(); }

  function addresses(list) { return list.map(function (r) { return lower(r.address); }).sort(); }

  function stop(event) {
    event.preventDefault();
    event.stopImmediatePropagation();
  }

  // Ask the service worker over a port (its messages keep the worker alive during a long wait).
  function check(draft) {
    return new Promise(function (resolve) {
      var port;
      try {
        port = chrome.runtime.connect({ name: "sendguard-check" });
      } catch (e) {
        resolve({ allow: false, message: t("extensionReloaded") });
        return;
      }
      var done = false;
      var keepAlive = setInterval(function () {
        try { port.postMessage({ type: "ping" }); } catch (e) { /* the port closed: handled below */ }
      }, 15000);
      function finish(answer) {
        if (done) return;
        done = true;
        clearInterval(keepAlive);
        try { port.disconnect(); } catch (e) { /* already closed */ }
        resolve(answer);
      }
      port.onMessage.addListener(function (msg) {
        if (msg && msg.type === "decision") finish(msg);
        else if (msg && msg.type === "waiting") dom.showBanner(draft.root, msg.message, "info");
      });
      port.onDisconnect.addListener(function () {
        finish({ allow: false, message: t("extensionStopped") });
      });
      var message = {
        from: draft.data.from, to: draft.data.to, cc: draft.data.cc, bcc: draft.data.bcc,
        subject: draft.data.subject, body: draft.data.body, attachments: draft.data.attachments
      };
      port.postMessage({ type: "check", draft: message });
    });
  }

  // Make the compose window match the decision; true when it does.
  function apply(root, original, decision) {
    if (decision.bcc) {
      return t("bccUnsupported");
    }
    var removed = (decision.removed_recipients || []).map(lower);
    removed.forEach(function (a) { dom.removeRecipient(root, a); });
    (decision.removed_attachments || []).forEach(function (id) { dom.removeAttachment(root, String(id)); });
    var now = dom.read(root);
    if (!now) return t("unreadableAfter");
    var keep = function (r) { return removed.indexOf(lower(r.address)) < 0; };
    var fields = ["to", "cc", "bcc"];
    for (var i = 0; i < fields.length; i++) {
      var f = fields[i];
      if (addresses(now[f]).join() !== addresses(original[f].filter(keep)).join()) {
        return t("recipientsNotRemoved", f);
      }
    }
    var goneIds = (decision.removed_attachments || []).map(String);
    var wantedAtt = original.attachments.filter(function (a) { return goneIds.indexOf(a.id) < 0; })
      .map(function (a) { return a.name; }).sort().join("\n");
    if (now.attachments.map(function (a) { return a.name; }).sort().join("\n") !== wantedAtt) {
      return t("attachmentsNotRemoved");
    }
    if (now.subject !== original.subject || now.body !== original.body) {
      return t("changedWhileDeciding");
    }
    return null;
  }

  function guard(event, root, button) {
    stop(event);
    if (busy.has(root)) return; // one check per compose window at a time
    var data = dom.read(root);
    if (!data) {
      dom.showBanner(root, t("unreadable"), "error");
      return;
    }
    busy.add(root);
    dom.showBanner(root, t("checking"), "info");
    check({ root: root, data: data }).then(function (answer) {
      busy.delete(root);
      if (!answer.allow) {
        dom.showBanner(root, answer.message || t("checkError"), "error");
        return;
      }
      var problem = apply(root, data, answer.decision || {});
      if (problem) {
        dom.showBanner(root, problem, "error");
        return;
      }
      dom.clearBanner(root);
      var send = root.isConnected && (button.isConnected ? button : dom.sendButtonIn(root));
      if (!send) return;
      passing = true;
      try {
        dom.clickLikeAUser(send);
      } finally {
        passing = false;
      }
    }, function () {
      busy.delete(root);
      dom.showBanner(root, t("checkError"), "error");
    });
  }

  // Gmail acts on mousedown/mouseup/click of its Send button: stop all three before Gmail sees them.
  function onPointer(event) {
    if (passing) return;
    var button = dom.sendButtonOf(event.target);
    if (!button) return;
    if (event.type === "click") {
      guard(event, dom.composeRoot(button), button);
    } else {
      stop(event);
    }
  }

  function onKey(event) {
    if (passing) return;
    var sendKeys = event.key === "Enter" && (event.ctrlKey || event.metaKey);
    var onButton = (event.key === "Enter" || event.key === " ") && dom.sendButtonOf(event.target);
    if (!sendKeys && !onButton) return;
    var root = dom.composeRoot(event.target);
    if (!root) return;
    var button = dom.sendButtonIn(root);
    if (!button) {
      stop(event);
      dom.showBanner(root, t("noSendButton"), "error");
      return;
    }
    guard(event, root, button);
  }

  // A compose window whose Send button SendGuard does not recognise (Gmail changed its page) would send
  // unchecked: say so in that window, so nobody believes it is guarded.
  function watchUnguarded() {
    var subjects = document.querySelectorAll('input[name="subjectbox"]');
    Array.prototype.forEach.call(subjects, function (subject) {
      var holder = subject.closest("form") || subject.parentElement;
      if (!holder) return;
      var warned = holder.querySelector("[data-sendguard-unguarded]");
      if (dom.composeRoot(subject)) {
        if (warned) warned.remove();
        return;
      }
      if (warned) return;
      var note = document.createElement("div");
      note.setAttribute("data-sendguard-unguarded", "");
      note.setAttribute("role", "alert");
      note.style.cssText = "margin:4px 8px;padding:6px 10px;border-radius:4px;font:13px/1.4 sans-serif;" +
        "background:#fdecea;color:#611a15;border:1px solid #f5a9a2";
      note.textContent = "SendGuard: " + t("unguarded");
      holder.insertBefore(note, holder.firstChild);
    });
  }
  setInterval(watchUnguarded, 2000);

  ["mousedown", "mouseup", "click"].forEach(function (type) {
    window.addEventListener(type, onPointer, true);
  });
  window.addEventListener("keydown", onKey, true);
  // The key's other events must not reach Gmail either (it may send on keyup/keypress).
  ["keypress", "keyup"].forEach(function (type) {
    window.addEventListener(type, function (event) {
      if (passing) return;
      var sendKeys = event.key === "Enter" && (event.ctrlKey || event.metaKey) && dom.composeRoot(event.target);
      var onButton = (event.key === "Enter" || event.key === " ") && dom.sendButtonOf(event.target);
      if (sendKeys || onButton) stop(event);
    }, true);
  });
})();
