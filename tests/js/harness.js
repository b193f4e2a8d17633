// Test harness: a fake Outlook compose item (office-addin-mock), a fake SendGuard helper (a real
// HTTP server on a free port), and launchevent.js loaded into its own vm context.
"use strict";

const fs = require("node:fs");
const http = require("node:http");
const path = require("node:path");
const vm = require("node:vm");
const { OfficeMockObject } = require("office-addin-mock");
const esLevel = require("./es_level");

const SCRIPT_PATH = path.resolve(__dirname, "../../addin/static/launchevent.js");
const SCRIPT = fs.readFileSync(SCRIPT_PATH, "utf8");

// ---- Outlook ---------------------------------------------------------------------------------

function ok(value) {
  return { status: "succeeded", value };
}

function failed(message) {
  return { status: "failed", error: { message } };
}

// Outlook's limit on asynchronous Office.js calls in flight at once ("Limits for activation and
// JavaScript API for Outlook add-ins").
const MAX_ASYNC_CALLS = 3;

// Office.context.mailbox.convertToRestId for RestVersion v2_0: the REST form of an EWS id is its
// URL-safe variant.
function restIdOf(ewsId) {
  return ewsId.replace(/\//g, "-").replace(/\+/g, "_");
}

/**
 * A compose item in the state given; `state` is live (the add-in's setAsync/addAsync/removeAttachmentAsync
 * change it) and `calls` logs every Office.js call by name.
 *
 * Like Outlook, it answers each call a little later (`latencyMs`), refuses a call that would make
 * more than three in flight (recorded in `state.overLimit`, highest count in `state.maxInFlight`),
 * and reports success for removeAttachmentAsync on an inline picture without removing it.
 * `itemType: "appointment"` makes it a meeting (requiredAttendees/optionalAttendees, organizer).
 */
function fakeOutlook(overrides = {}) {
  const state = {
    itemType: "message",
    latencyMs: 1,
    inFlight: 0,
    maxInFlight: 0,
    overLimit: [],
    requiredAttendees: [{ emailAddress: "x@partner.example", displayName: "X Partner" }],
    optionalAttendees: [],
    from: { emailAddress: "taro@example.co.jp", displayName: "Taro Yamada" },
    to: [{ emailAddress: "x@partner.example", displayName: "X Partner" }],
    cc: [{ emailAddress: "hanako@example.co.jp", displayName: "Hanako" }],
    bcc: [],
    subject: "見積書",
    body: "Please find the quote attached.",
    attachments: [
      { id: "att-1", name: "見積.pdf", size: 12, contentType: "application/pdf", isInline: false,
        attachmentType: "file", content: { format: "base64", content: "JVBERi0xLjQK" } },
    ],
    itemId: "AAMkAGI2TG93AAA=",
    displayLanguage: "en-US",
    failures: {}, // method name -> error message (the call reports failure)
    throws: {}, // method name -> error message (the call throws synchronously)
    calls: [],
    ...overrides,
  };

  function call(name, cb, result) {
    state.calls.push(name);
    if (state.throws[name]) throw new Error(state.throws[name]);
    if (state.inFlight >= MAX_ASYNC_CALLS) {
      state.overLimit.push(name);
      setImmediate(() => cb(failed(`${name}: more than ${MAX_ASYNC_CALLS} asynchronous calls at once`)));
      return;
    }
    state.inFlight += 1;
    state.maxInFlight = Math.max(state.maxInFlight, state.inFlight);
    setTimeout(() => {
      const answer = state.failures[name] ? failed(state.failures[name]) : result();
      state.inFlight -= 1;
      cb(answer);
    }, state.latencyMs);
  }

  function recipientField(field) {
    return {
      getAsync(cb) {
        call(`${field}.getAsync`, cb, () => ok(state[field].map((r) => ({ recipientType: "other", ...r }))));
      },
      setAsync(list, cb) {
        call(`${field}.setAsync`, cb, () => {
          state[field] = list.map((r) => ({ emailAddress: r.emailAddress, displayName: r.displayName }));
          return ok(undefined);
        });
      },
      // Recipients.addAsync: appends; an address in `state.ignoreAdds` is answered with success but
      // not added (what the add-in must catch by reading the field back).
      addAsync(list, cb) {
        call(`${field}.addAsync`, cb, () => {
          state.added = (state.added || []).concat(list.map((r) => `${field}:${r.emailAddress}`));
          const kept = list.filter((r) => !(state.ignoreAdds || []).includes(r.emailAddress));
          state[field] = state[field].concat(kept.map((r) => ({ emailAddress: r.emailAddress, displayName: r.displayName })));
          return ok(undefined);
        });
      },
    };
  }

  const data = {
    host: "outlook",
    auth: {
      // Office single sign-on (used when the add-in is served by a central server)
      getAccessToken(options) {
        state.calls.push("auth.getAccessToken");
        state.ssoOptions = options;
        if (!state.ssoToken) return Promise.reject(Object.assign(new Error("no SSO token"), { code: 13001 }));
        return Promise.resolve(state.ssoToken);
      },
    },
    AsyncResultStatus: { Succeeded: "succeeded", Failed: "failed" },
    CoercionType: { Text: "text", Html: "html" },
    MailboxEnums: { RestVersion: { v1_0: "v1.0", v2_0: "v2.0", Beta: "beta" }, ItemType: { Message: "message", Appointment: "appointment" } },
    actions: {
      associate(name, fn) {
        state.associated = state.associated || {};
        state.associated[name] = fn;
      },
    },
    context: {
      displayLanguage: state.displayLanguage,
      mailbox: {
        userProfile: { emailAddress: "taro@example.co.jp", displayName: "Taro Yamada" },
        convertToRestId(id, version) {
          if (version !== "v2.0") throw new Error("convertToRestId: unknown REST version");
          return restIdOf(id);
        },
        item: {
          itemType: state.itemType,
          ...(state.itemType === "appointment" ? {
            organizer: { getAsync: (cb) => call("organizer.getAsync", cb, () => ok(state.from)) },
            requiredAttendees: recipientField("requiredAttendees"),
            optionalAttendees: recipientField("optionalAttendees"),
          } : {
            from: { getAsync: (cb) => call("from.getAsync", cb, () => ok(state.from)) },
            to: recipientField("to"),
            cc: recipientField("cc"),
            bcc: recipientField("bcc"),
          }),
          subject: { getAsync: (cb) => call("subject.getAsync", cb, () => ok(state.subject)) },
          body: {
            getAsync(coercion, cb) {
              call("body.getAsync", cb, () => (coercion === "text" ? ok(state.body) : failed("not text")));
            },
          },
          getAttachmentsAsync(cb) {
            call("getAttachmentsAsync", cb, () =>
              ok(state.attachments.map(({ content, ...details }) => details)));
          },
          getAttachmentContentAsync(id, cb) {
            call("getAttachmentContentAsync", cb, () => {
              const found = state.attachments.find((a) => a.id === id);
              return found ? ok(found.content) : failed("no such attachment");
            });
          },
          removeAttachmentAsync(id, cb) {
            call("removeAttachmentAsync", cb, () => {
              const found = state.attachments.find((a) => a.id === id);
              if (!found) return failed("InvalidAttachmentId");
              if (!found.isInline) state.attachments = state.attachments.filter((a) => a.id !== id);
              return ok(undefined); // an inline picture stays, but the call reports success
            });
          },
          getItemIdAsync(cb) {
            call("getItemIdAsync", cb, () => (state.itemId ? ok(state.itemId) : failed("not saved")));
          },
          saveAsync(cb) {
            call("saveAsync", cb, () => {
              state.itemId = "AAMkSAVED=";
              return ok(state.itemId);
            });
          },
        },
      },
    },
  };
  const office = new OfficeMockObject(data, "outlook");
  return { office, state };
}

// ---- the add-in --------------------------------------------------------------------------------

/**
 * Load launchevent.js as Outlook would (a plain script), with `office` as the Office global. Like
 * classic Outlook's JavaScript-only runtime, refuses a script that is not ECMAScript 2016 or uses
 * the conditional operator.
 */
function loadAddin(office, { apiBase, settings = {}, fetchImpl, source = SCRIPT, sso = false } = {}) {
  const problems = esLevel.lint(source, { filename: SCRIPT_PATH });
  if (problems.length) throw new Error(`the JavaScript-only runtime would not load the script:\n${problems.map(esLevel.format).join("\n")}`);
  const sandbox = {
    Office: office,
    fetch: fetchImpl || fetch,
    AbortController,
    setTimeout,
    clearTimeout,
    console: { log() {}, error() {}, warn() {} },
    SENDGUARD_API_BASE: apiBase,
  };
  if (sso) sandbox.SENDGUARD_SSO = true; // as the central server serves the script
  vm.createContext(sandbox);
  vm.runInContext(source, sandbox, { filename: SCRIPT_PATH });
  Object.assign(sandbox.SendGuardAddin.settings, settings);
  return sandbox.SendGuardAddin;
}

/** Press Send: run the associated handler and resolve with what it passed to event.completed. */
function pressSend(state, { timeoutMs = 20000, handlerName } = {}) {
  const name = handlerName || (state.itemType === "appointment" ? "onAppointmentSendHandler" : "onMessageSendHandler");
  const handler = state.associated && state.associated[name];
  if (!handler) throw new Error(`${name} was not associated`);
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error("event.completed was never called")), timeoutMs);
    const event = {
      type: state.itemType === "appointment" ? "appointmentSend" : "messageSend",
      completed(options) {
        clearTimeout(timer);
        state.completedCount = (state.completedCount || 0) + 1;
        resolve(JSON.parse(JSON.stringify(options)));
      },
    };
    handler(event);
  });
}

// ---- the helper -------------------------------------------------------------------------------

/**
 * A stand-in for the SendGuard helper's add-in API. `onCheck(payload)` returns the item (or
 * {status, body}) the check answers with; long-polls wait until `decide(id, changes)` or `wait`.
 */
async function startHelper({ onCheck, hangPolls = false, sessionStatus = 200 } = {}) {
  const helper = {
    checks: [],
    cancels: [],
    cancelBodies: [],
    polls: 0,
    sessions: 0,
    items: new Map(),
    waiters: new Map(),
    tokens: new Set(),
    expireTokens() {
      this.tokens.clear();
    },
    decide(id, changes) {
      Object.assign(this.items.get(id), changes);
      for (const wake of this.waiters.get(id) || []) wake();
      this.waiters.set(id, []);
    },
    waitForPoll(count = 1) {
      return new Promise((resolve) => {
        const check = () => (this.polls >= count ? resolve() : setTimeout(check, 5));
        check();
      });
    },
  };
  let counter = 0;

  function send(res, status, body) {
    const raw = JSON.stringify(body);
    res.writeHead(status, { "Content-Type": "application/json", "Content-Length": Buffer.byteLength(raw) });
    res.end(raw);
  }

  function authorised(req, res) {
    const token = (req.headers.authorization || "").replace(/^Bearer /, "");
    if (helper.tokens.has(token)) return true;
    send(res, 401, { error: { code: "unauthorized", message: "token missing or expired" } });
    return false;
  }

  const server = http.createServer((req, res) => {
    let raw = "";
    req.on("data", (chunk) => (raw += chunk));
    req.on("end", () => {
      const url = new URL(req.url, "http://helper");
      if (req.method === "POST" && url.pathname === "/api/v1/addin/session") {
        helper.sessions += 1;
        helper.sessionAuth = req.headers.authorization || null;
        if (sessionStatus !== 200) return send(res, sessionStatus, { error: { code: "forbidden", message: "origin refused" } });
        const token = `tok-${helper.sessions}`;
        helper.tokens.add(token);
        return send(res, 200, { token, expires_in: 3600 });
      }
      if (!authorised(req, res)) return undefined;
      if (req.method === "POST" && url.pathname === "/api/v1/checks") {
        const payload = JSON.parse(raw);
        helper.checks.push(payload);
        const answer = onCheck ? onCheck(payload) : { state: "sent" };
        if (answer.status && answer.body) return send(res, answer.status, answer.body);
        const item = { id: `ob-${++counter}`, user_message: "", approvers: [], decision: null, ...answer };
        helper.items.set(item.id, item);
        return send(res, 201, { ...item, check: { verdict: { action: "confirm" } }, confirm_url: `/confirm/${item.id}` });
      }
      const poll = url.pathname.match(/^\/api\/v1\/outbox\/([^/]+)$/);
      if (req.method === "GET" && poll) {
        helper.polls += 1;
        const item = helper.items.get(poll[1]);
        if (!item) return send(res, 404, { error: { code: "not_found", message: "no such item" } });
        if (hangPolls) return undefined; // never answers
        const wait = Number(url.searchParams.get("wait") || 0) * 1000;
        const reply = () => send(res, 200, item);
        if (wait === 0) return reply();
        const timer = setTimeout(reply, wait);
        const wake = () => {
          clearTimeout(timer);
          if (!res.writableEnded) reply();
        };
        helper.waiters.set(item.id, (helper.waiters.get(item.id) || []).concat([wake]));
        return undefined;
      }
      const cancel = url.pathname.match(/^\/api\/v1\/outbox\/([^/]+)\/cancel$/);
      if (req.method === "POST" && cancel) {
        helper.cancels.push(cancel[1]);
        const body = raw ? JSON.parse(raw) : {};
        helper.cancelBodies.push(body);
        const item = helper.items.get(cancel[1]);
        // as the helper does: a sent item is only reported as stopped (stopped_send), never cancelled
        if (item && item.state === "sent" && body.stopped_send !== true) {
          return send(res, 409, { error: { code: "conflict", message: "message is sent: cannot cancel it now" } });
        }
        if (item) item.state = "cancelled";
        return send(res, 200, item || {});
      }
      return send(res, 404, { error: { code: "not_found", message: "no route" } });
    });
  });
  const sockets = new Set();
  server.on("connection", (s) => {
    sockets.add(s);
    s.on("close", () => sockets.delete(s));
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  helper.base = `http://127.0.0.1:${server.address().port}`;
  helper.close = () =>
    new Promise((resolve) => {
      for (const s of sockets) s.destroy();
      server.close(resolve);
    });
  return helper;
}

/** A base URL on which nothing listens. */
async function deadBase() {
  const server = http.createServer();
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address();
  await new Promise((resolve) => server.close(resolve));
  return `http://127.0.0.1:${port}`;
}

module.exports = { fakeOutlook, loadAddin, pressSend, startHelper, deadBase, restIdOf, MAX_ASYNC_CALLS, SCRIPT, SCRIPT_PATH };
