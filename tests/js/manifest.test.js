// The checked-in XML manifest converts (with Microsoft's converter) to a unified manifest that
// runs onMessageSendHandler on messageSending and onAppointmentSendHandler on appointmentSending
// from the helper's own URLs.
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

  // Microsoft: the unified manifest gets its own GUID and hides the XML manifest's add-in.
  assert.notEqual(ours.id, converted.id);
  assert.deepEqual(ours.extensions[0].alternates, [{ hide: { customOfficeAddin: { officeAddinId: converted.id } } }]);
  const [ext] = converted.extensions;
  assert.deepEqual(ext.autoRunEvents[0].events, ours.extensions[0].autoRunEvents[0].events);
  assert.deepEqual(ext.runtimes[0].code, ours.extensions[0].runtimes[0].code);
  assert.deepEqual(ext.runtimes[0].actions.map((a) => a.id).sort(), ["onAppointmentSendHandler", "onMessageSendHandler"]);
  assert.deepEqual(converted.authorization, ours.authorization);
});
