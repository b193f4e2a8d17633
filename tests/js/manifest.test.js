// The checked-in XML manifest converts (with Microsoft's converter) to a unified manifest that
// runs onMessageSendHandler on messageSending from the helper's own URLs.
"use strict";

const assert = require("node:assert/strict");
const fs = require("node:fs");
const os = require("node:os");
const path = require("node:path");
const { test } = require("node:test");
const { convert } = require("office-addin-manifest-converter");

const MANIFEST_DIR = path.resolve(__dirname, "../../manifest");

test("outlook.xml converts to an equivalent unified manifest", async () => {
  const out = fs.mkdtempSync(path.join(os.tmpdir(), "sendguard-convert-"));
  const log = console.log;
  console.log = () => {}; // the converter narrates every step
  try {
    await convert(path.join(MANIFEST_DIR, "outlook.xml"), out, false);
  } finally {
    console.log = log;
  }
  const converted = JSON.parse(fs.readFileSync(path.join(out, "manifest.json"), "utf8"));
  const ours = JSON.parse(fs.readFileSync(path.join(MANIFEST_DIR, "manifest.json"), "utf8"));
  fs.rmSync(out, { recursive: true, force: true });

  assert.equal(converted.id, ours.id);
  const [ext] = converted.extensions;
  const [event] = ext.autoRunEvents[0].events;
  assert.deepEqual(event, ours.extensions[0].autoRunEvents[0].events[0]);
  assert.deepEqual(ext.runtimes[0].code, ours.extensions[0].runtimes[0].code);
  assert.equal(ext.runtimes[0].actions[0].id, "onMessageSendHandler");
  assert.deepEqual(converted.authorization, ours.authorization);
});
