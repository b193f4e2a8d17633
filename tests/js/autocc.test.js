// Recipients the policy adds ([[rules.auto_cc]]: the decision's added_cc / added_bcc) are added to the
// Outlook item with Recipients.addAsync, read back, and never reported as added when they are not.
"use strict";

const assert = require("node:assert/strict");
const { test, describe, afterEach } = require("node:test");
const { fakeOutlook, loadAddin, pressSend, startHelper } = require("./harness");

const FAST = { retryDelayMs: 10, pollWaitSeconds: 1 };
const MAX_ASYNC_CALLS = 3;

function decision(extra) {
  return { removed_recipients: [], removed_attachments: [], bcc: false, bcc_addresses: [], added_cc: [], added_bcc: [],
    ...extra };
}

describe("recipients added by the policy", () => {
  let helper;
  afterEach(async () => helper && (await helper.close()));

  async function send(outlookOverrides, answer, settings) {
    helper = await startHelper({ onCheck: () => answer });
    const outlook = fakeOutlook(outlookOverrides);
    loadAddin(outlook.office, { apiBase: helper.base, settings: { ...FAST, ...settings } });
    return { outlook, result: pressSend(outlook.state) };
  }

  const fields = (state) => ({
    to: state.to.map((r) => r.emailAddress), cc: state.cc.map((r) => r.emailAddress), bcc: state.bcc.map((r) => r.emailAddress),
  });

  test("added Cc and Bcc land in their fields, then the send goes on", async () => {
    const { outlook, result } = await send({ latencyMs: 3 }, { state: "sent", decision: decision({
      added_cc: ["boss@example.co.jp"], added_bcc: ["archive@example.co.jp"],
    }) });
    assert.deepEqual(await result, { allowEvent: true });
    assert.deepEqual(fields(outlook.state), {
      to: ["x@partner.example"], cc: ["hanako@example.co.jp", "boss@example.co.jp"], bcc: ["archive@example.co.jp"],
    });
    const calls = outlook.state.calls;
    assert.ok(calls.includes("cc.addAsync") && calls.includes("bcc.addAsync"));
    assert.ok(!calls.includes("cc.setAsync"), "the user's own Cc is added to, never replaced");
    assert.ok(calls.lastIndexOf("bcc.getAsync") > calls.indexOf("bcc.addAsync"), "read back after adding");
    assert.deepEqual(outlook.state.overLimit, []);
    assert.ok(outlook.state.maxInFlight <= MAX_ASYNC_CALLS);
  });

  test("an address already on the message is not added again", async () => {
    const { outlook, result } = await send({}, { state: "sent", decision: decision({
      added_cc: ["Hanako@Example.co.jp"], added_bcc: ["x@partner.example"],
    }) });
    assert.deepEqual(await result, { allowEvent: true });
    assert.deepEqual(outlook.state.added || [], []);
    assert.ok(!outlook.state.calls.includes("cc.addAsync"));
  });

  test("an address the user removed is not added back", async () => {
    const { outlook, result } = await send({}, { state: "sent", decision: decision({
      removed_recipients: ["boss@example.co.jp"], added_cc: ["boss@example.co.jp"],
    }) });
    assert.deepEqual(await result, { allowEvent: true });
    assert.deepEqual(fields(outlook.state).cc, ["hanako@example.co.jp"]);
  });

  test("Convert to BCC: an added Cc the helper moved to Bcc goes to Bcc", async () => {
    const { outlook, result } = await send({}, { state: "sent", decision: decision({
      bcc: true, bcc_addresses: ["x@partner.example", "advisor@partner.example"], added_cc: ["advisor@partner.example"],
    }) });
    assert.deepEqual(await result, { allowEvent: true });
    assert.deepEqual(fields(outlook.state), {
      to: [], cc: ["hanako@example.co.jp"], bcc: ["x@partner.example", "advisor@partner.example"],
    });
  });

  test("Outlook answers success but does not add: stopped, the address named, nothing claimed", async () => {
    const { outlook, result } = await send({ ignoreAdds: ["archive@example.co.jp"] }, { state: "sent", decision: decision({
      added_cc: ["boss@example.co.jp"], added_bcc: ["archive@example.co.jp"],
    }) });
    const completed = await result;
    assert.equal(completed.allowEvent, false);
    assert.match(completed.errorMessage, /adds archive@example\.co\.jp \(bcc\), and Outlook did not add them \(not in bcc after adding\)/);
    assert.doesNotMatch(completed.errorMessage, /boss@/, "only what is missing is named");
    assert.deepEqual(fields(outlook.state).bcc, []);
  });

  test("stopped after SendGuard cleared it: the helper is told the send was stopped", async () => {
    const { result } = await send({ failures: { "cc.addAsync": "NumberOfRecipientsExceeded" } }, {
      state: "sent", decision: decision({ added_cc: ["boss@example.co.jp"] }),
    });
    const completed = await result;
    assert.equal(completed.allowEvent, false);
    assert.deepEqual(helper.cancels, ["ob-1"]);
    assert.equal(helper.cancelBodies[0].stopped_send, true);
    assert.equal(helper.cancelBodies[0].reason, completed.errorMessage);
    assert.equal(helper.items.get("ob-1").state, "cancelled", "the helper's record no longer says sent");
  });

  test("addAsync fails: stopped with Outlook's reason", async () => {
    const { result } = await send({ failures: { "cc.addAsync": "NumberOfRecipientsExceeded" } }, {
      state: "sent", decision: decision({ added_cc: ["boss@example.co.jp"] }),
    });
    const completed = await result;
    assert.equal(completed.allowEvent, false);
    assert.match(completed.errorMessage, /boss@example\.co\.jp \(cc\).*cc\.addAsync failed: NumberOfRecipientsExceeded/);
  });

  test("Japanese Outlook: the stop is said in Japanese", async () => {
    const { result } = await send({ displayLanguage: "ja-JP", ignoreAdds: ["boss@example.co.jp"] }, {
      state: "sent", decision: decision({ added_cc: ["boss@example.co.jp"] }),
    });
    const completed = await result;
    assert.equal(completed.allowEvent, false);
    assert.match(completed.errorMessage, /組織のポリシーで boss@example\.co\.jp を cc に追加しますが/);
  });

  test("a decision without additions makes no add call", async () => {
    const { outlook, result } = await send({}, { state: "sent", decision: decision({}) });
    assert.deepEqual(await result, { allowEvent: true });
    assert.ok(!outlook.state.calls.some((c) => c.endsWith(".addAsync")));
  });
});

describe("meeting invitations with recipients added by the policy", () => {
  let helper;
  afterEach(async () => helper && (await helper.close()));

  async function sendInvite(answer) {
    helper = await startHelper({ onCheck: () => answer });
    const outlook = fakeOutlook({ itemType: "appointment" });
    loadAddin(outlook.office, { apiBase: helper.base, settings: FAST });
    return { outlook, result: pressSend(outlook.state) };
  }

  test("an added Cc becomes an optional attendee", async () => {
    const { outlook, result } = await sendInvite({ state: "sent", decision: decision({ added_cc: ["boss@example.co.jp"] }) });
    assert.deepEqual(await result, { allowEvent: true });
    assert.deepEqual(outlook.state.optionalAttendees.map((r) => r.emailAddress), ["boss@example.co.jp"]);
    assert.ok(outlook.state.calls.includes("optionalAttendees.addAsync"));
  });

  test("an added Bcc cannot be put on a meeting: stopped, nothing changed", async () => {
    const { outlook, result } = await sendInvite({ state: "sent", decision: decision({ added_bcc: ["archive@example.co.jp"] }) });
    const completed = await result;
    assert.equal(completed.allowEvent, false);
    assert.match(completed.errorMessage, /adds archive@example\.co\.jp as Bcc, and a meeting has no Bcc/);
    assert.deepEqual(outlook.state.added || [], []);
  });
});
