// The installer page: sign in, scan or type a code, check it, claim it, watch it join, keep the
// round. Every state is shown in words (role="status" regions read by screen readers).

import "./style.css";
import * as api from "./api";
import * as round from "./round";
import { decodePhoto, decoderName, startCamera, type CameraScan } from "./scan";
import {
  OUTCOME_STATE,
  claimMessage,
  groupedEui,
  invalidMessage,
  joinMessage,
  keyRefusedMessage,
  otherFormatMessage,
  type ParsedCode,
} from "./words";

const KEY = "installer.key"; // sessionStorage: the tab only, gone when it closes
const NET_ID = "installer.net_id"; // localStorage: not a secret
const POLL_MS = 2000;

const $ = <T extends HTMLElement>(id: string) => document.getElementById(id) as T;

function say(el: HTMLElement, text: string, tone: "ok" | "bad" | "info" = "info") {
  el.textContent = text;
  el.dataset.tone = tone;
}

let meters = round.load(localStorage);
let current: { text: string; code: ParsedCode } | null = null;
let camera: CameraScan | null = null;

function key(): string | null {
  return sessionStorage.getItem(KEY);
}

function showSignedIn(signedIn: boolean) {
  $("sign-in").hidden = signedIn;
  $("work").hidden = !signedIn;
  $("sign-out").hidden = !signedIn;
  $("who").textContent = signedIn ? "Signed in with an owner API key." : "";
}

function signOut(reason?: string) {
  sessionStorage.removeItem(KEY);
  camera?.stop();
  camera = null;
  showSignedIn(false);
  say($("sign-in-status"), reason ?? "Signed out.", reason ? "bad" : "info");
  $<HTMLInputElement>("api-key").focus();
}

async function signIn(e: Event) {
  e.preventDefault();
  const input = $<HTMLInputElement>("api-key");
  const k = input.value.trim();
  if (!k) {
    say($("sign-in-status"), "Type or paste your owner API key first.", "bad");
    return;
  }
  say($("sign-in-status"), "Checking the key…");
  try {
    const r = await api.checkKey(k);
    if ("refused" in r) {
      say($("sign-in-status"), `The key was refused: ${r.refused}.`, "bad");
      return;
    }
    // The home network to claim for (changeable): the tenant's own, if an administrator set
    // one; else what this phone last claimed for; else a network the key's meters belong to.
    const netInput = $<HTMLInputElement>("net-id");
    if (r.tenantNetId) netInput.value = r.tenantNetId;
    else if (!netInput.value && r.homeNetId) netInput.value = r.homeNetId;
  } catch {
    say($("sign-in-status"), "The join server cannot be reached.", "bad");
    return;
  }
  sessionStorage.setItem(KEY, k);
  input.value = "";
  $("sign-in-status").textContent = "";
  showSignedIn(true);
  $<HTMLButtonElement>("camera").focus();
}

function field(dl: HTMLElement, name: string, value: string) {
  const dt = document.createElement("dt");
  dt.textContent = name;
  const dd = document.createElement("dd");
  dd.textContent = value;
  dl.append(dt, dd);
}

function showCode(code: ParsedCode) {
  const dl = $("fields");
  dl.replaceChildren();
  field(dl, "DevEUI", code.dev_eui);
  field(dl, "JoinEUI", code.join_eui);
  field(dl, "ProfileID", `${code.profile_id} (VendorID ${code.vendor_id})`);
  if (code.serial_number) field(dl, "Serial number", code.serial_number);
  field(dl, "Owner token", code.owner_token ? "present" : "none (the code cannot claim)");
  field(dl, "CheckSum", code.checksum ? `${code.checksum} (valid)` : "none (the code cannot prove it was read correctly)");
  $<HTMLElement>("fields").setAttribute("aria-label", `DevEUI ${groupedEui(code.dev_eui)}`);
}

/** Checks a scanned, photographed or typed text with the server's `qr parse`. */
async function check(text: string) {
  const k = key();
  if (!k) return signOut("Sign in first.");
  $("result").hidden = false;
  $("fields").replaceChildren();
  $("claim-form").hidden = true;
  $("claim-status").textContent = "";
  $("join-status").textContent = "";
  current = null;
  say($("check-status"), "Checking the code…");
  let a;
  try {
    a = await api.parseCode(k, text);
  } catch {
    say($("check-status"), "The join server cannot be reached.", "bad");
    return;
  }
  if (a.status === 401) return signOut(keyRefusedMessage((a.body as api.ApiError | null)?.message));
  const r = a.body;
  if (a.status !== 200 || r === null || !("valid" in r)) {
    say($("check-status"), `The code could not be checked: ${(r as api.ApiError | null)?.message ?? a.status}.`, "bad");
    return;
  }
  if (!r.valid) {
    const other = otherFormatMessage(r);
    say($("check-status"), other ? `${other} (${invalidMessage(r)})` : invalidMessage(r), "bad");
    return;
  }
  current = { text, code: r };
  say($("check-status"), `Valid LoRaWAN code for the meter with DevEUI ${r.dev_eui}.`, "ok");
  showCode(r);
  meters = round.upsert(meters, {
    dev_eui: r.dev_eui,
    join_eui: r.join_eui,
    serial_number: r.serial_number,
  });
  saveAndRender();
  if (r.owner_token) {
    $("claim-form").hidden = false;
    $<HTMLButtonElement>("claim").focus();
  } else {
    say($("claim-status"), "This code has no owner token, so it cannot claim the meter.", "bad");
  }
}

async function doClaim(e: Event) {
  e.preventDefault();
  const k = key();
  if (!k) return signOut("Sign in first.");
  if (!current) return;
  const netInput = $<HTMLInputElement>("net-id");
  const netId = netInput.value.trim().toUpperCase();
  if (!/^[0-9A-F]{6}$/.test(netId)) {
    say($("claim-status"), "The home NetID must be 6 hexadecimal digits, such as 000013.", "bad");
    netInput.focus();
    return;
  }
  localStorage.setItem(NET_ID, netId);
  const { code, text } = current;
  say($("claim-status"), "Claiming…");
  let r;
  try {
    r = await api.claim(k, text, code.dev_eui, netId);
  } catch {
    say($("claim-status"), "The join server cannot be reached.", "bad");
    return;
  }
  if (r.outcome === "signed_out") return signOut(claimMessage(r.outcome, { message: r.message }));
  const ok = r.outcome === "claimed" || r.outcome === "already_yours";
  say($("claim-status"), claimMessage(r.outcome, { netId, retryAfter: r.retryAfter, message: r.message }), ok ? "ok" : "bad");
  meters = round.upsert(meters, {
    dev_eui: code.dev_eui,
    state: OUTCOME_STATE[r.outcome],
    home_net_id: r.device?.home_net_id ?? null,
    ...(r.outcome === "claimed" ? { claimed_at: new Date().toISOString() } : {}),
    last_join_at: r.device?.last_join_at ?? null,
    last_join_net_id: r.device?.last_join_net_id ?? null,
  });
  saveAndRender();
  if (ok) showJoin(code.dev_eui);
}

function showJoin(devEui: string) {
  const m = meters.find((x) => x.dev_eui === devEui);
  if (!m || current?.code.dev_eui !== devEui) return;
  say($("join-status"), `Meter ${devEui}: ${joinMessage(m.last_join_at, m.last_join_net_id)}.`, m.last_join_at ? "ok" : "info");
}

function watched(m: round.Meter): boolean {
  return m.state === OUTCOME_STATE.claimed || m.state === OUTCOME_STATE.already_yours;
}

/** Polls the join state of the round's claimed meters (the join server's view, live). */
async function poll() {
  const k = key();
  if (k && !document.hidden) {
    for (const m of meters.filter(watched).slice(0, 50)) {
      try {
        const a = await api.device(k, m.dev_eui);
        if (a.status === 401) {
          signOut(keyRefusedMessage((a.body as api.ApiError | null)?.message));
          break;
        }
        if (a.status !== 200 || !a.body || !("dev_eui" in a.body)) continue;
        const d = a.body;
        if (d.last_join_at !== m.last_join_at || d.last_join_net_id !== m.last_join_net_id) {
          meters = round.upsert(meters, {
            dev_eui: m.dev_eui,
            last_join_at: d.last_join_at ?? null,
            last_join_net_id: d.last_join_net_id ?? null,
          });
          saveAndRender();
          showJoin(m.dev_eui);
        }
      } catch {
        break; // unreachable for now; the next round of polling tries again
      }
    }
  }
  window.setTimeout(poll, POLL_MS);
}

function saveAndRender() {
  round.save(localStorage, meters);
  const ul = $("round");
  ul.replaceChildren();
  for (const m of meters) {
    const li = document.createElement("li");
    const eui = document.createElement("span");
    eui.className = "eui";
    eui.textContent = m.dev_eui;
    eui.setAttribute("aria-label", `DevEUI ${groupedEui(m.dev_eui)}`);
    const state = document.createElement("span");
    state.className = "state";
    const join = watched(m) ? `, ${joinMessage(m.last_join_at, m.last_join_net_id)}` : "";
    state.textContent = `${m.state}${join}`;
    li.append(eui, state);
    if (m.serial_number) {
      const sn = document.createElement("span");
      sn.className = "state";
      sn.textContent = `serial ${m.serial_number}`;
      li.append(sn);
    }
    ul.append(li);
  }
  $("round-count").textContent = meters.length === 1 ? "1 meter in this round." : `${meters.length} meters in this round.`;
}

function exportCsv() {
  const blob = new Blob([round.toCsv(meters)], { type: "text/csv" });
  const a = document.createElement("a");
  a.href = URL.createObjectURL(blob);
  a.download = `meters-${new Date().toISOString().slice(0, 10)}.csv`;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(a.href), 1000);
}

async function scanCamera() {
  camera?.stop();
  const video = $<HTMLVideoElement>("video");
  say($("scan-status"), "Starting the camera…");
  const decoder = await decoderName();
  try {
    camera = await startCamera(video, (text) => {
      camera = null;
      video.hidden = true;
      $("camera-stop").hidden = true;
      say($("scan-status"), "Code read from the camera.", "ok");
      void check(text);
    });
  } catch (err) {
    say($("scan-status"), `The camera cannot be used (${(err as Error).name}): read a photo or type the code instead.`, "bad");
    return;
  }
  // No frame has been decoded yet (the first is read after the camera settles).
  video.hidden = false;
  $("camera-stop").hidden = false;
  say($("scan-status"), `Point the camera at the label's QR code (reading with ${decoder}).`);
}

function stopCamera() {
  camera?.stop();
  camera = null;
  $("video").hidden = true;
  $("camera-stop").hidden = true;
  say($("scan-status"), "Camera stopped.");
}

async function readPhoto() {
  const input = $<HTMLInputElement>("photo");
  const file = input.files?.[0];
  if (!file) return;
  say($("scan-status"), "Reading the photo…");
  try {
    const text = await decodePhoto(file);
    if (text === null) {
      say($("scan-status"), "No QR code found in the photo: take it again, closer and sharper.", "bad");
      return;
    }
    say($("scan-status"), "Code read from the photo.", "ok");
    await check(text);
  } catch {
    say($("scan-status"), "The photo could not be read.", "bad");
  } finally {
    input.value = "";
  }
}

function main() {
  $<HTMLInputElement>("net-id").value = localStorage.getItem(NET_ID) ?? "";
  $("sign-in-form").addEventListener("submit", signIn);
  $("sign-out").addEventListener("click", () => signOut());
  $("camera").addEventListener("click", scanCamera);
  $("camera-stop").addEventListener("click", stopCamera);
  $("photo").addEventListener("change", readPhoto);
  $("manual-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const text = $<HTMLTextAreaElement>("code-text").value.trim();
    if (text) void check(text);
  });
  $("claim-form").addEventListener("submit", doClaim);
  $("export").addEventListener("click", exportCsv);
  $("clear").addEventListener("click", () => {
    if (!confirm("Clear the list of this round's meters?")) return;
    meters = [];
    saveAndRender();
  });
  showSignedIn(key() !== null);
  saveAndRender();
  void poll();
}

main();
