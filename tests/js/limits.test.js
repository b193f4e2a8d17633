// What Outlook itself imposes on the add-in, enforced by the stand-in host in harness.js:
// ECMAScript 2016 without the conditional operator, at most three Office.js calls in flight,
// inline pictures that removeAttachmentAsync does not remove, ids Graph can use, meetings.
"use strict";

const assert = require("node:assert/strict");
const { test, describe, afterEach } = require("node:test");
const { fakeOutlook, loadAddin, pressSend, startHelper, restIdOf, MAX_ASYNC_CALLS, SCRIPT } = require("./harness");
const esLevel = require("./es_level");

const FAST = { retryDelayMs: 10, pollWaitSeconds: 1 };

describe("ECMAScript level of the runtime script", () => {
  test("launchevent.js is ECMAScript 2016 and has no conditional operator", () => {
    assert.deepEqual(esLevel.lint(SCRIPT).map(esLevel.format), []);
  });

  const refused = [
    ["conditional operator", "var a = b ? 1 : 2;", /conditional operator/],
    ["nested conditional in a call", "f(x ? y : z);", /conditional operator/],
    ["async function (ES2017)", "async function f() {}", /not ECMAScript 2016/],
    ["await (ES2017)", "async function f() { await g(); }", /not ECMAScript 2016/],
    ["object spread (ES2018)", "var o = { ...p };", /not ECMAScript 2016/],
    ["optional chaining (ES2020)", "var v = a?.b;", /not ECMAScript 2016/],
    ["nullish coalescing (ES2020)", "var v = a ?? b;", /not ECMAScript 2016/],
    ["dynamic import", "import('x');", /not ECMAScript 2016/],
    ["import declaration", "import x from 'y';", /not ECMAScript 2016|import/],
    ["class fields (ES2022)", "class A { x = 1; }", /not ECMAScript 2016/],
  ];
  for (const [name, source, why] of refused) {
    test(`the lint refuses: ${name}`, () => {
      const problems = esLevel.lint(source);
      assert.ok(problems.length > 0, `${source} passed the lint`);
      assert.match(problems[0].message, why);
    });
  }

  test("the lint accepts ES2016 (exponent operator, Array.prototype.includes, arrows)", () => {
    assert.deepEqual(esLevel.lint("var a = 2 ** 3; [1].includes(1); var f = (x) => x;"), []);
  });

  test("the stand-in Outlook refuses to load a script with a conditional operator", () => {
    const { office } = fakeOutlook();
    const bad = SCRIPT.replace('"use strict";', '"use strict";\n  var unused = global ? 1 : 2;');
    assert.throws(() => loadAddin(office, { apiBase: "http://127.0.0.1:9", source: bad }), /conditional operator/);
  });
});

describe("the stand-in Outlook enforces the call limit", () => {
  test("a fourth simultaneous call fails", async () => {
    const { office, state } = fakeOutlook();
    const item = office.context.mailbox.item;
    const results = await Promise.all(["to", "cc", "bcc", "subject"].map((f) =>
      new Promise((resolve) => item[f].getAsync(resolve))));
    assert.deepEqual(results.map((r) => r.status), ["succeeded", "succeeded", "succeeded", "failed"]);
    assert.deepEqual(state.overLimit, ["subject.getAsync"]);
  });
});

describe("sending within Outlook's limits", () => {
  let helper;
  afterEach(async () => helper && (await helper.close()));

  async function send(outlookOverrides, helperOptions, settings) {
    helper = await startHelper(helperOptions);
    const outlook = fakeOutlook(outlookOverrides);
    loadAddin(outlook.office, { apiBase: helper.base, settings: { ...FAST, ...settings } });
    return { outlook, result: pressSend(outlook.state) };
  }

  const manyAttachments = Array.from({ length: 6 }, (_, i) => ({
    id: `att-${i}`, name: `f${i}.txt`, size: 3, isInline: false, attachmentType: "file",
    content: { format: "base64", content: "YWJj" },
  }));

  test("never more than three Office.js calls in flight while reading and amending", async () => {
    const { outlook, result } = await send({ attachments: manyAttachments, latencyMs: 5 }, {
      onCheck: () => ({ state: "sent", decision: {
        removed_recipients: ["hanako@example.co.jp"], removed_attachments: ["att-1", "att-4"], bcc: true, bcc_addresses: [],
      } }),
    });
    assert.deepEqual(await result, { allowEvent: true });
    assert.deepEqual(outlook.state.overLimit, []);
    assert.equal(outlook.state.maxInFlight, MAX_ASYNC_CALLS, "reads still overlap up to the limit");
    assert.equal(helper.checks[0].attachments.length, 6);
    assert.deepEqual(outlook.state.attachments.map((a) => a.id), ["att-0", "att-2", "att-3", "att-5"]);
  });

  test("a lower pool size is honoured", async () => {
    const { outlook, result } = await send({}, { onCheck: () => ({ state: "sent" }) }, { maxOfficeCalls: 1 });
    assert.deepEqual(await result, { allowEvent: true });
    assert.equal(outlook.state.maxInFlight, 1);
  });

  test("the item id goes to the helper in EWS and in REST (Graph) format", async () => {
    const ews = "AAMkAGI2/TG93+AAA=";
    const { result } = await send({ itemId: ews }, { onCheck: () => ({ state: "sent" }) });
    assert.deepEqual(await result, { allowEvent: true });
    assert.equal(helper.checks[0].item_id, ews);
    assert.equal(helper.checks[0].rest_item_id, restIdOf(ews));
    assert.equal(helper.checks[0].rest_item_id, "AAMkAGI2-TG93_AAA=");
  });

  test("no convertToRestId in this Outlook: the REST id is null, the send still checked", async () => {
    helper = await startHelper({ onCheck: () => ({ state: "sent" }) });
    const outlook = fakeOutlook();
    outlook.office.context.mailbox.convertToRestId = undefined;
    loadAddin(outlook.office, { apiBase: helper.base, settings: FAST });
    assert.deepEqual(await pressSend(outlook.state), { allowEvent: true });
    assert.equal(helper.checks[0].rest_item_id, null);
  });

  test("an inline picture Outlook does not remove is never reported as removed: the send stops", async () => {
    const { outlook, result } = await send({
      attachments: [
        { id: "att-1", name: "a.pdf", size: 3, isInline: false, attachmentType: "file", content: { format: "base64", content: "YWJj" } },
        { id: "img-1", name: "logo.png", size: 3, isInline: true, attachmentType: "file", content: { format: "base64", content: "iVBO" } },
      ],
    }, { onCheck: () => ({ state: "sent", decision: {
      removed_recipients: [], removed_attachments: ["att-1", "img-1"], bcc: false, bcc_addresses: [],
    } }) });
    const completed = await result;
    assert.equal(completed.allowEvent, false);
    assert.match(completed.errorMessage, /"logo\.png" could not be removed/);
    assert.match(completed.errorMessage, /Outlook does not remove inline pictures/);
    assert.doesNotMatch(completed.errorMessage, /a\.pdf/, "the file that was removed is not named");
    assert.deepEqual(outlook.state.attachments.map((a) => a.id), ["img-1"]);
    const removes = outlook.state.calls.lastIndexOf("removeAttachmentAsync");
    assert.ok(outlook.state.calls.indexOf("getAttachmentsAsync", removes) > removes, "re-read after removal");
  });

  test("a removed inline picture that Outlook did remove lets the send go", async () => {
    const { outlook, result } = await send({
      attachments: [{ id: "img-1", name: "logo.png", size: 3, isInline: false, attachmentType: "file",
        content: { format: "base64", content: "iVBO" } }],
    }, { onCheck: () => ({ state: "sent", decision: {
      removed_recipients: [], removed_attachments: ["img-1"], bcc: false, bcc_addresses: [],
    } }) });
    assert.deepEqual(await result, { allowEvent: true });
    assert.deepEqual(outlook.state.attachments, []);
  });
});

describe("meeting invitations (OnAppointmentSend)", () => {
  let helper;
  afterEach(async () => helper && (await helper.close()));

  async function sendInvite(outlookOverrides, helperOptions) {
    helper = await startHelper(helperOptions);
    const outlook = fakeOutlook({ itemType: "appointment", ...outlookOverrides });
    loadAddin(outlook.office, { apiBase: helper.base, settings: FAST });
    return { outlook, result: pressSend(outlook.state) };
  }

  test("attendees are checked as recipients", async () => {
    const { outlook, result } = await sendInvite({
      requiredAttendees: [{ emailAddress: "x@partner.example", displayName: "X" }],
      optionalAttendees: [{ emailAddress: "y@other.example", displayName: "Y" }],
    }, { onCheck: () => ({ state: "sent" }) });
    assert.deepEqual(await result, { allowEvent: true });
    const payload = helper.checks[0];
    assert.equal(payload.item_type, "appointment");
    assert.deepEqual(payload.to, [{ address: "x@partner.example", name: "X" }]);
    assert.deepEqual(payload.cc, [{ address: "y@other.example", name: "Y" }]);
    assert.deepEqual(payload.bcc, []);
    assert.deepEqual(payload.from, { address: "taro@example.co.jp", name: "Taro Yamada" });
    assert.ok(outlook.state.calls.includes("organizer.getAsync"));
    assert.deepEqual(outlook.state.overLimit, []);
  });

  test("an attendee removed in the window is removed from the invitation", async () => {
    const { outlook, result } = await sendInvite({
      requiredAttendees: [{ emailAddress: "x@partner.example", displayName: "X" }, { emailAddress: "z@rival.example", displayName: "Z" }],
    }, { onCheck: () => ({ state: "sent", decision: {
      removed_recipients: ["z@rival.example"], removed_attachments: [], bcc: false, bcc_addresses: [],
    } }) });
    assert.deepEqual(await result, { allowEvent: true });
    assert.deepEqual(outlook.state.requiredAttendees.map((r) => r.emailAddress), ["x@partner.example"]);
  });

  test("Convert to BCC cannot apply to a meeting: stopped, nothing changed", async () => {
    const { outlook, result } = await sendInvite({}, { onCheck: () => ({ state: "sent", decision: {
      removed_recipients: [], removed_attachments: [], bcc: true, bcc_addresses: [],
    } }) });
    const completed = await result;
    assert.equal(completed.allowEvent, false);
    assert.match(completed.errorMessage, /a meeting has no Bcc/);
    assert.equal(outlook.state.requiredAttendees.length, 1);
  });

  test("blocked by policy: the invitation is not sent", async () => {
    const { result } = await sendInvite({}, { onCheck: () => ({ state: "cancelled", user_message: "Blocked by policy: rival" }) });
    assert.deepEqual(await result, { allowEvent: false, errorMessage: "Blocked by policy: rival" });
  });
});

describe("served by a central server (Office single sign-on)", () => {
  let helper;
  afterEach(async () => helper && (await helper.close()));

  test("the session is opened with the Office SSO token, without prompts", async () => {
    helper = await startHelper({ onCheck: () => ({ state: "sent" }) });
    const outlook = fakeOutlook({ ssoToken: "eyJ.sso.token" });
    loadAddin(outlook.office, { apiBase: helper.base, settings: FAST, sso: true });
    assert.deepEqual(await pressSend(outlook.state), { allowEvent: true });
    assert.equal(helper.sessionAuth, "Bearer eyJ.sso.token");
    assert.deepEqual(JSON.parse(JSON.stringify(outlook.state.ssoOptions)), { allowSignInPrompt: false, allowConsentPrompt: false, forMSGraphAccess: false });
  });

  test("no SSO token: stopped, saying the sign-in failed, nothing submitted", async () => {
    helper = await startHelper({ onCheck: () => ({ state: "sent" }) });
    const outlook = fakeOutlook({ ssoToken: null });
    loadAddin(outlook.office, { apiBase: helper.base, settings: FAST, sso: true });
    const completed = await pressSend(outlook.state);
    assert.equal(completed.allowEvent, false);
    assert.match(completed.errorMessage, /could not sign you in to SendGuard \(13001 no SSO token\)/);
    assert.equal(helper.checks.length, 0);
    assert.equal(helper.sessions, 0);
  });

  test("served by the helper: no sign-in is attempted", async () => {
    helper = await startHelper({ onCheck: () => ({ state: "sent" }) });
    const outlook = fakeOutlook({ ssoToken: "eyJ.sso.token" });
    loadAddin(outlook.office, { apiBase: helper.base, settings: FAST });
    assert.deepEqual(await pressSend(outlook.state), { allowEvent: true });
    assert.equal(helper.sessionAuth, null);
    assert.ok(!outlook.state.calls.includes("auth.getAccessToken"));
  });
});
