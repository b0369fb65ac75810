// Every state and outcome the page shows, in plain words. Pure functions of the API's answers,
// so that the page never says a state with a colour only.

/** What `POST /api/v1/qr/parse` answers (the same JSON as `qr parse --json`). */
export interface ParsedCode {
  valid: true;
  schema: string;
  join_eui: string;
  dev_eui: string;
  profile_id: string;
  vendor_id: string;
  vendor_profile_id: string;
  owner_token: string | null;
  serial_number: string | null;
  proprietary: string | null;
  checksum: string | null;
  checksum_valid: boolean | null;
  canonical: string;
}

/** A code `qr parse` refuses, with its message; `other_format` names a code of another kind. */
export interface InvalidCode {
  valid: false;
  error: string;
  kind: string;
  field: string | null;
  position: number | null;
  other_format?: string | null;
}

export type CheckResult = ParsedCode | InvalidCode;

/** The message `qr parse` prints for a code it refuses (`error: invalid code: ...`). */
export function invalidMessage(r: InvalidCode): string {
  return `invalid code: ${r.error}`;
}

/** What the page says about a code that is not a LoRaWAN code, or null for a bad LoRaWAN code. */
export function otherFormatMessage(r: InvalidCode): string | null {
  if (!r.other_format) return null;
  return `This is a ${r.other_format}, not a LoRaWAN (TR005) code: it cannot be claimed here.`;
}

/** A DevEUI as 16 hexadecimal digits, in groups of four for reading aloud. */
export function groupedEui(eui: string): string {
  return eui.replace(/(.{4})(?=.)/g, "$1 ");
}

/** The outcome of a claim, as the page names it. */
export type ClaimOutcome =
  | "claimed"
  | "already_yours"
  | "claimed_by_someone_else"
  | "wrong_token"
  | "too_many_attempts"
  | "locked"
  | "unknown_device"
  | "not_an_owner"
  | "signed_out"
  | "failed";

/** The sentence for a claim outcome. */
export function claimMessage(o: ClaimOutcome, detail: { netId?: string; retryAfter?: number; message?: string }): string {
  switch (o) {
    case "claimed":
      return `Claimed: this meter is now yours, with home NetID ${detail.netId ?? ""}.`;
    case "already_yours":
      return "Already yours: you claimed this meter before.";
    case "claimed_by_someone_else":
      return "Claimed by someone else: this meter belongs to another owner or network.";
    case "wrong_token":
      return "Wrong token: the owner token on this label does not match this meter.";
    case "too_many_attempts":
      return `Too many attempts: wait ${detail.retryAfter ?? 60} seconds before trying again.`;
    case "locked":
      return "Locked: an administrator has locked this meter against claims.";
    case "unknown_device":
      return "Unknown meter: the join server has no meter with this DevEUI.";
    case "not_an_owner":
      return "This API key may not claim meters: sign in with an owner key.";
    case "signed_out":
      return keyRefusedMessage(detail.message);
    case "failed":
      return `The claim failed: ${detail.message ?? "no answer from the join server"}.`;
  }
}

/**
 * What the page says when the API refuses the key during work (401) before signing out: the
 * join server's own reason (for example "missing or unknown API key"), in words.
 */
export function keyRefusedMessage(serverMessage?: string | null): string {
  return `Your API key was refused (${serverMessage || "unknown or expired"}): sign in again.`;
}

/** Short state names for the round's list (and its CSV). */
export const OUTCOME_STATE: Record<ClaimOutcome, string> = {
  claimed: "claimed",
  already_yours: "already yours",
  claimed_by_someone_else: "claimed by someone else",
  wrong_token: "wrong token",
  too_many_attempts: "too many attempts",
  locked: "locked",
  unknown_device: "unknown meter",
  not_an_owner: "not claimed",
  signed_out: "not claimed",
  failed: "not claimed",
};

/** A time as HH:MM:SS on the phone's clock. */
export function clockTime(iso: string): string {
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return iso;
  const p = (n: number) => String(n).padStart(2, "0");
  return `${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}`;
}

/** The join state of a claimed meter, from `GET /api/v1/devices/{dev_eui}`. */
export function joinMessage(lastJoinAt: string | null | undefined, netId: string | null | undefined): string {
  if (!lastJoinAt) return "waiting for the first join";
  return `joined at ${clockTime(lastJoinAt)} through NetID ${netId ?? "unknown"}`;
}
