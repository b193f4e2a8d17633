// The syntax the add-in's runtime script may use.
//
// Classic Outlook on Windows before Version 2403 runs the Smart Alerts handler in a JavaScript-only
// runtime that accepts ECMAScript 2016 and no later, and Microsoft's troubleshooting page for
// event-based add-ins warns that the conditional operator (`a ? b : c`) can keep the script from
// loading. So the script is parsed as ES2016 (a later construct is a syntax error) and its syntax
// tree is walked for the constructs banned on top of that.
//
// Run on its own: `node es_level.js FILE...` (exit status 1 and one line per problem).
"use strict";

const acorn = require("acorn");
const walk = require("acorn-walk");

const ECMA_VERSION = 2016;

// node type -> why it is refused (constructs that parse at ES2016 but break the runtime).
const BANNED = {
  ConditionalExpression: "the conditional operator (?:) keeps classic Outlook's JavaScript-only runtime " +
    "from loading the script; use if/else",
  ImportExpression: "no imports in the JavaScript-only runtime",
};

/**
 * Problems in `source` as [{line, column, message}]; empty when the script is fit for the runtime.
 */
function lint(source, { filename = "<script>" } = {}) {
  let ast;
  try {
    ast = acorn.parse(source, { ecmaVersion: ECMA_VERSION, sourceType: "script", locations: true });
  } catch (err) {
    const loc = err.loc || { line: 0, column: 0 };
    return [{ filename, line: loc.line, column: loc.column,
      message: `not ECMAScript ${ECMA_VERSION}: ${err.message.replace(/ \(\d+:\d+\)$/, "")}` }];
  }
  const problems = [];
  walk.full(ast, (node) => {
    if (BANNED[node.type]) {
      problems.push({ filename, line: node.loc.start.line, column: node.loc.start.column, message: BANNED[node.type] });
    }
  });
  return problems;
}

function format(p) {
  return `${p.filename}:${p.line}:${p.column}: ${p.message}`;
}

if (require.main === module) {
  const fs = require("node:fs");
  let bad = 0;
  for (const file of process.argv.slice(2)) {
    for (const p of lint(fs.readFileSync(file, "utf8"), { filename: file })) {
      bad += 1;
      process.stderr.write(format(p) + "\n");
    }
  }
  process.exit(bad ? 1 : 0);
}

module.exports = { lint, format, ECMA_VERSION };
