// The installer web app in a real headless Chromium, against the real join server, network
// server and simulator: sign in, scan a label through the (fake) camera, claim, watch the meter
// join, every refusal in words, the round kept across a reload. Screenshots of each main screen
// (360x640) go to TARGET/installer-screenshots/, or with UPDATE_SCREENSHOTS=1 to docs/installer/
// (the committed ones docs/installer.md shows).
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync, writeFileSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { createRequire } from "node:module";
import {
  ROOT,
  TARGET,
  apiEndpoint,
  browser,
  cleanup,
  fetchApi,
  readManifest,
  run,
  runFailing,
  serve,
  stop,
  tempDir,
  writeManifest,
} from "./harness.mjs";
import { pngToY4m } from "./y4m.mjs";

const NET_ID = "000013";
const TENANT_NET_ID = "00002A"; // dana's tenant's home NetID
const SHOTS = process.env.UPDATE_SCREENSHOTS === "1" ? join(ROOT, "docs", "installer") : join(TARGET, "installer-screenshots");
const WAIT = { timeout: 20_000 };

let tmp, js, ns, ctx, page, endpoint, alice, bob, dana, admin;
const meters = {}; // name -> manifest row
const consoleErrors = []; // script errors and CSP violations the page met
const codes = {}; // name -> TR005 text

function encode(row, token = row.owner_token, serial = `SN-${row.dev_eui.slice(-4)}`) {
  return run("qr", [
    "encode",
    "--join-eui", row.join_eui,
    "--dev-eui", row.dev_eui,
    "--profile-id", "00000000",
    "--owner-token", token,
    "--serial", serial,
  ]).trim();
}

async function apiCall(key, method, path, body) {
  const headers = { Authorization: `Bearer ${key}`, "Content-Type": "application/json" };
  return fetchApi(endpoint, method, `/api/v1/${path}`, headers, body && JSON.stringify(body));
}

/** A screenshot of the viewport (360x640), with `selector`'s element scrolled to its middle. */
async function shot(name, selector) {
  mkdirSync(SHOTS, { recursive: true });
  if (selector) await page.locator(selector).evaluate((e) => e.scrollIntoView({ block: "center" }));
  await page.screenshot({ path: join(SHOTS, `${name}.png`), fullPage: false });
}

const AXE = readFileSync(createRequire(import.meta.url).resolve("axe-core/axe.min.js"), "utf8");

/**
 * The accessibility rules of WCAG 2.x A and AA (contrast, labels, names, roles...) that the page
 * as it is now breaks, checked by axe-core (run through the DevTools protocol, which the page's
 * Content-Security-Policy does not restrict).
 */
async function accessibilityViolations() {
  await page.evaluate(AXE);
  return page.evaluate(async () => {
    const r = await globalThis.axe.run(document, { runOnly: { type: "tag", values: ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"] } });
    return r.violations.map((v) => `${v.id}: ${v.nodes.map((n) => n.target.join(" ")).join(", ")}`);
  });
}

/** What the API says to a key it refuses (the page must show exactly this). */
async function refusal(key) {
  const r = await apiCall(key, "GET", "devices?limit=1");
  assert.equal(r.status, 401);
  return r.body.message;
}

/** Types a code's text into the manual entry and checks it. */
async function typeCode(text) {
  await page.getByLabel("Or type the code's text").fill(text);
  await page.getByRole("button", { name: "Check" }).click();
}

/** Claims the code on show (home NetID 000013) and returns the claim status text. */
async function claimShown(expect) {
  await page.getByLabel("Home NetID (6 hex digits)").fill(NET_ID);
  await page.getByRole("button", { name: "Claim" }).click();
  await page.locator("#claim-status").filter({ hasText: expect }).waitFor(WAIT);
  return page.locator("#claim-status").textContent();
}

before(async () => {
  tmp = tempDir("installer-test-");
  const dir = join(tmp, "js");
  run("joinserver", ["init", "--data-dir", dir]);
  // Two failed claims per device and window, so that "too many attempts" comes quickly.
  writeFileSync(join(dir, "joinserver.toml"), "[api]\nclaim_failures_per_device = 2\n");
  alice = run("joinserver", ["api-keys", "create", "--data-dir", dir, "--role", "owner", "--name", "alice"]).trim();
  bob = run("joinserver", ["api-keys", "create", "--data-dir", dir, "--role", "owner", "--name", "bob"]).trim();
  admin = run("joinserver", ["api-keys", "create", "--data-dir", dir, "--role", "admin", "--name", "ops"]).trim();
  // An owner whose tenant has a home NetID of its own (not the network of the test's meters).
  dana = run("joinserver", ["api-keys", "create", "--data-dir", dir, "--role", "owner", "--name", "dana", "--home-net-id", TENANT_NET_ID]).trim();
  // Unclaimed meters (no home NetID): A joins through the simulator; the others meet refusals.
  const rows = [];
  for (const [name, seed] of [["a", 11], ["b", 12], ["c", 13], ["d", 14], ["e", 15]]) {
    const m = join(tmp, `${name}.csv`);
    run("simulator", ["manifest", "--devices", "1", "--seed", String(seed), "--mac-version", "1.0.4", "--home-net-id", NET_ID, "--out", m]);
    const [row] = readManifest(m);
    meters[name] = row;
    rows.push({ ...row, home_net_id: "" });
    codes[name] = encode(row);
  }
  writeManifest(join(tmp, "all.csv"), rows);
  // The network server of NetID 000013 as an operator sets it up: its own link key and network
  // KEK, made by `joinserver peers add`, whose paths it prints.
  const added = run("joinserver", ["peers", "add", "--data-dir", dir, "--net-id", NET_ID]);
  const secret = (what) => {
    const m = added.match(new RegExp(`^\\s+(\\S+)\\s+${what}$`, "m"));
    assert.ok(m, `no ${what} in: ${added}`);
    return m[1];
  };
  const [linkKey, nsKek] = [secret("link key"), secret("network KEK")];
  run("joinserver", ["devices", "import", "--data-dir", dir, join(tmp, "all.csv")]);
  js = await serve("joinserver", ["serve", "--data-dir", dir, "--listen", "127.0.0.1:0", "--metrics", "", "--api-listen", "127.0.0.1:0"], "joinserver");
  endpoint = apiEndpoint(js, dir);
  const nsConfig = join(tmp, "ns.toml");
  writeFileSync(nsConfig, "[gwmp]\nworkers = 1\n");
  ns = await serve(
    "netserver",
    ["serve", "--config", nsConfig, "--data-dir", join(tmp, "ns"), "--join-server", js.addrs.link,
      "--link-key", linkKey, "--ns-kek", nsKek,
      "--net-id", NET_ID, "--listen", "127.0.0.1:0", "--metrics", "127.0.0.1:0"],
    "netserver",
  );
  // The camera films meter A's label.
  const png = join(tmp, "a.png");
  run("qr", ["render", codes.a, "--format", "png", "--out", png, "--size", "360"]);
  const y4m = join(tmp, "a.y4m");
  pngToY4m(png, y4m);
  ctx = await browser(y4m, join(tmp, "profile"), endpoint);
  page = ctx.pages()[0] ?? (await ctx.newPage());
  page.on("response", (r) => {
    if (r.status() >= 400 && !new URL(r.url()).pathname.startsWith("/api/v1/")) consoleErrors.push(`${r.status()} ${r.url()}`);
  });
  page.on("requestfailed", (r) => consoleErrors.push(`failed: ${r.url()} ${r.failure()?.errorText}`));
  page.on("pageerror", (e) => consoleErrors.push(`pageerror: ${e.message}`));
  page.on("console", (m) => {
    // The API's refusals (401, 403, 404, 409, 423, 429) are answers the page reads, not errors
    // (a failed load of the page's own files is caught by the response handler above).
    const refusal = /^Failed to load resource: the server responded with a status of (401|403|404|409|423|429)\b/;
    if (m.type() === "error" && !refusal.test(m.text())) consoleErrors.push(m.text());
  });
});

after(async () => {
  await ctx?.close();
  await stop(ns);
  await stop(js);
  if (tmp) cleanup(tmp);
});

test("the app is served at /install/ and a wrong key is refused", async () => {
  await page.goto(`${endpoint.base}/install/`);
  assert.equal(await page.title(), "Meter installer");
  await page.getByLabel("Owner API key").fill("not-a-key");
  await page.getByRole("button", { name: "Sign in" }).click();
  const said = `The key was refused: ${await refusal("not-a-key")}.`;
  await page.locator("#sign-in-status").filter({ hasText: said }).waitFor(WAIT);
  assert.equal(await page.locator("#sign-in-status").textContent(), said);
  await shot("1-sign-in");
  assert.deepEqual(await accessibilityViolations(), [], "sign-in screen");
});

test("sign in, scan the label with the camera, see the fields", async () => {
  await page.getByLabel("Owner API key").fill(alice);
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.getByRole("button", { name: "Scan with camera" }).waitFor(WAIT);
  // The key is kept in this tab's session storage only: never in local storage or the URL.
  assert.equal(await page.evaluate(() => sessionStorage.getItem("installer.key")), alice);
  const local = await page.evaluate(() => JSON.stringify({ ...localStorage }));
  assert.ok(!local.includes(alice), "the key leaked into localStorage");
  assert.ok(!page.url().includes(alice));

  await page.getByRole("button", { name: "Scan with camera" }).click();
  await page.locator("#scan-status").filter({ hasText: "Point the camera" }).waitFor(WAIT);
  await shot("2-scan");
  // Decoding runs on the page's thread; on a loaded machine it may take several frames.
  await page
    .locator("#scan-status")
    .filter({ hasText: "Code read from the camera." })
    .waitFor({ timeout: 60_000 })
    .catch(async (e) => {
      throw new Error(`the camera read no code; the page says: ${await page.locator("#scan-status").textContent()} (${e.message})`);
    });
  const a = meters.a;
  await page.locator("#check-status").filter({ hasText: `Valid LoRaWAN code for the meter with DevEUI ${a.dev_eui}.` }).waitFor(WAIT);
  const fields = await page.locator("#fields").innerText();
  assert.match(fields, new RegExp(`DevEUI\\s+${a.dev_eui}`));
  assert.match(a.dev_eui, /^[0-9A-F]{16}$/);
  assert.match(fields, new RegExp(`JoinEUI\\s+${a.join_eui}`));
  assert.match(fields, /Owner token\s+present/);
  assert.match(fields, /CheckSum\s+[0-9A-F]{4} \(valid\)/);
  await shot("3-code", "#fields");
});

test("claim: 'claimed', then the simulated meter joins and the page shows it without a reload", async () => {
  const text = await claimShown("Claimed");
  assert.equal(text, `Claimed: this meter is now yours, with home NetID ${NET_ID}.`);
  await page.locator("#join-status").filter({ hasText: `Meter ${meters.a.dev_eui}: waiting for the first join.` }).waitFor(WAIT);
  await shot("4-claimed", "#claim-status");
  const before = page.url();
  // Meter A powers up behind a virtual gateway of the simulator and joins through NetID 000013.
  run("simulator", ["run", "--manifest", join(tmp, "a.csv"), "--netserver", ns.addrs.gwmp, "--scenario", "storm", "--join-window", "1s", "--duration", "20s", "--quiet"]);
  const joined = page.locator("#join-status").filter({ hasText: /joined at \d\d:\d\d:\d\d through NetID 000013/ });
  await joined.waitFor(WAIT);
  assert.equal(page.url(), before);
  // The join server's own record, as the API shows it.
  const d = await apiCall(alice, "GET", `devices/${meters.a.dev_eui}`);
  assert.equal(d.status, 200);
  assert.equal(d.body.last_join_net_id, NET_ID);
  const at = new Date(d.body.last_join_at);
  const p = (n) => String(n).padStart(2, "0");
  const hms = `${p(at.getHours())}:${p(at.getMinutes())}:${p(at.getSeconds())}`;
  assert.equal(await page.locator("#join-status").textContent(), `Meter ${meters.a.dev_eui}: joined at ${hms} through NetID ${NET_ID}.`);
  await page.locator("#round li", { hasText: meters.a.dev_eui }).filter({ hasText: `claimed, joined at ${hms} through NetID ${NET_ID}` }).waitFor(WAIT);
  await shot("5-joined", "#join-status");
  assert.deepEqual(await accessibilityViolations(), [], "code, claim and join screen");
});

test("a wrong checksum shows the same message as `qr parse`", async () => {
  // One DevEUI digit misread: the CheckSum no longer matches.
  const a = codes.a;
  const i = a.indexOf(meters.a.dev_eui) + 15;
  const misread = a.slice(0, i) + (a[i] === "0" ? "1" : "0") + a.slice(i + 1);
  const stderr = runFailing("qr", ["parse", misread]);
  const cli = stderr.split("\n")[0].replace(/^error: /, "");
  assert.match(cli, /^invalid code: wrong CheckSum \(C\) at position \d+: expected [0-9A-F]{4}/);
  await typeCode(misread);
  await page.locator("#check-status").filter({ hasText: cli }).waitFor(WAIT);
  assert.equal(await page.locator("#check-status").textContent(), cli);
  assert.ok(await page.locator("#claim-form").isHidden());
  await shot("6-bad-checksum", "#check-status");
  assert.deepEqual(await accessibilityViolations(), [], "a refused code");
});

test("a Matter code is named as such", async () => {
  const matter = "MT:Y.K9042C00KA0648G00";
  const cli = runFailing("qr", ["parse", matter]).split("\n")[0].replace(/^error: /, "");
  await typeCode(matter);
  const status = page.locator("#check-status");
  await status.filter({ hasText: "This is a Matter onboarding code (MT:), not a LoRaWAN (TR005) code" }).waitFor(WAIT);
  assert.ok((await status.textContent()).includes(cli));
});

test("a photo of a label is read (the bundled decoder where there is no BarcodeDetector)", async () => {
  const png = join(tmp, "b.png");
  run("qr", ["render", codes.b, "--format", "png", "--out", png, "--size", "300"]);
  await page.getByLabel("Read a photo of the label").setInputFiles(png);
  await page.locator("#check-status").filter({ hasText: `DevEUI ${meters.b.dev_eui}` }).waitFor(WAIT);
});

test("claimed by someone else, already yours, wrong token, too many attempts, locked", async () => {
  // B: Bob claimed it first.
  const r = await apiCall(bob, "POST", "claims", { qr_code: codes.b, home_net_id: NET_ID });
  assert.equal(r.status, 200);
  await typeCode(codes.b);
  assert.equal(await claimShown("Claimed by someone else"), "Claimed by someone else: this meter belongs to another owner or network.");
  // A: claimed above by this owner.
  await typeCode(codes.a);
  assert.equal(await claimShown("Already yours"), "Already yours: you claimed this meter before.");
  // C: a label whose owner token is not the meter's.
  await typeCode(encode(meters.c, "0BADC0DE0BAD"));
  assert.equal(await claimShown("Wrong token"), "Wrong token: the owner token on this label does not match this meter.");
  await shot("7-wrong-token", "#claim-status");
  // Two failures per meter are allowed (test configuration): the next attempt is refused.
  await page.getByRole("button", { name: "Claim" }).click();
  await page.locator("#claim-status").filter({ hasText: "Wrong token" }).waitFor(WAIT);
  await page.getByRole("button", { name: "Claim" }).click();
  await page.locator("#claim-status").filter({ hasText: /^Too many attempts: wait \d+ seconds before trying again\.$/ }).waitFor(WAIT);
  // D: locked by an administrator.
  assert.equal((await apiCall(admin, "PUT", `devices/${meters.d.dev_eui}/lock`)).status, 200);
  await typeCode(codes.d);
  assert.equal(await claimShown("Locked"), "Locked: an administrator has locked this meter against claims.");
});

test("the round survives a reload and exports as CSV", async () => {
  await page.reload();
  const items = page.locator("#round li");
  await items.first().waitFor(WAIT);
  const list = await page.locator("#round").innerText();
  for (const [name, state] of [["a", "already yours, joined at"], ["b", "claimed by someone else"], ["c", "too many attempts"], ["d", "locked"]]) {
    assert.match(list, new RegExp(`${meters[name].dev_eui}\\s+${state}`), `${name} in ${list}`);
  }
  assert.equal(await page.locator("#round-count").textContent(), "4 meters in this round.");
  await shot("8-round", "#round-count");
  assert.deepEqual(await accessibilityViolations(), [], "the round after a reload");
  const [download] = await Promise.all([page.waitForEvent("download"), page.getByRole("button", { name: "Export CSV" }).click()]);
  const csv = readFileSync(await download.path(), "utf8");
  const lines = csv.trimEnd().split("\r\n");
  assert.equal(lines[0], "dev_eui,join_eui,serial_number,state,home_net_id,claimed_at,last_join_at,last_join_net_id");
  const rowA = lines.find((l) => l.startsWith(meters.a.dev_eui));
  assert.match(rowA, new RegExp(`^${meters.a.dev_eui},${meters.a.join_eui},SN-${meters.a.dev_eui.slice(-4)},already yours,${NET_ID},[^,]+,[^,]+,${NET_ID}$`));
});

test("signing out forgets the key", async () => {
  await page.getByRole("button", { name: "Sign out" }).click();
  await page.getByRole("button", { name: "Sign in" }).waitFor(WAIT);
  assert.equal(await page.evaluate(() => sessionStorage.getItem("installer.key")), null);
});

test("on a phone that never claimed, the home NetID proposed is that of the owner's meters", async () => {
  await page.evaluate(() => localStorage.removeItem("installer.net_id"));
  await page.reload();
  assert.equal(await page.getByLabel("Home NetID (6 hex digits)").inputValue(), "");
  await page.getByLabel("Owner API key").fill(alice);
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.getByRole("button", { name: "Scan with camera" }).waitFor(WAIT);
  assert.equal(await page.getByLabel("Home NetID (6 hex digits)").inputValue(), NET_ID);
});

test("the tenant's home NetID is proposed at sign-in before the phone's last one, and can be changed", async () => {
  const me = await apiCall(dana, "GET", "me");
  assert.equal(me.status, 200);
  assert.equal(me.body.home_net_id, TENANT_NET_ID);
  await page.getByRole("button", { name: "Sign out" }).click();
  await page.evaluate((n) => localStorage.setItem("installer.net_id", n), NET_ID);
  await page.reload();
  const field = page.getByLabel("Home NetID (6 hex digits)");
  assert.equal(await field.inputValue(), NET_ID, "the phone's last NetID before sign-in");
  await page.getByLabel("Owner API key").fill(dana);
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.getByRole("button", { name: "Scan with camera" }).waitFor(WAIT);
  assert.equal(await field.inputValue(), TENANT_NET_ID);
  // Shown with the claim form of a checked code, where the installer may change it.
  await typeCode(codes.e);
  await page.locator("#check-status").filter({ hasText: `DevEUI ${meters.e.dev_eui}` }).waitFor(WAIT);
  assert.equal(await field.inputValue(), TENANT_NET_ID);
  await field.fill(NET_ID);
  assert.equal(await field.inputValue(), NET_ID);
});

test("a key that expires during the round signs the page out with the server's refusal", async () => {
  // An owner key made by an administrator to expire within seconds.
  const expiresMs = Date.now() + 6_000;
  const made = await apiCall(admin, "POST", "api-keys", { role: "owner", name: "carol", expires_ms: expiresMs });
  assert.equal(made.status, 201, JSON.stringify(made.body));
  const carol = made.body.api_key;
  await page.getByRole("button", { name: "Sign out" }).click();
  await page.getByLabel("Owner API key").fill(carol);
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.getByRole("button", { name: "Scan with camera" }).waitFor(WAIT);
  assert.ok(Date.now() < expiresMs, "signed in only after the key expired: the test proves nothing");
  await new Promise((r) => setTimeout(r, expiresMs - Date.now() + 1_000));
  const said = await refusal(carol);
  await typeCode(codes.e);
  await page.locator("#sign-in-status").filter({ hasText: `Your API key was refused (${said}): sign in again.` }).waitFor(WAIT);
  assert.equal(await page.locator("#sign-in-status").textContent(), `Your API key was refused (${said}): sign in again.`);
  assert.ok(await page.locator("#work").isHidden());
  assert.equal(await page.evaluate(() => sessionStorage.getItem("installer.key")), null);
  await shot("9-key-refused");
  await page.getByLabel("Owner API key").fill(carol);
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.locator("#sign-in-status").filter({ hasText: `The key was refused: ${said}.` }).waitFor(WAIT);
  assert.equal(await page.locator("#sign-in-status").textContent(), `The key was refused: ${said}.`);
});

test("no script error and no Content-Security-Policy violation on the way", () => {
  assert.deepEqual(consoleErrors, []);
});
