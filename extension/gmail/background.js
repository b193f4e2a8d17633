/*
 * SendGuard for Gmail, service worker: talks to the SendGuard helper on the user's computer exactly as
 * the Outlook add-in does (addin/static/launchevent.js): an origin-bound token from
 * POST /api/v1/addin/session (the helper accepts this extension's origin only when the admin listed it
 * in config.toml [api] extension_origins), POST /api/v1/checks with the compose window's content, then
 * long-polls GET /api/v1/outbox/{id}?wait=N until the user decided in the SendGuard window.
 *
 * The answer to the content script is {allow: true, decision} or {allow: false, message}. Fail closed:
 * helper unreachable, refused, no decision in time -> not sent, with the reason.
 */
"use strict";

var DEFAULTS = { helperUrl: "https://localhost:8765", decisionMinutes: 10 };
var POLL_SECONDS = 25;
var REQUEST_SLACK_MS = 15000;
var MAX_POLL_FAILURES = 3;

function settings() {
  var managed = chrome.storage.managed ? chrome.storage.managed.get(null).catch(function () { return {}; })
    : Promise.resolve({});
  return Promise.all([managed, chrome.storage.local.get(null)]).then(function (found) {
    var out = Object.assign({}, DEFAULTS, found[1] || {}, found[0] || {}); // the admin's policy wins
    out.helperUrl = String(out.helperUrl).replace(/\/+$/, "");
    return out;
  });
}

function Stop(message, kind) {
  this.message = message;
  this.kind = kind;
}

function request(base, method, path, body, token, timeoutMs) {
  var controller = new AbortController();
  var timer = setTimeout(function () { controller.abort(); }, timeoutMs);
  var headers = { Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (token) headers.Authorization = "Bearer " + token;
  return fetch(base + path, {
    method: method, headers: headers, body: body === undefined ? undefined : JSON.stringify(body),
    credentials: "omit", cache: "no-store", signal: controller.signal
  }).then(function (response) {
    return response.text().then(function (raw) {
      clearTimeout(timer);
      var data = null;
      try { data = raw ? JSON.parse(raw) : null; } catch (e) { data = null; }
      return { status: response.status, data: data };
    });
  }, function () {
    clearTimeout(timer);
    throw new Stop("SendGuard is not running or cannot be reached at " + base +
      ": start SendGuard, then press Send again. The message was not sent.", "down");
  });
}

function errorText(r) {
  var err = r.data && r.data.error;
  return err && err.message ? String(err.message) : "HTTP " + r.status;
}

function Helper(base, deadline) {
  this.base = base;
  this.deadline = deadline;
  this.token = null;
}

Helper.prototype.openSession = function () {
  var self = this;
  return request(self.base, "POST", "/api/v1/addin/session", {}, null, 15000).then(function (r) {
    if (r.status !== 200 || !r.data || !r.data.token) {
      throw new Stop("SendGuard refused this browser extension (" + errorText(r) + "). Ask your administrator " +
        "to allow it in SendGuard's config.toml ([api] extension_origins). The message was not sent.", "refused");
    }
    self.token = r.data.token;
  });
};

Helper.prototype.call = function (method, path, body, timeoutMs) {
  var self = this;
  var go = function () { return request(self.base, method, path, body, self.token, timeoutMs); };
  return (self.token ? Promise.resolve() : self.openSession()).then(go).then(function (r) {
    if (r.status !== 401) return r;
    return self.openSession().then(go);
  });
};

Helper.prototype.waitForChange = function (id) {
  var self = this;
  var failures = 0;
  function attempt() {
    var remaining = self.deadline - Date.now();
    if (remaining <= 0) return Promise.reject(new Stop("no decision in the SendGuard window in time; the message was not sent.", "timeout"));
    var wait = Math.max(0, Math.min(POLL_SECONDS, Math.floor(remaining / 1000) - 1));
    var path = "/api/v1/outbox/" + encodeURIComponent(id) + "?wait=" + wait;
    return self.call("GET", path, undefined, wait * 1000 + REQUEST_SLACK_MS).then(function (r) {
      if (r.status === 200 && r.data && r.data.state) return r.data;
      throw new Stop("SendGuard answered " + errorText(r) + "; the message was not sent.", "refused");
    }).catch(function (err) {
      if (!(err instanceof Stop) || err.kind !== "down") throw err;
      failures += 1;
      if (failures >= MAX_POLL_FAILURES) throw err;
      return new Promise(function (resolve) { setTimeout(resolve, 1000); }).then(attempt);
    });
  }
  return attempt();
};

Helper.prototype.cancel = function (id) {
  return this.call("POST", "/api/v1/outbox/" + encodeURIComponent(id) + "/cancel", {}, 10000)
    .catch(function () { return null; });
};

// What to tell the content script for an item in this state, or null to keep waiting.
function outcome(item) {
  var said = item.user_message ? String(item.user_message) : "";
  switch (item.state) {
    case "sent":
      return { allow: true, decision: item.decision || {} };
    case "cancelled":
      return { allow: false, message: said || "cancelled in SendGuard: the message was not sent." };
    case "rejected":
    case "expired":
      return { allow: false, message: said || "the message was not approved; it was not sent." };
    case "awaiting_approval":
      // The page cannot hand over attachment content, so SendGuard cannot send this copy after approval.
      return { allow: false, cancel: true, message: "this message needs approval (" + (item.approvers || []).join(", ") +
        "). Use \"Check and send with SendGuard\" from the add-on, which hands Gmail's full draft to SendGuard; " +
        "the message was not sent." };
    case "failed":
    case "needs_attention":
      return { allow: false, message: said || "SendGuard could not decide; the message was not sent." };
    default:
      return null;
  }
}

function lower(s) { return String(s || "").trim().toLowerCase(); }

function recipient(r) { return { address: lower(r.address), name: String(r.name || "") }; }

function run(draft, progress) {
  return settings().then(function (cfg) {
    var helper = new Helper(cfg.helperUrl, Date.now() + cfg.decisionMinutes * 60000);
    var body = {
      source: "gmail_web",
      from: draft.from ? { address: lower(draft.from) } : undefined,
      to: draft.to.map(recipient), cc: draft.cc.map(recipient), bcc: draft.bcc.map(recipient),
      subject: draft.subject, body: draft.body,
      attachments: draft.attachments.map(function (a) {
        return { id: a.id, name: a.name, size: a.size, isInline: false };
      })
    };
    return helper.call("POST", "/api/v1/checks", body, 30000).then(function (r) {
      if ((r.status !== 200 && r.status !== 201) || !r.data || !r.data.id) {
        throw new Stop("SendGuard could not check this message (" + errorText(r) + "); it was not sent.", "refused");
      }
      var item = r.data;
      function step(current) {
        var result = outcome(current);
        if (result) {
          if (result.cancel) return helper.cancel(current.id).then(function () { return result; });
          return result;
        }
        progress("waiting for your decision in the SendGuard window…");
        return helper.waitForChange(current.id).then(step);
      }
      return step(item).catch(function (err) {
        if (err instanceof Stop && err.kind === "timeout") return helper.cancel(item.id).then(function () { throw err; });
        throw err;
      });
    });
  }).catch(function (err) {
    return { allow: false, message: err instanceof Stop ? err.message : "an error stopped the check (" + err + "); the message was not sent." };
  });
}

chrome.runtime.onConnect.addListener(function (port) {
  if (port.name !== "sendguard-check") return;
  port.onMessage.addListener(function (msg) {
    if (!msg || msg.type !== "check") return; // pings only keep this worker awake
    run(msg.draft, function (text) {
      try { port.postMessage({ type: "waiting", message: text }); } catch (e) { /* tab closed */ }
    }).then(function (answer) {
      try { port.postMessage(Object.assign({ type: "decision" }, answer)); } catch (e) { /* tab closed */ }
    });
  });
});
