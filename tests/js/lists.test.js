// Outlook tells a distribution list from a person (Office.js recipientType "distributionList"): the
// add-in passes that on, so the helper never takes a list for one address.
"use strict";

const assert = require("node:assert/strict");
const { test, afterEach } = require("node:test");
const { fakeOutlook, loadAddin, pressSend, startHelper } = require("./harness");

let helper;
afterEach(async () => helper && (await helper.close()));

test("a distribution list is reported as a list; people are not", async () => {
  helper = await startHelper({ onCheck: () => ({ state: "sent" }) });
  const outlook = fakeOutlook({
    to: [{ emailAddress: "all-staff@example.co.jp", displayName: "All staff", recipientType: "distributionList" },
      { emailAddress: "x@partner.example", displayName: "X", recipientType: "externalUser" }],
    cc: [{ emailAddress: "hanako@example.co.jp", displayName: "Hanako", recipientType: "user" }],
  });
  loadAddin(outlook.office, { apiBase: helper.base, settings: { retryDelayMs: 10, pollWaitSeconds: 1 } });
  assert.deepEqual(await pressSend(outlook.state), { allowEvent: true });
  const payload = helper.checks[0];
  assert.deepEqual(payload.to, [
    { address: "all-staff@example.co.jp", name: "All staff", list: true },
    { address: "x@partner.example", name: "X" },
  ]);
  assert.deepEqual(payload.cc, [{ address: "hanako@example.co.jp", name: "Hanako" }]);
});
