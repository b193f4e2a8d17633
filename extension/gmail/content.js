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
        resolve({ allow: false, message: "SendGuard's extension was updated or stopped: reload Gmail, then press Send again." });
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
        finish({ allow: false, message: "SendGuard's extension stopped before deciding; the message was not sent." });
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
      return "Convert to BCC cannot be applied in Gmail by SendGuard: move the recipients to Bcc yourself, then press Send again.";
    }
    var removed = (decision.removed_recipients || []).map(lower);
    removed.forEach(function (a) { dom.removeRecipient(root, a); });
    (decision.removed_attachments || []).forEach(function (id) { dom.removeAttachment(root, String(id)); });
    var now = dom.read(root);
    if (!now) return "SendGuard could not read the compose window after applying your decision; the message was not sent.";
    var keep = function (r) { return removed.indexOf(lower(r.address)) < 0; };
    var fields = ["to", "cc", "bcc"];
    for (var i = 0; i < fields.length; i++) {
      var f = fields[i];
      if (addresses(now[f]).join() !== addresses(original[f].filter(keep)).join()) {
        return "SendGuard could not remove every recipient you removed (" + f + "); the message was not sent. Check the recipients and press Send again.";
      }
    }
    var goneIds = (decision.removed_attachments || []).map(String);
    var wantedAtt = original.attachments.filter(function (a) { return goneIds.indexOf(a.id) < 0; })
      .map(function (a) { return a.name; }).sort().join("\n");
    if (now.attachments.map(function (a) { return a.name; }).sort().join("\n") !== wantedAtt) {
      return "SendGuard could not remove every attachment you removed; the message was not sent.";
    }
    if (now.subject !== original.subject || now.body !== original.body) {
      return "The message changed while you were deciding; press Send again to check it as it is now.";
    }
    return null;
  }

  function guard(event, root, button) {
    stop(event);
    if (busy.has(root)) return; // one check per compose window at a time
    var data = dom.read(root);
    if (!data) {
      dom.showBanner(root, "could not read this compose window (Gmail's page changed?); the message was not sent. " +
        "Ask your administrator to update SendGuard for Gmail.", "error");
      return;
    }
    busy.add(root);
    dom.showBanner(root, "checking this message… confirm it in the SendGuard window.", "info");
    check({ root: root, data: data }).then(function (answer) {
      busy.delete(root);
      if (!answer.allow) {
        dom.showBanner(root, answer.message || "the message was not sent.", "error");
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
      dom.showBanner(root, "an error stopped the check; the message was not sent.", "error");
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
      dom.showBanner(root, "could not find Gmail's Send button; the message was not sent.", "error");
      return;
    }
    guard(event, root, button);
  }

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
