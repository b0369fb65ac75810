// The real system for the browser tests: the workspace's `joinserver`, `netserver`, `simulator`
// and `qr` binaries (built by `cargo build`), on 127.0.0.1 ports the kernel picks, in a temporary
// directory; and a headless Chromium (Debian's) driven by playwright-core.
import { spawn, execFileSync } from "node:child_process";
import { createHash, X509Certificate } from "node:crypto";
import { existsSync, mkdtempSync, rmSync, writeFileSync, readFileSync } from "node:fs";
import { request as httpRequest } from "node:http";
import { request as httpsRequest } from "node:https";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

export const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "../..");
/** The Cargo target directory (CARGO_TARGET_DIR, else ROOT/target). */
export const TARGET = process.env.CARGO_TARGET_DIR ? resolve(ROOT, process.env.CARGO_TARGET_DIR) : join(ROOT, "target");

/** The path of a workspace binary (debug profile). */
export function bin(name) {
  return join(TARGET, "debug", name);
}

/** Runs a binary to completion; its standard output (throws with its stderr if it fails). */
export function run(name, args, input) {
  return execFileSync(bin(name), args, { encoding: "utf8", input, stdio: ["pipe", "pipe", "pipe"] });
}

/** Runs a binary that is expected to fail; its standard error. */
export function runFailing(name, args) {
  try {
    execFileSync(bin(name), args, { encoding: "utf8", stdio: ["pipe", "pipe", "pipe"] });
  } catch (e) {
    return e.stderr;
  }
  throw new Error(`${name} ${args.join(" ")} succeeded`);
}

/** A temporary directory, removed by `cleanup()`. */
export function tempDir(prefix) {
  return mkdtempSync(join(tmpdir(), prefix));
}

/**
 * Spawns a server and waits for its "<what> listening k=v ..." line; resolves to
 * `{ child, addrs: {k: v} }`. Rejects if it exits first or says nothing within 30 s.
 */
export function serve(name, args, what) {
  return new Promise((resolveP, reject) => {
    const child = spawn(bin(name), args, { stdio: ["ignore", "pipe", "pipe"], env: { ...process.env, RUST_LOG: "warn" } });
    let out = "";
    let err = "";
    const timer = setTimeout(() => reject(new Error(`${name} did not start: ${err}`)), 30_000);
    child.stdout.on("data", (d) => {
      out += d;
      const line = out.split("\n").find((l) => l.includes(`${what} listening`));
      if (line) {
        clearTimeout(timer);
        const addrs = Object.fromEntries([...line.matchAll(/(\w+)=(\S*)/g)].map((m) => [m[1], m[2]]));
        resolveP({ child, addrs });
      }
    });
    child.stderr.on("data", (d) => {
      err += d;
      if (err.length > 100_000) err = err.slice(-50_000);
    });
    child.on("exit", (code) => {
      clearTimeout(timer);
      reject(new Error(`${name} exited (${code}): ${err}`));
    });
  });
}

/** Stops a served process (SIGTERM) and waits for it. */
export function stop(p) {
  return new Promise((res) => {
    if (!p || p.child.exitCode !== null) return res();
    p.child.removeAllListeners("exit");
    p.child.on("exit", () => res());
    p.child.kill("SIGTERM");
  });
}

/** The rows of a manifest CSV as objects. */
export function readManifest(path) {
  const [header, ...rows] = readFileSync(path, "utf8").trim().split("\n");
  const cols = header.split(",");
  return rows.map((r) => Object.fromEntries(r.split(",").map((v, i) => [cols[i], v])));
}

/** Writes a manifest CSV from objects (columns of the first). */
export function writeManifest(path, rows) {
  const cols = Object.keys(rows[0]);
  writeFileSync(path, [cols.join(","), ...rows.map((r) => cols.map((c) => r[c]).join(","))].join("\n") + "\n");
}

/** The Chromium the tests drive: Debian's, unless CHROMIUM names another. */
export const CHROMIUM = process.env.CHROMIUM ?? "/usr/bin/chromium";

/**
 * The join server's API as the tests reach it: its scheme (from the `api_scheme=` of its
 * listening line; plain HTTP before the API had TLS), its base URL, and for HTTPS its
 * self-signed certificate (`DATA_DIR/tls/api.crt`, written by `joinserver init`).
 */
export function apiEndpoint(js, dataDir) {
  const scheme = js.addrs.api_scheme === "https" ? "https" : "http";
  const certFile = join(dataDir, "tls", "api.crt");
  const cert = scheme === "https" ? readFileSync(certFile, "utf8") : null;
  if (scheme === "https" && !existsSync(certFile)) throw new Error(`HTTPS without ${certFile}`);
  return { scheme, base: `${scheme}://${js.addrs.api}`, cert };
}

/** The base64 SHA-256 of a PEM certificate's public key (what Chromium's SPKI allow-list takes). */
function spkiHash(pem) {
  const spki = new X509Certificate(pem).publicKey.export({ type: "spki", format: "der" });
  return createHash("sha256").update(spki).digest("base64");
}

/** One HTTP(S) request from the test itself (trusting the endpoint's certificate only). */
export function fetchApi(endpoint, method, path, headers, body) {
  return new Promise((resolveP, reject) => {
    const url = new URL(path, endpoint.base);
    const send = endpoint.scheme === "https" ? httpsRequest : httpRequest;
    const req = send(url, { method, headers, ca: endpoint.cert ?? undefined }, (res) => {
      let data = "";
      res.on("data", (d) => (data += d));
      res.on("end", () => {
        let json = null;
        try {
          json = JSON.parse(data);
        } catch {
          json = null;
        }
        resolveP({ status: res.statusCode, body: json });
      });
    });
    req.on("error", reject);
    req.end(body);
  });
}

/**
 * A fresh headless Chromium (its own user data directory) at 360x640 whose camera is the
 * fake capture device playing `y4m`, camera permission granted. Over HTTPS it trusts the join
 * server's self-signed certificate by its public key, and nothing else.
 */
export async function browser(y4m, profileDir, endpoint) {
  const trust = endpoint.cert ? [`--ignore-certificate-errors-spki-list=${spkiHash(endpoint.cert)}`] : [];
  return chromium.launchPersistentContext(profileDir, {
    executablePath: CHROMIUM,
    headless: true,
    viewport: { width: 360, height: 640 },
    deviceScaleFactor: 1,
    acceptDownloads: true,
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
      "--use-fake-ui-for-media-stream",
      "--use-fake-device-for-media-stream",
      `--use-file-for-fake-video-capture=${y4m}`,
      ...trust,
    ],
  });
}

/** Removes a directory tree. */
export function cleanup(dir) {
  rmSync(dir, { recursive: true, force: true });
}
