// The OnMessageSend handler against a fake Outlook item and a fake SendGuard helper.
"use strict";

const assert = require("node:assert/strict");
const { test, describe, beforeEach, afterEach } = require("node:test");
const { fakeOutlook, loadAddin, pressSend, startHelper, deadBase, SCRIPT } = require("./harness");

const FAST = { retryDelayMs: 10, pollWaitSeconds: 1 };

describe("the script", () => {
  test("is a plain script: no import or require", () => {
    assert.doesNotMatch(SCRIPT, /^\s*import\s/m);
    assert.doesNotMatch(SCRIPT, /\bimport\s*\(/);
    assert.doesNotMatch(SCRIPT, /\brequire\s*\(/);
  });

  test("associates onMessageSendHandler with Office.actions", () => {
    const { office, state } = fakeOutlook();
    loadAddin(office, { apiBase: "http://127.0.0.1:9" });
    assert.equal(typeof state.associated.onMessageSendHandler, "function");
  });
});

describe("sending through the helper", () => {
  let helper;
  afterEach(async () => helper && (await helper.close()));

  async function send(outlookOverrides, helperOptions, settings) {
    helper = await startHelper(helperOptions);
    const outlook = fakeOutlook(outlookOverrides);
    loadAddin(outlook.office, { apiBase: helper.base, settings: { ...FAST, ...settings } });
    return { outlook, result: pressSend(outlook.state) };
  }

  test("allow verdict: sent at once, with everything the checks need", async () => {
    const { outlook, result } = await send({}, { onCheck: () => ({ state: "sent" }) });
    assert.deepEqual(await result, { allowEvent: true });
    assert.equal(helper.checks.length, 1);
    const payload = helper.checks[0];
    assert.equal(payload.source, "outlook");
    assert.equal(payload.item_id, "AAMkAGI2TG93AAA=");
    assert.deepEqual(payload.from, { address: "taro@example.co.jp", name: "Taro Yamada" });
    assert.deepEqual(payload.to, [{ address: "x@partner.example", name: "X Partner" }]);
    assert.deepEqual(payload.cc, [{ address: "hanako@example.co.jp", name: "Hanako" }]);
    assert.deepEqual(payload.bcc, []);
    assert.equal(payload.subject, "見積書");
    assert.equal(payload.body, "Please find the quote attached.");
    assert.deepEqual(payload.attachments, [
      { id: "att-1", name: "見積.pdf", size: 12, contentType: "application/pdf", isInline: false, content: "JVBERi0xLjQK" },
    ]);
    assert.equal(helper.polls, 0);
    assert.equal(outlook.state.completedCount, 1);
  });

  test("waits for the user to confirm in the window, then allows", async () => {
    const { result } = await send({}, { onCheck: () => ({ state: "awaiting_confirmation" }) }, { pollWaitSeconds: 25 });
    await helper.waitForPoll(1);
    helper.decide("ob-1", { state: "sent" });
    assert.deepEqual(await result, { allowEvent: true });
    assert.equal(helper.cancels.length, 0);
  });

  test("cancelled in the window: blocked with the helper's message", async () => {
    const { result } = await send({}, { onCheck: () => ({ state: "awaiting_confirmation" }) });
    await helper.waitForPoll(1);
    helper.decide("ob-1", { state: "cancelled", user_message: "You cancelled this message in SendGuard." });
    assert.deepEqual(await result, { allowEvent: false, errorMessage: "You cancelled this message in SendGuard." });
  });

  test("block verdict: cancelled at once", async () => {
    const { result } = await send({}, {
      onCheck: () => ({ state: "cancelled", user_message: "rival.example is a blocked domain." }),
    });
    assert.deepEqual(await result, { allowEvent: false, errorMessage: "rival.example is a blocked domain." });
  });

  test("held for approval: blocked, naming the approvers", async () => {
    const { result } = await send({}, { onCheck: () => ({ state: "awaiting_confirmation" }) });
    await helper.waitForPoll(1);
    helper.decide("ob-1", { state: "awaiting_approval", approvers: ["boss@example.co.jp", "lead@example.co.jp"] });
    const completed = await result;
    assert.equal(completed.allowEvent, false);
    assert.match(completed.errorMessage, /approval by boss@example\.co\.jp, lead@example\.co\.jp/);
    assert.match(completed.errorMessage, /SendGuard sends it after approval/);
    assert.equal(helper.cancels.length, 0, "a held message must stay held");
  });

  for (const [state, expected] of [["rejected", /rejected/], ["expired", /expired/]]) {
    test(`${state}: blocked`, async () => {
      const { result } = await send({}, { onCheck: () => ({ state }) });
      const completed = await result;
      assert.equal(completed.allowEvent, false);
      assert.match(completed.errorMessage, expected);
    });
  }

  test("no decision in time: blocked, and the item is withdrawn from the helper", async () => {
    const { result } = await send({}, { onCheck: () => ({ state: "awaiting_confirmation" }) },
      { budgetMs: 1500, pollWaitSeconds: 1 });
    const completed = await result;
    assert.equal(completed.allowEvent, false);
    assert.match(completed.errorMessage, /nothing was decided in the SendGuard window in time/);
    assert.deepEqual(helper.cancels, ["ob-1"]);
  });

  test("helper stops answering: blocked within the budget", async () => {
    const started = Date.now();
    const { result } = await send({}, { onCheck: () => ({ state: "awaiting_confirmation" }), hangPolls: true },
      { budgetMs: 1500, pollWaitSeconds: 1, requestSlackMs: 200, cancelTimeoutMs: 200 });
    const completed = await result;
    assert.equal(completed.allowEvent, false);
    assert.match(completed.errorMessage, /SendGuard stopped this message/);
    assert.ok(Date.now() - started < 5000, "gave up in time");
  });

  test("helper refuses the session: blocked with its reason", async () => {
    const { result } = await send({}, { sessionStatus: 403 });
    const completed = await result;
    assert.equal(completed.allowEvent, false);
    assert.match(completed.errorMessage, /refused it \(origin refused\)/);
  });

  test("an API error is shown, not swallowed", async () => {
    const { result } = await send({}, {
      onCheck: () => ({ status: 413, body: { error: { code: "too_large", message: "message too large" } } }),
    });
    const completed = await result;
    assert.equal(completed.allowEvent, false);
    assert.match(completed.errorMessage, /message too large/);
  });

  test("expired token: a new session, then the same request", async () => {
    const { result } = await send({}, {
      onCheck: () => {
        helper.expireTokens(); // the next request carries a token the helper no longer knows
        return { state: "awaiting_confirmation" };
      },
    });
    await helper.waitForPoll(2);
    helper.decide("ob-1", { state: "sent" });
    assert.deepEqual(await result, { allowEvent: true });
    assert.ok(helper.sessions >= 2);
  });

  test("recipients removed in the window are removed from the message", async () => {
    const { outlook, result } = await send({
      to: [{ emailAddress: "x@partner.example", displayName: "X" }, { emailAddress: "Y@Other.example", displayName: "Y" }],
    }, { onCheck: () => ({ state: "awaiting_confirmation" }) });
    await helper.waitForPoll(1);
    helper.decide("ob-1", { state: "sent", decision: {
      removed_recipients: ["y@other.example"], removed_attachments: [], bcc: false, bcc_addresses: [],
    } });
    assert.deepEqual(await result, { allowEvent: true });
    assert.deepEqual(outlook.state.to.map((r) => r.emailAddress), ["x@partner.example"]);
    assert.deepEqual(outlook.state.cc.map((r) => r.emailAddress), ["hanako@example.co.jp"]);
    assert.ok(outlook.state.calls.includes("to.setAsync"));
    assert.ok(!outlook.state.calls.includes("cc.setAsync"), "unchanged fields are left alone");
  });

  test("attachments removed in the window are removed from the message", async () => {
    const { outlook, result } = await send({
      attachments: [
        { id: "att-1", name: "a.pdf", size: 3, isInline: false, attachmentType: "file", content: { format: "base64", content: "YWJj" } },
        { id: "att-2", name: "b.xlsx", size: 3, isInline: false, attachmentType: "file", content: { format: "base64", content: "ZGVm" } },
      ],
    }, { onCheck: () => ({ state: "sent", decision: {
      removed_recipients: [], removed_attachments: ["att-2"], bcc: false, bcc_addresses: [],
    } }) });
    assert.deepEqual(await result, { allowEvent: true });
    assert.deepEqual(outlook.state.attachments.map((a) => a.id), ["att-1"]);
  });

  test("Convert to BCC moves the listed recipients into Bcc", async () => {
    const { outlook, result } = await send({
      to: [{ emailAddress: "a@one.example", displayName: "A" }, { emailAddress: "b@two.example", displayName: "B" }],
      cc: [{ emailAddress: "hanako@example.co.jp", displayName: "Hanako" }],
      bcc: [{ emailAddress: "archive@example.co.jp", displayName: "Archive" }],
    }, { onCheck: () => ({ state: "sent", decision: {
      removed_recipients: [], removed_attachments: [], bcc: true, bcc_addresses: ["a@one.example", "B@two.example"],
    } }) });
    assert.deepEqual(await result, { allowEvent: true });
    assert.deepEqual(outlook.state.to, []);
    assert.deepEqual(outlook.state.cc.map((r) => r.emailAddress), ["hanako@example.co.jp"]);
    assert.deepEqual(outlook.state.bcc.map((r) => r.emailAddress),
      ["archive@example.co.jp", "a@one.example", "b@two.example"]);
    assert.ok(outlook.state.calls.indexOf("bcc.setAsync") < outlook.state.calls.indexOf("to.setAsync"),
      "Bcc is filled before To is emptied");
  });

  test("every recipient removed: blocked, nothing changed", async () => {
    const { outlook, result } = await send({ cc: [] }, { onCheck: () => ({ state: "sent", decision: {
      removed_recipients: ["x@partner.example"], removed_attachments: [], bcc: false, bcc_addresses: [],
    } }) });
    const completed = await result;
    assert.equal(completed.allowEvent, false);
    assert.match(completed.errorMessage, /every recipient was removed/);
    assert.equal(outlook.state.to.length, 1);
  });

  test("a change that cannot be applied blocks the send", async () => {
    const { result } = await send({ failures: { removeAttachmentAsync: "InvalidAttachmentId" } }, {
      onCheck: () => ({ state: "sent", decision: {
        removed_recipients: [], removed_attachments: ["att-1"], bcc: false, bcc_addresses: [],
      } }),
    });
    const completed = await result;
    assert.equal(completed.allowEvent, false);
    assert.match(completed.errorMessage, /"見積.pdf" could not be removed from it \(removeAttachmentAsync failed: InvalidAttachmentId\)/);
  });

  test("an exception while reading the message blocks the send", async () => {
    const { result } = await send({ throws: { "to.getAsync": "host object gone" } });
    const completed = await result;
    assert.equal(completed.allowEvent, false);
    assert.match(completed.errorMessage, /stopped this message because of an error: host object gone/);
    assert.equal(helper.checks.length, 0);
  });

  test("a failed Office.js read blocks the send", async () => {
    const { result } = await send({ failures: { "body.getAsync": "InternalServerError" } });
    const completed = await result;
    assert.equal(completed.allowEvent, false);
    assert.match(completed.errorMessage, /body.getAsync failed: InternalServerError/);
  });

  test("an unsaved new message is saved once to get its id", async () => {
    const { outlook, result } = await send({ itemId: null });
    assert.deepEqual(await result, { allowEvent: true });
    assert.equal(helper.checks[0].item_id, "AAMkSAVED=");
    assert.ok(outlook.state.calls.includes("saveAsync"));
  });

  test("attachment contents: eml is encoded, cloud files and oversize files are sent without content", async () => {
    const { result } = await send({
      attachments: [
        { id: "m", name: "fwd.eml", size: 20, isInline: false, attachmentType: "item", content: { format: "eml", content: "Subject: é\r\n\r\nhi" } },
        { id: "c", name: "share", size: 10, isInline: false, attachmentType: "cloud", content: { format: "url", content: "https://x" } },
        { id: "big", name: "big.bin", size: 50, isInline: false, attachmentType: "file", content: { format: "base64", content: "AAAA" } },
        { id: "img", name: "", size: 4, isInline: true, attachmentType: "file", content: { format: "base64", content: "iVBO" } },
      ],
    }, undefined, { maxAttachmentBytes: 40 });
    assert.deepEqual(await result, { allowEvent: true });
    const sent = Object.fromEntries(helper.checks[0].attachments.map((a) => [a.id, a]));
    assert.equal(Buffer.from(sent.m.content, "base64").toString("utf8"), "Subject: é\r\n\r\nhi");
    assert.equal(sent.m.contentType, "message/rfc822");
    assert.equal(sent.c.name, "share");
    assert.equal(sent.c.content, null);
    assert.equal(sent.big.content, null);
    assert.equal(sent.img.content, "iVBO");
    assert.equal(sent.img.isInline, true);
    assert.equal(sent.img.name, "unnamed attachment");
  });

  test("Japanese Outlook gets Japanese messages", async () => {
    const { result } = await send({ displayLanguage: "ja-JP" }, { onCheck: () => ({ state: "rejected" }) });
    const completed = await result;
    assert.equal(completed.allowEvent, false);
    assert.match(completed.errorMessage, /却下/);
  });
});

describe("helper not running", () => {
  test("blocked, saying how to start it", async () => {
    const { office, state } = fakeOutlook();
    loadAddin(office, { apiBase: await deadBase(), settings: FAST });
    const completed = await pressSend(state);
    assert.equal(completed.allowEvent, false);
    assert.match(completed.errorMessage, /helper is not running/);
    assert.match(completed.errorMessage, /sendguard serve/);
  });

  test("a fetch that throws synchronously still blocks", async () => {
    const { office, state } = fakeOutlook();
    loadAddin(office, { apiBase: "http://127.0.0.1:9", settings: FAST, fetchImpl: () => { throw new TypeError("boom"); } });
    const completed = await pressSend(state);
    assert.equal(completed.allowEvent, false);
    assert.match(completed.errorMessage, /SendGuard stopped this message/);
  });

  test("the message shown is at most 500 characters", async () => {
    let helper;
    try {
      helper = await startHelper({ onCheck: () => ({ state: "cancelled", user_message: "x".repeat(2000) }) });
      const { office, state } = fakeOutlook();
      loadAddin(office, { apiBase: helper.base, settings: FAST });
      const completed = await pressSend(state);
      assert.equal(completed.errorMessage.length, 500);
    } finally {
      await helper.close();
    }
  });
});

describe("planRecipients", () => {
  let addin;
  beforeEach(() => {
    addin = loadAddin(fakeOutlook().office, { apiBase: "http://127.0.0.1:9" });
  });
  const r = (address) => ({ address, name: address });
  const addrs = (plan) => ({ to: plan.to.map((x) => x.address), cc: plan.cc.map((x) => x.address), bcc: plan.bcc.map((x) => x.address) });

  const cases = [
    ["nothing to do", { to: ["a@x"], cc: [], bcc: [] }, {}, { to: ["a@x"], cc: [], bcc: [] }, []],
    ["remove case-insensitively", { to: ["A@X", "b@y"], cc: ["c@z"], bcc: [] }, { removed_recipients: ["a@x", "c@Z"] },
      { to: ["b@y"], cc: [], bcc: [] }, ["to", "cc"]],
    ["bcc without a list moves all To/Cc", { to: ["a@x"], cc: ["b@y"], bcc: [] }, { bcc: true },
      { to: [], cc: [], bcc: ["a@x", "b@y"] }, ["to", "cc", "bcc"]],
    ["bcc does not duplicate", { to: ["a@x"], cc: [], bcc: ["a@x"] }, { bcc: true, bcc_addresses: ["a@x"] },
      { to: [], cc: [], bcc: ["a@x"] }, ["to"]],
    ["removed wins over moved", { to: ["a@x", "b@y"], cc: [], bcc: [] },
      { removed_recipients: ["a@x"], bcc: true, bcc_addresses: ["a@x", "b@y"] }, { to: [], cc: [], bcc: ["b@y"] }, ["to", "bcc"]],
  ];
  for (const [name, current, decision, expected, changed] of cases) {
    test(name, () => {
      const plan = addin.planRecipients(
        { to: current.to.map(r), cc: current.cc.map(r), bcc: current.bcc.map(r) }, decision);
      assert.deepEqual(addrs(plan), expected);
      assert.deepEqual(Object.keys(plan.changed).filter((f) => plan.changed[f]).sort(), changed.sort());
    });
  }
});

describe("outcomeFor", () => {
  test("states that keep the handler waiting", () => {
    const addin = loadAddin(fakeOutlook().office, { apiBase: "http://127.0.0.1:9" });
    for (const state of ["received", "awaiting_confirmation", "confirmed", "approved", "releasing", "failed"]) {
      assert.equal(addin.outcomeFor({ state }), null, state);
    }
  });
});

test("utf8Base64 matches Buffer", () => {
  const addin = loadAddin(fakeOutlook().office, { apiBase: "http://127.0.0.1:9" });
  for (const s of ["", "a", "ab", "abc", "社外秘 ✓ 𝄞 é"]) {
    assert.equal(addin.utf8Base64(s), Buffer.from(s, "utf8").toString("base64"));
  }
});
