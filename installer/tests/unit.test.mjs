// The app's pure modules (src/words.ts, src/round.ts), without a browser: each is transpiled by
// the TypeScript compiler the build uses, then imported.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import ts from "typescript";

const SRC = join(dirname(fileURLToPath(import.meta.url)), "..", "src");
let dir, words, round;

async function load(name) {
  const out = ts.transpileModule(readFileSync(join(SRC, `${name}.ts`), "utf8"), {
    compilerOptions: { module: ts.ModuleKind.ES2022, target: ts.ScriptTarget.ES2022 },
  });
  const file = join(dir, `${name}.mjs`);
  writeFileSync(file, out.outputText);
  return import(pathToFileURL(file).href);
}

before(async () => {
  dir = mkdtempSync(join(tmpdir(), "installer-unit-"));
  words = await load("words");
  round = await load("round");
});
after(() => rmSync(dir, { recursive: true, force: true }));

/** A localStorage stand-in (the Storage interface the module uses). */
function storage(initial = {}) {
  const m = new Map(Object.entries(initial));
  return { getItem: (k) => m.get(k) ?? null, setItem: (k, v) => m.set(k, String(v)), map: m };
}

test("the join state in words", () => {
  assert.equal(words.joinMessage(null, null), "waiting for the first join");
  const at = new Date(2026, 11, 6, 9, 7, 5).toISOString(); // 09:07:05 on this machine's clock
  assert.equal(words.joinMessage(at, "000013"), "joined at 09:07:05 through NetID 000013");
  assert.equal(words.clockTime("not a time"), "not a time");
});

test("every claim outcome has its sentence", () => {
  const d = { netId: "000013", retryAfter: 42, message: "boom" };
  assert.equal(words.claimMessage("claimed", d), "Claimed: this meter is now yours, with home NetID 000013.");
  assert.equal(words.claimMessage("too_many_attempts", d), "Too many attempts: wait 42 seconds before trying again.");
  assert.equal(words.claimMessage("failed", d), "The claim failed: boom.");
  // A refused key is told with the server's own reason, or a general one without it.
  assert.equal(words.claimMessage("signed_out", d), "Your API key was refused (boom): sign in again.");
  assert.equal(words.keyRefusedMessage(undefined), "Your API key was refused (unknown or expired): sign in again.");
  for (const o of Object.keys(words.OUTCOME_STATE)) {
    assert.match(words.claimMessage(o, d), /^[A-Z].*\.$/, o);
  }
});

test("other kinds of code are named; a DevEUI is grouped for reading aloud", () => {
  const matter = { valid: false, error: "x", kind: "bad_preface", field: "preface", position: 0, other_format: "Matter onboarding code (MT:)" };
  assert.equal(words.otherFormatMessage(matter), "This is a Matter onboarding code (MT:), not a LoRaWAN (TR005) code: it cannot be claimed here.");
  assert.equal(words.otherFormatMessage({ ...matter, other_format: null }), null);
  assert.equal(words.invalidMessage(matter), "invalid code: x");
  assert.equal(words.groupedEui("0004A30B001C0530"), "0004 A30B 001C 0530");
});

test("the round: updated in place, new meters first, kept in storage, corrupt storage is empty", () => {
  let r = round.upsert([], { dev_eui: "A" });
  r = round.upsert(r, { dev_eui: "B", state: "claimed" });
  r = round.upsert(r, { dev_eui: "A", state: "wrong token" });
  assert.deepEqual(r.map((m) => [m.dev_eui, m.state]), [["B", "claimed"], ["A", "wrong token"]]);
  const s = storage();
  round.save(s, r);
  assert.deepEqual(round.load(s), r);
  assert.deepEqual(round.load(storage({ "installer.round.v1": "{not json" })), []);
  assert.deepEqual(round.load(storage({ "installer.round.v1": '{"a":1}' })), []);
});

test("the CSV: a header, RFC 4180 quoting, CRLF, no formula a spreadsheet would run", () => {
  const m = round.upsert([], {
    dev_eui: "0004A30B001C0530",
    join_eui: "70B3D57ED0000001",
    serial_number: '=HYPERLINK("x")',
    state: "claimed, twice",
    home_net_id: "000013",
  })[0];
  assert.equal(
    round.toCsv([m]),
    "dev_eui,join_eui,serial_number,state,home_net_id,claimed_at,last_join_at,last_join_net_id\r\n" +
      `0004A30B001C0530,70B3D57ED0000001,"'=HYPERLINK(""x"")","claimed, twice",000013,,,\r\n`,
  );
});
