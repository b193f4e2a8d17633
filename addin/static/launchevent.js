/*
 * SendGuard for Outlook: the Smart Alerts handlers (OnMessageSend, OnAppointmentSend).
 *
 * When the user presses Send, Outlook calls onMessageSendHandler (onAppointmentSendHandler for a
 * meeting invitation). It reads the item with Office.js, hands it to the SendGuard helper (same
 * origin as this file), waits while the user decides in the SendGuard desktop window, applies what
 * the user removed there and the recipients the policy adds, and completes the event. A Smart Alerts handler cannot open dialogs,
 * which is why the decision is made in the helper's own window.
 *
 *   gather (Office.js) -> submit (helper API) -> wait (long-poll) -> amend item -> completed()
 *
 * Fail closed: every error, timeout or unexpected answer completes with allowEvent: false and a
 * message saying the send was stopped and why.
 *
 * Written for the runtime with the fewest features: classic Outlook on Windows before Version 2403
 * loads this file in a JavaScript-only runtime that accepts ECMAScript 2016 at most, no imports and
 * no DOM, and Microsoft warns that the conditional operator (?:) can keep it from loading. So: no
 * async/await, no spread, no optional chaining, no `?:` (tests/js/es_level.js checks all of this).
 * Outlook allows at most three Office.js asynchronous calls in flight at once: every call goes
 * through one queue that keeps to that.
 */
(function (global) {
  "use strict";

  var settings = {
    apiBase: null, // taken from SENDGUARD_API_BASE (set by the helper), else this page's origin
    budgetMs: 270 * 1000, // Outlook ends the handler at 5 minutes; decide well before that
    pollWaitSeconds: 25, // the helper answers a long-poll at the latest after this
    requestSlackMs: 15 * 1000, // network allowance on top of the long-poll wait
    submitTimeoutMs: 60 * 1000,
    cancelTimeoutMs: 3 * 1000,
    maxPollFailures: 3, // consecutive failed polls before giving up on the helper
    retryDelayMs: 1000,
    maxAttachmentBytes: 10 * 1024 * 1024, // larger attachments are checked by name, size and type only
    maxContentBytes: 25 * 1024 * 1024, // all attachment contents of one message together
    maxMessageLength: 500, // Outlook's limit for errorMessage
    maxOfficeCalls: 3 // "Limits for activation and JavaScript API for Outlook add-ins"
  };

  // ---------------------------------------------------------------------------------------------
  // Messages shown in Outlook's Smart Alerts dialog (English and Japanese).

  var TEXT = {
    en: {
      helperDown: "SendGuard stopped this message: the SendGuard helper is not running on this computer. " +
        "Start SendGuard (from the Start menu or Applications, or run \"sendguard serve\"), then press Send again.",
      helperTimeout: "SendGuard stopped this message: the SendGuard helper did not answer in time. " +
        "Check that SendGuard is running, then press Send again.",
      noDecision: "SendGuard stopped this message: nothing was decided in the SendGuard window in time. " +
        "Press Send again to reopen it.",
      cancelled: "You cancelled this message in the SendGuard window. It was not sent.",
      held: "SendGuard is holding this message for approval by {approvers}. SendGuard sends it after approval; " +
        "you do not need to send it again.",
      heldNoNames: "SendGuard is holding this message for approval. SendGuard sends it after approval; " +
        "you do not need to send it again.",
      rejected: "The approver rejected this message. It was not sent.",
      expired: "The approval request for this message expired. It was not sent.",
      noRecipients: "SendGuard stopped this message: every recipient was removed in the SendGuard window.",
      amendFailed: "SendGuard stopped this message: the changes made in the SendGuard window could not be " +
        "applied to it ({detail}). Nothing was sent; press Send to try again.",
      notRemoved: "SendGuard stopped this message: {names} could not be removed from it ({why}). " +
        "Remove it from the message yourself (an inline picture: delete it from the body), then press Send again.",
      meetingBcc: "SendGuard stopped this invitation: a meeting has no Bcc, so its attendees cannot be hidden. " +
        "Remove the attendees who must not see each other, then press Send again.",
      notAdded: "SendGuard stopped this message: your organization's policy adds {names} ({field}), and Outlook " +
        "did not add them ({why}). Nothing was sent; add them yourself, or press Send to try again.",
      meetingAutoBcc: "SendGuard stopped this invitation: your organization's policy adds {names} as Bcc, and a " +
        "meeting has no Bcc. Nothing was sent; ask your administrator, or send it as a message.",
      signInFailed: "SendGuard stopped this message: Outlook could not sign you in to SendGuard ({detail}). " +
        "Nothing was sent; press Send again, and ask your administrator if this keeps happening.",
      refused: "SendGuard stopped this message: the helper refused it ({detail}).",
      failed: "SendGuard stopped this message because of an error: {detail}. Nothing was sent; " +
        "press Send to try again."
    },
    ja: {
      helperDown: "SendGuard が送信を止めました: このコンピューターで SendGuard ヘルパーが動いていません。" +
        "SendGuard を起動して (スタート メニュー、または \"sendguard serve\")、もう一度 [送信] を押してください。",
      helperTimeout: "SendGuard が送信を止めました: SendGuard ヘルパーが時間内に応答しませんでした。" +
        "SendGuard が動いていることを確かめて、もう一度 [送信] を押してください。",
      noDecision: "SendGuard が送信を止めました: SendGuard の画面で時間内に確認されませんでした。" +
        "もう一度 [送信] を押すと画面が開きます。",
      cancelled: "SendGuard の画面で送信を取り消しました。メッセージは送信されていません。",
      held: "このメッセージは {approvers} の承認待ちです。承認されると SendGuard が送信します。" +
        "もう一度送信する必要はありません。",
      heldNoNames: "このメッセージは承認待ちです。承認されると SendGuard が送信します。" +
        "もう一度送信する必要はありません。",
      rejected: "承認者がこのメッセージを却下しました。送信されていません。",
      expired: "このメッセージの承認依頼は期限切れになりました。送信されていません。",
      noRecipients: "SendGuard が送信を止めました: SendGuard の画面ですべての宛先が削除されました。",
      amendFailed: "SendGuard が送信を止めました: SendGuard の画面での変更をメッセージに反映できませんでした " +
        "({detail})。送信されていません。もう一度 [送信] を押してください。",
      notRemoved: "SendGuard が送信を止めました: {names} をメッセージから削除できませんでした ({why})。" +
        "ご自身で削除して (本文中の画像は本文から削除)、もう一度 [送信] を押してください。",
      meetingBcc: "SendGuard が送信を止めました: 会議出席依頼には BCC がないため、出席者を隠せません。" +
        "互いに見えてはいけない出席者を削除して、もう一度 [送信] を押してください。",
      notAdded: "SendGuard が送信を止めました: 組織のポリシーで {names} を {field} に追加しますが、Outlook が追加" +
        "しませんでした ({why})。送信されていません。ご自身で追加するか、もう一度 [送信] を押してください。",
      meetingAutoBcc: "SendGuard が送信を止めました: 組織のポリシーで {names} を BCC に追加しますが、会議出席依頼" +
        "には BCC がありません。送信されていません。管理者に相談するか、メッセージとして送信してください。",
      signInFailed: "SendGuard が送信を止めました: Outlook から SendGuard にサインインできませんでした ({detail})。" +
        "送信されていません。もう一度 [送信] を押し、続く場合は管理者に連絡してください。",
      refused: "SendGuard が送信を止めました: ヘルパーが受け付けませんでした ({detail})。",
      failed: "SendGuard がエラーのため送信を止めました: {detail}。送信されていません。" +
        "もう一度 [送信] を押してください。"
    }
  };

  function language() {
    try {
      var tag = String(global.Office.context.displayLanguage || "");
      if (tag.toLowerCase().indexOf("ja") === 0) return "ja";
    } catch (e) { /* no Office context: English */ }
    return "en";
  }

  function text(key, values) {
    var template = TEXT[language()][key] || TEXT.en[key];
    return template.replace(/\{(\w+)\}/g, function (_, name) {
      if (values && values[name] !== undefined) return String(values[name]);
      return "";
    });
  }

  function messageOf(err) {
    if (err && err.message) return String(err.message);
    return String(err);
  }

  // A failure that already knows what to tell the user.
  function StopSend(message, kind) {
    this.name = "StopSend";
    this.message = message;
    this.kind = kind || "stop";
  }
  StopSend.prototype = Object.create(Error.prototype);

  // ---------------------------------------------------------------------------------------------
  // Office.js: every call to the host API is in this section.

  // At most settings.maxOfficeCalls asynchronous Office.js calls in flight; the rest wait in order.
  var officeQueue = {
    running: 0,
    waiting: [],
    run: function (start) {
      var self = this;
      return new Promise(function (resolve, reject) {
        self.waiting.push({ start: start, resolve: resolve, reject: reject });
        self.next();
      });
    },
    next: function () {
      var self = this;
      while (self.running < settings.maxOfficeCalls && self.waiting.length) {
        var job = self.waiting.shift();
        self.running += 1;
        var done = function (job) {
          var over = false;
          return function (ok, value) {
            if (over) return; // a callback after a synchronous throw
            over = true;
            self.running -= 1;
            if (ok) job.resolve(value);
            else job.reject(value);
            self.next();
          };
        }(job);
        try {
          job.start(done);
        } catch (err) {
          done(false, err);
        }
      }
    }
  };

  // Calls target[method](...args, callback) through the queue and settles with the result's value.
  // `label` names the call in error messages (for example "body.getAsync").
  function officeCall(label, target, method, args) {
    if (!target || typeof target[method] !== "function") {
      return Promise.reject(new Error(label + " is not available in this Outlook"));
    }
    return officeQueue.run(function (done) {
      var settled = false;
      target[method].apply(target, (args || []).concat([function (result) {
        if (settled) return;
        settled = true;
        if (result && result.status === global.Office.AsyncResultStatus.Succeeded) {
          done(true, result.value);
          return;
        }
        var why = "no result";
        if (result && result.error && result.error.message) why = result.error.message;
        done(false, new Error(label + " failed: " + why));
      }]));
    });
  }

  // The item's recipient fields by role: a message has To/Cc/Bcc, a meeting required and optional
  // attendees (and no Bcc).
  var FIELDS = {
    message: { to: "to", cc: "cc", bcc: "bcc" },
    appointment: { to: "requiredAttendees", cc: "optionalAttendees", bcc: null }
  };

  function Mail(kind) {
    this.kind = kind;
    this.fields = FIELDS[kind];
  }

  Mail.prototype.item = function () {
    return global.Office.context.mailbox.item;
  };

  // role is "to", "cc" or "bcc"; a role the item does not have reads as empty.
  Mail.prototype.recipients = function (role) {
    var field = this.fields[role];
    if (!field) return Promise.resolve([]);
    return officeCall(field + ".getAsync", this.item()[field], "getAsync").then(function (list) {
      return (list || []).map(function (r) {
        var entry = { address: r.emailAddress || "", name: r.displayName || "" };
        // Outlook knows a distribution list from the address book: the helper then never takes it for
        // one person (it expands it, or says it cannot)
        if (r.recipientType === "distributionList") entry.list = true;
        return entry;
      });
    });
  };

  Mail.prototype.setRecipients = function (role, list) {
    var field = this.fields[role];
    var value = list.map(function (r) {
      return { emailAddress: r.address, displayName: r.name || r.address };
    });
    return officeCall(field + ".setAsync", this.item()[field], "setAsync", [value]);
  };

  // Adds to a field without touching who is already there (Recipients.addAsync).
  Mail.prototype.addRecipients = function (role, list) {
    var field = this.fields[role];
    var value = list.map(function (address) {
      return { emailAddress: address, displayName: address };
    });
    return officeCall(field + ".addAsync", this.item()[field], "addAsync", [value]);
  };

  Mail.prototype.from = function () {
    var item = this.item();
    var fromProfile = function () {
      var profile = global.Office.context.mailbox.userProfile || {};
      return { address: profile.emailAddress || "", name: profile.displayName || "" };
    };
    var source = item.from;
    var label = "from.getAsync";
    if (this.kind === "appointment") {
      source = item.organizer;
      label = "organizer.getAsync";
    }
    if (!source || typeof source.getAsync !== "function") return Promise.resolve(fromProfile());
    return officeCall(label, source, "getAsync").then(function (f) {
      if (f && f.emailAddress) return { address: f.emailAddress, name: f.displayName || "" };
      return fromProfile();
    });
  };

  Mail.prototype.subject = function () {
    return officeCall("subject.getAsync", this.item().subject, "getAsync");
  };

  Mail.prototype.bodyText = function () {
    return officeCall("body.getAsync", this.item().body, "getAsync", [global.Office.CoercionType.Text]);
  };

  Mail.prototype.attachments = function () {
    return officeCall("getAttachmentsAsync", this.item(), "getAttachmentsAsync").then(function (list) {
      return list || [];
    });
  };

  Mail.prototype.attachmentContent = function (id) {
    return officeCall("getAttachmentContentAsync", this.item(), "getAttachmentContentAsync", [id]);
  };

  Mail.prototype.removeAttachment = function (id) {
    return officeCall("removeAttachmentAsync", this.item(), "removeAttachmentAsync", [id]);
  };

  // The id lets the helper find the draft later (to hold it for approval). A new item has no id
  // until saved, so save it once; an item that cannot be saved is checked without one.
  Mail.prototype.itemId = function () {
    var self = this;
    return officeCall("getItemIdAsync", self.item(), "getItemIdAsync").catch(function () {
      return officeCall("saveAsync", self.item(), "saveAsync");
    }).catch(function () {
      return null;
    });
  };

  // The same id in the format Microsoft Graph takes (getItemIdAsync gives the EWS format, which
  // Graph refuses). Synchronous, so not an async call; null where Outlook cannot convert.
  function restIdOf(ewsId) {
    if (!ewsId) return null;
    try {
      var mailbox = global.Office.context.mailbox;
      var versions = global.Office.MailboxEnums && global.Office.MailboxEnums.RestVersion;
      if (typeof mailbox.convertToRestId !== "function" || !versions) return null;
      return mailbox.convertToRestId(ewsId, versions.v2_0) || null;
    } catch (e) {
      return null;
    }
  }

  // ---------------------------------------------------------------------------------------------
  // Gathering the item.

  function utf8Base64(str) {
    var bytes = [];
    for (var i = 0; i < str.length; i++) {
      var c = str.codePointAt(i);
      if (c > 0xffff) i++;
      if (c < 0x80) bytes.push(c);
      else if (c < 0x800) bytes.push(0xc0 | (c >> 6), 0x80 | (c & 63));
      else if (c < 0x10000) bytes.push(0xe0 | (c >> 12), 0x80 | ((c >> 6) & 63), 0x80 | (c & 63));
      else bytes.push(0xf0 | (c >> 18), 0x80 | ((c >> 12) & 63), 0x80 | ((c >> 6) & 63), 0x80 | (c & 63));
    }
    var abc = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    var out = "";
    for (var j = 0; j < bytes.length; j += 3) {
      var n = (bytes[j] << 16) | ((bytes[j + 1] || 0) << 8) | (bytes[j + 2] || 0);
      var third = "=";
      var fourth = "=";
      if (j + 1 < bytes.length) third = abc[(n >> 6) & 63];
      if (j + 2 < bytes.length) fourth = abc[n & 63];
      out += abc[(n >> 18) & 63] + abc[(n >> 12) & 63] + third + fourth;
    }
    return out;
  }

  // Attachment content for the helper's checks (personal data, keywords, file type): base64, or
  // null for cloud links and files over the size limits. One at a time: contents can be large.
  function attachmentContents(mail, list) {
    var budget = settings.maxContentBytes;
    return list.reduce(function (chain, a) {
      return chain.then(function (done) {
        var size = Number(a.size) || 0;
        if (a.attachmentType === "cloud" || size > settings.maxAttachmentBytes || size > budget) {
          return done.concat([null]);
        }
        budget -= size;
        return mail.attachmentContent(a.id).then(function (c) {
          if (!c || typeof c.content !== "string") return done.concat([null]);
          if (c.format === "base64") return done.concat([c.content]);
          if (c.format === "eml" || c.format === "iCalendar") return done.concat([utf8Base64(c.content)]);
          return done.concat([null]); // "url": a cloud file
        }, function () {
          return done.concat([null]);
        });
      });
    }, Promise.resolve([]));
  }

  function attachmentType(a) {
    if (a.contentType) return a.contentType;
    if (a.attachmentType === "item") return "message/rfc822"; // an attached Outlook item
    return null;
  }

  function gatherMessage(mail) {
    // Started together; the queue lets three run at a time.
    return Promise.all([
      mail.itemId(), mail.from(), mail.recipients("to"), mail.recipients("cc"), mail.recipients("bcc"),
      mail.subject(), mail.bodyText(), mail.attachments()
    ]).then(function (v) {
      var attachments = v[7];
      return attachmentContents(mail, attachments).then(function (contents) {
        var message = {
          source: "outlook",
          item_type: mail.kind,
          item_id: v[0] || null,
          rest_item_id: restIdOf(v[0]),
          from: v[1],
          to: v[2],
          cc: v[3],
          bcc: v[4],
          subject: v[5] || "",
          body: v[6] || "",
          attachments: attachments.map(function (a, i) {
            return {
              id: a.id,
              name: a.name || "unnamed attachment", // the helper needs a name
              size: Number(a.size) || 0,
              contentType: attachmentType(a),
              isInline: !!a.isInline,
              content: contents[i]
            };
          })
        };
        return message;
      });
    });
  }

  // ---------------------------------------------------------------------------------------------
  // The helper's HTTP API.

  function apiBase() {
    if (settings.apiBase) return settings.apiBase;
    if (typeof global.SENDGUARD_API_BASE === "string" && global.SENDGUARD_API_BASE) {
      return global.SENDGUARD_API_BASE;
    }
    try {
      if (global.location && global.location.protocol === "https:") return global.location.origin;
    } catch (e) { /* no location in the JavaScript-only runtime */ }
    return "https://localhost:8765";
  }

  function sleep(ms) {
    return new Promise(function (resolve) { setTimeout(resolve, ms); });
  }

  // One HTTP exchange. Resolves {status, data}; rejects with StopSend kinds "down" (no connection)
  // or "timeout" (no answer within timeoutMs).
  function request(method, path, body, token, timeoutMs) {
    var headers = { Accept: "application/json" };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    if (token) headers.Authorization = "Bearer " + token;
    var controller = null;
    if (typeof global.AbortController === "function") controller = new global.AbortController();
    var timer;
    var timeout = new Promise(function (_, reject) {
      timer = setTimeout(function () {
        if (controller) controller.abort();
        reject(new StopSend(text("helperTimeout"), "timeout"));
      }, timeoutMs);
    });
    var init = { method: method, headers: headers, credentials: "omit", cache: "no-store" };
    if (body !== undefined) init.body = JSON.stringify(body);
    if (controller) init.signal = controller.signal;
    var exchange = Promise.resolve().then(function () {
      return global.fetch(apiBase() + path, init);
    }).then(function (response) {
      return response.text().then(function (raw) {
        var data = null;
        try {
          if (raw) data = JSON.parse(raw);
        } catch (e) {
          data = null;
        }
        return { status: response.status, data: data };
      });
    }, function () {
      throw new StopSend(text("helperDown"), "down");
    });
    return Promise.race([exchange, timeout]).then(function (r) {
      clearTimeout(timer);
      return r;
    }, function (err) {
      clearTimeout(timer);
      throw err;
    });
  }

  function apiErrorText(response) {
    var err = response.data && response.data.error;
    if (err && err.message) return String(err.message);
    return "HTTP " + response.status;
  }

  function HelperClient(deadline) {
    this.deadline = deadline;
    this.token = null;
  }

  // Served by a central SendGuard server (SENDGUARD_SSO), the add-in proves who the user is with an
  // Office single sign-on token; the server relays the check to that user's helper. Served by the
  // helper itself, no sign-in is needed.
  function signInToken() {
    if (global.SENDGUARD_SSO !== true) return Promise.resolve(null);
    var auth = global.Office && global.Office.auth;
    if (!auth || typeof auth.getAccessToken !== "function") {
      return Promise.reject(new StopSend(text("signInFailed", { detail: "Office.auth is not available" }), "sso"));
    }
    return Promise.resolve().then(function () {
      return auth.getAccessToken({ allowSignInPrompt: false, allowConsentPrompt: false, forMSGraphAccess: false });
    }).catch(function (err) {
      var detail = messageOf(err);
      if (err && err.code) detail = String(err.code) + " " + detail;
      throw new StopSend(text("signInFailed", { detail: detail }), "sso");
    });
  }

  HelperClient.prototype.openSession = function () {
    var self = this;
    return signInToken().then(function (sso) {
      return request("POST", "/api/v1/addin/session", {}, sso, settings.submitTimeoutMs);
    }).then(function (r) {
      if (r.status !== 200 && r.status !== 201 || !r.data || !r.data.token) {
        throw new StopSend(text("refused", { detail: apiErrorText(r) }), "refused");
      }
      self.token = r.data.token;
    });
  };

  // An authorised call; a 401 (token expired) gets one fresh session and one retry.
  HelperClient.prototype.call = function (method, path, body, timeoutMs) {
    var self = this;
    return request(method, path, body, self.token, timeoutMs).then(function (r) {
      if (r.status !== 401) return r;
      return self.openSession().then(function () {
        return request(method, path, body, self.token, timeoutMs);
      });
    });
  };

  HelperClient.prototype.submit = function (message) {
    return this.call("POST", "/api/v1/checks", message, settings.submitTimeoutMs).then(function (r) {
      if (r.status !== 200 && r.status !== 201 || !r.data || !r.data.id) {
        throw new StopSend(text("refused", { detail: apiErrorText(r) }), "refused");
      }
      return r.data;
    });
  };

  // Long-poll until the item leaves its state or the time is up. Short outages of the helper
  // (a restart) are retried; a helper gone for several polls stops the send.
  HelperClient.prototype.waitForChange = function (id) {
    var self = this;
    var failures = 0;
    function attempt() {
      var remaining = self.deadline - Date.now();
      if (remaining <= 0) return Promise.reject(new StopSend(text("noDecision"), "no-decision"));
      var wait = Math.max(0, Math.min(settings.pollWaitSeconds, Math.floor(remaining / 1000) - 1));
      var timeoutMs = Math.max(1000, Math.min(wait * 1000 + settings.requestSlackMs, remaining));
      var path = "/api/v1/outbox/" + encodeURIComponent(id) + "?wait=" + wait;
      return self.call("GET", path, undefined, timeoutMs).then(function (r) {
        if (r.status === 200 && r.data && r.data.state) return r.data;
        if (r.status >= 500) throw new StopSend(text("helperTimeout"), "timeout");
        throw new StopSend(text("refused", { detail: apiErrorText(r) }), "refused");
      }).catch(function (err) {
        var transient = err instanceof StopSend && (err.kind === "down" || err.kind === "timeout");
        if (!transient) throw err;
        failures += 1;
        if (failures >= settings.maxPollFailures || Date.now() >= self.deadline) {
          if (Date.now() >= self.deadline && err.kind === "timeout") {
            throw new StopSend(text("noDecision"), "no-decision");
          }
          throw err;
        }
        return sleep(settings.retryDelayMs).then(attempt);
      });
    }
    return attempt();
  };

  // Withdraws the item; with stoppedSend, tells SendGuard that a send it had cleared ("sent": Outlook
  // may send it) was stopped here after all, so its record does not say sent.
  HelperClient.prototype.cancel = function (id, reason, stoppedSend) {
    var body = { reason: String(reason || "") };
    if (stoppedSend) body.stopped_send = true;
    return this.call("POST", "/api/v1/outbox/" + encodeURIComponent(id) + "/cancel", body,
      settings.cancelTimeoutMs).catch(function () { return null; });
  };

  // ---------------------------------------------------------------------------------------------
  // Decisions (pure).

  // What the handler does for an outbox item in this state: {allow: true}, {allow: false, message},
  // or null to keep waiting.
  function outcomeFor(item) {
    var said = "";
    if (item.user_message) said = String(item.user_message);
    switch (item.state) {
      case "sent": // for Outlook items: "Outlook may send it now"
        return { allow: true };
      case "cancelled":
        return { allow: false, message: said || text("cancelled") };
      case "awaiting_approval":
        var approvers = (item.approvers || []).join(", ");
        if (approvers) return { allow: false, message: text("held", { approvers: approvers }) };
        return { allow: false, message: said || text("heldNoNames") };
      case "rejected":
        return { allow: false, message: said || text("rejected") };
      case "expired":
        return { allow: false, message: said || text("expired") };
      default:
        return null;
    }
  }

  function lower(s) {
    return String(s || "").trim().toLowerCase();
  }

  // The recipient lists after the user's decision: removed addresses dropped; with "bcc", the
  // listed addresses (all To/Cc when none are listed) moved from To/Cc to Bcc.
  function planRecipients(current, decision) {
    var removed = {};
    (decision.removed_recipients || []).forEach(function (a) { removed[lower(a)] = true; });
    var toBcc = null;
    if (decision.bcc) {
      var listed = decision.bcc_addresses || [];
      toBcc = {};
      listed.forEach(function (a) { toBcc[lower(a)] = true; });
      if (!listed.length) {
        current.to.concat(current.cc).forEach(function (r) { toBcc[lower(r.address)] = true; });
      }
    }
    var keep = function (r) { return !removed[lower(r.address)]; };
    var stays = function (r) { return !(toBcc && toBcc[lower(r.address)]); };
    var to = current.to.filter(keep);
    var cc = current.cc.filter(keep);
    var bcc = current.bcc.filter(keep);
    var seen = {};
    bcc.forEach(function (r) { seen[lower(r.address)] = true; });
    to.concat(cc).filter(function (r) { return !stays(r); }).forEach(function (r) {
      if (!seen[lower(r.address)]) {
        seen[lower(r.address)] = true;
        bcc.push(r);
      }
    });
    var plan = { to: to.filter(stays), cc: cc.filter(stays), bcc: bcc, changed: {} };
    var addresses = function (list) { return list.map(function (r) { return lower(r.address); }).join("\n"); };
    ["to", "cc", "bcc"].forEach(function (f) { plan.changed[f] = addresses(plan[f]) !== addresses(current[f]); });
    return plan;
  }

  // ---------------------------------------------------------------------------------------------
  // Amending the item and the orchestration.

  function applyRecipients(mail, decision) {
    if (!(decision.removed_recipients || []).length && !decision.bcc) return Promise.resolve();
    return Promise.all([mail.recipients("to"), mail.recipients("cc"), mail.recipients("bcc")]).then(function (lists) {
      var plan = planRecipients({ to: lists[0], cc: lists[1], bcc: lists[2] }, decision);
      if (!plan.to.length && !plan.cc.length && !plan.bcc.length) {
        throw new StopSend(text("noRecipients"), "no-recipients");
      }
      if (plan.changed.bcc && !mail.fields.bcc) throw new StopSend(text("meetingBcc"), "meeting-bcc");
      // Bcc first, so that a failure half-way never leaves a moved address in no field at all.
      var steps = ["bcc", "to", "cc"].filter(function (f) { return plan.changed[f]; });
      return steps.reduce(function (chain, role) {
        return chain.then(function () { return mail.setRecipients(role, plan[role]); });
      }, Promise.resolve());
    });
  }

  // The recipients the policy adds ([[rules.auto_cc]]: added_cc / added_bcc), by the field they go
  // to. An added Cc that the decision moves to Bcc (Convert to BCC) goes straight to Bcc; anything
  // removed, or already anywhere on the message, is left alone.
  function planAdditions(current, decision) {
    var removed = {};
    (decision.removed_recipients || []).forEach(function (a) { removed[lower(a)] = true; });
    var toBcc = {};
    if (decision.bcc) (decision.bcc_addresses || []).forEach(function (a) { toBcc[lower(a)] = true; });
    var present = {};
    current.to.concat(current.cc, current.bcc).forEach(function (r) { present[lower(r.address)] = true; });
    var plan = { cc: [], bcc: [] };
    var add = function (role, address) {
      var key = lower(address);
      if (!key || removed[key] || present[key]) return;
      present[key] = true;
      plan[role].push(key);
    };
    var allToBcc = decision.bcc && !(decision.bcc_addresses || []).length;
    (decision.added_cc || []).forEach(function (a) {
      if (allToBcc || toBcc[lower(a)]) add("bcc", a);
      else add("cc", a);
    });
    (decision.added_bcc || []).forEach(function (a) { add("bcc", a); });
    return plan;
  }

  // Adds what the policy adds, then reads the fields back: only an address really there counts as
  // added; one that is not stops the send, named (never reported as added when it is not).
  function applyAdditions(mail, decision) {
    if (!(decision.added_cc || []).length && !(decision.added_bcc || []).length) return Promise.resolve();
    return Promise.all([mail.recipients("to"), mail.recipients("cc"), mail.recipients("bcc")]).then(function (lists) {
      var plan = planAdditions({ to: lists[0], cc: lists[1], bcc: lists[2] }, decision);
      if (plan.bcc.length && !mail.fields.bcc) {
        throw new StopSend(text("meetingAutoBcc", { names: plan.bcc.join(", ") }), "meeting-bcc");
      }
      var roles = ["cc", "bcc"].filter(function (role) { return plan[role].length; });
      var failures = {};
      return roles.reduce(function (chain, role) {
        return chain.then(function () {
          return mail.addRecipients(role, plan[role]).catch(function (err) { failures[role] = messageOf(err); });
        });
      }, Promise.resolve()).then(function () {
        return Promise.all(roles.map(function (role) { return mail.recipients(role); }));
      }).then(function (after) {
        roles.forEach(function (role, i) {
          var there = {};
          after[i].forEach(function (r) { there[lower(r.address)] = true; });
          var missing = plan[role].filter(function (a) { return !there[a]; });
          if (!missing.length) return;
          var field = mail.fields[role];
          throw new StopSend(text("notAdded", {
            names: missing.join(", "), field: field,
            why: failures[role] || "not in " + field + " after adding"
          }), "not-added");
        });
      });
    });
  }

  // Removes the attachments the user removed, then reads the list back: Outlook may report success
  // for an inline picture it did not remove, and ids are only valid in this compose session. Only
  // what is really gone counts as removed; anything still there stops the send, named.
  function applyAttachments(mail, decision) {
    var ids = decision.removed_attachments || [];
    if (!ids.length) return Promise.resolve();
    var failures = {};
    return ids.reduce(function (chain, id) {
      return chain.then(function () {
        return mail.removeAttachment(id).catch(function (err) { failures[id] = messageOf(err); });
      });
    }, Promise.resolve()).then(function () {
      return mail.attachments();
    }).then(function (after) {
      var left = after.filter(function (a) { return ids.indexOf(a.id) >= 0; });
      if (!left.length) return;
      var names = left.map(function (a) { return "\"" + (a.name || a.id) + "\""; }).join(", ");
      var why = left.map(function (a) {
        if (failures[a.id]) return failures[a.id];
        if (a.isInline) return "Outlook does not remove inline pictures";
        return "still attached after removal";
      }).join("; ");
      throw new StopSend(text("notRemoved", { names: names, why: why }), "not-removed");
    });
  }

  function applyDecision(mail, decision) {
    if (!decision) return Promise.resolve();
    return applyRecipients(mail, decision).then(function () {
      return applyAdditions(mail, decision);
    }).then(function () {
      return applyAttachments(mail, decision);
    }).catch(function (err) {
      if (err instanceof StopSend) throw err;
      throw new StopSend(text("amendFailed", { detail: messageOf(err) }), "amend");
    });
  }

  function checkAndDecide(kind) {
    var mail = new Mail(kind);
    var deadline = Date.now() + settings.budgetMs;
    var client = new HelperClient(deadline);
    var itemId = null;
    var cleared = false; // SendGuard said "sent": from here on a stop must be reported as such
    // The session is opened while Office.js reads the item (fetch is not an Office.js call).
    var session = client.openSession();
    var gathered = gatherMessage(mail);
    return Promise.all([gathered, session]).then(function (both) {
      return client.submit(both[0]);
    }).then(function (item) {
      itemId = item.id;
      var step = function (current) {
        var outcome = outcomeFor(current);
        if (outcome) return { item: current, outcome: outcome };
        return client.waitForChange(itemId).then(step);
      };
      return step(item);
    }).then(function (result) {
      if (!result.outcome.allow) return { allowEvent: false, errorMessage: result.outcome.message };
      cleared = true;
      return applyDecision(mail, result.item.decision).then(function () { return { allowEvent: true }; });
    }).catch(function (err) {
      // Stopped by us, not by a decision: take the item off the helper's list so that a late
      // confirmation in the window does not look like a sent message. Best effort.
      var stop = err;
      if (!(err instanceof StopSend)) stop = new StopSend(text("failed", { detail: messageOf(err) }), "error");
      var after = Promise.resolve();
      if (itemId && stop.kind !== "down") after = client.cancel(itemId, stop.message, cleared);
      // A session that failed while the item was read must not surface as an unhandled rejection.
      session.catch(function () { return null; });
      return after.then(function () { return { allowEvent: false, errorMessage: stop.message }; });
    });
  }

  function trim(options) {
    if (options.errorMessage && options.errorMessage.length > settings.maxMessageLength) {
      options.errorMessage = options.errorMessage.slice(0, settings.maxMessageLength - 1) + "…";
    }
    return options;
  }

  function handlerFor(kind) {
    return function (event) {
      var finished = false;
      var safety = null;
      var finish = function (options) {
        if (finished) return;
        finished = true;
        clearTimeout(safety);
        try {
          event.completed(trim(options));
        } catch (e) {
          if (global.console) global.console.error("SendGuard: completing the send event failed", e);
        }
      };
      // A hung Office.js call must not leave Outlook waiting for its own five-minute timeout.
      safety = setTimeout(function () {
        finish({ allowEvent: false, errorMessage: text("noDecision") });
      }, settings.budgetMs + settings.requestSlackMs);
      try {
        checkAndDecide(kind).then(finish, function (err) {
          finish({ allowEvent: false, errorMessage: text("failed", { detail: messageOf(err) }) });
        });
      } catch (err) {
        finish({ allowEvent: false, errorMessage: text("failed", { detail: messageOf(err) }) });
      }
    };
  }

  var onMessageSendHandler = handlerFor("message");
  var onAppointmentSendHandler = handlerFor("appointment");

  global.SendGuardAddin = {
    settings: settings,
    onMessageSendHandler: onMessageSendHandler,
    onAppointmentSendHandler: onAppointmentSendHandler,
    outcomeFor: outcomeFor,
    planRecipients: planRecipients,
    planAdditions: planAdditions,
    utf8Base64: utf8Base64,
    text: text
  };

  if (global.Office && global.Office.actions && typeof global.Office.actions.associate === "function") {
    global.Office.actions.associate("onMessageSendHandler", onMessageSendHandler);
    global.Office.actions.associate("onAppointmentSendHandler", onAppointmentSendHandler);
  }
}(this));
