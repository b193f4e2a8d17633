/*
 * SendGuard for Outlook: the Smart Alerts (OnMessageSend) handler.
 *
 * When the user presses Send, Outlook calls onMessageSendHandler. It reads the message with
 * Office.js, hands it to the SendGuard helper (same origin as this file), waits while the user
 * decides in the SendGuard desktop window, applies what the user removed there, and completes the
 * event. A Smart Alerts handler cannot open dialogs, which is why the decision is made in the
 * helper's own window.
 *
 *   gather (Office.js) -> submit (helper API) -> wait (long-poll) -> amend item -> completed()
 *
 * Fail closed: every error, timeout or unexpected answer completes with allowEvent: false and a
 * message saying the send was stopped and why. Plain script: classic Outlook on Windows loads it in
 * a JavaScript-only runtime that supports no imports and has no DOM.
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
    maxMessageLength: 500 // Outlook's limit for errorMessage
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
      refused: "SendGuard が送信を止めました: ヘルパーが受け付けませんでした ({detail})。",
      failed: "SendGuard がエラーのため送信を止めました: {detail}。送信されていません。" +
        "もう一度 [送信] を押してください。"
    }
  };

  function language() {
    try {
      var tag = String(global.Office.context.displayLanguage || "");
      return tag.toLowerCase().indexOf("ja") === 0 ? "ja" : "en";
    } catch (e) {
      return "en";
    }
  }

  function text(key, values) {
    var template = TEXT[language()][key] || TEXT.en[key];
    return template.replace(/\{(\w+)\}/g, function (_, name) {
      return values && values[name] !== undefined ? String(values[name]) : "";
    });
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

  // Calls target[method](...args, callback) and settles with the result's value. `label` names the
  // call in error messages (for example "body.getAsync").
  function officeCall(label, target, method, args) {
    return new Promise(function (resolve, reject) {
      if (!target || typeof target[method] !== "function") {
        reject(new Error(label + " is not available in this Outlook"));
        return;
      }
      target[method].apply(target, (args || []).concat([function (result) {
        if (result && result.status === global.Office.AsyncResultStatus.Succeeded) {
          resolve(result.value);
        } else {
          var why = result && result.error && result.error.message ? result.error.message : "no result";
          reject(new Error(label + " failed: " + why));
        }
      }]));
    });
  }

  var mail = {
    item: function () {
      return global.Office.context.mailbox.item;
    },
    recipients: function (field) {
      return officeCall(field + ".getAsync", mail.item()[field], "getAsync").then(function (list) {
        return (list || []).map(function (r) {
          return { address: r.emailAddress || "", name: r.displayName || "" };
        });
      });
    },
    setRecipients: function (field, list) {
      var value = list.map(function (r) {
        return { emailAddress: r.address, displayName: r.name || r.address };
      });
      return officeCall(field + ".setAsync", mail.item()[field], "setAsync", [value]);
    },
    from: function () {
      var item = mail.item();
      var fromProfile = function () {
        var profile = global.Office.context.mailbox.userProfile || {};
        return { address: profile.emailAddress || "", name: profile.displayName || "" };
      };
      if (!item.from || typeof item.from.getAsync !== "function") {
        return Promise.resolve(fromProfile());
      }
      return officeCall("from.getAsync", item.from, "getAsync").then(function (f) {
        return f && f.emailAddress ? { address: f.emailAddress, name: f.displayName || "" } : fromProfile();
      });
    },
    subject: function () {
      return officeCall("subject.getAsync", mail.item().subject, "getAsync");
    },
    bodyText: function () {
      return officeCall("body.getAsync", mail.item().body, "getAsync", [global.Office.CoercionType.Text]);
    },
    attachments: function () {
      return officeCall("getAttachmentsAsync", mail.item(), "getAttachmentsAsync");
    },
    attachmentContent: function (id) {
      return officeCall("getAttachmentContentAsync", mail.item(), "getAttachmentContentAsync", [id]);
    },
    removeAttachment: function (id) {
      return officeCall("removeAttachmentAsync", mail.item(), "removeAttachmentAsync", [id]);
    },
    // The id lets the helper find the draft later (to hold it for approval). A new message has no
    // id until saved, so save it once; a message that cannot be saved is checked without one.
    itemId: function () {
      return officeCall("getItemIdAsync", mail.item(), "getItemIdAsync").catch(function () {
        return officeCall("saveAsync", mail.item(), "saveAsync");
      }).catch(function () {
        return null;
      });
    }
  };

  // ---------------------------------------------------------------------------------------------
  // Gathering the message.

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
      out += abc[(n >> 18) & 63] + abc[(n >> 12) & 63] +
        (j + 1 < bytes.length ? abc[(n >> 6) & 63] : "=") + (j + 2 < bytes.length ? abc[n & 63] : "=");
    }
    return out;
  }

  // Attachment content for the helper's checks (personal data, keywords, file type): base64, or
  // null for cloud links and files over the size limits.
  function attachmentContents(list) {
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

  function gatherMessage() {
    return Promise.all([
      mail.itemId(), mail.from(), mail.recipients("to"), mail.recipients("cc"), mail.recipients("bcc"),
      mail.subject(), mail.bodyText(), mail.attachments()
    ]).then(function (v) {
      var attachments = v[7] || [];
      return attachmentContents(attachments).then(function (contents) {
        return {
          source: "outlook",
          item_id: v[0] || null,
          from: v[1],
          to: v[2],
          cc: v[3],
          bcc: v[4],
          subject: v[5] || "",
          body: v[6] || "",
          attachments: attachments.map(function (a, i) {
            return {
              id: a.id,
              // The helper needs a name; an attached Outlook item is a message/rfc822 part.
              name: a.name || "unnamed attachment",
              size: Number(a.size) || 0,
              contentType: a.contentType || (a.attachmentType === "item" ? "message/rfc822" : null),
              isInline: !!a.isInline,
              content: contents[i]
            };
          })
        };
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
    var controller = typeof global.AbortController === "function" ? new global.AbortController() : null;
    var timer;
    var timeout = new Promise(function (_, reject) {
      timer = setTimeout(function () {
        if (controller) controller.abort();
        reject(new StopSend(text("helperTimeout"), "timeout"));
      }, timeoutMs);
    });
    var exchange = Promise.resolve().then(function () {
      return global.fetch(apiBase() + path, {
        method: method,
        headers: headers,
        body: body === undefined ? undefined : JSON.stringify(body),
        credentials: "omit",
        cache: "no-store",
        signal: controller ? controller.signal : undefined
      });
    }).then(function (response) {
      return response.text().then(function (raw) {
        var data = null;
        try { data = raw ? JSON.parse(raw) : null; } catch (e) { data = null; }
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
    return err && err.message ? String(err.message) : "HTTP " + response.status;
  }

  function HelperClient(deadline) {
    this.deadline = deadline;
    this.token = null;
  }

  HelperClient.prototype.openSession = function () {
    var self = this;
    return request("POST", "/api/v1/addin/session", {}, null, settings.submitTimeoutMs).then(function (r) {
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

  HelperClient.prototype.cancel = function (id) {
    return this.call("POST", "/api/v1/outbox/" + encodeURIComponent(id) + "/cancel", {},
      settings.cancelTimeoutMs).catch(function () { return null; });
  };

  // ---------------------------------------------------------------------------------------------
  // Decisions (pure).

  // What the handler does for an outbox item in this state: {allow: true}, {allow: false, message},
  // or null to keep waiting.
  function outcomeFor(item) {
    var said = item.user_message ? String(item.user_message) : "";
    switch (item.state) {
      case "sent": // for Outlook items: "Outlook may send it now"
        return { allow: true };
      case "cancelled":
        return { allow: false, message: said || text("cancelled") };
      case "awaiting_approval":
        var approvers = (item.approvers || []).join(", ");
        return { allow: false, message: approvers ? text("held", { approvers: approvers }) : said || text("heldNoNames") };
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

  function applyDecision(decision) {
    if (!decision) return Promise.resolve();
    var removeRecipients = (decision.removed_recipients || []).length > 0 || !!decision.bcc;
    var recipientsDone = !removeRecipients ? Promise.resolve() : Promise.all([
      mail.recipients("to"), mail.recipients("cc"), mail.recipients("bcc")
    ]).then(function (lists) {
      var plan = planRecipients({ to: lists[0], cc: lists[1], bcc: lists[2] }, decision);
      if (!plan.to.length && !plan.cc.length && !plan.bcc.length) {
        throw new StopSend(text("noRecipients"), "no-recipients");
      }
      // Bcc first, so that a failure half-way never leaves a moved address in no field at all.
      var steps = ["bcc", "to", "cc"].filter(function (f) { return plan.changed[f]; });
      return steps.reduce(function (chain, field) {
        return chain.then(function () { return mail.setRecipients(field, plan[field]); });
      }, Promise.resolve());
    });
    return recipientsDone.then(function () {
      return (decision.removed_attachments || []).reduce(function (chain, id) {
        return chain.then(function () { return mail.removeAttachment(id); });
      }, Promise.resolve());
    }).catch(function (err) {
      if (err instanceof StopSend) throw err;
      throw new StopSend(text("amendFailed", { detail: err && err.message ? err.message : String(err) }), "amend");
    });
  }

  function checkAndDecide() {
    var deadline = Date.now() + settings.budgetMs;
    var client = new HelperClient(deadline);
    var itemId = null;
    return gatherMessage().then(function (message) {
      return client.openSession().then(function () { return client.submit(message); });
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
      return applyDecision(result.item.decision).then(function () { return { allowEvent: true }; });
    }).catch(function (err) {
      // Stopped by us, not by a decision: take the item off the helper's list so that a late
      // confirmation in the window does not look like a sent message. Best effort.
      var stop = err instanceof StopSend ? err : new StopSend(
        text("failed", { detail: err && err.message ? err.message : String(err) }), "error");
      var after = itemId && stop.kind !== "down" ? client.cancel(itemId) : Promise.resolve();
      return after.then(function () { return { allowEvent: false, errorMessage: stop.message }; });
    });
  }

  function trim(options) {
    if (options.errorMessage && options.errorMessage.length > settings.maxMessageLength) {
      options.errorMessage = options.errorMessage.slice(0, settings.maxMessageLength - 1) + "…";
    }
    return options;
  }

  function onMessageSendHandler(event) {
    var finished = false;
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
    var safety = setTimeout(function () {
      finish({ allowEvent: false, errorMessage: text("noDecision") });
    }, settings.budgetMs + settings.requestSlackMs);
    try {
      checkAndDecide().then(finish, function (err) {
        finish({ allowEvent: false, errorMessage: text("failed", { detail: err && err.message }) });
      });
    } catch (err) {
      finish({ allowEvent: false, errorMessage: text("failed", { detail: err && err.message }) });
    }
  }

  global.SendGuardAddin = {
    settings: settings,
    onMessageSendHandler: onMessageSendHandler,
    outcomeFor: outcomeFor,
    planRecipients: planRecipients,
    utf8Base64: utf8Base64,
    text: text
  };

  if (global.Office && global.Office.actions && typeof global.Office.actions.associate === "function") {
    global.Office.actions.associate("onMessageSendHandler", onMessageSendHandler);
  }
})(typeof globalThis !== "undefined" ? globalThis : this);
